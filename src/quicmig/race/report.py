"""The race's terminal table: one row per transport, the continuity figures as columns.

Everything shown is read from the Results (their `stats["continuity"]`, computed by the
judge for every transport alike, quicmig.core.continuity), so a table printed from a saved
race JSON is the one printed after the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.table import Table

from quicmig.core.results import Result
from quicmig.report.table import verdict_words

LABELS = {"quic": "QUIC", "tcp": "TCP + TLS", "mptcp": "MPTCP + TLS"}


def label(result: Result) -> str:
    """The transport's name, saying so where MPTCP fell back to TCP."""
    name = LABELS.get(result.transport, result.transport)
    if "fallback" in result.stats:
        name += " (MPTCP unavailable)"
    return name


def seconds(value: Any, unit: str = "s") -> str:
    if value is None:
        return "-"
    value = float(value)
    return f"{value * 1e3:.0f} ms" if unit == "ms" or value < 1 else f"{value:.2f} s"


def size(count: Any) -> str:
    if count is None:
        return "-"
    count = int(count)
    if count >= 1_000_000:
        return f"{count / 1e6:.2f} MB"
    return f"{count / 1e3:.0f} kB" if count >= 1000 else f"{count} B"


def race_table(results: Sequence[Result]) -> Table:
    first = results[0] if results else None
    moves = [(label(r), r.network_changes[0]) for r in results if r.network_changes]
    title = f"{first.scenario if first else 'race'}: " + (
        f"{moves[0][1].kind.value} at "
        + ", ".join(f"{change.at:.2f} s ({name})" for name, change in moves)
        if moves
        else "no move"
    )
    table = Table(title=title, title_justify="left")
    for column in (
        "transport",
        "survived",
        "handshakes",
        "longest gap",
        "resume",
        "re-fetched",
        "resent",
        "done at",
    ):
        table.add_column(column, no_wrap=True)
    for result in results:
        c = result.stats.get("continuity", {})
        survived = c.get("survived")
        done = c.get("completed_at")
        table.add_row(
            label(result),
            "-" if survived is None else "yes" if survived else "[red]no[/red]",
            str(c.get("handshakes", "-")),
            seconds(c.get("longest_gap_s")),
            seconds(c.get("resume_s")) if c.get("interruption_s") is not None else "-",
            size(c.get("refetched_bytes")),
            size(c.get("retransmitted_bytes")),
            seconds(done) if done is not None else "[red]never[/red]",
        )
    table.caption = (
        "resume: from the move to the first byte after its gap; re-fetched: body bytes the "
        "client received twice; resent: bytes the server's transport sent again"
    )
    table.caption_justify = "left"
    return table


def notes(results: Sequence[Result]) -> list[str]:
    """One line per transport: how its download went, from the checks' own words."""
    lines = []
    for result in results:
        wanted = (
            ("connection-survived", "resumed-with-range", "path-after-move", "mptcp-negotiated")
            if result.transport != "quic"
            else ("migrations-observed", "paths-validated", "migration-target")
        )
        said = [f"{c.name}: {c.detail}" for c in result.checks if c.name in wanted]
        if "fallback" in result.stats:
            said.insert(0, str(result.stats["fallback"]))
        lines.append(f"{label(result)}: {verdict_words(result)}; " + "; ".join(said))
    return lines
