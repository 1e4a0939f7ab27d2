"""The static timeline figure (`--plot`): the whole run, and a zoomed panel per migration.

Left, the whole run: bytes delivered to the client's application, the server's smoothed RTT
and its congestion window (both as the server's aioquic estimated them), with the client
address the server was sending to shaded (the WiFi and cellular paths of network-switch) and
the network changes marked. Right, one column per migration (the first MAX_ZOOMS), zoomed
from its network change to just past its validation, so that the validation band, the
challenge and the response can be read. What is drawn comes from quicmig.report.charts, as
in the HTML report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from quicmig.core.results import Result
from quicmig.report.charts import Mark, PathSpan, marks, paths, zoom_of

MAX_ZOOMS = 2  # zoomed columns beside the whole run
PATH_COLOURS = ("#1f6feb", "#bf8700", "#1a7f37", "#8250df")
LineStyle = Literal["-", "--", ":"]
MARK_STYLE: dict[str, tuple[str, LineStyle, float]] = {  # colour, line style, width (points)
    "change": ("#b08800", "--", 1.4),
    "detected": ("#1f6feb", "-", 1.0),
    "challenge": ("#bf3989", ":", 1.2),
    "validated": ("#1a7f37", ":", 1.2),
}
SHORT = {
    "change": "network change",
    "detected": "server sees it",
    "challenge": "PATH_CHALLENGE",
    "validated": "PATH_RESPONSE",
}
PANELS: tuple[tuple[str, str, float, str, bool], ...] = (  # key, label, scale, colour, step
    ("delivered", "delivered to the\nclient's app (MB)", 1e-6, "#1f6feb", True),
    ("rtt", "server's smoothed\nRTT (ms)", 1e3, "#bc4c00", False),
    ("cwnd", "server's congestion\nwindow (kB)", 1e-3, "#1a7f37", True),
)


def _series(result: Result, key: str) -> list[tuple[float, float]]:
    series = result.series
    if key == "delivered":
        return [(t, float(v)) for t, v in series.delivered]
    if key == "rtt":
        return list(series.rtt)
    return [(t, float(v)) for t, v in series.cwnd]


def _draw(
    axes: list[Any],
    result: Result,
    spans: list[PathSpan],
    shown: list[Mark],
    window: tuple[float, float] | None,
    label_marks: bool,
) -> None:
    for ax, (key, _, scale, colour, step) in zip(axes, PANELS, strict=True):
        for span in spans:
            ax.axvspan(span.start, span.end, color=PATH_COLOURS[span.index % 4], alpha=0.09, lw=0)
        for mig in result.migrations:
            if mig.validated_at is not None:
                ax.axvspan(mig.detected_at, mig.validated_at, color="#cf222e", alpha=0.18, lw=0)
        points = _series(result, key)
        if window is not None:
            inside = [p for p in points if window[0] <= p[0] <= window[1]]
            before = [p for p in points if p[0] < window[0]][-1:]
            points = before + inside
        if points:
            times, values = zip(*points, strict=True)
            scaled = [v * scale for v in values]
            if step:
                ax.step(times, scaled, where="post", color=colour, lw=1.3)
            else:
                ax.plot(times, scaled, color=colour, lw=1.3)
            if key == "delivered" and window is not None and len(scaled) > 1:
                low, high = min(scaled), max(scaled)
                ax.set_ylim(low - (high - low) * 0.05, high + (high - low) * 0.08 + 1e-9)
            elif key != "delivered" or window is None:
                ax.set_ylim(bottom=0)
        for mark in shown:
            colour_, style, width = MARK_STYLE[mark.kind]
            ax.axvline(mark.at, color=colour_, linestyle=style, linewidth=width)
        if window is not None:
            ax.set_xlim(*window)
        ax.grid(True, alpha=0.25)
        ax.tick_params(labelsize=9)
    top = axes[0]
    low, high = top.get_xlim()
    labelled = [m for m in shown if (label_marks or m.kind == "change") and low <= m.at <= high]
    for number, mark in enumerate(labelled):
        # A zoom labels each mark with a short word, one row each, so none overlaps.
        row = number if label_marks else 0
        right = (mark.at - low) / (high - low) > 0.6  # label to the left: it stays inside
        top.annotate(
            SHORT[mark.kind] if label_marks else mark.label,
            (mark.at, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(-3 if right else 3, 3 + 11 * row),
            ha="right" if right else "left",
            textcoords="offset points",
            fontsize=9,
            color=MARK_STYLE[mark.kind][0],
            annotation_clip=False,
        )


def plot_timeline(result: Result, path: Path) -> None:
    """Write a PNG (or any format matplotlib knows from the suffix) to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.artist import Artist
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    spans = paths(result)
    every = marks(result)
    zooms = [zoom_of(m, i) for i, m in enumerate(result.migrations)][:MAX_ZOOMS]
    columns = 1 + len(zooms)
    fig = plt.figure(figsize=(7.5 + 3.6 * len(zooms), 7.6))
    grid = fig.add_gridspec(
        3, columns, width_ratios=[2.2] + [1] * len(zooms), hspace=0.18, wspace=0.22,
        left=0.09, right=0.98, top=0.80, bottom=0.17,
    )  # fmt: skip
    main = [fig.add_subplot(grid[0, 0])]
    main += [fig.add_subplot(grid[row, 0], sharex=main[0]) for row in (1, 2)]
    _draw(main, result, spans, [m for m in every if m.kind == "change"], None, False)
    for ax, (_, label, *_rest) in zip(main, PANELS, strict=True):
        ax.set_ylabel(label, fontsize=9)
    clock = "simulated" if result.backend == "sim" else "real"
    main[-1].set_xlabel(f"seconds since the start of the run ({clock} time)", fontsize=9)
    for ax in main[:-1]:
        ax.tick_params(labelbottom=False)
    for column, zoom in enumerate(zooms, 1):
        axes = [fig.add_subplot(grid[0, column])]
        axes += [fig.add_subplot(grid[row, column], sharex=axes[0]) for row in (1, 2)]
        near = [m for m in every if zoom.start <= m.at <= zoom.end]
        _draw(axes, result, spans, near, (zoom.start, zoom.end), True)
        labels = sum(1 for m in near)
        axes[0].set_title(f"{zoom.title}, zoomed", fontsize=10, pad=8 + 11 * labels)
        axes[-1].set_xlabel("seconds", fontsize=9)
        for ax in axes[:-1]:
            ax.tick_params(labelbottom=False)
        for ax in main:  # where the zoom is, on the whole run
            ax.axvspan(zoom.start, zoom.end, color="#57606a", alpha=0.06, lw=0)
    handles: list[Artist] = [
        Patch(color=PATH_COLOURS[s.index % 4], alpha=0.25, label=f"server sends to {s.label}")
        for s in {s.address: s for s in spans}.values()
    ]
    handles.append(Patch(color="#cf222e", alpha=0.3, label="new path until PATH_RESPONSE"))
    handles += [
        Line2D(
            [],
            [],
            label=SHORT[kind],
            color=MARK_STYLE[kind][0],
            linestyle=MARK_STYLE[kind][1],
            linewidth=MARK_STYLE[kind][2],
        )
        for kind in ("change", "detected", "challenge", "validated")
        if any(m.kind == kind for m in every)
    ]
    fig.legend(handles=handles, loc="lower left", ncol=min(4, len(handles)), fontsize=9,
               frameon=False, bbox_to_anchor=(0.06, 0.0))  # fmt: skip
    fig.suptitle(
        f"{result.scenario} (seed {result.seed}, {result.backend}): {result.verdict.value}; "
        f"{len(result.migrations)} migration{'s' if len(result.migrations) != 1 else ''}",
        fontsize=12,
        x=0.09,
        ha="left",
    )
    tmp = path.with_name(path.name + ".part" + path.suffix)
    # No creation date in SVG and PDF, and fixed SVG element ids (matplotlib draws them at
    # random otherwise), so the same seed gives the same file.
    metadata = {".svg": {"Date": None}, ".pdf": {"CreationDate": None}}.get(path.suffix.lower())
    with plt.rc_context({"svg.hashsalt": "quicmig"}):
        fig.savefig(tmp, metadata=metadata, dpi=110)
    plt.close(fig)
    tmp.replace(path)
