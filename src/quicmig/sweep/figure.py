"""The sweep figure: each metric against a swept key, one line per stack (the median), its
bootstrap 95 % interval as a band; one column per value of the other swept keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quicmig.errors import InputError
from quicmig.sweep.aggregate import METRICS, Group, Summary, sortable

DEFAULT_METRICS = ("interruption", "validation_rtt", "detection_delay")
MAX_COLUMNS = 6  # panels side by side before the figure is unreadable
STACK_COLOURS = {"stock": "tab:blue", "quicmig": "tab:orange", "scenario": "tab:green"}


def x_key(summary: Summary, chosen: str | None) -> str | None:
    """The swept key on the x axis: `chosen`, else the first with more than one value."""
    if chosen is not None:
        if chosen not in summary.keys:
            known = ", ".join(summary.keys) or "none"
            raise InputError(f"--x {chosen}: not a swept key; swept keys: {known}")
        return chosen
    for index, key in enumerate(summary.keys):
        if len({repr(g.params[index]) for g in summary.groups}) > 1:
            return key
    return summary.keys[0] if summary.keys else None


def check_metrics(metrics: tuple[str, ...]) -> None:
    for name in metrics:
        if name not in METRICS:
            raise InputError(f"--metrics {name!r}: allowed: {', '.join(METRICS)}")
    if not metrics:
        raise InputError(f"--metrics: name one or more of {', '.join(METRICS)}")


def plot_summary(
    summary: Summary,
    path: Path,
    metrics: tuple[str, ...] = DEFAULT_METRICS,
    chosen_x: str | None = None,
) -> None:
    """Write the figure to `path` (format from the suffix)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    check_metrics(metrics)
    key = x_key(summary, chosen_x)
    x_index = summary.keys.index(key) if key is not None else None
    others = [i for i in range(len(summary.keys)) if i != x_index]
    columns: dict[tuple[Any, ...], list[Group]] = {}
    for group in summary.groups:
        columns.setdefault(tuple(group.params[i] for i in others), []).append(group)
    if len(columns) > MAX_COLUMNS:
        raise InputError(
            f"the figure would need {len(columns)} panels per metric (at most {MAX_COLUMNS}); "
            "sweep fewer values of the keys not on the x axis, or choose --x"
        )
    fig, axes = plt.subplots(
        len(metrics),
        max(len(columns), 1),
        figsize=(3.6 * max(len(columns), 1) + 1, 2.6 * len(metrics) + 0.6),
        sharex=True,
        sharey="row",
        squeeze=False,
    )
    for col, (fixed, groups) in enumerate(columns.items()):
        title = ", ".join(
            f"{short_key(summary.keys[i])}={v}" for i, v in zip(others, fixed, strict=True)
        )
        for row, metric in enumerate(metrics):
            ax = axes[row][col]
            _draw(ax, groups, metric, x_index)
            if row == 0 and title:
                ax.set_title(title, fontsize=9)
            if col == 0:
                label, unit = METRICS[metric]
                ax.set_ylabel(f"{label} ({'ms' if unit == 's' else unit})", fontsize=9)
            if row == len(metrics) - 1:
                ax.set_xlabel(short_key(key) if key is not None else "", fontsize=9)
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper right", fontsize=9)
    runs = summary.runs
    fig.suptitle(f"median and bootstrap 95 % interval, {runs} runs", fontsize=10, x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 0.92, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _draw(ax: Any, groups: list[Group], metric: str, x_index: int | None) -> None:
    scale = 1e3 if METRICS[metric][1] == "s" else 1.0  # seconds are drawn in ms
    for stack in sorted({g.stack for g in groups}):
        points = []
        for group in groups:
            if group.stack != stack:
                continue
            estimate = group.estimate(metric)
            if estimate.median is None or estimate.low is None or estimate.high is None:
                continue
            x = group.params[x_index] if x_index is not None else 0
            points.append((x, estimate.median * scale, estimate.low * scale, estimate.high * scale))
        points.sort(key=lambda p: sortable(p[0]))
        if not points:
            continue
        xs = [p[0] for p in points]
        colour = STACK_COLOURS.get(stack)
        ax.plot(xs, [p[1] for p in points], marker="o", markersize=3, label=stack, color=colour)
        ax.fill_between(
            xs, [p[2] for p in points], [p[3] for p in points], alpha=0.25, color=colour
        )


def short_key(key: str) -> str:
    """`links.cellular.delay_ms` -> `cellular.delay_ms`: the axis label's last two parts."""
    return ".".join(key.split(".")[-2:])
