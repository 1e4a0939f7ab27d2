"""How a download lived through the network's changes, the same way for every transport.

What an application sees, from its own deliveries (`times`, `totals`) and the changes the
network really made, whatever carried the bytes (QUIC, TCP, MPTCP): did one connection
carry it all, how many handshakes it took, the longest gap in delivered bytes, and for each
change the interruption it caused and the time from the change to the first byte after it.

The interruption of a change is the longest gap between two deliveries that spans the
change or begins within `MOVE_WINDOW` of it: a break does not stop delivery at once, the
packets already past the point of the break still arrive (up to a one-way delay plus a
queue: on the phone topology's cellular link 60 ms + 100 packets at 10 Mbit/s, 180 ms).
Its end is when delivery resumed: `resume_s` is that time minus the change's.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from typing import Any

from quicmig.core.results import NetworkChange
from quicmig.model.events import EventKind

MOVE_WINDOW = 0.5  # seconds after a change within which a gap that begins is the change's
NOT_MOVES = (EventKind.CID_ROTATION, EventKind.MIGRATION_REFUSED)  # the path did not change


def longest_gap(times: Sequence[float], end: float | None, run_end: float) -> float | None:
    """The longest gap between consecutive deliveries from the first to the last; a
    download that never ended also counts its silence from the last one to `run_end`."""
    if not times:
        return None
    gaps = [b - a for a, b in itertools.pairwise(times)]
    if end is None:
        gaps.append(run_end - times[-1])
    return max(gaps, default=0.0)


def around(
    times: Sequence[float], at: float, completed_at: float | None, run_end: float
) -> tuple[float | None, float | None]:
    """(interruption, resume) in seconds for a change at `at`; (None, None) when the
    download was over before it (or had not begun); resume None: nothing came after it
    (a download that never ended counts its last silence, up to `run_end`, as a gap)."""
    if completed_at is not None and completed_at <= at:
        return None, None
    after = bisect.bisect_right(times, at)  # the first delivery after the change
    if after == 0:
        return None, None  # nothing delivered before the change: no gap to speak of
    gaps: list[tuple[float, float | None]] = []  # (length, when delivery resumed)
    for index in range(after, len(times)):
        if index > after and times[index - 1] > at + MOVE_WINDOW:
            break
        gaps.append((times[index] - times[index - 1], times[index]))
    if completed_at is None and times[-1] <= at + MOVE_WINDOW:
        gaps.append((run_end - times[-1], None))
    if not gaps:
        return None, None  # the last delivery came before the change: the download was over
    length, resumed = max(gaps, key=lambda gap: gap[0])
    return length, None if resumed is None else resumed - at


def continuity(
    times: Sequence[float],
    changes: Sequence[NetworkChange],
    *,
    completed_at: float | None,
    run_end: float,
    connections: int,
    handshakes: int,
    refetched: int,
    retransmitted: int | None,
) -> dict[str, Any]:
    """The figures above as a JSON-ready dict (Result.stats["continuity"])."""
    moves = []
    for change in changes:
        if change.kind in NOT_MOVES:
            continue
        interruption, resume = around(times, change.at, completed_at, run_end)
        moves.append(
            {
                "at": change.at,
                "kind": change.kind.value,
                "interruption_s": interruption,
                "resume_s": resume,
            }
        )
    first = next((m for m in moves if m["interruption_s"] is not None), None)
    return {
        "survived": connections == 1 and completed_at is not None,
        "connections": connections,
        "handshakes": handshakes,
        "longest_gap_s": longest_gap(times, completed_at, run_end),
        "interruption_s": first["interruption_s"] if first else None,
        "resume_s": first["resume_s"] if first else None,
        "refetched_bytes": refetched,
        "retransmitted_bytes": retransmitted,
        "completed_at": completed_at,
        "moves": moves,
    }
