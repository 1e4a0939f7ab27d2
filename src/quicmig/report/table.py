"""Terminal tables for results, with rich, readable from 80 columns up.

Every table has a wide form and a narrow one. The wide form is used where it fits the
console; otherwise columns are folded into lines (a migration becomes a few lines of
`name value` pairs, a check a line with its reason under it) or dropped in a stated order,
so that no address and no number is ever cut. Output to a pipe or a file is `COLUMNS`
columns wide (PIPE_WIDTH without it), with no trailing spaces.
"""

from __future__ import annotations

import functools
import io
import os
import sys
import textwrap
from collections import Counter
from collections.abc import Callable, Sequence
from typing import IO, TYPE_CHECKING, TextIO, cast

from rich import box
from rich.console import Console, Group, RenderableType
from rich.measure import Measurement
from rich.table import Column, Table
from rich.text import Text

if TYPE_CHECKING:
    from rich.progress import Progress

from quicmig.core.datagram import Address, format_address
from quicmig.core.results import Check, MigrationResult, Result
from quicmig.model.verdicts import CheckState, MigrationKind, Verdict

PIPE_WIDTH = 100  # columns when printing to a file or pipe without COLUMNS
MIN_WIDTH = 40  # columns: below this, layouts are not made narrower


class TrimmedLines(io.TextIOBase):
    """A text stream that drops the spaces rich pads lines with before each newline."""

    def __init__(self, target: TextIO) -> None:
        super().__init__()
        self.target = target
        self._line = ""

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        lines = (self._line + text).split("\n")
        self._line = lines.pop()
        for line in lines:
            self.target.write(line.rstrip(" ") + "\n")
        return len(text)

    def flush(self) -> None:
        if self._line:
            self.target.write(self._line)
            self._line = ""
        self.target.flush()


def console_width(probe: Console) -> int:
    """The terminal's width; redirected, `COLUMNS` if set, else PIPE_WIDTH."""
    if probe.is_terminal:
        return max(MIN_WIDTH, probe.width)
    columns = os.environ.get("COLUMNS", "")
    return max(MIN_WIDTH, int(columns)) if columns.isdigit() else PIPE_WIDTH


def make_console() -> Console:
    """A console for stdout: the terminal as it is, or `console_width()` columns of plain
    text without trailing spaces when redirected."""
    console = Console()
    if console.is_terminal:
        return console
    return Console(file=cast(IO[str], TrimmedLines(sys.stdout)), width=console_width(console))


def count_progress(console: Console, show: bool) -> Progress:
    """The bar of a command that runs many things: description, bar, `n/total`, elapsed;
    gone when done, and nothing at all when not `show` (piped, or --quiet)."""
    # Imported here: most commands that print tables show no bar.
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not show,
    )


def fits(renderable: RenderableType, width: int) -> bool:
    """Would `renderable` print within `width` columns without folding anything?"""
    console = Console(width=10_000, file=io.StringIO())
    measured = Measurement.get(console, console.options, renderable)
    return measured.maximum <= width


def first_fitting(width: int, *builders: Callable[[], RenderableType]) -> RenderableType:
    """The first layout that fits `width` columns (the last one otherwise)."""
    built: RenderableType = ""
    for build in builders:
        built = build()
        if fits(built, width):
            return built
    return built


VERDICT_STYLE = {"passed": "bold green", "failed": "bold red", "unsupported": "bold yellow"}


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.1f} ms"


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.3f} s"


def _new_peer(old: Address, new: Address) -> str:
    """For a port change, only the new port: the address is the same."""
    return f":{new[1]}" if old[0] == new[0] else format_address(new)


def _size(count: int) -> str:
    return f"{count / 1e3:.1f} kB" if count >= 1000 else f"{count} B"


def _move(mig: MigrationResult) -> str:
    """`198.51.100.10:36643 → 198.51.100.20:41557`, on two lines when long."""
    old, new = format_address(mig.old_peer), _new_peer(mig.old_peer, mig.new_peer)
    return f"{old} → {new}" if len(old) + len(new) <= 28 else f"{old} →\n{new}"


def _change(mig: MigrationResult) -> str:
    if mig.network_change is None:
        return "-"
    return f"{mig.network_change.value} @ {_s(mig.network_change_at)}"


