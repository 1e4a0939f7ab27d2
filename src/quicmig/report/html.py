"""The HTML report: one self-contained page per set of Results, readable offline.

Everything is in the file: the style sheet and a small script (quicmig/report/assets) are
inlined, the timeline data is embedded as JSON, and nothing is fetched: no font, no library,
no CDN. The charts are hand-written SVG drawn by that script (drag to zoom, double-click to
reset, hover for values); everything else is plain HTML made here, so the numbers can be read
without the script. Each number shown carries the raw value of the Result in a `data-value`
attribute (and the field it comes from in `data-field`), which the browser test compares
with the Result's JSON.
"""

from __future__ import annotations

import html
import json
import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text

from quicmig import __version__
from quicmig.core.datagram import format_address
from quicmig.core.packetlog import PacketLog, PacketRecord, PacketWindow
from quicmig.core.results import MigrationResult, Result, write_atomically
from quicmig.model.verdicts import CheckState, Rules, Verdict
from quicmig.report.charts import chart_data, paths, zoom_of
from quicmig.report.sequence import (
    TIMES,
    ChangeRow,
    GapRow,
    PacketRow,
    build_rows,
    dcid_text,
    frame_text,
    frames_text,
    packet_text,
)

if TYPE_CHECKING:
    from quicmig.sweep.aggregate import Summary

STATE_WORDS = {
    CheckState.PASSED: "✓ passed",
    CheckState.FAILED: "✗ failed",
    CheckState.UNSUPPORTED: "? unsupported",
    CheckState.NOT_APPLICABLE: "n/a",
}
RULE_WORDS = {Rules.STRICT: "strict (quic-interop-runner)", Rules.RFC9000: "RFC 9000"}
FILE_WORDS = {
    "pcap": "capture of the server's side of the network (open it with the key log)",
    "keylog": "TLS key log (SSLKEYLOGFILE format) that decrypts the capture",
    "qlog": "qlog traces, with the qlog draft's path events (qvis, or any qlog tool)",
    "json": "the result as JSON (quicmig.result/2, docs/results.md)",
    "plot": "the static timeline figure",
}


SOURCE_WORDS = {
    "tap": "as the server's aioquic sent and received them",
    "capture": "as the capture shows them, decrypted",
}


def e(value: object) -> str:
    return html.escape(str(value), quote=True)


def ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1e3:.1f} ms"


def secs(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds:.4f} s"


def size(count: int) -> str:
    if count >= 1_000_000:
        return f"{count / 1e6:.1f} MB"
    return f"{count / 1e3:.1f} kB" if count >= 1000 else f"{count} B"


def number(field: str, value: float | int | bool | None, shown: str) -> str:
    """A number as shown, with the Result's raw value beside it for machines."""
    raw = "" if value is None else json.dumps(value)
    return f'<span data-field="{e(field)}" data-value="{e(raw)}">{e(shown)}</span>'


@dataclass(frozen=True, slots=True)
class About:
    """What the Result does not say about its scenario: its one line and its caveat."""

    summary: str = ""
    why: str = ""


def about(result: Result) -> About:
    """The built-in scenario's summary and `expect.why`, when the name is a built-in one."""
    from quicmig.errors import QuicmigError
    from quicmig.model.loader import builtin_names, load_scenario

    if result.scenario not in builtin_names():
        return About()
    try:
        scenario = load_scenario(result.scenario)
    except QuicmigError:
        return About()
    return About(scenario.summary, scenario.expect.why)


def reproduce(result: Result) -> tuple[str, bool]:
    """The command that made this result, and whether it was recorded (else rebuilt)."""
    if result.command:
        return result.command, True
    if result.backend == "capture":
        capture = result.stats.get("capture", "CAPTURE")
        keylog = result.stats.get("keylog")
        parts = ["quicmig", "check", str(capture)] + (["--keylog", str(keylog)] if keylog else [])
        return shlex.join(parts), False
    parts = ["quicmig", "run", result.scenario, "--seed", str(result.seed)]
    if result.stack in ("stock", "quicmig"):
        parts += ["--stack", result.stack]
    if result.backend != "sim":
        parts += ["--backend", result.backend]
    return shlex.join(parts), False


def asset(name: str) -> str:
    return (resources.files("quicmig.report") / "assets" / name).read_text()


# --- one result ---------------------------------------------------------------------------


