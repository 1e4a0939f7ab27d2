"""Observe what an aioquic connection really puts on and takes off the wire.

aioquic reports every packet it sends and every packet it authenticates as qlog events. A
`TapTrace` receives those events with a clock of our choosing (virtual time in the
simulator), keeps them for a qlog file if asked, and hands packets to an observer together
with the UDP address they travelled to or from, which the endpoint supplies. This is the
only way the tracker learns anything: from frames aioquic wrote or parsed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from aioquic.quic.logger import QLOG_VERSION, QuicLogger, QuicLoggerTrace

from quicmig.core.datagram import Address

if TYPE_CHECKING:
    from quicmig.core.tracker import MigrationTracker

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Packet:
    """One QUIC packet as aioquic logged it, with the UDP address it went to or came from."""

    at: float  # seconds
    peer: Address
    number: int
    packet_type: str  # "initial", "handshake", "1RTT", ...
    dcid: str  # hex
    frames: tuple[dict[str, Any], ...]
    length: int  # bytes
    local: Address | None = None  # the server's address it reached or left; None: its first


class PacketObserver(Protocol):
    def on_packet_received(self, packet: Packet) -> None: ...

    def on_packets_sent(self, packets: list[Packet]) -> None: ...

    def on_recovery(self, at: float, name: str, data: dict[str, Any]) -> None: ...


class TapTrace(QuicLoggerTrace):
    """A qlog trace stamped by `clock`, forwarding packets to an optional observer."""

    def __init__(
        self,
        *,
        is_client: bool,
        odcid: bytes,
        clock: Clock,
        keep: bool,
        observer: PacketObserver | None,
    ) -> None:
        super().__init__(is_client=is_client, odcid=odcid)
        self.clock = clock
        self.keep = keep
        self.observer = observer
        self.peer: Address = ("", 0)  # set by the endpoint before receive_datagram()
        self.local: Address | None = None  # likewise: the server address it arrived at
        # Our own list, not aioquic's private one: only the public to_dict() is used.
        self.events: list[dict[str, Any]] = []
        self._received: list[tuple[float, dict[str, Any]]] = []
        self._sent_groups: list[list[tuple[float, dict[str, Any]]]] = []
        self._group_datagrams: list[int] = []
        self._unflushed: list[tuple[float, dict[str, Any]]] = []

    def log_event(self, *, category: str, event: str, data: dict[str, Any]) -> None:
        now = self.clock()
        if self.keep:
            self.events.append({"data": data, "name": f"{category}:{event}", "time": now * 1e3})
        if self.observer is None:
            return
        if event == "packet_sent":
            self._unflushed.append((now, data))
        elif event == "datagrams_sent":
            # aioquic logs a flush's packets, then its datagrams, all for one address.
            if self._unflushed:
                self._sent_groups.append(self._unflushed)
                self._group_datagrams.append(1)
                self._unflushed = []
            elif self._group_datagrams:
                self._group_datagrams[-1] += 1
        elif event == "packet_received":
            # The frames list is filled in while aioquic parses the payload: read it later.
            self._received.append((now, data))
        elif category == "recovery":
            self.observer.on_recovery(now, event, data)

    def after_receive(self) -> None:
        """Call after `receive_datagram()`: report the packets it authenticated."""
        received, self._received = self._received, []
        if self.observer is not None:
            for at, data in received:
                self.observer.on_packet_received(_packet(at, self.peer, data, self.local))

    def after_send(
        self, destinations: list[Address], sources: list[Address | None] | None = None
    ) -> None:
        """Call after `datagrams_to_send()` with the address of each returned datagram
        (and, for a server with several addresses, the one each leaves from)."""
        groups, counts = self._sent_groups, self._group_datagrams
        self._sent_groups, self._group_datagrams = [], []
        if self.observer is None:
            return
        index = 0
        for group, count in zip(groups, counts, strict=True):
            peer = destinations[index]
            local = sources[index] if sources is not None else None
            index += count
            self.observer.on_packets_sent([_packet(at, peer, data, local) for at, data in group])

    def to_dict(self) -> dict[str, Any]:
        """The trace as qlog, with the qlog draft's path events of what the server observed
        (`quicmig.core.qlogpaths`: aioquic 1.7 logs none) among aioquic's own events."""
        trace = super().to_dict()
        trace["events"] = self.events
        tracker = _tracker_of(self.observer)
        if tracker is not None and self.events:
            from quicmig.core.qlogpaths import path_events

            start = self.events[0]["time"] / 1e3
            added = path_events(tracker, None, start)
            trace["events"] = sorted([*self.events, *added], key=lambda e: float(e["time"]))
        trace["common_fields"]["time_format"] = "relative"
        trace["common_fields"]["reference_time"] = 0
        return trace


