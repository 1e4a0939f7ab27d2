"""What the timeline figures draw, from a Result: the same for the HTML report and `--plot`.

The series are the Result's (bytes delivered to the client's application; the server's
smoothed RTT and congestion window, as the server's aioquic reported them). The paths are
the client addresses the server used, in turn: read from the qlog draft's path events in
the packet log where there is one (the events `quicmig --qlog-dir` writes too), else from
the migrations. Each migration gets a zoom window wide enough to show its validation.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from quicmig.core.datagram import format_address
from quicmig.core.qlogpaths import MIGRATION_STATE, TUPLE_ASSIGNED
from quicmig.core.results import MigrationResult, NetworkChange, Result
from quicmig.model.events import EventKind

MAX_POINTS = 4000  # per series in a figure: longer ones keep each bucket's extremes
ZOOM_MARGIN = 0.25  # of a migration's own span, added on both sides of its zoom window
MIN_ZOOM = 0.05  # seconds: the narrowest zoom window
SWITCHES = (EventKind.INTERFACE_SWITCH, EventKind.FAILOVER)
ARROW = re.compile(r"(\S+) -> (\S+)")


@dataclass(frozen=True, slots=True)
class PathSpan:
    """The server sent to `address` from `start` until `end` (seconds)."""

    start: float
    end: float
    address: str
    label: str  # the address, and the interface it belongs to where a change named it
    index: int  # 0: the handshake's path


@dataclass(frozen=True, slots=True)
class Mark:
    at: float  # seconds
    label: str
    kind: str  # "change" | "detected" | "challenge" | "validated"


@dataclass(frozen=True, slots=True)
class Zoom:
    title: str
    start: float  # seconds
    end: float
    migration: int


def decimate(points: Sequence[tuple[float, float]], limit: int = MAX_POINTS) -> list[list[float]]:
    """At most about `limit` points, keeping the first, last, lowest and highest of each
    bucket (so spikes and dips survive), as [times, values]."""
    if len(points) <= limit:
        kept = list(points)
    else:
        size = len(points) / (limit / 4)
        kept = []
        start = 0
        while start < len(points):
            end = min(len(points), int(start + size) or start + 1)
            bucket = points[start:end]
            chosen = {0, len(bucket) - 1}
            values = [v for _, v in bucket]
            chosen.add(values.index(min(values)))
            chosen.add(values.index(max(values)))
            kept += [bucket[i] for i in sorted(chosen)]
            start = end
    return [[round(t, 6) for t, _ in kept], [v for _, v in kept]]


def interfaces(changes: Sequence[NetworkChange]) -> tuple[str | None, dict[float, str]]:
    """The interface the client started on, and the one each switch moved it to, from the
    changes' own words (`client: wifi -> cellular`)."""
    first: str | None = None
    moved: dict[float, str] = {}
    for change in changes:
        if change.kind not in SWITCHES:
            continue
        found = ARROW.search(change.detail)
        if found is None:
            continue
        first = first or found.group(1)
        moved[change.at] = found.group(2).rstrip(",;")
    return first, moved


def paths(result: Result) -> list[PathSpan]:
    """The client addresses the server sent to, in turn, until the end of the run."""
    end = float(result.stats.get("run_seconds") or 0.0)
    moves: list[tuple[float, str]] = []  # (since, address)
    events = result.packets.path_events if result.packets is not None else ()
    addresses: dict[str, str] = {}
    for event in events:
        if event.get("name") != TUPLE_ASSIGNED:
            continue
        data = event.get("data", {})
        remote = data.get("tuple_remote", {})
        ip = remote.get("ip_v4") or remote.get("ip_v6")
        port = remote.get("port_v4") or remote.get("port_v6")
        if ip is None or port is None or str(data.get("tuple_id", "")).startswith("server"):
            continue
        address = format_address((str(ip), int(port)))
        addresses[str(data.get("tuple_id", ""))] = address
        moves.append((float(event["time"]) / 1e3, address))
    if not moves and (result.migrations or result.paths_seen):
        first = result.migrations[0].old_peer if result.migrations else result.paths_seen[0]
        moves = [(0.0, format_address(first))]
        moves += [(m.detected_at, format_address(m.new_peer)) for m in result.migrations]
    if moves:
        moves[0] = (0.0, moves[0][1])  # the handshake's path, from the start of the run
    start_iface, moved = interfaces(result.network_changes)

    def cause(since: float) -> float | None:
        for mig in result.migrations:  # event times went through milliseconds: not exact
            if abs(mig.detected_at - since) < 1e-9:
                return mig.network_change_at
        return None

    spans: list[PathSpan] = []
    seen: dict[str, int] = {}
    iface = start_iface
    for number, (since, address) in enumerate(moves):
        until = moves[number + 1][0] if number + 1 < len(moves) else max(end, since)
        changed_at = cause(since)
        if number and changed_at is not None and changed_at in moved:
            iface = moved[changed_at]
        label = f"{address} ({iface})" if iface else address
        index = seen.setdefault(address, len(seen))
        spans.append(PathSpan(since, until, address, label, index))
    return spans