def _verdict(result: Result, info: About) -> str:
    v = result.verdict.value
    expected = (
        "as expected"
        if result.as_expected
        else f'<span class="bad">expected {e(result.expected_verdict.value)}</span>'
    )
    rules = " · ".join(
        f"{e(RULE_WORDS[rules])}: <b>{e(verdict.value)}</b>"
        for rules, verdict in result.verdicts.items()
    )
    out = (
        f'<p><span class="verdict v-{e(v)}" data-field="verdict" data-value="{e(v)}">'
        f"{e(v.upper())}</span> {expected} · {rules}</p>"
    )
    if info.why and result.verdict is not Verdict.PASSED:
        out += f'<div class="why">{e(info.why)}</div>'
    if result.reasons and result.verdict is not Verdict.PASSED:
        out += '<ul class="small">' + "".join(f"<li>{e(r)}</li>" for r in result.reasons)
        out += "</ul>"
    return out


def _facts(result: Result) -> str:
    transfer = result.transfer
    extensions = result.stats.get("quic_extensions") or []
    stack = f"quicmig ({', '.join(extensions)})" if extensions else "stock aioquic"
    if result.backend == "capture":
        stack = "as captured"
    facts = [
        ("backend", result.backend),
        ("stack", stack),
        ("seed", str(result.seed)),
        ("transport", result.transport),
    ]
    items = "".join(f"<span>{e(k)} <b>{e(v)}</b></span>" for k, v in facts)
    if transfer.workload != "none":
        state = "intact" if transfer.intact else "not intact"
        done = f", done at {transfer.completed_at:.3f} s" if transfer.completed_at else ""
        items += (
            f"<span>{e(transfer.workload)} "
            f"<b>{number('transfer.bytes', transfer.bytes, f'{transfer.bytes:,} bytes')}</b>"
            f", {state}{e(done)}</span>"
        )
    count = len(result.migrations)
    items += f"<span><b>{number('migrations', count, str(count))}</b> migration"
    items += "s" if count != 1 else ""
    items += " observed by the server</span>"
    return f'<div class="facts">{items}</div>'


def story_of(mig: MigrationResult, index: int, capture: bool = False, detail: str = "") -> str:
    """What happened in one migration, in words, from its numbers (`detail`: the network
    change's own words)."""
    parts: list[str] = []
    old, new = format_address(mig.old_peer), format_address(mig.new_peer)
    if mig.network_change is not None and mig.network_change_at is not None:
        what = e(mig.network_change.value) + (f": {e(detail)}" if detail else "")
        parts.append(
            f"At {mig.network_change_at:.3f} s the network changed ({what})."
            f" {ms(mig.detection_delay)} later the server received the client's first "
            "non-probing packet"
        )
    else:
        parts.append(
            f"At {mig.detected_at:.3f} s the server received the client's first non-probing packet"
        )
    kind = "a new port" if mig.observed.value == "port_change" else "a new address"
    parts[-1] += f" from {kind}, <b>{e(new)}</b> (it was {e(old)}), " + (
        "with a new connection ID." if mig.cid_changed else "with the same connection ID."
    )
    if mig.first_packet_had_challenge:
        first = "Its first packet back there carried PATH_CHALLENGE"
    elif mig.first_packet_had_challenge is False:
        first = "Its first packet back there carried <b>no</b> PATH_CHALLENGE"
    else:
        first = "It sent nothing there"
    if mig.validated_at is not None and mig.challenge_sent_at is not None:
        if mig.first_packet_had_challenge:
            first += f"; the PATH_RESPONSE came back {ms(mig.validation_rtt)} later"
        else:
            first += (
                f"; the challenge followed at {mig.challenge_sent_at:.3f} s and the "
                f"PATH_RESPONSE came back {ms(mig.validation_rtt)} later"
            )
        first += f", at {mig.validated_at:.3f} s: the path was validated."
    elif mig.path_known:
        first += ": the address had been validated before (RFC 9000 section 9.3)."
    else:
        first += ": the path was <b>never validated</b>."
    parts.append(first)
    if capture:
        return f'<li data-migration="{index}">' + " ".join(parts) + "</li>"
    cost = []
    if mig.interruption is not None:
        cost.append(f"the application waited {ms(mig.interruption)} for data at the longest")
    cost.append(
        f"{mig.lost_packets} packet{'s were' if mig.lost_packets != 1 else ' was'} declared "
        f"lost and {size(mig.retransmitted_bytes)} of stream data sent again"
    )
    parts.append("It cost: " + "; ".join(cost) + ".")
    return f'<li data-migration="{index}">' + " ".join(parts) + "</li>"


