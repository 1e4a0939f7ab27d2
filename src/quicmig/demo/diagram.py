"""Sequence diagrams of the packets around a migration, built from observed records only.

A busy download puts hundreds of packets on the wire per round trip, so a diagram shows the
packets that tell the story one per row (a new address, a new connection ID, PATH_CHALLENGE,
PATH_RESPONSE, NEW_CONNECTION_ID, ...) and folds the ordinary traffic between them into one
row per direction and address (38 STREAM packets in a row). Every row is a packet, or a run of
packets, that the server's aioquic sent or authenticated; every address is the one the server saw.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass

from rich.console import Console, Group
from rich.text import Text

from quicmig.core.datagram import Address, format_address
from quicmig.core.results import MigrationResult, NetworkChange
from quicmig.demo.observe import Observation, PacketRecord
from quicmig.model.events import EventKind

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
AFTER = 8  # records shown after the migration settles (validated, or given up)
MAX_ROWS = 24  # rows per diagram before the middle is folded away
TIMES = "\u00d7"  # the multiplication sign, as in "x38 packets"
QUIET = 1.5  # seconds: how far a diagram without a migration reaches after its network change


@dataclass(frozen=True, slots=True)
class Focus:
    """A stretch of the run to draw: from `start` (a network change) to `settle`."""

    title: str
    start: float  # seconds
    settle: float  # seconds
    migration: MigrationResult | None = None
    change: NetworkChange | None = None


@dataclass(frozen=True, slots=True)
class PacketRow:
    records: tuple[PacketRecord, ...]  # one packet, or a folded run of ordinary ones
    lost: int  # of these, sent packets that aioquic later declared lost
    note: str = ""
    new_dcid: bool = False  # the first packet this way with another DCID

    @property
    def first(self) -> PacketRecord:
        return self.records[0]


@dataclass(frozen=True, slots=True)
class ChangeRow:
    change: NetworkChange


@dataclass(frozen=True, slots=True)
class GapRow:
    hidden: int  # rows folded away to keep the diagram short


Row = PacketRow | ChangeRow | GapRow


def foci(obs: Observation, limit: int = 3) -> list[Focus]:
    """What to draw: each observed migration, else each network change (at most `limit`)."""
    out: list[Focus] = []
    for index, mig in enumerate(obs.result.migrations, 1):
        start = mig.network_change_at if mig.network_change_at is not None else mig.detected_at
        settle = mig.validated_at or mig.challenge_sent_at or mig.detected_at
        change = next((c for c in obs.changes if c.at == mig.network_change_at), None)
        kind = mig.observed.label
        out.append(Focus(f"Migration {index}: {kind}", start, settle, mig, change))
    if not out:
        for change in obs.changes:
            settle = change.at + QUIET
            if change.kind is EventKind.CID_ROTATION:
                settle = _first_new_dcid(obs.records, change.at) or settle
            out.append(
                Focus(f"{change.kind.value} at {change.at:g} s", change.at, settle, None, change)
            )
    return out[:limit]


def _first_new_dcid(records: list[PacketRecord], after: float) -> float | None:
    last = ""
    for record in records:
        packet = record.packet
        if not record.inbound or packet.packet_type != "1RTT":
            continue
        if record.at >= after and last and packet.dcid != last:
            return record.at
        last = packet.dcid
    return None


def build_rows(obs: Observation, focus: Focus) -> list[Row]:
    """The rows of one diagram, in the order the server observed them."""
    records = obs.records
    lost = obs.recorder.lost_at if obs.recorder is not None else (lambda r: None)
    times = [r.at for r in records]
    begin = bisect.bisect_left(times, focus.start)
    settled = bisect.bisect_right(times, focus.settle)
    end = min(len(records), settled + AFTER)

    seen_in: set[Address] = set()
    seen_out: set[Address] = set()
    last_dcid = {True: "", False: ""}
    for record in records[:begin]:
        (seen_in if record.inbound else seen_out).add(record.packet.peer)
        if record.packet.packet_type == "1RTT":
            last_dcid[record.inbound] = record.packet.dcid

    rows: list[Row] = []
    # Context: the last packet each way on the path before the change.
    context = [r for r in (_last(records[:begin], True), _last(records[:begin], False)) if r]
    for record in sorted(context, key=lambda r: r.index):
        rows.append(PacketRow((record,), int(lost(record) is not None)))

    pending: dict[tuple[bool, Address], list[PacketRecord]] = {}

    def flush() -> None:
        for run in pending.values():
            rows.append(PacketRow(tuple(run), sum(lost(r) is not None for r in run)))
        pending.clear()

    # Changes since the previous migration settled belong to this story (blackhole: the
    # link dies at 1 s, the client fails over at 2 s).
    previous = [m.detected_at for m in obs.result.migrations if m.detected_at < focus.start]
    since = min([focus.start, *(r.at for r in context)])
    since = min(since, max([0.0, *previous]) + 1e-9) if focus.migration is not None else since
    changes = [c for c in obs.changes if since <= c.at]
    for change in [c for c in changes if c.at < focus.start]:
        rows.insert(_position(rows, change.at), ChangeRow(change))
        changes.remove(change)
    mig = focus.migration
    for record in records[begin:end]:
        while changes and changes[0].at <= record.at:
            flush()
            rows.append(ChangeRow(changes.pop(0)))
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
            row = PacketRow((record,), int(lost(record) is not None), ", ".join(notes), new_dcid)
            rows.append(row)
        else:
            pending.setdefault((record.inbound, packet.peer), []).append(record)
    flush()
    end_time = records[end - 1].at if end else focus.settle
    rows += [ChangeRow(c) for c in changes if c.at <= end_time]
    return _shorten(rows)


def _position(rows: list[Row], at: float) -> int:
    for index, row in enumerate(rows):
        if isinstance(row, PacketRow) and row.first.at > at:
            return index
    return len(rows)


def _last(records: list[PacketRecord], inbound: bool) -> PacketRecord | None:
    for record in reversed(records):
        if record.inbound == inbound and record.packet.packet_type == "1RTT":
            return record
    return None


def _shorten(rows: list[Row]) -> list[Row]:
    """Fold the middle of a long diagram, keeping every key packet near both ends."""
    if len(rows) <= MAX_ROWS:
        return rows
    head, tail = MAX_ROWS * 2 // 3, MAX_ROWS // 3 - 1
    return [*rows[:head], GapRow(len(rows) - head - tail), *rows[-tail:]]


# --- rendering ---------------------------------------------------------------------------


def cid_labels(records: Iterable[PacketRecord]) -> dict[str, int]:
    """Sequence numbers of connection IDs, from the NEW_CONNECTION_ID frames observed."""
    labels: dict[str, int] = {}
    first: dict[bool, str] = {}
    for record in records:
        for frame in record.packet.frames:
            if frame["frame_type"] == "new_connection_id":
                labels[frame["connection_id"]] = frame["sequence_number"]
        if record.packet.packet_type == "1RTT" and record.inbound not in first:
            first[record.inbound] = record.packet.dcid
    for dcid in first.values():
        labels.setdefault(dcid, 0)  # the handshake's connection ID has sequence number 0
    return labels


def frame_text(frame: dict[str, object]) -> str:
    kind = str(frame["frame_type"])
    match kind:
        case "path_challenge" | "path_response":
            return f"{kind.upper()}({str(frame.get('data', ''))[:8]})"
        case "new_connection_id" | "retire_connection_id":
            return f"{kind.upper()}(#{frame.get('sequence_number')})"
        case _:
            return FRAME_NAMES.get(kind, kind.upper())


def _frames(row: PacketRow) -> str:
    names: list[str] = []
    for record in row.records:
        for frame in record.packet.frames:
            name = frame_text(frame)
            if name not in names:
                names.append(name)
    if len(names) > 1 and "PADDING" in names:
        names.remove("PADDING")
        names.append("PADDING")
    return " ".join(names)


def _packet(row: PacketRow) -> str:
    first = row.first.packet
    kind = first.packet_type
    if len(row.records) == 1:
        return f"{kind} #{first.number}"
    return f"{kind} {TIMES}{len(row.records)}"


def diagram(obs: Observation, focus: Focus, width: int = 100) -> Group:
    """A sequence diagram: client socket → NAT → address the server sees → server's packet.

    Rows are laid out by hand so that a network change can span the whole line and the
    frames column takes what is left of `width` (wrapping under itself).
    """
    rows = build_rows(obs, focus)
    labels = cid_labels(obs.records)
    original = focus.migration.old_peer if focus.migration is not None else None
    cells: list[tuple[PacketRow, list[str]]] = []
    for row in rows:
        if isinstance(row, PacketRow):
            cells.append((row, _cells(row, labels)))
    nat = "NAT" if obs.scenario.topology.nats else ""
    headers = ["t (s)", "client socket", nat, "server sees", "packet", "DCID"]
    widths = [len(h) for h in headers]
    for _, texts in cells:
        widths = [max(w, len(t)) for w, t in zip(widths, texts, strict=True)]
    fixed = sum(widths) + len(widths)
    frames_width = max(20, width - fixed)
    lines: list[Text] = [Text(focus.title, style="bold")]
    header = Text()
    for head, w in zip(headers, widths, strict=True):
        header.append(_pad(head, w, right=head == "t (s)") + " ", style="bold")
    header.append("frames", style="bold")
    lines += [header, Text("─" * min(width, fixed + frames_width), style="dim")]
    by_row = dict((id(row), texts) for row, texts in cells)
    indent = " " * fixed
    for row in rows:
        if isinstance(row, ChangeRow):
            change = row.change
            line = Text(_pad(f"{change.at:.4f}", widths[0], right=True) + " ")
            line.append(f"⚡ {change.kind.value}: {change.detail}", style="bold magenta")
            lines.append(line)
            continue
        if isinstance(row, GapRow):
            lines.append(Text(" " * (widths[0] + 1) + f"⋮  {row.hidden} more rows", style="dim"))
            continue
        texts = by_row[id(row)]
        record = row.first
        line = Text()
        styles = [
            "",
            "red" if row.lost else "",
            "green" if record.inbound else "cyan",
            "bold yellow" if original is not None and record.packet.peer != original else "",
            "",
            "bold cyan" if row.new_dcid else "",
        ]
        for index, (text, w, style) in enumerate(zip(texts, widths, styles, strict=True)):
            line.append(_pad(text, w, right=index == 0) + " ", style=style)
        frames = Text(_frames(row))
        if len(row.records) > 1:
            frames.append(f" until {row.records[-1].at:.4f}", style="dim")
        parts = list(frames.wrap(_CONSOLE, frames_width))
        if row.note:
            note = Text(f"← {row.note}", style="italic yellow")
            if parts[-1].cell_len + 2 + note.cell_len <= frames_width:
                parts[-1].append("  ").append_text(note)
            else:
                parts.append(note)
        for number, part in enumerate(parts):
            if number:
                line = Text(indent)
            part.rstrip()
            line.append_text(part)
            lines.append(line)
    lines.append(
        Text(
            f"──▶ received, ◀── sent by the server's aioquic · {TIMES}N: N packets folded · "
            "✗: declared lost",
            style="dim",
        )
    )
    return Group(*lines)


_CONSOLE = Console(width=1000)  # only measures text for wrapping


def _pad(text: str, width: int, right: bool = False) -> str:
    return text.rjust(width) if right else text.ljust(width)


def _cells(row: PacketRow, labels: dict[str, int]) -> list[str]:
    record = row.first
    packet = record.packet
    if record.inbound:
        socket = format_address(record.client_socket) if record.client_socket else "?"
        arrow = "──▶"
    else:
        socket = f"✗ {row.lost} lost" if row.lost else ""
        arrow = "◀──"
    label = labels.get(packet.dcid)
    dcid = f"#{label} {packet.dcid[:8]}" if label is not None else packet.dcid[:8]
    return [f"{record.at:.4f}", socket, arrow, format_address(packet.peer), _packet(row), dcid]
