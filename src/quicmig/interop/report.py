"""The interop matrix as a terminal table per test, as Markdown, and the one-line reasons.

Rows are servers, columns clients, each cell one letter per repeat (LEGEND), like
quic-interop-runner's results page; readable at 80 columns. Every cell that did not pass is
listed below its table with the first reason of its verdict, which the judge wrote from the
capture (what the server sent where, which challenge went unanswered, what did not decrypt).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from rich.table import Table
from rich.text import Text

from quicmig.interop.matrix import (
    ERROR,
    FAILED,
    LEGEND,
    NO_PAIR,
    PASSED,
    RFC9000_ONLY,
    STRICT_ONLY,
    TESTS,
    UNSUPPORTED,
    Cell,
)

STYLES = {
    PASSED: "bold green",
    RFC9000_ONLY: "bold cyan",
    STRICT_ONLY: "bold magenta",
    FAILED: "bold red",
    UNSUPPORTED: "yellow",
    ERROR: "bold white on red",
    NO_PAIR: "dim",
}
EXPLAINED = (FAILED, RFC9000_ONLY, STRICT_ONLY, ERROR)  # listed one by one under the table


def _grid(cells: Sequence[Cell]) -> dict[tuple[str, str], list[Cell]]:
    grid: dict[tuple[str, str], list[Cell]] = defaultdict(list)
    for cell in sorted(cells, key=lambda c: c.repeat):
        grid[(cell.server, cell.client)].append(cell)
    return grid


def _tests(cells: Sequence[Cell]) -> list[str]:
    present = {c.test for c in cells}
    return [t for t in TESTS if t in present]


def terminal_tables(
    cells: Sequence[Cell], servers: Sequence[str], clients: Sequence[str]
) -> list[Table]:
    """One table per test: servers down, clients across."""
    tables = []
    for test in _tests(cells):
        grid = _grid([c for c in cells if c.test == test])
        table = Table(title=test, title_justify="left", show_lines=False, pad_edge=False)
        table.add_column("server \\ client", no_wrap=True)
        for client in clients:
            table.add_column(client, justify="center", no_wrap=True)
        for server in servers:
            row: list[Text | str] = [server]
            for client in clients:
                text = Text()
                for cell in grid.get((server, client), []):
                    text.append(cell.letter, style=STYLES[cell.letter])
                row.append(text if text.plain else Text(" "))
            table.add_row(*row)
        tables.append(table)
    return tables


def legend() -> str:
    return "  ".join(f"{letter} {words}" for letter, words in LEGEND.items())


def explained(cells: Sequence[Cell]) -> list[str]:
    """One line per cell that failed or could only partly pass, with its first reason."""
    lines = []
    for cell in cells:
        if cell.letter in EXPLAINED:
            reason = cell.reasons[0] if cell.reasons else "(no reason recorded)"
            repeat = f" #{cell.repeat}" if cell.repeat > 1 else ""
            lines.append(
                f"{cell.letter} {cell.test} {cell.server} → {cell.client}{repeat}: {reason}"
            )
    return lines


def unsupported_reasons(cells: Sequence[Cell]) -> list[str]:
    """The reasons of unsupported cells, each once, with the cells it holds for."""
    by_reason: dict[str, list[str]] = defaultdict(list)
    for cell in cells:
        if cell.letter == UNSUPPORTED:
            reason = cell.reasons[0] if cell.reasons else "(no reason recorded)"
            by_reason[reason].append(f"{cell.test} {cell.server} → {cell.client}")
    return [
        f"{len(where)} cell{'s' if len(where) > 1 else ''} ({_few(where)}): {reason}"
        for reason, where in by_reason.items()
    ]


def _few(names: list[str], shown: int = 3) -> str:
    more = f", and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def markdown(
    cells: Sequence[Cell],
    servers: Sequence[str],
    clients: Sequence[str],
    title: str,
    notes: Sequence[str] = (),
) -> str:
    """The matrix as Markdown: a table per test, each letter linking to the cell's Result,
    then the failures explained and the unsupported cells' reasons."""
    out = [f"# {title}", "", *notes, ""] if notes else [f"# {title}", ""]
    out.append("Legend: " + "; ".join(f"**{k}** {v}" for k, v in LEGEND.items()) + ".")
    out.append("")
    for test in _tests(cells):
        mine = [c for c in cells if c.test == test]
        grid = _grid(mine)
        out += [f"## {test}", ""]
        out.append("| server \\ client | " + " | ".join(clients) + " |")
        out.append("| --- |" + " :---: |" * len(clients))
        for server in servers:
            row = []
            for client in clients:
                links = [
                    f"[{c.letter}]({_relative(c.folder)}/result.json)"
                    if c.folder and c.verdicts
                    else c.letter
                    for c in grid.get((server, client), [])
                ]
                row.append(" ".join(links) or " ")
            out.append(f"| {server} | " + " | ".join(row) + " |")
        out.append("")
        lines = explained(mine)
        if lines:
            out += [f"- {line}" for line in lines]
            out.append("")
        reasons = unsupported_reasons(mine)
        if reasons:
            out += [f"- U: {line}" for line in reasons]
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def _relative(folder: str | None) -> str:
    if folder is None:
        return ""
    marker = "/cells/"
    return "cells/" + folder.split(marker, 1)[1] if marker in folder else folder