# What a capture cannot measure: no network change, no application data, no loss detection.
NOT_IN_CAPTURE = frozenset(
    {"detection_delay", "interruption", "lost_packets", "retransmitted_bytes", "network_change_at"}
)


def _numbers(mig: MigrationResult, capture: bool = False) -> str:
    first = {True: "yes", False: "no", None: "—"}[mig.first_packet_had_challenge]
    server_cid = {True: "yes", False: "no", None: "—"}[mig.server_cid_changed]
    change = (
        f"{mig.network_change.value} at {secs(mig.network_change_at)}"
        if mig.network_change is not None
        else "none recorded"
    )
    rows = [
        ("network change", number("network_change_at", mig.network_change_at, change)),
        (
            "server saw",
            f"{e(mig.observed.label)}: {e(format_address(mig.old_peer))} → "
            f"{e(format_address(mig.new_peer))} at "
            + number("detected_at", mig.detected_at, secs(mig.detected_at)),
        ),
        (
            "detection delay",
            number("detection_delay", mig.detection_delay, ms(mig.detection_delay)),
        ),
        (
            "PATH_CHALLENGE in the first packet there",
            number("first_packet_had_challenge", mig.first_packet_had_challenge, first),
        ),
        ("challenges sent", number("challenges", mig.challenges, str(mig.challenges))),
        (
            "validation round trip",
            number("validation_rtt", mig.validation_rtt, ms(mig.validation_rtt))
            if mig.validated_at is not None
            else '<span class="bad" data-field="validation_rtt" data-value="">never</span>',
        ),
        ("validated at", number("validated_at", mig.validated_at, secs(mig.validated_at))),
        ("interruption", number("interruption", mig.interruption, ms(mig.interruption))),
        ("lost packets", number("lost_packets", mig.lost_packets, str(mig.lost_packets))),
        (
            "stream data sent again",
            number("retransmitted_bytes", mig.retransmitted_bytes, size(mig.retransmitted_bytes)),
        ),
        (
            "new connection ID",
            "client's: "
            + number("cid_changed", mig.cid_changed, "yes" if mig.cid_changed else "no")
            + f"; server's: {number('server_cid_changed', mig.server_cid_changed, server_cid)}",
        ),
    ]
    sent, received = mig.sent_before_validation, mig.received_before_validation
    if received:
        rows.append(
            (
                "before validation",
                f"sent {number('sent_before_validation', sent, size(sent))}, received "
                f"{number('received_before_validation', received, size(received))}: "
                f"{sent / received:.2f}{TIMES} (the limit is 3{TIMES}, RFC 9000 section 8)",
            )
        )
    if capture:
        rows = [(k, v) for k, v in rows if not any(f'"{f}"' in v for f in NOT_IN_CAPTURE)]
    body = "".join(f"<dt>{e(k)}</dt><dd>{v}</dd>" for k, v in rows)
    return f'<dl class="numbers">{body}</dl>'


def _frames_html(row: PacketRow) -> str:
    out = []
    for name in frames_text(row):
        kind = name.split("(")[0].lower()
        out.append(f'<span class="f-{e(kind)}">{e(name)}</span>')
    return " ".join(out)


def _record_frames(record: PacketRecord) -> str:
    return " ".join(
        f'<span class="f-{e(f["frame_type"])}">{e(frame_text(f))}</span>'
        for f in record.packet.frames
    )


def _folded(row: PacketRow, labels: dict[str, int]) -> str:
    lines = "".join(
        f"<tr><td>{r.at:.4f}</td><td>#{r.packet.number}</td>"
        f"<td>{e(dcid_text(r.packet.dcid, labels))}</td><td>{r.packet.length} B</td>"
        f"<td>{_record_frames(r)}</td>"
        f'<td class="lost">{"✗ lost" if r.lost_at is not None else ""}</td></tr>'
        for r in row.records
    )
    until = row.records[-1].at
    return (
        f"<details><summary>{_frames_html(row)} "
        f'<span class="small">until {until:.4f} · {len(row.records)} packets</span></summary>'
        f"<table>{lines}</table></details>"
    )