def _rtt(mig: MigrationResult) -> str:
    return _ms(mig.validation_rtt) if mig.validated_at is not None else "[red]never[/red]"


def _lost(mig: MigrationResult) -> str:
    return f"{mig.lost_packets} / {_size(mig.retransmitted_bytes)}"


TITLE = "Migrations observed by the server"


def _when(mig: MigrationResult, first: float, since: float | None) -> str:
    """A capture's migration time after the first change (or the first migration)."""
    return f"{mig.detected_at - (since if since is not None else first):+.3f}"


def _wide_migrations(result: Result, capture: bool, since: float | None = None) -> Table:
    """The table; a capture's has no detection delay, gap or losses (a capture knows no
    network change, no application data and no loss detection) but its own times."""
    table = Table(title=TITLE, title_justify="left")
    table.add_column("#", justify="right")
    if capture:
        table.add_column("t (s)", justify="right", no_wrap=True)
        table.add_column("Δ change" if since is not None else "Δ 1st move", justify="right")
    else:
        table.add_column("network change", no_wrap=True)
    table.add_column("server saw", no_wrap=True)
    if not capture:
        table.add_column("after", justify="right", no_wrap=True)
    table.add_column("challenge RTT", justify="right", no_wrap=True)
    table.add_column("new DCID", no_wrap=True)
    if not capture:
        table.add_column("gap", justify="right", no_wrap=True)
        table.add_column("lost / retx", justify="right", no_wrap=True)
    first = result.migrations[0].detected_at if result.migrations else 0.0
    for index, mig in enumerate(result.migrations, 1):
        saw = f"{mig.observed.label}\n{_move(mig)}"
        dcid = "yes" if mig.cid_changed else "no"
        if capture:
            cells = [f"{mig.detected_at:.3f}", _when(mig, first, since), saw, _rtt(mig), dcid]
        else:
            cells = [_change(mig), saw, _ms(mig.detection_delay), _rtt(mig), dcid]
            cells += [_ms(mig.interruption), _lost(mig)]
        table.add_row(str(index), *cells)
    return table


def _pairs(items: list[tuple[str, str]], width: int, indent: int) -> list[Text]:
    """`name value` items joined with ` · `, wrapped between items (never inside one)."""
    lines: list[Text] = []
    line = Text(" " * indent)
    for name, value in items:
        item = Text.from_markup(f"[dim]{name}[/dim] {value}")
        if line.cell_len > indent and line.cell_len + 3 + item.cell_len > width:
            lines.append(line)
            line = Text(" " * indent)
        if line.cell_len > indent:
            line.append(" · ", style="dim")
        line.append_text(item)
    lines.append(line)
    return lines


def _narrow_migrations(
    result: Result, width: int, capture: bool, since: float | None = None
) -> Group:
    lines: list[RenderableType] = [Text(TITLE, style="italic")]
    first = result.migrations[0].detected_at if result.migrations else 0.0
    for index, mig in enumerate(result.migrations, 1):
        head = Text(f"{index:>2} ", style="bold")
        if capture:
            what = "the change" if since is not None else "the first move"
            head.append(f"t {mig.detected_at:.3f} s ({_when(mig, first, since)} s after {what}): ")
        elif mig.network_change is not None:
            head.append(f"{_change(mig)} → ")
        head.append(mig.observed.label, style="bold")
        lines.append(head)
        old, new = format_address(mig.old_peer), format_address(mig.new_peer)
        if len(old) + len(new) + 6 <= width:
            lines.append(Text(f"   {old} → {new}"))
        else:
            lines += [Text(f"   {old} →"), Text(f"   {new}")]
        items = [
            ("after", _ms(mig.detection_delay)),
            ("challenge RTT", _rtt(mig)),
            ("new DCID", "yes" if mig.cid_changed else "no"),
            ("gap", _ms(mig.interruption)),
            ("lost / retx", _lost(mig)),
        ]
        if capture:  # what a capture cannot know (see _wide_migrations)
            items = items[1:3]
        lines += _pairs(items, width, 3)
    return Group(*lines)


