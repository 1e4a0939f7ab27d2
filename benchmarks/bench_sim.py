"""Benchmark the simulator on rebind-port (10 MB), against a bare aioquic loop, in one run.

    python benchmarks/bench_sim.py [--repeat 5] [--json FILE]

Measures, interleaved so both sides see the same machine noise, and reports medians:
  - `quicmig run rebind-port` as a whole process: wall seconds / simulated seconds
    (target < 0.2, i.e. more than five times faster than real time);
  - the simulator in-process vs `baseline.bare_download` moving the same 10 MB between two
    aioquic connections with no network model: wall-time ratio (target <= 1.25), datagrams
    per wall second, and the cost per datagram relative to the bare loop.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baseline import bare_download

from quicmig.model.loader import load_scenario
from quicmig.runner import RunOptions
from quicmig.sim.runner import run_scenario

SCENARIO = "rebind-port"
SIZE = 10_000_000  # bytes, as the scenario


def whole_process(folder: Path) -> tuple[float, float]:
    out = folder / "result.json"
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "quicmig", "run", SCENARIO, "-q", "--json", str(out)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - started
    return wall, float(json.loads(out.read_text())["stats"]["run_seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the medians here")
    args = parser.parse_args()
    scenario = load_scenario(SCENARIO)
    rows: dict[str, list[float]] = {
        k: [] for k in ("process", "simulated", "sim", "bare", "sim_dgrams", "bare_dgrams")
    }
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(args.repeat):
            wall, simulated = whole_process(Path(tmp))
            started = time.perf_counter()
            result = run_scenario(scenario, RunOptions(seed=1))
            sim = time.perf_counter() - started
            started = time.perf_counter()
            bare_dgrams, _ = bare_download(SIZE)
            bare = time.perf_counter() - started
            assert result.transfer.intact
            # Datagrams between the endpoints: each one crosses two pipes (client and server links).
            sim_dgrams = (
                result.stats["links"]["server/up"]["sent"]
                + result.stats["links"]["server/down"]["delivered"]
            )
            for key, value in (
                ("process", wall),
                ("simulated", simulated),
                ("sim", sim),
                ("bare", bare),
                ("sim_dgrams", sim_dgrams),
                ("bare_dgrams", bare_dgrams),
            ):
                rows[key].append(value)
            print(
                f"run {index + 1}: process {wall:.2f} s, sim {sim:.2f} s, bare {bare:.2f} s",
                file=sys.stderr,
            )
    med = {k: statistics.median(v) for k, v in rows.items()}
    ratios = [s / b for s, b in zip(rows["sim"], rows["bare"], strict=True)]
    per_dgram = [
        (s / sd) / (b / bd)
        for s, sd, b, bd in zip(
            rows["sim"], rows["sim_dgrams"], rows["bare"], rows["bare_dgrams"], strict=True
        )
    ]
    summary = {
        "repeat": args.repeat,
        "simulated_seconds": med["simulated"],
        "process_wall_seconds": med["process"],
        "process_wall_per_simulated_second": med["process"] / med["simulated"],
        "sim_wall_seconds": med["sim"],
        "bare_wall_seconds": med["bare"],
        "sim_over_bare": statistics.median(ratios),
        "sim_datagrams": med["sim_dgrams"],
        "bare_datagrams": med["bare_dgrams"],
        "sim_datagrams_per_second": med["sim_dgrams"] / med["sim"],
        "per_datagram_cost_over_bare": statistics.median(per_dgram),
    }
    rows_out = [
        ("simulated duration", f"{summary['simulated_seconds']:.2f} s", ""),
        (
            f"whole process `quicmig run {SCENARIO}`",
            f"{summary['process_wall_seconds']:.2f} s = "
            f"{summary['process_wall_per_simulated_second']:.3f} x simulated",
            "< 0.2",
        ),
        (
            "simulator in-process",
            f"{summary['sim_wall_seconds']:.2f} s, "
            f"{summary['sim_datagrams_per_second']:,.0f} datagrams/s",
            "",
        ),
        ("bare aioquic loop, same 10 MB", f"{summary['bare_wall_seconds']:.2f} s", ""),
        ("simulator / bare (wall)", f"{summary['sim_over_bare']:.2f}", "<= 1.25"),
        (
            "datagrams: simulator / bare",
            f"{summary['sim_datagrams']:.0f} / {summary['bare_datagrams']:.0f}",
            "",
        ),
        (
            "cost per datagram, simulator / bare",
            f"{summary['per_datagram_cost_over_bare']:.2f}",
            "",
        ),
    ]
    print(f"| measure ({SCENARIO}, 10 MB, median of {args.repeat}) | value | target |")
    print("|---|---|---|")
    for row in rows_out:
        print("| " + " | ".join(row) + " |")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
