"""The rows of a packet sequence diagram, from one window of a Result's packet log.

A busy download puts hundreds of packets on the wire per round trip, so a diagram shows the
packets that tell the story one per row (a new address, a new connection ID, PATH_CHALLENGE,
PATH_RESPONSE, NEW_CONNECTION_ID, ...) and folds the ordinary traffic between them into one
row per direction and address (38 STREAM packets in a row). Every row is a packet, or a run of
packets, that the server sent or received; every address is the one the server saw. The
terminal diagram (`quicmig demo`) and the HTML report draw the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from quicmig.core.datagram import Address
from quicmig.core.packetlog import PacketRecord, PacketWindow
from quicmig.core.results import MigrationResult, NetworkChange

# Frames that make a packet worth its own row.
KEY_FRAMES = frozenset(
    {
        "path_challenge",
        "path_response",
        "new_connection_id",
        "retire_connection_id",
        "connection_close",
        "handshake_done",
    }
)
FRAME_NAMES = {"ack": "ACK", "stream": "STREAM", "ping": "PING", "padding": "PADDING"}
MAX_ROWS = 24  # rows per terminal diagram before the middle is folded away
TIMES = "\u00d7"  # the multiplication sign, as in "x38 packets"


@dataclass(frozen=True, slots=True)
class PacketRow:
    records: tuple[PacketRecord, ...]  # one packet, or a folded run of ordinary ones
    lost: int  # of these, sent packets that aioquic later declared lost
    note: str = ""
    new_dcid: bool = False  # the first packet this way with another DCID
    context: bool = False  # before the window: the last packet each way on the old path

    @property
    def first(self) -> PacketRecord:
        return self.records[0]

    @property
    def folded(self) -> bool:
        return len(self.records) > 1


@dataclass(frozen=True, slots=True)
class ChangeRow:
    change: NetworkChange


@dataclass(frozen=True, slots=True)
class GapRow:
    hidden: int  # rows folded away to keep the diagram short


Row = PacketRow | ChangeRow | GapRow


def build_rows(
    window: PacketWindow,
    migrations: Sequence[MigrationResult],
    changes: Sequence[NetworkChange],
    max_rows: int | None = MAX_ROWS,
) -> list[Row]:
    """The rows of one diagram, in the order the server observed them."""
    seen_in: set[Address] = set(window.seen_in)
    seen_out: set[Address] = set(window.seen_out)
    last_dcid = {True: window.dcid_in, False: window.dcid_out}

    def lost(record: PacketRecord) -> bool:
        return record.lost_at is not None

    rows: list[Row] = [PacketRow((r,), int(lost(r)), context=True) for r in window.context]
    pending: dict[tuple[bool, Address], list[PacketRecord]] = {}

    def flush() -> None:
        for run in pending.values():
            rows.append(PacketRow(tuple(run), sum(lost(r) for r in run)))
        pending.clear()

    # Changes since the previous migration settled belong to this story (blackhole: the
    # link dies at 1 s, the client fails over at 2 s).
    mig = migrations[window.migration] if window.migration is not None else None
    previous = [m.detected_at for m in migrations if m.detected_at < window.start]
    since = min([window.start, *(r.at for r in window.context)])
    since = min(since, max([0.0, *previous]) + 1e-9) if mig is not None else since
    pending_changes = [c for c in changes if since <= c.at]
    for change in [c for c in pending_changes if c.at < window.start]:
        rows.insert(_position(rows, change.at), ChangeRow(change))
        pending_changes.remove(change)
    for record in window.records:
        while pending_changes and pending_changes[0].at <= record.at:
            flush()
            rows.append(ChangeRow(pending_changes.pop(0)))
        packet = record.packet
        notes = []
        if record.inbound and packet.peer not in seen_in:
            notes.append("new address")
        if not record.inbound and packet.peer not in seen_out:
            notes.append("first packet there")
        if (
            mig is not None
            and record.inbound
            and record.at == mig.detected_at
            and packet.peer == mig.new_peer
            and not record.probing
        ):
            notes = ["migration detected"]
        new_dcid = False
        if packet.packet_type == "1RTT":
            new_dcid = bool(last_dcid[record.inbound]) and packet.dcid != last_dcid[record.inbound]
            last_dcid[record.inbound] = packet.dcid
        (seen_in if record.inbound else seen_out).add(packet.peer)
        validated = mig is not None and record.at == mig.validated_at
        if "path_response" in record.frame_kinds() and validated:
            notes.append("path validated")
        if record.probing:
            notes.append("probing")
        if notes or new_dcid or KEY_FRAMES.intersection(record.frame_kinds()):
            flush()
            rows.append(PacketRow((record,), int(lost(record)), ", ".join(notes), new_dcid))
        else:
            pending.setdefault((record.inbound, packet.peer), []).append(record)
    flush()
    end_time = window.records[-1].at if window.records else window.settle
    rows += [ChangeRow(c) for c in pending_changes if c.at <= end_time]
    return _shorten(rows, max_rows) if max_rows is not None else rows


def _position(rows: list[Row], at: float) -> int:
    for index, row in enumerate(rows):
        if isinstance(row, PacketRow) and row.first.at > at:
            return index
    return len(rows)


def _shorten(rows: list[Row], max_rows: int) -> list[Row]:
    """Fold the middle of a long diagram, keeping every key packet near both ends."""
    if len(rows) <= max_rows:
        return rows
    head, tail = max_rows * 2 // 3, max_rows // 3 - 1
    return [*rows[:head], GapRow(len(rows) - head - tail), *rows[-tail:]]


def frame_text(frame: dict[str, object]) -> str:
    kind = str(frame["frame_type"])
    match kind:
        case "path_challenge" | "path_response":
            return f"{kind.upper()}({str(frame.get('data', ''))[:8]})"
        case "new_connection_id" | "retire_connection_id":
            return f"{kind.upper()}(#{frame.get('sequence_number')})"
        case _:
            return FRAME_NAMES.get(kind, kind.upper())


def frames_text(row: PacketRow) -> list[str]:
    """The distinct frames of a row's packets, PADDING last."""
    names: list[str] = []
    for record in row.records:
        for frame in record.packet.frames:
            name = frame_text(frame)
            if name not in names:
                names.append(name)
    if len(names) > 1 and "PADDING" in names:
        names.remove("PADDING")
        names.append("PADDING")
    return names


def packet_text(row: PacketRow) -> str:
    first = row.first.packet
    if row.folded:
        return f"{first.packet_type} {TIMES}{len(row.records)}"
    return f"{first.packet_type} #{first.number}"


def dcid_text(dcid: str, labels: dict[str, int]) -> str:
    """`#1 2e7a36c0`: the connection ID's sequence number and its first bytes."""
    label = labels.get(dcid)
    return f"#{label} {dcid[:8]}" if label is not None else dcid[:8]