def migrations_table(
    result: Result, width: int | None = None, capture: bool = False, since: float | None = None
) -> RenderableType:
    """The migrations: a table where it fits `width` (None: always), else a few lines each.
    `capture`: times from the capture's first datagram, and relative to the first network
    change at `since` (on the capture's clock) where it is known, else to the first move."""
    wide = _wide_migrations(result, capture, since)
    if width is None or fits(wide, width):
        return wide
    return _narrow_migrations(result, width, capture, since)


MARKS = {
    CheckState.PASSED: "[green]✓[/green]",
    CheckState.FAILED: "[red]✗[/red]",
    CheckState.UNSUPPORTED: "[yellow]?[/yellow]",
    CheckState.NOT_APPLICABLE: "[dim]n/a[/dim]",
}


def check_mark(check: Check) -> str:
    """✓, ✗, ? or n/a, and which rules a check counts under when not both."""
    mark = MARKS[check.state]
    return mark if len(check.rules) > 1 else f"{mark} [dim]{check.rules[0].value}[/dim]"


def _wide_checks(result: Result, detail_width: int | None = None) -> Table:
    table = Table(title="Checks", title_justify="left")
    table.add_column("", no_wrap=True)
    table.add_column("check", no_wrap=True)
    table.add_column("observed", max_width=detail_width)
    for check in result.checks:
        table.add_row(check_mark(check), check.name, check.detail)
    return table


def _narrow_checks(result: Result, width: int) -> Group:
    """One line per check, its reason under it, indented."""
    lines: list[RenderableType] = [Text("Checks", style="italic")]
    for check in result.checks:
        head = Text.from_markup(f"{check_mark(check)} ")
        head.append(check.name, style="bold")
        lines.append(head)
        lines.append(_hanging(check.detail, width, 4))
    return Group(*lines)


_MEASURE = Console(width=10_000, file=io.StringIO())  # only measures text for wrapping


def _hanging(text: str, width: int, indent: int) -> Text:
    """`text` wrapped to `width` columns, every line indented by `indent`."""
    out = Text()
    for number, part in enumerate(Text(text).wrap(_MEASURE, max(20, width - indent))):
        if number:
            out.append("\n")
        out.append(" " * indent)
        out.append_text(part)
    return out


def hanging(markup: str, width: int, indent: int = 4) -> Text:
    """`markup` wrapped to `width` columns between words, the lines after the first indented
    by `indent` (a log line or a check at 80 columns)."""
    text = Text.from_markup(markup)
    out = Text()
    lines = list(text.wrap(_MEASURE, max(20, width)))
    if len(lines) > 1:  # wrap again, the rest narrower by the indent
        first = lines[0]
        rest = text[len(first.plain) :]
        rest = rest[len(rest.plain) - len(rest.plain.lstrip()) :]  # the space it broke at
        lines = [first, *rest.wrap(_MEASURE, max(20, width - indent))]
    for number, part in enumerate(lines):
        if number:
            out.append("\n" + " " * indent)
        part.rstrip()
        out.append_text(part)
    return out


def log_line(line: str, indent: int = 3) -> str:
    """A log line as printed: wrapped between words at the terminal's width (or COLUMNS);
    piped without COLUMNS, one line per event, as it is."""
    if not sys.stdout.isatty() and not os.environ.get("COLUMNS", "").isdigit():
        return line
    width = console_width(Console())
    if len(line) <= width:
        return line
    return textwrap.fill(
        line, width, subsequent_indent=" " * indent, break_long_words=False,
        break_on_hyphens=False,
    )  # fmt: skip


def checks_table(result: Result, width: int | None = None) -> RenderableType:
    """The checks: a table where the reasons fit beside the names in `width` columns
    (None: always), else each check's reason on the lines under it."""
    wide = _wide_checks(result)
    if width is None or fits(wide, width):
        return wide
    names = max((len(c.name) for c in result.checks), default=5)
    room = width - names - 9 - 10  # marks column and the table's borders and padding
    if room >= 40:  # the reasons wrap beside the names, at least 40 columns wide
        return _wide_checks(result, room)
    return _narrow_checks(result, width)


def verdict_words(result: Result) -> str:
    """`failed (as expected)`, `failed (expected passed)`, `passed`: for one-line output."""
    words = result.verdict.value
    if not result.as_expected:
        return f"{words} (expected {result.expected_verdict.value})"
    return words if result.verdict is Verdict.PASSED else f"{words} (as expected)"