def sequence_table(log: PacketLog, window: PacketWindow, result: Result, table_id: str) -> str:
    """The window's packets as a sequence diagram (the rows of quicmig.report.sequence)."""
    rows = build_rows(window, result.migrations, result.network_changes, max_rows=None)
    mig = result.migrations[window.migration] if window.migration is not None else None
    original = mig.old_peer if mig is not None else None
    # The client's own socket is known where its side was watched (the simulator).
    sockets = any(r.client_socket is not None for r in (*window.context, *window.records))
    head = ["t (s)", *(["client socket"] if sockets else []), "NAT" if log.nat else ""]
    head += ["server sees", "packet", "DCID"]
    out = ["<thead><tr>"] + [f"<th>{e(h)}</th>" for h in head] + ["<th>frames</th></tr></thead>"]
    out.append("<tbody>")
    for row in rows:
        if isinstance(row, ChangeRow):
            c = row.change
            out.append(
                f'<tr class="change" data-at="{c.at!r}"><td>{c.at:.4f}</td>'
                f'<td colspan="{len(head)}">⚡ {e(c.kind.value)}: {e(c.detail)}</td></tr>'
            )
            continue
        if isinstance(row, GapRow):  # not made when max_rows is None
            continue
        record = row.first
        packet = record.packet
        kinds = {f["frame_type"] for r in row.records for f in r.packet.frames}
        classes = ["p-in" if record.inbound else "p-out"]
        if row.context:
            classes.append("ctx")
        if "path_challenge" in kinds:
            classes.append("hl-challenge")
        elif "path_response" in kinds:
            classes.append("hl-response")
        elif {"new_connection_id", "retire_connection_id"} & kinds:
            classes.append("key")
        if record.inbound:
            socket = format_address(record.client_socket) if record.client_socket else "?"
        else:
            socket = f"✗ {row.lost} lost" if row.lost else ""
        moved = original is not None and packet.peer != original
        note = f' <span class="note">← {e(row.note)}</span>' if row.note else ""
        frames = _folded(row, log.cid_labels) if row.folded else _frames_html(row)
        out.append(
            f'<tr class="{" ".join(classes)}" data-at="{record.at!r}" '
            f'data-packets="{len(row.records)}" data-frames="{e(" ".join(sorted(kinds)))}">'
            f"<td>{record.at:.4f}</td>"
            + (f'<td class="{"lost" if row.lost else ""}">{e(socket)}</td>' if sockets else "")
            + f'<td class="arrow">{"──▶" if record.inbound else "◀──"}</td>'
            f'<td class="{"newaddr" if moved else ""}">{e(format_address(packet.peer))}</td>'
            f"<td>{e(packet_text(row))}</td>"
            f'<td class="{"newcid" if row.new_dcid else ""}">'
            f"{e(dcid_text(packet.dcid, log.cid_labels))}</td>"
            f'<td class="frames">{frames}{note}</td></tr>'
        )
    out.append("</tbody>")
    omitted = (
        f'<p class="small">{window.omitted} packets in the middle of this stretch are not in the '
        "log (it keeps the first and last ones).</p>"
        if window.omitted
        else ""
    )
    toolbar = (
        '<div class="toolbar">'
        f'<button type="button" data-expand="{table_id}">expand every run</button>'
        f'<button type="button" data-seqzoom="{table_id}" data-step="-0.1">A-</button>'
        f'<button type="button" data-seqzoom="{table_id}" data-step="0.1">A+</button>'
        "<span>──▶ received by the server, ◀── sent by it (as its aioquic logged them); "
        f"{TIMES}N: N packets folded into one row (click to see them); ✗: declared lost"
        "</span></div>"
    )
    return (
        toolbar + f'<div class="seqwrap" id="{table_id}"><table class="seq" data-window="'
        f'{window.migration if window.migration is not None else ""}">'
        + "".join(out)
        + "</table></div>"
        + omitted
    )


def _chart_box(
    box_id: str, data_id: str, start: float, end: float, height: int, all_marks: bool
) -> str:
    marks = ' data-label-marks="all"' if all_marks else ""
    return (
        f'<div class="chart" id="{box_id}" data-chart="{data_id}" data-from="{start!r}" '
        f'data-to="{end!r}" data-panel-height="{height}"{marks}>'
        '<noscript><p class="small">The timeline is drawn by the page\'s script.</p></noscript>'
        "</div>"
    )


