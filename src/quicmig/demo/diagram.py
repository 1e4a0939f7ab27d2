"""The demo's terminal sequence diagram of the packets around a migration.

The rows come from `quicmig.report.sequence` (the HTML report draws the same ones); this
module lays them out in `width` columns: time, client socket, NAT, the address the server
saw, packet, DCID and frames. Where the frames do not fit beside the rest (an 80-column
terminal), they go on the line below, indented, so that no address or number is ever cut.
"""

from __future__ import annotations

from rich.console import Console, Group
from rich.text import Text

from quicmig.core.datagram import format_address
from quicmig.core.packetlog import PacketLog, PacketWindow
from quicmig.core.results import MigrationResult, NetworkChange
from quicmig.report.sequence import (
    TIMES,
    ChangeRow,
    GapRow,
    PacketRow,
    build_rows,
    dcid_text,
    frames_text,
    packet_text,
)

MIN_FRAMES = 20  # columns the frames need beside the other cells; else they go below
LEGEND = (
    f"──▶ received, ◀── sent by the server's aioquic · {TIMES}N: N packets folded · "
    "✗: declared lost"
)


def _cells(row: PacketRow, labels: dict[str, int]) -> list[str]:
    record = row.first
    packet = record.packet
    if record.inbound:
        socket = format_address(record.client_socket) if record.client_socket else "?"
        arrow = "──▶"
    else:
        socket = f"✗ {row.lost} lost" if row.lost else ""
        arrow = "◀──"
    return [
        f"{record.at:.4f}",
        socket,
        arrow,
        format_address(packet.peer),
        packet_text(row),
        dcid_text(packet.dcid, labels),
    ]


def diagram(
    log: PacketLog,
    window: PacketWindow,
    migrations: list[MigrationResult],
    changes: list[NetworkChange],
    width: int = 100,
) -> Group:
    """A sequence diagram: client socket → NAT → address the server sees → server's packet.

    Rows are laid out by hand so that a network change can span the whole line and the
    frames column takes what is left of `width` (wrapping under itself)."""
    rows = build_rows(window, migrations, changes)
    labels = log.cid_labels
    mig = migrations[window.migration] if window.migration is not None else None
    original = mig.old_peer if mig is not None else None
    by_row = {id(row): _cells(row, labels) for row in rows if isinstance(row, PacketRow)}
    headers = ["t (s)", "client socket", "NAT" if log.nat else "", "server sees", "packet", "DCID"]
    widths = [len(h) for h in headers]
    for texts in by_row.values():
        widths = [max(w, len(t)) for w, t in zip(widths, texts, strict=True)]
    fixed = sum(widths) + len(widths)
    below = fixed + MIN_FRAMES > width  # the frames get their own line, under the packet
    indent = widths[0] + 1 + 2 if below else fixed
    frames_width = max(MIN_FRAMES, width - indent)
    lines: list[Text] = [Text(window.title, style="bold")]
    header = Text()
    for head, w in zip(headers, widths, strict=True):
        header.append(_pad(head, w, right=head == "t (s)") + " ", style="bold")
    if not below:
        header.append("frames", style="bold")
    rule = fixed - 1 if below else fixed + frames_width
    lines += [_trimmed(header), Text("─" * min(width, rule), style="dim")]
    for row in rows:
        if isinstance(row, ChangeRow):
            change = row.change
            said = Text(f"⚡ {change.kind.value}: {change.detail}", style="bold magenta")
            lines += _hanging(_pad(f"{change.at:.4f}", widths[0], right=True) + " ", said, width)
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
        frames = Text(" ".join(frames_text(row)))
        if row.folded:
            frames.append(f" until {row.records[-1].at:.4f}", style="dim")
        parts = list(frames.wrap(_CONSOLE, frames_width))
        if row.note:
            note = Text(f"← {row.note}", style="italic yellow")
            if parts[-1].cell_len + 2 + note.cell_len <= frames_width:
                parts[-1].append("  ").append_text(note)
            else:
                parts.append(note)
        if below:
            lines.append(_trimmed(line))
            parts = [Text(" " * indent).append_text(p) for p in parts]
        else:
            line.append_text(parts[0])
            parts[0] = line
            parts[1:] = [Text(" " * indent).append_text(p) for p in parts[1:]]
        lines += [_trimmed(p) for p in parts]
    lines += _hanging("", Text(LEGEND, style="dim"), width)
    return Group(*lines)


_CONSOLE = Console(width=1000)  # only measures text for wrapping


def _pad(text: str, width: int, right: bool = False) -> str:
    return text.rjust(width) if right else text.ljust(width)


def _trimmed(text: Text) -> Text:
    text.rstrip()
    return text


def _hanging(lead: str, text: Text, width: int) -> list[Text]:
    """`text` after `lead`, wrapped to `width` with later lines indented under the text."""
    room = max(MIN_FRAMES, width - len(lead))
    out = []
    for number, part in enumerate(text.wrap(_CONSOLE, room)):
        line = Text(lead if number == 0 else " " * len(lead))
        line.append_text(part)
        out.append(_trimmed(line))
    return out