def verdict_text(result: Result) -> str:
    style = VERDICT_STYLE[result.verdict.value]
    text = f"[{style}]{result.verdict.value.upper()}[/{style}]"
    if not result.as_expected:
        text += f" [bold red](expected {result.expected_verdict.value})[/bold red]"
    elif result.verdict is not Verdict.PASSED:
        text += " (as expected)"
    others = [
        f"{rules.value}: {v.value}"
        for rules, v in result.verdicts.items()
        if v is not result.verdict
    ]
    if others:
        text += f" [dim]({'; '.join(others)})[/dim]"
    return text


def stack_label(result: Result) -> str:
    extensions = result.stats.get("quic_extensions") or []
    return f"quicmig ({', '.join(extensions)})" if extensions else "stock aioquic"


def transfer_words(result: Result) -> str:
    transfer = result.transfer
    words = f"{transfer.workload}: {transfer.bytes:,} bytes, " + (
        "intact" if transfer.intact else "[red]not intact[/red]"
    )
    if transfer.completed_at is not None:
        words += f", done at {_s(transfer.completed_at)}"
    return words


def print_result(console: Console, result: Result, why: str = "") -> None:
    width = console.width
    head = Text.from_markup(
        f"[bold]{result.scenario}[/bold] · seed {result.seed} · backend {result.backend} · "
        f"{stack_label(result)}"
    )
    transfer = Text.from_markup(transfer_words(result))
    if head.cell_len + 3 + transfer.cell_len <= width:
        head.append(" · ").append_text(transfer)
        console.print(head)
    else:
        console.print(head)
        console.print(transfer)
    if result.migrations:
        console.print(migrations_table(result, width))
    else:
        console.print("No migration observed by the server.")
    if result.cid_rotations:
        times = ", ".join(_s(t) for t in result.cid_rotations)
        console.print(f"Connection ID changes on an unchanged path at: {times}")
    console.print(checks_table(result, width))
    console.print(
        f"Verdict: {verdict_text(result)}"
        + (f" — {why}" if why and result.verdict is not Verdict.PASSED else "")
    )
    sim = result.stats.get("run_seconds", 0.0)
    wall = result.wall.get("seconds", 0.0)
    if wall and result.backend != "sim":
        # A live run's length is real time; the rest of the wall time is set-up.
        console.print(f"[dim]{sim:.3f} s of real traffic, {wall:.2f} s with set-up[/dim]")
    elif wall:
        console.print(
            f"[dim]{sim:.3f} s simulated in {wall:.2f} s wall "
            f"({result.wall.get('speedup', 0.0):.1f}x real time, "
            f"{result.wall.get('datagrams_per_second', 0.0):,.0f} datagrams/s)[/dim]"
        )
    for kind, path in result.files.items():
        console.print(f"[dim]{kind}: {path}[/dim]", soft_wrap=True)


def _kinds(observed: list[MigrationKind]) -> str:
    """ "port x2, address": the observed kinds, in order of first appearance."""
    counts = Counter(kind.value.removesuffix("_change") for kind in observed)
    return ", ".join(k if n == 1 else f"{k} x{n}" for k, n in counts.items()) or "-"


SUMMARY_TITLE = "Scenarios"
# Columns of `run all`'s summary, widest layout first; the narrower ones drop the wall
# time and the simulated time, then fold verdict and expectation into one column and
# leave the transfer to a line under the table (only the incomplete ones are named).
SUMMARY_LAYOUTS: tuple[tuple[str, ...], ...] = (
    ("verdict", "expected", "migrations", "RTT", "gap", "transfer", "sim time", "wall"),
    ("verdict", "expected", "migrations", "RTT", "gap", "transfer"),
    ("verdict ✓", "migrations", "RTT", "gap"),
)