def _legend(result: Result) -> str:
    spans = paths(result)
    items = [
        f'<span><span class="sw" style="background:var(--path{p.index % 4})"></span>'
        f"server sends to {e(p.label)} ({p.start:.3f} to {p.end:.3f} s)</span>"
        for p in spans
    ]
    items += [
        '<span><span class="sw" style="background:var(--band)"></span>from the server seeing '
        "the new address until PATH_RESPONSE validated it</span>",
        '<span><span class="sw" style="border-top:2px dashed var(--change)"></span>'
        "network change</span>",
    ]
    return f'<div class="legend">{"".join(items)}</div>'


def _files(result: Result, base: Path) -> str:
    rows = []
    for kind, value in result.files.items():
        for path in [p for p in value.split(",") if p]:
            href = os.path.relpath(Path(path).resolve(), base.resolve()) if base else path
            rows.append(
                f'<li><a href="{e(Path(href).as_posix())}">{e(path)}</a> — '
                f"{e(FILE_WORDS.get(kind, kind))}</li>"
            )
    pcap, keylog = result.files.get("pcap"), result.files.get("keylog")
    hint = ""
    if pcap and keylog:
        hint = (
            '<p class="small">In Wireshark or tshark: '
            f"<code>tshark -r {e(shlex.quote(pcap))} -o tls.keylog_file:{e(shlex.quote(keylog))}"
            ' -Y "quic.frame_type == 26 || quic.frame_type == 27"</code> shows PATH_CHALLENGE '
            "(0x1a) and PATH_RESPONSE (0x1b).</p>"
        )
    listing = f"<ul>{''.join(rows)}</ul>" if rows else '<p class="small">No files were written.</p>'
    return listing + hint


def section(result: Result, index: int, base: Path, info: About | None = None) -> tuple[str, str]:
    """One result's part of the page, and its chart data as a <script> element."""
    info = info or about(result)
    capture = result.backend == "capture"
    prefix = f"r{index}"
    data_id = f"{prefix}-data"
    out: list[str] = [f'<article id="{prefix}" data-scenario="{e(result.scenario)}">']
    out.append(f"<h1>{e(result.scenario)}</h1>")
    if info.summary:
        out.append(f'<p class="lead">{e(info.summary)}</p>')
    out.append(_verdict(result, info))
    out.append(_facts(result))
    toc = [("story", "What happened")]
    toc += [(f"m{i + 1}", f"Migration {i + 1}") for i in range(len(result.migrations))]
    toc += [("timeline", "Timeline"), ("checks", "Checks"), ("files", "Files and command")]
    out.append(
        '<nav class="toc">'
        + "".join(f'<a href="#{prefix}-{key}">{e(label)}</a>' for key, label in toc)
        + "</nav>"
    )
    # What happened
    out.append(f'<section id="{prefix}-story"><h2>What happened</h2>')
    if result.migrations:
        out.append('<ol class="story">')
        details = {c.at: c.detail for c in result.network_changes}
        out += [
            story_of(m, i, capture, details.get(m.network_change_at or -1.0, ""))
            for i, m in enumerate(result.migrations)
        ]
        out.append("</ol>")
    else:
        out.append("<p>The server saw no migration: every packet came from one address.</p>")
    if result.cid_rotations:
        times = ", ".join(f"{t:.3f} s" for t in result.cid_rotations)
        out.append(f"<p>The client switched connection IDs on an unchanged path at {times}.</p>")
    out.append("</section>")
    # Migrations, each with its numbers, its zoomed timeline and its packets
    log = result.packets
    windows = {w.migration: w for w in log.windows} if log is not None else {}
    for i, mig in enumerate(result.migrations):
        zoom = zoom_of(mig, i)
        out.append(
            f'<section class="migration" id="{prefix}-m{i + 1}" data-migration="{i}">'
            f"<h2>Migration {i + 1}: {e(mig.observed.label)}</h2>"
            f"{_numbers(mig, capture)}"
            f"<h3>Around it, from {zoom.start:.3f} to {zoom.end:.3f} s</h3>"
            + _chart_box(f"{prefix}-m{i + 1}-chart", data_id, zoom.start, zoom.end, 80, True)
        )
        window = windows.get(i)
        if window is not None and log is not None:
            out.append(
                f"<h3>The packets around it ({SOURCE_WORDS.get(log.source, e(log.source))})</h3>"
                + sequence_table(log, window, result, f"{prefix}-m{i + 1}-seq")
            )
        else:
            out.append(
                '<p class="small">No packet log in this result: `quicmig run … --html` '
                "records one.</p>"
            )
        out.append("</section>")
    if log is not None:
        for j, window in enumerate(w for w in log.windows if w.migration is None):
            out.append(
                f'<section class="migration" id="{prefix}-w{j + 1}"><h2>{e(window.title)}</h2>'
                + sequence_table(log, window, result, f"{prefix}-w{j + 1}-seq")
                + "</section>"
            )
    # Timeline
    chart = chart_data(result)
    main_id = f"{prefix}-timeline-chart"
    buttons = "".join(
        f'<button type="button" data-zoom="{main_id}" data-from="{z["from"]!r}" '
        f'data-to="{z["to"]!r}">{e(z["title"])}</button>'
        for z in chart["zooms"]
    )
    out.append(
        f'<section id="{prefix}-timeline"><h2>Timeline</h2>'
        '<p class="small">Drag across the figure to zoom in, double-click to zoom out; hover '
        "for the values. The RTT and the congestion window are the server's, as its aioquic "
        "estimated them; the bytes are what reached the client's application.</p>"
        f'<div class="toolbar">{buttons}<button type="button" data-zoom="{main_id}" '
        f'data-from="{chart["x0"]!r}" data-to="{chart["x1"]!r}">whole run</button></div>'
        + _chart_box(main_id, data_id, chart["x0"], chart["x1"], 110, False)
        + _legend(result)
        + "</section>"
    )
    # Checks
    out.append(f'<section id="{prefix}-checks"><h2>Checks</h2><table class="checks">')
    out.append("<tr><th></th><th>check</th><th>counts in</th><th>what was observed</th></tr>")
    for check in result.checks:
        rules = ", ".join(RULE_WORDS[r] for r in check.rules)
        out.append(
            f'<tr data-check="{e(check.name)}" data-state="{e(check.state.value)}">'
            f'<td class="state s-{e(check.state.value)}">{e(STATE_WORDS[check.state])}</td>'
            f'<td><code>{e(check.name)}</code></td><td class="rules">{e(rules)}</td>'
            f"<td>{e(check.detail)}</td></tr>"
        )
    out.append("</table></section>")
    # Files and the command
    command, recorded = reproduce(result)
    out.append(
        f'<section id="{prefix}-files"><h2>Files and command</h2>'
        + _files(result, base)
        + "<p>The command that made this result"
        + ("" if recorded else " (rebuilt from the result: any --set values are not recorded)")
        + f':</p><pre class="command" data-field="command">{e(command)}</pre></section>'
    )
    out.append("</article>")
    script = (
        f'<script type="application/json" id="{data_id}">'
        + json.dumps(chart, separators=(",", ":")).replace("</", "<\\/")
        + "</script>"
    )
    return "\n".join(out), script


