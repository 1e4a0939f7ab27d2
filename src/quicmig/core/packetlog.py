"""The packets around each migration, as the server's side observed them: a Result's packet log.

A whole run is tens of thousands of packets; a report needs the few hundred around each
migration (or, without one, around each network change). `PacketRecorder` sits between the
qlog tap and the connection's `MigrationTracker`, passes every call on unchanged and keeps a
copy of each packet; `packet_log()` then cuts the windows the sequence diagrams draw, with
what a diagram needs to know about the packets before each window (the addresses already
seen, the connection IDs in use). Nothing here decides what a migration is: the windows are
cut around the migrations the judge measured from the tracker.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from quicmig.core.datagram import Address, format_address, parse_address
from quicmig.core.results import MigrationResult, NetworkChange
from quicmig.core.tap import Packet, PacketObserver
from quicmig.core.tracker import is_probing
from quicmig.model.events import EventKind

AFTER = 8  # records kept after a migration settles (validated, or given up)
QUIET = 1.5  # seconds: how far a window without a migration reaches after its network change
MAX_RECORDS = 1500  # per window: the first and last halves are kept beyond this
MAX_WINDOWS = 12  # windows per log
# Frame fields worth keeping (the rest, e.g. stateless reset tokens, only make the log long)
FRAME_FIELDS = (
    "data",
    "sequence_number",
    "retire_prior_to",
    "connection_id",
    "stream_id",
    "offset",
    "length",
    "fin",
    "error_code",
    "reason",
)
ACK_RANGES = 4  # acknowledged ranges kept per ACK frame


@dataclass(frozen=True, slots=True)
class PacketRecord:
    """One packet as the server's aioquic saw it: received (`inbound`) or sent."""

    index: int  # order of observation in the whole run
    inbound: bool  # client -> server
    packet: Packet  # time, peer address as seen by the server, type, number, DCID, frames
    client_socket: Address | None  # inbound only, where known: the client socket that sent it
    lost_at: float | None = None  # outbound only: when aioquic declared it lost

    @property
    def at(self) -> float:
        return self.packet.at

    @property
    def probing(self) -> bool:
        """RFC 9000 section 9.1: only PATH_CHALLENGE/RESPONSE, NEW_CONNECTION_ID, PADDING."""
        return self.packet.packet_type == "1RTT" and is_probing(self.packet)

    def frame_kinds(self) -> tuple[str, ...]:
        return tuple(frame["frame_type"] for frame in self.packet.frames)

    def to_dict(self) -> dict[str, Any]:
        packet = self.packet
        return {
            "index": self.index,
            "at": packet.at,
            "inbound": self.inbound,
            "peer": format_address(packet.peer),
            "local": format_address(packet.local) if packet.local is not None else None,
            "client_socket": (
                format_address(self.client_socket) if self.client_socket is not None else None
            ),
            "packet_type": packet.packet_type,
            "number": packet.number,
            "dcid": packet.dcid,
            "length": packet.length,
            "frames": [dict(frame) for frame in packet.frames],
            "lost_at": self.lost_at,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PacketRecord:
        local, socket = data.get("local"), data.get("client_socket")
        packet = Packet(
            at=data["at"],
            peer=parse_address(data["peer"]),
            number=data.get("number", -1),
            packet_type=data.get("packet_type", "1RTT"),
            dcid=data.get("dcid", ""),
            frames=tuple(dict(f) for f in data.get("frames", [])),
            length=data.get("length", 0),
            local=parse_address(local) if local else None,
        )
        return cls(
            data["index"],
            bool(data["inbound"]),
            packet,
            parse_address(socket) if socket else None,
            data.get("lost_at"),
        )


def compact_frame(frame: dict[str, Any]) -> dict[str, Any]:
    """A frame with the fields a diagram shows (ACKs keep their first ranges)."""
    kept = {"frame_type": frame["frame_type"]}
    kept.update({k: frame[k] for k in FRAME_FIELDS if k in frame})
    if "acked_ranges" in frame:
        kept["acked_ranges"] = [list(r) for r in frame["acked_ranges"][:ACK_RANGES]]
    return kept


@dataclass(slots=True)
class PacketRecorder:
    """A PacketObserver that forwards to the connection's tracker and keeps each packet.

    `socket_of_arriving()` (the simulator's wire tap) names the client socket that sent the
    datagram being received; None where nobody watches the client side."""

    inner: PacketObserver
    socket_of_arriving: Callable[[], Address | None] = lambda: None
    records: list[PacketRecord] = field(default_factory=list)
    lost: dict[tuple[str, int], float] = field(default_factory=dict)  # (type, number) -> at

    def on_packet_received(self, packet: Packet) -> None:
        self.inner.on_packet_received(packet)
        socket = self.socket_of_arriving()
        if socket is None and self.records and self.records[-1].inbound:
            # Coalesced packets share a datagram: the first one took the wire record.
            last = self.records[-1]
            if last.at == packet.at and last.packet.peer == packet.peer:
                socket = last.client_socket
        self.records.append(PacketRecord(len(self.records), True, packet, socket))

    def on_packets_sent(self, packets: list[Packet]) -> None:
        self.inner.on_packets_sent(packets)
        for packet in packets:
            self.records.append(PacketRecord(len(self.records), False, packet, None))

    def on_recovery(self, at: float, name: str, data: dict[str, Any]) -> None:
        self.inner.on_recovery(at, name, data)
        if name == "packet_lost":
            self.lost[(str(data.get("type", "")), int(data.get("packet_number", -1)))] = at

    def lost_at(self, record: PacketRecord) -> float | None:
        """When aioquic declared this sent packet lost, if it did."""
        if record.inbound:
            return None
        return self.lost.get((record.packet.packet_type, record.packet.number))

    def finished(self) -> list[PacketRecord]:
        """Every record, with the time each sent packet was declared lost."""
        return [
            PacketRecord(r.index, r.inbound, r.packet, r.client_socket, self.lost_at(r))
            for r in self.records
        ]


@dataclass(frozen=True, slots=True)
class PacketWindow:
    """A stretch of the run a sequence diagram draws: from `start` (a network change, or the
    detection) until `settle` (validation), plus a few packets after."""

    title: str
    start: float  # seconds
    settle: float  # seconds
    migration: int | None  # index into the Result's migrations
    change: NetworkChange | None
    context: tuple[PacketRecord, ...]  # the last 1-RTT packet each way before `start`
    records: tuple[PacketRecord, ...]  # every packet from `start` on, in observation order
    seen_in: tuple[Address, ...]  # addresses packets had arrived from before the window
    seen_out: tuple[Address, ...]  # addresses packets had been sent to before the window
    dcid_in: str  # the DCID of the client's last 1-RTT packet before the window
    dcid_out: str  # ... and of the server's
    omitted: int = 0  # records dropped from the middle of a very long window

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "start": self.start,
            "settle": self.settle,
            "migration": self.migration,
            "change": self.change.to_dict() if self.change is not None else None,
            "context": [r.to_dict() for r in self.context],
            "records": [r.to_dict() for r in self.records],
            "seen_in": [format_address(a) for a in self.seen_in],
            "seen_out": [format_address(a) for a in self.seen_out],
            "dcid_in": self.dcid_in,
            "dcid_out": self.dcid_out,
            "omitted": self.omitted,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PacketWindow:
        change = data.get("change")
        return cls(
            title=data["title"],
            start=data["start"],
            settle=data["settle"],
            migration=data.get("migration"),
            change=NetworkChange.from_dict(change) if change else None,
            context=tuple(PacketRecord.from_dict(r) for r in data.get("context", [])),
            records=tuple(PacketRecord.from_dict(r) for r in data.get("records", [])),
            seen_in=tuple(parse_address(a) for a in data.get("seen_in", [])),
            seen_out=tuple(parse_address(a) for a in data.get("seen_out", [])),
            dcid_in=data.get("dcid_in", ""),
            dcid_out=data.get("dcid_out", ""),
            omitted=data.get("omitted", 0),
        )


@dataclass(frozen=True, slots=True)
class PacketLog:
    """The windows of one connection's packets a report draws, and what they need."""

    source: str  # "tap": the server's own aioquic; "capture": a decrypted pcap
    total: int  # packets observed in the whole run
    windows: tuple[PacketWindow, ...]
    cid_labels: dict[str, int]  # DCID (hex) -> its sequence number, from NEW_CONNECTION_ID
    nat: bool  # a NAT between client and server: the diagram shows both addresses
    # qlog draft path events (quicmig.core.qlogpaths) of the same connection
    path_events: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "total": self.total,
            "nat": self.nat,
            "cid_labels": dict(self.cid_labels),
            "windows": [w.to_dict() for w in self.windows],
            "path_events": [dict(e) for e in self.path_events],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PacketLog:
        return cls(
            source=data.get("source", "tap"),
            total=data.get("total", 0),
            windows=tuple(PacketWindow.from_dict(w) for w in data.get("windows", [])),
            cid_labels={str(k): int(v) for k, v in data.get("cid_labels", {}).items()},
            nat=bool(data.get("nat", False)),
            path_events=tuple(dict(e) for e in data.get("path_events", [])),
        )


def cid_labels(records: Sequence[PacketRecord]) -> dict[str, int]:
    """Sequence numbers of connection IDs, from the NEW_CONNECTION_ID frames observed."""
    labels: dict[str, int] = {}
    first: dict[bool, str] = {}
    for record in records:
        for frame in record.packet.frames:
            if frame["frame_type"] == "new_connection_id" and "connection_id" in frame:
                labels[frame["connection_id"]] = frame["sequence_number"]
        if record.packet.packet_type == "1RTT" and record.inbound not in first:
            first[record.inbound] = record.packet.dcid
    for dcid in first.values():
        labels.setdefault(dcid, 0)  # the handshake's connection ID has sequence number 0
    return labels


@dataclass(frozen=True, slots=True)
class Focus:
    title: str
    start: float  # seconds
    settle: float  # seconds
    migration: int | None
    change: NetworkChange | None


def foci(
    records: Sequence[PacketRecord],
    migrations: Sequence[MigrationResult],
    changes: Sequence[NetworkChange],
    extra: Sequence[tuple[str, float]] = (),
    limit: int = MAX_WINDOWS,
) -> list[Focus]:
    """What to draw: each migration, else each network change, else each `extra` instant
    (title, seconds: an attacker's first copy)."""
    out: list[Focus] = []
    for index, mig in enumerate(migrations):
        start = mig.network_change_at if mig.network_change_at is not None else mig.detected_at
        settle = mig.validated_at or mig.challenge_sent_at or mig.detected_at
        change = next((c for c in changes if c.at == mig.network_change_at), None)
        title = f"Migration {index + 1}: {mig.observed.label}"
        out.append(Focus(title, start, settle, index, change))
    if not out:
        for change in changes:
            settle = change.at + QUIET
            if change.kind is EventKind.CID_ROTATION:
                settle = _first_new_dcid(records, change.at) or settle
            out.append(
                Focus(f"{change.kind.value} at {change.at:g} s", change.at, settle, None, change)
            )
    if not out:
        out = [Focus(title, at, at + QUIET / 3, None, None) for title, at in extra]
    return out[:limit]


def _first_new_dcid(records: Sequence[PacketRecord], after: float) -> float | None:
    last = ""
    for record in records:
        packet = record.packet
        if not record.inbound or packet.packet_type != "1RTT":
            continue
        if record.at >= after and last and packet.dcid != last:
            return record.at
        last = packet.dcid
    return None


def window(
    records: Sequence[PacketRecord], focus: Focus, max_records: int = MAX_RECORDS
) -> PacketWindow:
    """The packets of `focus`: from its start until a few after it settles."""
    times = [r.at for r in records]
    begin = bisect.bisect_left(times, focus.start)
    settled = bisect.bisect_right(times, focus.settle)
    end = min(len(records), settled + AFTER)
    seen_in: dict[Address, None] = {}
    seen_out: dict[Address, None] = {}
    dcid = {True: "", False: ""}
    last: dict[bool, PacketRecord] = {}
    for record in records[:begin]:
        (seen_in if record.inbound else seen_out)[record.packet.peer] = None
        if record.packet.packet_type == "1RTT":
            dcid[record.inbound] = record.packet.dcid
            last[record.inbound] = record
    context = tuple(sorted(last.values(), key=lambda r: r.index))
    inside = list(records[begin:end])
    omitted = 0
    if len(inside) > max_records:
        half = max_records // 2
        omitted = len(inside) - 2 * half
        inside = inside[:half] + inside[-half:]
    return PacketWindow(
        title=focus.title,
        start=focus.start,
        settle=focus.settle,
        migration=focus.migration,
        change=focus.change,
        context=context,
        records=tuple(inside),
        seen_in=tuple(seen_in),
        seen_out=tuple(seen_out),
        dcid_in=dcid[True],
        dcid_out=dcid[False],
        omitted=omitted,
    )


def packet_log(
    records: Sequence[PacketRecord],
    migrations: Sequence[MigrationResult],
    changes: Sequence[NetworkChange],
    *,
    source: str,
    nat: bool,
    path_events: Sequence[dict[str, Any]] = (),
    extra: Sequence[tuple[str, float]] = (),
    limit: int = MAX_WINDOWS,
) -> PacketLog:
    """The log a report draws: one window per migration (else per network change)."""
    compact = [
        PacketRecord(
            r.index,
            r.inbound,
            Packet(
                r.packet.at,
                r.packet.peer,
                r.packet.number,
                r.packet.packet_type,
                r.packet.dcid,
                tuple(compact_frame(f) for f in r.packet.frames),
                r.packet.length,
                r.packet.local,
            ),
            r.client_socket,
            r.lost_at,
        )
        for r in records
    ]
    return PacketLog(
        source=source,
        total=len(records),
        windows=tuple(
            window(compact, focus) for focus in foci(compact, migrations, changes, extra, limit)
        ),
        cid_labels=cid_labels(records),
        nat=nat,
        path_events=tuple(path_events),
    )
