"""`quicmig run`: run a scenario (or all built-in ones) and report what the server observed."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from quicmig.core.results import (
    SCHEMA,
    Result,
    check_output_dir,
    check_output_file,
    write_atomically,
)
from quicmig.errors import InputError
from quicmig.model.loader import builtin_names, load_scenario
from quicmig.model.scenario import STACKS, Scenario
from quicmig.report.table import make_console, print_result, summary_table

BACKENDS = ("sim", "proxy", "lab")
PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "run",
        description="Run a built-in scenario (see `quicmig scenarios`), a scenario FILE.toml, "
        "or `all` built-in scenarios, and print the migrations the server observed and the "
        "checks. Exit status: 0 passed (for `all`: every verdict as expected), 1 failed or "
        "unsupported, 2 usage or input error.",
        epilog="examples:\n"
        "  quicmig run network-switch --plot switch.png\n"
        "  quicmig run rebind-port --seed 7 --json out.json --pcap out.pcap --keylog out.keys\n"
        "  quicmig run nat-rebinding --set links.wifi.delay_ms=50 --set workload.bytes=2e6\n"
        "  quicmig run all --out results/\n"
        "  quicmig run network-switch --stack quicmig   # with quicmig's aioquic extensions",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("target", metavar="NAME|FILE.toml|all", help="what to run")
    parser.add_argument(
        "--seed", type=int, default=1, help="run seed (default 1): same seed, same run"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a scenario value, e.g. links.wifi.delay_ms=30, workload.bytes=2000000, "
        "timeline.0.at_s=2, client.keepalive_s=0.5 (repeatable)",
    )
    parser.add_argument(
        "--stack",
        choices=STACKS,
        help="QUIC stack: `stock` is aioquic 1.7.2 as released, `quicmig` turns on every "
        "extension of src/quicmig/aioquic_ext.py (challenge_first, reset_recovery) and expects "
        "the scenario's quicmig_verdict. Default: as the scenario's [quic] table says, which "
        "is stock for every built-in scenario",
    )
    parser.add_argument(
        "--backend", choices=BACKENDS, default="sim", help="network backend (default sim)"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the results as JSON")
    parser.add_argument("--with-series", action="store_true", help="include time series in --json")
    parser.add_argument(
        "--qlog-dir", type=Path, metavar="DIR", help="write one qlog per connection (virtual time)"
    )
    parser.add_argument(
        "--pcap",
        type=Path,
        metavar="FILE",
        help="capture the server side of the NAT (lab: the router's server-side interface; "
        "proxy: both of its legs); `quicmig check FILE --keylog KEYS` judges it",
    )
    parser.add_argument(
        "--keylog",
        type=Path,
        metavar="FILE",
        help="TLS key log (SSLKEYLOGFILE format) for the pcap",
    )
    parser.add_argument(
        "--plot", type=Path, metavar="FILE", help="timeline figure (.png, .svg or .pdf)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="with `all`: write each scenario's JSON and figure here",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print only the verdict line (and the reasons when it is not passed)",
    )
    parser.set_defaults(handler=run)


def _check_outputs(args: argparse.Namespace) -> None:
    for flag in ("json", "pcap", "keylog", "plot"):
        if (path := getattr(args, flag)) is not None:
            check_output_file(path, f"--{flag}")
    if args.plot is not None and args.plot.suffix.lower() not in PLOT_SUFFIXES:
        raise InputError(f"--plot {args.plot}: use a .png, .svg or .pdf file name")
    for flag, value in (("--qlog-dir", args.qlog_dir), ("--out", args.out)):
        if value is not None:
            check_output_dir(value, flag)


def _dump(results: list[Result], path: Path, series: bool) -> None:
    if len(results) == 1:
        data = results[0].to_dict(series=series)
    else:
        data = {
            "schema": SCHEMA.replace("result/", "results/"),
            "runs": [r.to_dict(series=series) for r in results],
        }
    write_atomically(path, json.dumps(data, indent=2) + "\n")


def run(args: argparse.Namespace) -> int:
    from quicmig.sim.runner import RunOptions, run_scenario

    console = make_console()
    if args.backend in ("proxy", "lab"):
        return _run_live(args, console)
    if args.target == "all":
        for flag in ("pcap", "keylog", "plot", "qlog_dir"):
            if getattr(args, flag) is not None:
                raise InputError(
                    f"--{flag.replace('_', '-')} takes one run; with `all` use --out DIR"
                )
        scenarios = [load_scenario(name, args.overrides) for name in builtin_names()]
    else:
        if args.out is not None:
            raise InputError("--out DIR goes with `all`; for one run use --json/--plot/--pcap")
        scenarios = [load_scenario(args.target, args.overrides)]
    if args.stack is not None:
        scenarios = [s.with_stack(args.stack) for s in scenarios]
    _check_outputs(args)
    for folder in (args.qlog_dir, args.out):
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)

    results: list[Result] = []
    show_progress = console.is_terminal and not args.quiet
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not show_progress,
    ) as progress:
        overall = progress.add_task("scenarios", total=len(scenarios), status="")
        for scenario in scenarios:
            task = progress.add_task(scenario.name, total=scenario.duration, status="")

            def tick(now: float, duration: float, task: TaskID = task) -> None:
                progress.update(task, completed=now, status=f"{now:.2f} s simulated")

            options = RunOptions(
                seed=args.seed,
                qlog_dir=args.qlog_dir,
                pcap=args.pcap,
                keylog=args.keylog,
                progress=tick if show_progress else None,
            )
            result = run_scenario(scenario, options)
            progress.remove_task(task)
            progress.advance(overall)
            results.append(result)
            if args.out is not None:
                _write_one(result, args.out, args.with_series)
            if len(scenarios) == 1:
                _report_one(console, scenario, result, args)
    if len(scenarios) > 1 and not args.quiet:
        console.print(summary_table(results))
    if args.json is not None:
        _dump(results, args.json, args.with_series)
    if len(scenarios) == 1:
        return 0 if results[0].verdict.value == "passed" else 1
    unexpected = [r.scenario for r in results if not r.as_expected]
    console.print(
        f"{len(results) - len(unexpected)} of {len(results)} scenarios gave their expected verdict"
        + (f"; unexpected: {', '.join(unexpected)}" if unexpected else "")
    )
    return 1 if unexpected else 0


def _write_one(result: Result, folder: Path, series: bool) -> None:
    from quicmig.report.plot import plot_timeline

    _dump([result], folder / f"{result.scenario}.json", series)
    plot_timeline(result, folder / f"{result.scenario}.png")


def _report_one(
    console: Console, scenario: Scenario, result: Result, args: argparse.Namespace
) -> None:
    if args.plot is not None:
        from quicmig.report.plot import plot_timeline

        plot_timeline(result, args.plot)
        result.files["plot"] = str(args.plot)
    if args.json is not None:
        result.files["json"] = str(args.json)
    if args.quiet:
        why = "".join(f"\n  {reason}" for reason in result.reasons)
        console.print(f"{result.scenario}: {result.verdict.value}{why}", markup=False)
    else:
        print_result(console, result, scenario.expect.why)


def _run_live(args: argparse.Namespace, console: Console) -> int:
    """One scenario over real UDP through `quicmig proxy`, or through the namespace lab
    (`--backend lab`, quicmig.lab.driver); see quicmig.live.runner."""
    from quicmig.live.runner import LiveOptions, run_live
    from quicmig.live.stop import run_stoppable

    backend = args.backend
    if args.target == "all":
        raise InputError(f"--backend {backend} runs one scenario at a time; name it")
    if args.out is not None:
        raise InputError("--out DIR goes with `all`; for one run use --json/--plot/--pcap")
    scenario = load_scenario(args.target, args.overrides)
    if args.stack is not None:
        scenario = scenario.with_stack(args.stack)
    _check_outputs(args)
    if args.qlog_dir is not None:
        args.qlog_dir.mkdir(parents=True, exist_ok=True)
    options = LiveOptions(seed=args.seed, keylog=args.keylog, qlog_dir=args.qlog_dir)
    if backend == "lab":
        from quicmig.lab.driver import LabDriver
        from quicmig.lab.system import require

        require()  # root and the tools, before anything is created

        def warn(line: str) -> None:
            # On stderr even with -q: without them the verdict reads as if the scenario's
            # delays and losses had been applied; stdout keeps only the verdict.
            print(f"⚠️  lab: {line}", file=sys.stderr, flush=True)

        lab = LabDriver(scenario, args.seed, pcap=args.pcap, log=warn)
        try:
            result = run_stoppable(run_live(scenario, lab, options))
        finally:
            # run_live closes the driver; this is for the Ctrl-C that gave up waiting for it
            # (a no-op otherwise).
            lab.close()
    else:
        from quicmig.proxy.driver import ProxyDriver

        driver = ProxyDriver(scenario, args.seed, pcap=args.pcap)
        result = run_stoppable(run_live(scenario, driver, options))
    if args.pcap is not None:
        result.files["pcap"] = str(args.pcap)
    _report_one(console, scenario, result, args)
    if args.json is not None:
        _dump([result], args.json, args.with_series)
    return 0 if result.verdict.value == "passed" else 1
