"""`quicmig sweep`: many runs of a scenario (a grid of values, seeds, stacks) on a local
process pool or Dask, one stored result per run; `quicmig sweep report DIR` aggregates."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from quicmig.errors import InputError
from quicmig.report.table import fold_columns, make_console
from quicmig.words import counted

if TYPE_CHECKING:
    from quicmig.sweep.spec import SweepSpec
    from quicmig.sweep.store import RunStore
    from quicmig.sweep.task import Task

BACKENDS = ("sim", "proxy", "lab")
PROGRESS_EVERY = 10.0  # seconds between progress lines when stdout is not a terminal


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "sweep",
        description="Run a scenario many times: every combination of the --grid values, "
        "each stack and each seed, on a local process pool (default) or a Dask cluster. One "
        "result JSON per run goes to --out DIR, named by a hash of what the run is: running "
        "the same sweep again runs only what is missing. `quicmig sweep report DIR` groups the "
        "runs by the swept values and gives pass rates and medians with bootstrap 95 % "
        "intervals (table, CSV, figure). Exit status: 0 every run finished (whatever its "
        "verdict), 1 a run raised an error or the engine failed, 2 usage or input error, "
        "130 interrupted (finished runs are kept).",
        epilog="examples:\n"
        "  quicmig sweep network-switch --grid links.cellular.delay_ms=20,50,100,150 \\\n"
        "      --seeds 1-20 --stack stock,quicmig --out sweeps/switch\n"
        "  quicmig sweep network-switch-cellular --out sweeps/study  # a shipped sweep\n"
        "  quicmig sweep nat-rebinding --grid links.wifi.loss_pct=0,1,2 --dry-run --out x\n"
        "  quicmig sweep rebind-port --seeds 1-100 --engine dask \\\n"
        "      --scheduler tcp://h:8786 --out r\n"
        "  quicmig sweep report sweeps/switch --plot switch.png",
    )
    parser.add_argument(
        "target",
        metavar="NAME|FILE.toml|report",
        help="a built-in scenario, a scenario file, a sweep file (a TOML file with a [sweep] "
        "table) or a shipped sweep's name; `report DIR` aggregates a sweep folder",
    )
    parser.add_argument("folder", nargs="?", type=Path, metavar="DIR", help="with `report`")
    parser.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="sweep a --set key over these values (repeatable: the cartesian product)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fix a scenario value for every run, as in `quicmig run` (repeatable)",
    )
    parser.add_argument("--seeds", metavar="RANGE", help="e.g. 1-30, 7 or 1,5,9 (default 1)")
    parser.add_argument(
        "--stack",
        metavar="LIST",
        help="stock, quicmig or stock,quicmig (default: as the scenario's [quic] table says)",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        help="network backend (default sim; the only one a sweep runs)",
    )
    parser.add_argument(
        "--engine",
        choices=("local", "dask"),
        default="local",
        help="local: a process pool on this machine (default); dask: dask.distributed",
    )
    parser.add_argument(
        "--workers", type=int, metavar="N", help="processes (default: one per core)"
    )
    parser.add_argument(
        "--scheduler",
        metavar="tcp://HOST:PORT",
        help="with --engine dask: an existing scheduler (default: a LocalCluster here)",
    )
    parser.add_argument("--out", type=Path, metavar="DIR", help="the sweep's folder (required)")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the number of runs and an estimate of time"
    )
    parser.add_argument(
        "--yes", action="store_true", help="allow a sweep of more than a million runs"
    )
    parser.add_argument(
        "--csv",
        type=Path,
        metavar="FILE",
        help="report: one row per run and migration (default DIR/report.csv)",
    )
    parser.add_argument(
        "--plot", type=Path, metavar="FILE", help="report figure (default DIR/report.png)"
    )
    parser.add_argument(
        "--html",
        type=Path,
        metavar="FILE",
        help="report: also a self-contained HTML page (the tables and the figure, inline)",
    )
    parser.add_argument("--x", metavar="KEY", help="report figure: the swept key on the x axis")
    parser.add_argument(
        "--metrics",
        metavar="LIST",
        help="report figure: metrics (default interruption,validation_rtt,detection_delay; "
        "also completion, retransmitted_bytes)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress and no tables")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.target == "report":
        if args.folder is None:
            raise InputError("sweep report: name the sweep's folder: quicmig sweep report DIR")
        return report(args, args.folder, make_console())
    if args.folder is not None:
        raise InputError(f"{args.folder}: unexpected; the sweep's folder goes after --out")
    return sweep(args)


def sweep(args: argparse.Namespace) -> int:
    from quicmig.sweep.engine import default_workers
    from quicmig.sweep.spec import MAX_RUNS, Flags, build_spec
    from quicmig.sweep.store import RunStore

    console = make_console()
    spec = build_spec(
        args.target,
        Flags(
            grid=tuple(args.grid),
            fixed=tuple(args.overrides),
            seeds=args.seeds,
            stacks=args.stack,
            backend=args.backend,
        ),
    )
    if spec.backend != "sim":
        raise InputError(
            f"--backend {spec.backend}: a sweep runs on the simulator only; {spec.backend} runs "
            "take real time and hold this host's ports or namespaces one run at a time (use "
            f"`quicmig run --backend {spec.backend}` per run)"
        )
    if args.scheduler is not None and args.engine != "dask":
        raise InputError("--scheduler goes with --engine dask")
    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers {args.workers}: must be at least 1")
    if args.out is None:
        raise InputError("--out DIR: required: the folder that keeps one result per run")
    if spec.runs > MAX_RUNS and not args.yes:
        raise InputError(
            f"{spec.runs:,} runs ({spec.points:,} grid points x {len(spec.stacks)} stacks x "
            f"{len(spec.seeds):,} seeds): over {MAX_RUNS:,}; add --yes if you mean it"
        )
    tasks = spec.expand()
    store = RunStore(args.out)
    workers = args.workers or default_workers()
    if args.dry_run:
        return dry_run(console, spec, tasks, store, workers, args.engine)
    store.claim(spec)
    done = store.done()
    todo = [task for task in tasks if task.id not in done]
    errors = _execute(console, todo, args, store, len(tasks), len(tasks) - len(todo))
    if not args.quiet and store.done():
        report(args, args.out, console)
    return 1 if errors else 0


def _execute(
    console: Console,
    todo: list[Task],
    args: argparse.Namespace,
    store: RunStore,
    total: int,
    stored: int,
) -> int:
    """Run `todo`, storing each run as it finishes; returns the number of errors."""
    from quicmig.sweep.engine import map_tasks

    started = time.monotonic()
    executed = errors = 0
    show = console.is_terminal and not args.quiet
    last_line = started
    outcomes = map_tasks(todo, args.engine, args.workers, args.scheduler)
    with Progress(
        TextColumn("sweep"),
        BarColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        transient=True,
        disable=not show,
    ) as progress:
        bar = progress.add_task("runs", total=total, completed=stored, status="starting")
        try:
            for _, record in outcomes:
                store.put(record)
                executed += 1
                errors += "error" in record
                status = _status(stored + executed - errors, total, executed, errors, started)
                progress.update(bar, advance=1, status=status)
                now = time.monotonic()
                if not show and not args.quiet and now - last_line >= PROGRESS_EVERY:
                    print(f"sweep: {status}", file=sys.stderr, flush=True)
                    last_line = now
        except KeyboardInterrupt:
            outcomes.close()  # stops the workers before we report
            finished = stored + executed - errors
            print(
                f"quicmig: interrupted: {finished} of {total} runs done and kept in {args.out}; "
                "run the same command again to run the rest",
                file=sys.stderr,
            )
            raise SystemExit(130) from None
    elapsed = time.monotonic() - started
    finished = stored + executed - errors
    rate = executed / elapsed if elapsed > 0 else 0.0
    console.print(
        f"{finished} of {total} runs done in {args.out} ({executed} run now in {elapsed:.1f} s, "
        f"{rate:.1f} runs/s; {stored} already there)"
        + (
            f"; [red]{counted(errors, 'run')} raised an error[/red] (see {args.out}/errors/)"
            if errors
            else ""
        )
    )
    return errors


def _status(done: int, total: int, executed: int, errors: int, started: float) -> str:
    elapsed = time.monotonic() - started
    rate = executed / elapsed if elapsed > 0 else 0.0
    left = total - done - errors
    eta = f"{left / rate:.0f} s" if rate > 0 else "?"
    failed = f", {errors} failed" if errors else ""
    return f"{done}/{total} done{failed}, {rate:.1f} runs/s, ETA {eta}"


def dry_run(
    console: Console,
    spec: SweepSpec,
    tasks: list[Task],
    store: RunStore,
    workers: int,
    engine: str,
) -> int:
    """Print the number of runs and an estimate of their time; runs nothing but one
    calibration run when the folder has no finished runs to time."""
    from quicmig.sweep.task import run_task

    manifest = store.manifest_or_none()
    done = (
        store.done() if manifest is not None and manifest["identity"] == spec.identity() else set()
    )
    todo = [task for task in tasks if task.id not in done]
    seconds = [
        float(run["wall"]["seconds"])
        for run, _ in zip(store.iter_runs(), range(50), strict=False)
        if done and "wall" in run
    ]
    how = f"median of {len(seconds)} stored runs"
    if not seconds and todo:
        started = time.perf_counter()
        run_task(todo[0])
        seconds = [time.perf_counter() - started]
        how = "one calibration run, not stored"
    per_run = statistics.median(seconds) if seconds else 0.0
    shape = " x ".join(
        [f"{len(values)} {key}" for key, values in spec.grid]
        + [counted(len(spec.stacks), "stack"), counted(len(spec.seeds), "seed")]
    )
    console.print(
        f"{len(tasks)} runs ({shape}); {len(tasks) - len(todo)} already in {store.folder}, "
        f"{len(todo)} to run: about {per_run * len(todo) / workers:.0f} s on {workers} "
        f"{engine} workers ({per_run:.2f} s per run: {how})",
        markup=False,
    )
    return 0


def report(args: argparse.Namespace, folder: Path, console: Console) -> int:
    from quicmig.core.results import check_output_file
    from quicmig.sweep.aggregate import aggregate
    from quicmig.sweep.figure import DEFAULT_METRICS, check_metrics, plot_summary
    from quicmig.sweep.store import RunStore
    from quicmig.sweep.table import checks_table, metrics_table

    store = RunStore(folder)
    store.manifest()
    csv_path = args.csv or folder / "report.csv"
    plot_path = args.plot or folder / "report.png"
    for flag, path in (("--csv", csv_path), ("--plot", plot_path), ("--html", args.html)):
        if path is not None:
            check_output_file(path, flag)
    if args.html is not None and args.html.suffix.lower() not in (".html", ".htm"):
        raise InputError(f"--html {args.html}: use a .html file name")
    metrics = DEFAULT_METRICS
    if args.metrics:
        metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    check_metrics(metrics)
    if plot_path.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise InputError(f"--plot {plot_path}: use a .png, .svg or .pdf file name")
    summary = aggregate(store, csv_path)
    if not summary.groups:
        raise InputError(f"{folder}: no finished runs yet; run the sweep first")
    plot_summary(summary, plot_path, metrics, args.x)
    if args.html is not None:
        from quicmig.report.html import sweep_page

        sweep_page(args.html, folder, summary, metrics_table(summary), checks_table(summary),
                   metrics, args.x)  # fmt: skip
    if not args.quiet:
        keep = len(summary.keys) + 1  # the swept values and the stack name each row
        console.print(fold_columns(metrics_table(summary), console.width, keep))
        console.print(fold_columns(checks_table(summary), console.width, keep))
        for line in summary.errors[:5]:
            console.print(f"[red]error[/red] {line}", markup=True, highlight=False)
    page = f", page {args.html}" if args.html is not None else ""
    console.print(f"{summary.runs} runs; CSV {csv_path}, figure {plot_path}{page}", markup=False)
    return 0
