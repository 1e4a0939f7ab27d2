"""Terminal tables for results, with rich."""

from __future__ import annotations

from collections import Counter

from rich.console import Console
from rich.table import Table

from quicmig.core.datagram import Address, format_address
from quicmig.core.results import Check, Result
from quicmig.model.verdicts import CheckState, MigrationKind, Verdict

PIPE_WIDTH = 132  # columns when printing to a file or pipe, where rich would assume 80


def make_console() -> Console:
    """A console for stdout: the terminal's width, or PIPE_WIDTH columns when redirected."""
    console = Console()
    return console if console.is_terminal else Console(width=PIPE_WIDTH)


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


def migrations_table(result: Result) -> Table:
    table = Table(title="Migrations observed by the server", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("network change")
    table.add_column("server saw")
    table.add_column("after", justify="right")
    table.add_column("challenge RTT", justify="right")
    table.add_column("new DCID")
    table.add_column("gap", justify="right")
    table.add_column("lost / retx", justify="right")
    for index, mig in enumerate(result.migrations, 1):
        change = (
            "-"
            if mig.network_change is None
            else f"{mig.network_change.value} @ {_s(mig.network_change_at)}"
        )
        rtt = _ms(mig.validation_rtt) if mig.validated_at is not None else "[red]never[/red]"
        table.add_row(
            str(index),
            change,
            f"{mig.observed.label}\n"
            f"{format_address(mig.old_peer)} → {_new_peer(mig.old_peer, mig.new_peer)}",
            _ms(mig.detection_delay),
            rtt,
            "yes" if mig.cid_changed else "no",
            _ms(mig.interruption),
            f"{mig.lost_packets} / {_size(mig.retransmitted_bytes)}",
        )
    return table


def checks_table(result: Result) -> Table:
    table = Table(title="Checks", title_justify="left")
    table.add_column("")
    table.add_column("check")
    table.add_column("observed")
    for check in result.checks:
        table.add_row(check_mark(check), check.name, check.detail)
    return table


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


def print_result(console: Console, result: Result, why: str = "") -> None:
    transfer = result.transfer
    sim = result.stats.get("run_seconds", 0.0)
    extensions = result.stats.get("quic_extensions") or []
    stack = f"quicmig ({', '.join(extensions)})" if extensions else "stock aioquic"
    console.print(
        f"[bold]{result.scenario}[/bold]  seed {result.seed}  backend {result.backend}  "
        f"stack {stack}  "
        f"{transfer.workload}: {transfer.bytes} bytes, "
        + ("intact" if transfer.intact else "[red]not intact[/red]")
        + (f", done at {_s(transfer.completed_at)}" if transfer.completed_at is not None else "")
    )
    if result.migrations:
        console.print(migrations_table(result))
    else:
        console.print("No migration observed by the server.")
    if result.cid_rotations:
        times = ", ".join(_s(t) for t in result.cid_rotations)
        console.print(f"Connection ID changes on an unchanged path at: {times}")
    console.print(checks_table(result))
    console.print(
        f"Verdict: {verdict_text(result)}"
        + (f" — {why}" if why and result.verdict is not Verdict.PASSED else "")
    )
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
        console.print(f"[dim]{kind}: {path}[/dim]")


def _kinds(observed: list[MigrationKind]) -> str:
    """ "port x2, address": the observed kinds, in order of first appearance."""
    counts = Counter(kind.value.removesuffix("_change") for kind in observed)
    return ", ".join(k if n == 1 else f"{k} x{n}" for k, n in counts.items()) or "-"


def summary_table(results: list[Result]) -> Table:
    table = Table(title="Scenarios", title_justify="left")
    table.add_column("scenario", no_wrap=True)
    for column in (
        "verdict",
        "expected",
        "migrations",
        "RTT",
        "gap",
        "transfer",
        "sim time",
        "wall",
    ):
        table.add_column(column, no_wrap=True)
    for result in results:
        kinds = _kinds([m.observed for m in result.migrations])
        rtts = [m.validation_rtt for m in result.migrations if m.validation_rtt is not None]
        gaps = [m.interruption for m in result.migrations if m.interruption is not None]
        style = VERDICT_STYLE[result.verdict.value]
        table.add_row(
            result.scenario,
            f"[{style}]{result.verdict.value}[/{style}]",
            result.expected_verdict.value
            if result.as_expected
            else f"[bold red]{result.expected_verdict.value}[/bold red]",
            kinds,
            _ms(max(rtts)) if rtts else "-",
            _ms(max(gaps)) if gaps else "-",
            "intact" if result.transfer.intact else "[red]incomplete[/red]",
            _s(result.stats.get("run_seconds")),
            f"{result.wall.get('seconds', 0.0):.2f} s",
        )
    return table