def marks(result: Result) -> list[Mark]:
    """Network changes, and each migration's detection, challenge and validation."""
    out = [Mark(c.at, c.kind.value, "change") for c in result.network_changes]
    for index, mig in enumerate(result.migrations, 1):
        out.append(Mark(mig.detected_at, f"{index}: server sees {mig.observed.label}", "detected"))
        if mig.challenge_sent_at is not None:
            out.append(Mark(mig.challenge_sent_at, f"{index}: PATH_CHALLENGE", "challenge"))
        if mig.validated_at is not None:
            out.append(Mark(mig.validated_at, f"{index}: PATH_RESPONSE", "validated"))
    return out


def zoom_of(mig: MigrationResult, index: int) -> Zoom:
    """A window around one migration: its change (or detection) to its validation."""
    start = mig.network_change_at if mig.network_change_at is not None else mig.detected_at
    end = max(
        t for t in (mig.validated_at, mig.challenge_sent_at, mig.detected_at) if t is not None
    )
    if mig.interruption is not None:
        end = max(end, start + mig.interruption)
    margin = max((end - start) * ZOOM_MARGIN, MIN_ZOOM / 2)
    return Zoom(f"Migration {index + 1}", max(0.0, start - margin), end + margin, index)


def migration_states(result: Result) -> list[dict[str, Any]]:
    """The migration_state_updated events of the packet log, as (seconds, state) pairs."""
    if result.packets is None:
        return []
    return [
        {"at": float(e["time"]) / 1e3, "state": e.get("data", {}).get("new", "")}
        for e in result.packets.path_events
        if e.get("name") == MIGRATION_STATE
    ]


def chart_data(result: Result) -> dict[str, Any]:
    """Everything the HTML report's timeline script draws (JSON-able)."""
    series = result.series
    end = float(result.stats.get("run_seconds") or 0.0)
    last = [s[-1][0] for s in (series.delivered, series.rtt, series.cwnd) if s]
    x1 = max([end, *last]) or 1.0
    panels: list[dict[str, Any]] = [
        {
            "key": "delivered",
            "label": "bytes delivered to the client's application",
            "unit": "MB",
            "scale": 1e-6,
            "step": True,
            "floating": True,
            "data": decimate([(t, float(v)) for t, v in series.delivered]),
        },
        {
            "key": "rtt",
            "label": "server's smoothed RTT (its aioquic's estimate)",
            "unit": "ms",
            "scale": 1e3,
            "step": False,
            "floating": False,
            "data": decimate(series.rtt),
        },
        {
            "key": "cwnd",
            "label": "server's congestion window (its aioquic's)",
            "unit": "kB",
            "scale": 1e-3,
            "step": True,
            "floating": False,
            "data": decimate([(t, float(v)) for t, v in series.cwnd]),
        },
    ]
    return {
        "x0": 0.0,
        "x1": x1,
        "clock": "simulated" if result.backend == "sim" else "real",
        # A capture has no series: its figure is the paths and the marks alone.
        "panels": [p for p in panels if p["data"][0]],
        "paths": [
            {"from": p.start, "to": p.end, "label": p.label, "index": p.index}
            for p in paths(result)
        ],
        "marks": [{"at": m.at, "label": m.label, "kind": m.kind} for m in marks(result)],
        "bands": [
            {"from": m.detected_at, "to": m.validated_at, "label": f"{i + 1}: validating"}
            for i, m in enumerate(result.migrations)
            if m.validated_at is not None
        ],
        "zooms": [
            {"title": z.title, "from": z.start, "to": z.end, "migration": z.migration}
            for z in (zoom_of(m, i) for i, m in enumerate(result.migrations))
        ],
        "states": migration_states(result),
    }
