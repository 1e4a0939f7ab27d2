"""A timeline figure: delivered bytes, RTT and congestion window, with migrations marked."""

from __future__ import annotations

from pathlib import Path

from quicmig.core.results import Result


def plot_timeline(result: Result, path: Path) -> None:
    """Write a PNG (or any format matplotlib knows from the suffix) to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = result.series
    fig, (ax_bytes, ax_rtt, ax_cwnd) = plt.subplots(3, 1, sharex=True, figsize=(10, 7))
    if series.delivered:
        times, totals = zip(*series.delivered, strict=True)
        ax_bytes.step(times, [b / 1e6 for b in totals], where="post", color="tab:blue")
    ax_bytes.set_ylabel("delivered (MB)")
    if series.rtt:
        times, rtts = zip(*series.rtt, strict=True)
        ax_rtt.plot(times, [r * 1e3 for r in rtts], color="tab:orange")
    ax_rtt.set_ylabel("smoothed RTT (ms)")
    if series.cwnd:
        times, cwnds = zip(*series.cwnd, strict=True)
        ax_cwnd.step(times, [c / 1e3 for c in cwnds], where="post", color="tab:green")
    ax_cwnd.set_ylabel("cwnd (kB)")
    ax_cwnd.set_xlabel("simulated time (s)" if result.backend == "sim" else "time (s)")
    for ax in (ax_bytes, ax_rtt, ax_cwnd):
        for change in result.network_changes:
            ax.axvline(change.at, color="grey", linestyle="--", linewidth=1)
        for mig in result.migrations:
            end = mig.validated_at if mig.validated_at is not None else mig.detected_at
            ax.axvspan(
                mig.detected_at, max(end, mig.detected_at + 1e-3), color="tab:red", alpha=0.25
            )
            ax.axvline(mig.detected_at, color="tab:red", linewidth=1)
        ax.grid(True, alpha=0.3)
    for change in result.network_changes:
        ax_bytes.annotate(
            change.kind.value,
            (change.at, 1.0),
            xycoords=("data", "axes fraction"),
            rotation=90,
            va="top",
            ha="right",
            fontsize=8,
            color="grey",
        )
    fig.suptitle(
        f"{result.scenario} (seed {result.seed}): {result.verdict.value}; "
        "dashed = network change, red = server saw new path until validated"
    )
    fig.tight_layout()
    tmp = path.with_name(path.name + ".part" + path.suffix)
    # No creation date in SVG and PDF, and fixed SVG element ids (matplotlib draws them at
    # random otherwise), so the same seed gives the same file.
    metadata = {".svg": {"Date": None}, ".pdf": {"CreationDate": None}}.get(path.suffix.lower())
    with plt.rc_context({"svg.hashsalt": "quicmig"}):
        fig.savefig(tmp, metadata=metadata)
    plt.close(fig)
    tmp.replace(path)
