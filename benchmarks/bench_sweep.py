"""Benchmark the sweep engines on the same 40-run sweep, interleaved, medians.

    python benchmarks/bench_sweep.py [--repeat 3] [--workers 2] [--json FILE] [--no-run-all]

Each round runs the sweep (nat-rebinding, a 2 MB download, 40 seeds: about 0.4 s of CPU a
run) serially in this process, on the local process pool and on a fresh dask.distributed
LocalCluster (its start included), and checks that the three give identical runs apart
from their wall fields. Reported, as medians over the rounds:
  - wall seconds and throughput relative to serial (targets on 2 cores: pool >= 1.8x,
    Dask >= 1.6x including cluster start);
  - per-task overhead of each engine: (workers x wall - sum of the runs' own seconds) / runs,
    i.e. the time a worker slot spent on anything but simulating, spread over the runs
    (also without the start-up);
  - start-up: from the call to the first result, less that run's own seconds.
Then `quicmig run all` as it is (one process, serial) against the same scenarios on the
local pool through map_tasks (what `run all` on the pool would cost).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from quicmig.model.loader import builtin_names
from quicmig.sweep.engine import map_tasks
from quicmig.sweep.spec import SweepSpec
from quicmig.sweep.task import Task, tasks_for

FIXED = ("workload.bytes=2000000", "timeline.0.at_s=0.1", "duration_s=5", "links.wifi.loss_pct=1")
RUNS = 40
ENGINES = ("serial", "local", "dask")


def one(engine: str, tasks: list[Task], workers: int) -> dict[str, Any]:
    """Run `tasks` on `engine`; wall, the runs' own seconds, start-up, the runs."""
    started = time.perf_counter()
    cpu = time.process_time()
    first: float | None = None
    runs = {}
    own = 0.0
    first_own = 0.0
    for task, record in map_tasks(tasks, engine, workers=workers):
        if "error" in record:
            raise SystemExit(f"{engine}: run {task.id} failed: {record['error']}")
        seconds = float(record["wall"]["seconds"])
        if first is None:
            first, first_own = time.perf_counter() - started, seconds
        own += seconds
        runs[task.id] = {k: v for k, v in record.items() if k != "wall"}
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu
    slots = 1 if engine == "serial" else workers
    startup = (first or 0.0) - first_own
    return {
        "wall": wall,
        "own": own,
        "overhead": (slots * wall - own) / len(tasks),
        "overhead_after_start": (slots * (wall - startup) - own) / len(tasks),
        "startup": startup,
        # CPU of this process per run: for local and dask the engine's own cost (the runs
        # are elsewhere; a LocalCluster's scheduler is in this process), for serial the runs
        # themselves. Unlike wall time it hardly depends on what else the machine is doing.
        "main_cpu": cpu / len(tasks),
        "runs": runs,
    }


def timed_process(command: list[str]) -> float:
    """Wall seconds of a whole process, interpreter start and imports included."""
    started = time.perf_counter()
    subprocess.run(command, check=False, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def run_all_pool(workers: int) -> None:
    """Every built-in scenario (seed 1, as `quicmig run all`) on the local pool, in order."""
    tasks = [task for name in builtin_names() for task in tasks_for(name)]
    outcomes = list(map_tasks(tasks, "local", workers=workers, ordered=True))
    if any("error" in record for _, record in outcomes):
        raise SystemExit("a run-all scenario failed on the pool")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the medians here")
    parser.add_argument("--no-run-all", action="store_true", help="skip `quicmig run all`")
    parser.add_argument("--run-all-pool", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_all_pool:  # one measured process of the comparison below
        run_all_pool(args.workers)
        return
    tasks = SweepSpec("nat-rebinding", fixed=FIXED, seeds=tuple(range(1, RUNS + 1))).expand()
    rows: dict[str, list[dict[str, Any]]] = {engine: [] for engine in ENGINES}
    for index in range(args.repeat):
        for engine in ENGINES:
            rows[engine].append(one(engine, tasks, args.workers))
        same = rows["serial"][-1]["runs"] == rows["local"][-1]["runs"] == rows["dask"][-1]["runs"]
        if not same:
            raise SystemExit("the engines gave different runs")
        walls = ", ".join(f"{e} {rows[e][-1]['wall']:.2f} s" for e in ENGINES)
        print(f"round {index + 1}: {walls}; identical runs", flush=True)
    medians: dict[str, Any] = {}
    serial = statistics.median(r["wall"] for r in rows["serial"])
    for engine in ENGINES:
        wall = statistics.median(r["wall"] for r in rows[engine])
        medians[engine] = {
            "wall_s": wall,
            "runs_per_s": RUNS / wall,
            "speedup": serial / wall,
            "overhead_per_task_ms": 1e3 * statistics.median(r["overhead"] for r in rows[engine]),
            "overhead_after_start_ms": 1e3
            * statistics.median(r["overhead_after_start"] for r in rows[engine]),
            "startup_s": statistics.median(r["startup"] for r in rows[engine]),
            "main_cpu_per_task_ms": 1e3 * statistics.median(r["main_cpu"] for r in rows[engine]),
            "cpu_per_run_s": statistics.median(r["own"] for r in rows[engine]) / RUNS,
        }
        m = medians[engine]
        print(
            f"{engine:>6}: {m['wall_s']:6.2f} s, {m['runs_per_s']:5.2f} runs/s, "
            f"{m['speedup']:.2f}x serial; overhead {m['overhead_per_task_ms']:.1f} ms/task "
            f"({m['overhead_after_start_ms']:.1f} after start-up), "
            f"start-up {m['startup_s']:.2f} s, {m['cpu_per_run_s']:.3f} s per run, "
            f"main-process CPU {m['main_cpu_per_task_ms']:.1f} ms/task"
        )
    if not args.no_run_all:
        serial_cmd = [sys.executable, "-m", "quicmig", "run", "all", "-q"]
        pool_cmd = [sys.executable, __file__, "--run-all-pool", "--workers", str(args.workers)]
        before, after = [], []
        for _ in range(args.repeat):  # interleaved, like the engines
            before.append(timed_process(serial_cmd))
            after.append(timed_process(pool_cmd))
        medians["run_all"] = {
            "serial_process_s": statistics.median(before),
            "pool_s": statistics.median(after),
        }
        print(
            f"run all: {medians['run_all']['serial_process_s']:.2f} s as one serial process, "
            f"{medians['run_all']['pool_s']:.2f} s on the local pool ({args.workers} workers)"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(medians, indent=2) + "\n")


if __name__ == "__main__":
    main()
