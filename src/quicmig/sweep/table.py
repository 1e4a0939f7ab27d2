"""The sweep report in the terminal: metrics per group, then pass rates per check."""

from __future__ import annotations

from rich.table import Table

from quicmig.sweep.aggregate import METRICS, Estimate, Group, Summary
from quicmig.sweep.figure import short_key


def _cell(estimate: Estimate, unit: str) -> str:
    if estimate.median is None or estimate.low is None or estimate.high is None:
        return "-"
    if unit == "s":
        text = f"{estimate.median * 1e3:.1f} [{estimate.low * 1e3:.1f}, {estimate.high * 1e3:.1f}]"
    else:
        text = f"{estimate.median:,.0f} [{estimate.low:,.0f}, {estimate.high:,.0f}]"
    return text + (f" ({estimate.missing} -)" if estimate.missing else "")


def _head(table: Table, summary: Summary) -> None:
    for key in summary.keys:
        table.add_column(short_key(key), justify="right")
    table.add_column("stack")
    table.add_column("runs", justify="right")


def _params(group: Group) -> list[str]:
    return [str(value) for value in group.params] + [group.stack, _runs(group)]


def _runs(group: Group) -> str:
    return str(group.runs) + (f" [red]+{group.errors} errors[/red]" if group.errors else "")


def metrics_table(summary: Summary) -> Table:
    table = Table(
        title="Sweep: medians [bootstrap 95 % interval]; times in ms; (n -): values absent",
        title_justify="left",
    )
    _head(table, summary)
    table.add_column("passed", justify="right")
    for label, unit in METRICS.values():
        table.add_column(f"{label}" + (" (B)" if unit == "B" else ""), justify="right")
    for group in summary.groups:
        passed = f"{group.verdicts['passed']}/{group.runs}"
        cells = [_cell(group.estimate(name), unit) for name, (_, unit) in METRICS.items()]
        table.add_row(*_params(group), passed, *cells)
    return table


def checks_table(summary: Summary) -> Table:
    table = Table(
        title="Checks: passed / judged (unsupported and not applicable are not judged)",
        title_justify="left",
    )
    _head(table, summary)
    for name in summary.check_names:
        table.add_column(name, justify="right", overflow="fold")
    for group in summary.groups:
        cells = []
        for name in summary.check_names:
            passed, judged = group.pass_rate(name)
            cells.append(f"{passed}/{judged}" if judged else "-")
        table.add_row(*_params(group), *cells)
    return table