# --- the page -----------------------------------------------------------------------------


def summary_rows(results: Sequence[Result]) -> str:
    rows = ["<tr><th>scenario</th><th>verdict</th><th>expected</th><th>migrations</th>"
            "<th>validation RTT</th><th>gap</th><th>transfer</th></tr>"]  # fmt: skip
    for index, result in enumerate(results):
        rtts = [m.validation_rtt for m in result.migrations if m.validation_rtt is not None]
        gaps = [m.interruption for m in result.migrations if m.interruption is not None]
        v = result.verdict.value
        expected = (
            "as expected" if result.as_expected else e(f"expected {result.expected_verdict.value}")
        )
        rows.append(
            f'<tr><td><a href="#r{index}">{e(result.scenario)}</a> '
            f'<span class="small">{e(result.backend)} · seed {result.seed}</span></td>'
            f'<td class="state s-{e(v)}">{e(v)}</td>'
            f"<td>{expected}</td>"
            f'<td class="num">{len(result.migrations)}</td>'
            f'<td class="num">{ms(max(rtts)) if rtts else "—"}</td>'
            f'<td class="num">{ms(max(gaps)) if gaps else "—"}</td>'
            f"<td>{'intact' if result.transfer.intact else 'not intact'}</td></tr>"
        )
    return '<table class="summary">' + "".join(rows) + "</table>"