def _tracker_of(observer: object) -> MigrationTracker | None:
    """The MigrationTracker behind an observer (recorders pass packets on as `inner`)."""
    from quicmig.core.tracker import MigrationTracker

    for _ in range(4):
        if isinstance(observer, MigrationTracker):
            return observer
        observer = getattr(observer, "inner", None)
    return None


def _packet(at: float, peer: Address, data: dict[str, Any], local: Address | None = None) -> Packet:
    header = data["header"]
    return Packet(
        at=at,
        peer=peer,
        number=header.get("packet_number", -1),
        packet_type=header["packet_type"],
        dcid=header.get("dcid", ""),
        frames=tuple(data["frames"]),
        length=data["raw"]["length"],
        local=local,
    )


class TapLogger(QuicLogger):
    """Makes every connection's TapTrace and keeps them (when `keep`) for write_qlogs().

    aioquic calls `start_trace()` for a connection created with this logger in its
    configuration: that trace has no observer. A server gives each accepted connection a
    trace with its own observer instead: `trace(..., observer=...)`, handed to aioquic through
    a `OneTraceLogger` (see ServerEndpoint).

    Time is an argument: the endpoint sets `now` (seconds) before each call into aioquic,
    and every event logged during that call carries it.
    """

    def __init__(self, keep: bool) -> None:
        super().__init__()
        self.now = 0.0
        self.keep = keep
        self.traces: list[TapTrace] = []  # kept (when `keep`) for write_qlogs()

    def start_trace(self, is_client: bool, odcid: bytes) -> QuicLoggerTrace:
        return self.trace(is_client=is_client, odcid=odcid, observer=None)

    def trace(self, *, is_client: bool, odcid: bytes, observer: PacketObserver | None) -> TapTrace:
        """A new trace on this logger's clock, feeding `observer`."""
        trace = TapTrace(
            is_client=is_client,
            odcid=odcid,
            clock=lambda: self.now,
            keep=self.keep,
            observer=observer,
        )
        if self.keep:
            self.traces.append(trace)
        return trace

    def end_trace(self, trace: QuicLoggerTrace) -> None:
        """Traces stay in memory until write_qlogs()."""

    def discard(self, trace: TapTrace | None) -> None:
        """Forget a trace whose connection was never kept (no qlog for it)."""
        if trace is not None and self.traces and self.traces[-1] is trace:  # the newest
            self.traces.pop()

    def to_dict(self) -> dict[str, Any]:
        return {
            "qlog_format": "JSON",
            "qlog_version": QLOG_VERSION,
            "traces": [trace.to_dict() for trace in self.traces],
        }

    def write_qlogs(self, directory: Path, prefix: str) -> list[Path]:
        """Write one .qlog file per connection; return their paths."""
        paths = []
        for index, trace in enumerate(self.traces):
            path = directory / f"{prefix}-{index}.qlog"
            document = {
                "qlog_format": "JSON",
                "qlog_version": QLOG_VERSION,
                "title": prefix,
                "traces": [trace.to_dict()],
            }
            path.write_text(json.dumps(document))
            paths.append(path)
        return paths


class OneTraceLogger(QuicLogger):
    """The quic_logger of one connection's configuration: hands aioquic a trace made
    beforehand (with its observer), so nothing is configured after the connection exists."""

    def __init__(self, trace: TapTrace, base: TapLogger) -> None:
        super().__init__()
        self._trace = trace
        self._base = base

    def start_trace(self, is_client: bool, odcid: bytes) -> QuicLoggerTrace:
        return self._trace

    def end_trace(self, trace: QuicLoggerTrace) -> None:
        self._base.end_trace(trace)
