"""The one run pipeline: a Scenario in, a Result out, whatever the backend.

```
 scenario ─▶ expand_timeline ─▶ driver.unsupported(event)? ─▶ plan
                                                               │
 backend.run(scenario, plan): the endpoints, the clock, and driver.apply(event) at its time
                                                               │
 Observation ─▶ judge(expectations(scenario), observation) ─▶ Result
```

A backend is where the endpoints run and how time passes: `quicmig.sim` (virtual time,
in-process network) or `quicmig.live` (real UDP; the network between the endpoints is a
driver: the proxy, the namespace lab, or nothing). The driver says which events it can
apply; those it cannot become unsupported checks here, for every backend alike.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from quicmig.core.judge import judge, unsupported
from quicmig.core.observation import Observation, expectations
from quicmig.core.results import Check, NetworkChange, Result
from quicmig.model.events import TimelineEvent, expand_timeline, kind_of
from quicmig.model.scenario import Scenario


@dataclass(frozen=True, slots=True)
class RunOptions:
    seed: int = 1
    qlog_dir: Path | None = None  # one qlog per connection
    pcap: Path | None = None  # what the server's side of the network carried
    keylog: Path | None = None  # TLS secrets for the pcap (SSLKEYLOGFILE format)
    progress: Callable[[float, float], None] | None = None  # (now, duration) in seconds


class Driver(Protocol):
    """Applies timeline events to a network (the simulator's, the proxy, the lab)."""

    name: str  # the Result's `backend`

    def unsupported(self, event: TimelineEvent) -> str | None:
        """None if `apply(event)` can do it, else the reason it cannot (one line)."""
        ...

    async def apply(self, event: TimelineEvent, now: float) -> NetworkChange:
        """Do `event` now (`now`: the run's clock, seconds); return what was done."""
        ...


class Backend(Protocol):
    """Runs the endpoints of a scenario on a network, applying `plan` through its driver."""

    @property
    def driver(self) -> Driver: ...

    def unsupported_settings(self, scenario: Scenario) -> Sequence[Check]:
        """Scenario settings besides the timeline this backend cannot apply."""
        ...

    async def run(
        self, scenario: Scenario, plan: Sequence[TimelineEvent], options: RunOptions
    ) -> Observation: ...


def plan(scenario: Scenario, driver: Driver) -> tuple[list[TimelineEvent], list[Check]]:
    """The events `driver` will apply, and an unsupported check for each of the others."""
    events: list[TimelineEvent] = []
    skipped: list[Check] = []
    for event in expand_timeline(scenario.timeline, scenario.duration):
        reason = driver.unsupported(event)
        if reason is None:
            events.append(event)
        else:
            name = f"event {kind_of(event).value} at {event.when}"
            skipped.append(unsupported(name, f"{driver.name}: {reason}"))
    return events, skipped


async def execute(scenario: Scenario, backend: Backend, options: RunOptions) -> Result:
    """Run `scenario` on `backend` and judge what it observed."""
    started = time.perf_counter()
    events, skipped = plan(scenario, backend.driver)
    settings = list(backend.unsupported_settings(scenario))
    observation = await backend.run(scenario, events, options)
    wall = {"seconds": time.perf_counter() - started, **observation.wall}
    observation = replace(
        observation, unsupported=[*settings, *skipped, *observation.unsupported], wall=wall
    )
    return judge(expectations(scenario), observation)


def run(scenario: Scenario, backend: Backend, options: RunOptions | None = None) -> Result:
    """`execute()` on a fresh event loop (the simulator never waits on it)."""
    return asyncio.run(execute(scenario, backend, options or RunOptions()))