def page(
    results: Sequence[Result],
    path: Path,
    title: str | None = None,
    preface: str = "",
    infos: Sequence[About | None] = (),
) -> str:
    """The whole page for `results`, to be written at `path` (links are relative to it)."""
    base = path.parent
    sections, scripts = [], []
    for index, result in enumerate(results):
        info = infos[index] if index < len(infos) else None
        body, script = section(result, index, base, info)
        sections.append(("<hr>" if index else "") + body)
        scripts.append(script)
    heading = title or (
        results[0].scenario if len(results) == 1 else f"{len(results)} quicmig results"
    )
    top = ""
    if len(results) > 1:
        top = f"<h1>{e(heading)}</h1>{preface}{summary_rows(results)}"
    elif preface:
        top = preface
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # The page may load nothing: everything it shows is inside it.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">"
        f"<title>quicmig · {e(heading)}</title>"
        f"<style>{asset('report.css')}</style></head><body><main>"
        + top
        + "\n".join(sections)
        + f"<footer>Made by quicmig {e(__version__)}. One self-contained file: it loads "
        "nothing from the network.</footer></main>"
        + "".join(scripts)
        + f"<script>{asset('report.js')}</script></body></html>\n"
    )


def write_html(
    path: Path,
    results: Sequence[Result],
    title: str | None = None,
    preface: str = "",
    infos: Sequence[About | None] = (),
) -> None:
    """Write the page for `results` to `path`, whole or not at all."""
    write_atomically(path, page(results, path, title, preface, infos))


def rich_table_html(table: Table, css: str = "compare", caption: bool = False) -> str:
    """A rich Table of the terminal report as an HTML table (its cells' plain text; a red,
    green or yellow cell keeps its colour as a class)."""
    columns = table.columns
    cells = [[_cell_text(c) for c in column.cells] for column in columns]
    rows = max((len(c) for c in cells), default=0)
    head = "".join(f"<th>{e(_cell_text(c.header)[0])}</th>" for c in columns)
    body = []
    for index in range(rows):
        tds = []
        for column in cells:
            text, tone = column[index] if index < len(column) else ("", "")
            lines = "<br>".join(e(line) for line in text.split("\n"))
            tds.append(f'<td class="{tone}">{lines}</td>')
        body.append("<tr>" + "".join(tds) + "</tr>")
    title = _cell_text(table.title)[0] if table.title else ""
    shown = f"<caption>{e(title)}</caption>" if title and caption else ""
    table_html = f'<table class="{css}">{shown}<tr>{head}</tr>{"".join(body)}</table>'
    return f'<div class="scroll">{table_html}</div>'


def _cell_text(cell: object) -> tuple[str, str]:
    """(plain text, tone class) of a rich cell: markup text or a Text."""
    text = Text.from_markup(cell) if isinstance(cell, str) else cell
    if not isinstance(text, Text):
        return str(cell), ""
    styles = " ".join(str(span.style) for span in text.spans) + " " + str(text.style)
    tone = next(
        (name for word, name in (("red", "s-failed"), ("green", "s-passed"),
                                 ("yellow", "s-unsupported")) if word in styles),
        "",
    )  # fmt: skip
    return text.plain, tone


def sweep_page(
    path: Path,
    folder: Path,
    summary: Summary,
    metrics: Table,
    checks: Table,
    figure_metrics: tuple[str, ...],
    x: str | None,
) -> None:
    """`quicmig sweep report DIR --html FILE`: the sweep's tables and its figure (as inline
    SVG), one self-contained page."""
    import tempfile

    from quicmig.sweep.figure import plot_summary

    with tempfile.TemporaryDirectory(prefix="quicmig-sweep-") as tmp:
        svg_path = Path(tmp) / "figure.svg"
        plot_summary(summary, svg_path, figure_metrics, x)
        svg = svg_path.read_text()
    svg = svg[svg.index("<svg") :]  # the inline element, without the XML prolog
    body = (
        f"<h1>Sweep {e(folder.name)}</h1>"
        f'<p class="lead">{summary.runs} runs in {e(str(folder))}, grouped by the swept '
        "values: medians with their bootstrap 95 % intervals.</p>"
        f'<div class="figure">{svg}</div>'
        f"<h2>Metrics</h2>{rich_table_html(metrics, 'summary', caption=True)}"
        f"<h2>Checks</h2>{rich_table_html(checks, 'summary', caption=True)}"
    )
    text = (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">"
        f"<title>quicmig · sweep {e(folder.name)}</title>"
        f"<style>{asset('report.css')}</style></head><body><main>{body}"
        f"<footer>Made by quicmig {e(__version__)}. One self-contained file.</footer>"
        "</main></body></html>\n"
    )
    write_atomically(path, text)
