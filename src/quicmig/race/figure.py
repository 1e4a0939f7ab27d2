"""The race's figure: every transport's delivered bytes on one time axis, the move marked.

Each curve is a Result's `series.delivered` (what the client's application received, on
its run's clock: zero when the run's server started), each run's move a dashed line of its
colour (a move triggered by progress comes when that transport had the bytes).
Each new connection a TCP client opened is a dot on its curve, where its first byte came.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from quicmig.core.results import Result
from quicmig.race.report import label

COLORS = {"quic": "tab:blue", "tcp": "tab:red", "mptcp": "tab:green"}


def plot_race(results: Sequence[Result], path: Path) -> None:
    """Write the figure to `path` (.png, .svg or .pdf), through a temporary file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5))
    for result in results:
        color = COLORS.get(result.transport, "tab:grey")
        points = result.series.delivered
        if points:
            times, totals = zip(*points, strict=True)
            ax.step(
                [0.0, *times],
                [0.0, *(t / 1e6 for t in totals)],
                where="post",
                color=color,
                label=label(result),
            )
        attempts = result.stats.get("tcp", {}).get("attempts", [])
        for attempt in attempts[1:]:
            at = attempt.get("first_byte_at")
            if at is not None:
                before = [b for t, b in points if t < at]
                ax.plot(at, (before[-1] if before else 0) / 1e6, "o", color=color, markersize=5)
    first = results[0] if results else None
    for result in results:  # each run's own move (a move by progress lands at its own time)
        color = COLORS.get(result.transport, "tab:grey")
        for change in result.network_changes:
            ax.axvline(change.at, color=color, linestyle="--", linewidth=1, alpha=0.7)
    for change in first.network_changes if first else []:
        ax.annotate(
            change.kind.value,
            (change.at, 1.0),
            xycoords=("data", "axes fraction"),
            rotation=90,
            va="top",
            ha="right",
            fontsize=8,
            color="grey",
        )
    ax.set_xlabel("time since the run started (s)")
    ax.set_ylabel("delivered to the application (MB)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    title = first.scenario if first else "race"
    ax.set_title(f"{title}: dashed = the move in each run, dots = a TCP reconnection's first byte")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".part" + path.suffix)
    metadata = {".svg": {"Date": None}, ".pdf": {"CreationDate": None}}.get(path.suffix.lower())
    try:
        with plt.rc_context({"svg.hashsalt": "quicmig"}):
            fig.savefig(tmp, metadata=metadata)
        tmp.replace(path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