def _summary_cells(result: Result) -> dict[str, str]:
    rtts = [m.validation_rtt for m in result.migrations if m.validation_rtt is not None]
    gaps = [m.interruption for m in result.migrations if m.interruption is not None]
    style = VERDICT_STYLE[result.verdict.value]
    verdict = f"[{style}]{result.verdict.value}[/{style}]"
    expected = (
        result.expected_verdict.value
        if result.as_expected
        else f"[bold red]{result.expected_verdict.value}[/bold red]"
    )
    both = verdict + (" [green]✓[/green]" if result.as_expected else " [bold red]✗[/bold red]")
    return {
        "verdict": verdict,
        "expected": expected,
        "verdict ✓": both,
        "migrations": _kinds([m.observed for m in result.migrations]),
        "RTT": _ms(max(rtts)) if rtts else "-",
        "gap": _ms(max(gaps)) if gaps else "-",
        "transfer": "intact" if result.transfer.intact else "[red]incomplete[/red]",
        "sim time": _s(result.stats.get("run_seconds")),
        "wall": f"{result.wall.get('seconds', 0.0):.2f} s",
    }


RIGHT = {"RTT", "gap", "sim time", "wall"}


def _summary(results: Sequence[Result], columns: tuple[str, ...], heavy: bool) -> Table:
    table = Table(
        title=SUMMARY_TITLE,
        title_justify="left",
        box=box.HEAVY_HEAD if heavy else box.SIMPLE_HEAD,
        pad_edge=heavy,
        show_edge=heavy,
    )
    table.add_column("scenario", no_wrap=True)
    for column in columns:
        header = "verdict" if column == "verdict ✓" else column
        table.add_column(header, no_wrap=True, justify="right" if column in RIGHT else "left")
    for result in results:
        cells = _summary_cells(result)
        table.add_row(result.scenario, *(cells[c] for c in columns))
    return table


def summary_table(results: Sequence[Result], width: int | None = None) -> RenderableType:
    """`run all`'s table: every column where `width` (None: always) allows, else the
    narrower layouts of SUMMARY_LAYOUTS."""
    if width is None:
        return _summary(results, SUMMARY_LAYOUTS[0], heavy=True)
    builders: list[Callable[[], RenderableType]] = [
        functools.partial(_summary, results, columns, heavy)
        for columns in SUMMARY_LAYOUTS
        for heavy in (True, False)
    ]
    table = first_fitting(width, *builders)
    headers = [c.header for c in table.columns] if isinstance(table, Table) else []
    if "transfer" in headers:
        return table
    incomplete = [r.scenario for r in results if not r.transfer.intact]
    unexpected = [
        f"{r.scenario} (expected {r.expected_verdict.value})" for r in results if not r.as_expected
    ]
    note = "[dim]✓: the verdict the scenario documents (see quicmig scenarios); ✗: not[/dim]"
    if unexpected:
        note += f"\n[bold red]unexpected: {', '.join(unexpected)}[/bold red]"
    if incomplete:
        note += f"\ntransfer incomplete: {', '.join(incomplete)}"
    return Group(table, Text.from_markup(note))


def fold_columns(table: Table, width: int, keep: int = 1) -> RenderableType:
    """`table` as it is where it fits `width` columns, else split into several tables, each
    with the first `keep` columns (what names a row) and as many of the others as fit
    whole, so that no cell is cut (`quicmig compare` with many runs at 80 columns)."""
    if fits(table, width) or len(table.columns) < keep + 2:
        return table
    first, others = table.columns[:keep], table.columns[keep:]
    groups: list[list[int]] = [[]]
    for index in range(len(others)):
        trial = _subtable(table, first, [others[i] for i in [*groups[-1], index]], "")
        if groups[-1] and not fits(trial, width):
            groups.append([])
        groups[-1].append(index)
    parts: list[RenderableType] = []
    for group in groups:
        shown = f"s {group[0] + 1}-{group[-1] + 1}" if len(group) > 1 else f" {group[0] + 1}"
        note = f"; column{shown} of {len(others)}"
        parts.append(_subtable(table, first, [others[i] for i in group], note))
    return Group(*parts)


def _subtable(table: Table, first: list[Column], columns: list[Column], note: str) -> Table:
    title = table.title if isinstance(table.title, str) else ""
    sub = Table(title=title + note, title_justify="left", box=table.box)
    chosen = [*first, *columns]
    for column in chosen:
        sub.add_column(column.header, style=column.style, no_wrap=True, justify=column.justify)
    cells = [list(column.cells) for column in chosen]
    for index, row in enumerate(table.rows):
        sub.add_row(*(c[index] for c in cells), end_section=row.end_section)
    return sub
