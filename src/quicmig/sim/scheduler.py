"""One event queue for the whole simulation: time first, then FIFO among equal times.

Like SimPy's core, entries are `(time, sequence, item)` with an `itertools.count()` sequence,
so two things due at the same instant run in the order they were scheduled and the run is
deterministic for a given seed.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Protocol


class Timed(Protocol):
    """Anything with a sans-IO timer: aioquic connections, links, NATs, endpoints."""

    def get_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...


# seconds: a timer that was just handled but still reports itself due fires again this much
# later. aioquic computes a loss time as `sent + delay` and then tests `sent <= now - delay`,
# which floating point can round the wrong way; a real clock would have moved on.
RESOLUTION = 1e-6


class Scheduler:
    """Runs callbacks and component timers in virtual time; nothing here reads a clock."""

    def __init__(self) -> None:
        self.now = 0.0  # seconds of virtual time
        self._queue: list[tuple[float, int, object]] = []
        self._sequence = itertools.count()
        self._armed: dict[int, float] = {}  # id(component) -> time its live entry is due

    def call_at(self, when: float, callback: Callable[[], object]) -> None:
        """Run `callback()` at virtual time `when` (never in the past); what it returns is
        the caller's (the simulator awaits a timeline event's coroutine)."""
        heapq.heappush(self._queue, (max(when, self.now), next(self._sequence), callback))

    def arm(self, component: Timed, handled: bool = False) -> None:
        """Read `component.get_timer()` and make sure its timer fires then.

        Call this after anything that may move a component's timer, with `handled=True`
        right after its `handle_timer(now)`. An earlier entry for the same component
        becomes stale and is skipped when it comes up.
        """
        when = component.get_timer()
        key = id(component)
        if when is None:
            self._armed.pop(key, None)
            return
        when = max(when, self.now + RESOLUTION) if handled else max(when, self.now)
        if self._armed.get(key) == when:
            return
        self._armed[key] = when
        heapq.heappush(self._queue, (when, next(self._sequence), component))

    def step(self, until: float) -> object | None:
        """Pop the next due item at or before `until`, advance `now`, and return it.

        Callbacks are returned as they are; for components, their timer is due and the
        caller must call `handle_timer(now)`. Returns None when nothing is due by `until`.
        """
        while self._queue:
            when, _, item = self._queue[0]
            if when > until:
                return None
            heapq.heappop(self._queue)
            if not callable(item):
                key = id(item)
                if self._armed.get(key) != when:
                    continue  # re-armed or disarmed since this entry was pushed
                del self._armed[key]
            self.now = when
            return item
        return None

    @property
    def pending(self) -> int:
        return len(self._queue)
