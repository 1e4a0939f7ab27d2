"""The sweep report in the terminal: metrics per group, then pass rates per check."""

from __future__ import annotations

from rich import box
from rich.markup import escape
from rich.table import Table

from quicmig.sweep.aggregate import METRICS, Estimate, Group, Summary

# metric unit -> (shown unit, factor): times of migrations in ms, completion in s, bytes in kB
SHOWN: dict[str, tuple[str, float]] = {"s": ("ms", 1e3), "B": ("kB", 1e-3)}
SHOWN_PER_METRIC = {"completion": ("s", 1.0)}
HEADERS = {  # short column headers, so that a table fits 132 columns
    "validation_rtt": "validation",
    "detection_delay": "detection",
    "completion": "completed",
    "retransmitted_bytes": "retransmitted",
}


def _shown(name: str, unit: str) -> tuple[str, float]:
    return SHOWN_PER_METRIC.get(name) or SHOWN.get(unit, (unit, 1.0))


def _cell(estimate: Estimate, factor: float) -> str:
    if estimate.median is None or estimate.low is None or estimate.high is None:
        return "-" + (f" ({estimate.missing} -)" if estimate.missing else "")
    low, mid, high = (v * factor for v in (estimate.low, estimate.median, estimate.high))
    text = f"{mid:.3g} [{low:.3g}, {high:.3g}]" if high > low else f"{mid:.3g}"
    return text + (f" ({estimate.missing} -)" if estimate.missing else "")


def _head(table: Table, summary: Summary) -> None:
    for key in summary.keys:
        table.add_column(key.rsplit(".", 1)[-1], justify="right", no_wrap=True)
    table.add_column("stack", no_wrap=True)
    table.add_column("runs", justify="right", no_wrap=True)


def _params(group: Group) -> list[str]:
    return [str(value) for value in group.params] + [group.stack, _runs(group)]


def _runs(group: Group) -> str:
    return str(group.runs) + (f" [red]+{group.errors} errors[/red]" if group.errors else "")


def metrics_table(summary: Summary) -> Table:
    table = Table(
        title=escape(
            "Sweep: median [bootstrap 95 % interval] (no interval: all values equal); "
            "(n -): n values absent (not validated, not completed)"
        ),
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    _head(table, summary)
    table.add_column("passed", justify="right", no_wrap=True)
    for name, (label, unit) in METRICS.items():
        header = f"{HEADERS.get(name, label)} ({_shown(name, unit)[0]})"
        table.add_column(header, justify="right")
    for group in summary.groups:
        passed = f"{group.verdicts['passed']}/{group.runs}"
        cells = [
            escape(_cell(group.estimate(name), _shown(name, unit)[1]))
            for name, (_, unit) in METRICS.items()
        ]
        table.add_row(*_params(group), passed, *cells)
    return table


def checks_table(summary: Summary) -> Table:
    table = Table(
        title="Checks: passed / judged (unsupported and not applicable are not judged)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
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
