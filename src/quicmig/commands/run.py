"""`quicmig run`: run a scenario (or all built-in ones) and report what the server observed."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from quicmig.core.results import (
    RUNS_SCHEMA,
    Result,
    check_output_dir,
    check_output_file,
    write_atomically,
)
from quicmig.errors import InputError, QuicmigError
from quicmig.model.loader import builtin_names, load_scenario
from quicmig.model.scenario import STACKS, Scenario
from quicmig.model.verdicts import Verdict
from quicmig.report.table import (
    count_progress,
    make_console,
    print_result,
    summary_table,
    verdict_words,
)
from quicmig.runner import RunOptions
from quicmig.sim.runner import run_scenario

BACKENDS = ("sim", "proxy", "lab")
INCOMPLETE = "INCOMPLETE"  # in `run all --out DIR` after an interruption: what finished
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
        "  quicmig run rebind-port --seed 7 --json out.json \\\n"
        "      --pcap out.pcap --keylog out.keys\n"
        "  quicmig run nat-rebinding --set links.wifi.delay_ms=50 \\\n"
        "      --set workload.bytes=2e6\n"
        "  quicmig run all --out results/\n"
        "  quicmig run network-switch --stack quicmig  # quicmig's aioquic extensions",
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
        "extension of src/quicmig/aioquic_ext.py (challenge_first, reset_recovery, "
        "probe_old_path, honour_disable_migration) and expects the scenario's quicmig_verdict. "
        "Default: as the scenario's [quic] table says, which is stock for every built-in "
        "scenario",
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
        "--html",
        type=Path,
        metavar="FILE",
        help="a self-contained HTML report (works offline): the verdict, per migration the "
        "packets around it and its numbers, the timeline; keeps the packet log in --json too",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="with `all`: write each scenario's JSON and figure here",
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="with `all`: run on N processes (default: one per core; 1: in this process)",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print only the verdict line (and the reasons when it is not passed)",
    )
    parser.set_defaults(handler=run)


def _check_outputs(args: argparse.Namespace) -> None:
    for flag in ("json", "pcap", "keylog", "plot", "html"):
        if (path := getattr(args, flag)) is not None:
            check_output_file(path, f"--{flag}")
    if args.html is not None and args.html.suffix.lower() not in (".html", ".htm"):
        raise InputError(f"--html {args.html}: use a .html file name")
    if args.plot is not None and args.plot.suffix.lower() not in PLOT_SUFFIXES:
        raise InputError(f"--plot {args.plot}: use a .png, .svg or .pdf file name")
    for flag, value in (("--qlog-dir", args.qlog_dir), ("--out", args.out)):
        if value is not None:
            check_output_dir(value, flag)


def _dump(results: list[Result], path: Path, series: bool) -> None:
    if len(results) == 1:
        data = results[0].to_dict(series=series)
    else:
        data = {"schema": RUNS_SCHEMA, "runs": [r.to_dict(series=series) for r in results]}
    write_atomically(path, json.dumps(data, indent=2) + "\n")


def run(args: argparse.Namespace) -> int:
    console = make_console()
    if args.backend in ("proxy", "lab"):
        if args.target == "all":
            raise InputError(f"--backend {args.backend} runs one scenario at a time; name it")
        if args.out is not None:
            raise InputError("--out DIR goes with `all`; for one run use --json/--plot/--pcap")
        scenario = load_scenario(args.target, args.overrides)
        if args.stack is not None:
            scenario = scenario.with_stack(args.stack)
        _check_outputs(args)
        return live_result(
            scenario,
            args.backend,
            seed=args.seed,
            pcap=args.pcap,
            keylog=args.keylog,
            qlog_dir=args.qlog_dir,
            json_path=args.json,
            plot=args.plot,
            html=args.html,
            series=args.with_series,
            quiet=args.quiet,
            command=_command(args),
        )
    if args.target == "all":
        return _run_all(args, console)
    if args.out is not None:
        raise InputError("--out DIR goes with `all`; for one run use --json/--plot/--pcap")
    scenario = load_scenario(args.target, args.overrides)
    if args.stack is not None:
        scenario = scenario.with_stack(args.stack)
    _check_outputs(args)
    if args.qlog_dir is not None:
        args.qlog_dir.mkdir(parents=True, exist_ok=True)
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
        task = progress.add_task(scenario.name, total=scenario.duration, status="")

        def tick(now: float, duration: float) -> None:
            progress.update(task, completed=now, status=f"{now:.2f} s simulated")

        options = RunOptions(
            seed=args.seed,
            qlog_dir=args.qlog_dir,
            pcap=args.pcap,
            keylog=args.keylog,
            progress=tick if show_progress else None,
        )
        if args.html is not None:
            from quicmig.report.recording import run_recorded

            result = run_recorded(scenario, options)
        else:
            result = run_scenario(scenario, options)
    result = replace(result, command=_command(args))
    _report_one(console, scenario, result, args.plot, args.json, args.quiet, args.html)
    if args.json is not None:
        _dump([result], args.json, args.with_series)
    return 0 if result.verdict is Verdict.PASSED else 1


def _command(args: argparse.Namespace) -> str | None:
    """`quicmig run ...` as typed (reports show it: it reproduces the run)."""
    argv = getattr(args, "argv", None)
    return None if argv is None else shlex.join(["quicmig", *argv])


def _run_all(args: argparse.Namespace, console: Console) -> int:
    """Every built-in scenario, on the sweep's local process pool (one worker per core, or
    --workers), shown in their order; with --out, each one's JSON and figure as it ends."""
    from quicmig.sweep.engine import map_tasks
    from quicmig.sweep.task import tasks_for

    for flag in ("pcap", "keylog", "plot", "qlog_dir"):
        if getattr(args, flag) is not None:
            raise InputError(f"--{flag.replace('_', '-')} takes one run; with `all` use --out DIR")
    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers {args.workers}: give 1 or more")
    _check_outputs(args)
    names = builtin_names()
    series = args.out is not None or args.with_series or args.html is not None
    stacks = (args.stack,)
    tasks = [
        t
        for name in names
        for t in tasks_for(name, tuple(args.overrides), (args.seed,), stacks, series=series)
    ]
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / INCOMPLETE).unlink(missing_ok=True)
    results: list[Result] = []
    show_progress = console.is_terminal and not args.quiet
    engine = "serial" if args.workers == 1 else "local"
    try:
        with count_progress(console, show_progress) as progress:
            overall = progress.add_task("scenarios", total=len(tasks))
            for task, record in map_tasks(tasks, engine, args.workers, ordered=True):
                if "error" in record:
                    raise QuicmigError(f"{task.name}: the run failed: {record['error']}")
                result = Result.from_dict(record)
                if args.out is not None:
                    _write_one(result, args.out, args.with_series)
                results.append(result)  # finished: its files (if any) are whole
                progress.advance(overall)
    except KeyboardInterrupt:
        if args.out is not None:
            done = ", ".join(r.scenario for r in results) or "none"
            write_atomically(
                args.out / INCOMPLETE,
                f"interrupted after {len(results)} of {len(tasks)} scenarios: {done}\n",
            )
        print(
            f"quicmig: interrupted after {len(results)} of {len(tasks)} scenarios"
            + (f"; {args.out} holds theirs and an {INCOMPLETE} note" if args.out else ""),
            file=sys.stderr,
        )
        return 130
    if not args.quiet:
        console.print(summary_table(results, console.width))
    if args.json is not None:
        _dump(results, args.json, args.with_series)
    if args.html is not None:
        from quicmig.report.html import write_html

        write_html(args.html, results, title="quicmig run all")
    unexpected = [r.scenario for r in results if not r.as_expected]
    console.print(
        f"{len(results) - len(unexpected)} of {len(results)} scenarios gave their expected verdict"
        + (f"; unexpected: {', '.join(unexpected)}" if unexpected else "")
    )
    return 1 if unexpected else 0


def _write_one(result: Result, folder: Path, series: bool) -> None:
    """A scenario's JSON and figure, both or neither (Ctrl-C included): each is written
    whole to its own name, and the first is taken back if the second does not make it."""
    from quicmig.report.plot import plot_timeline

    figure = folder / f"{result.scenario}.png"
    data = folder / f"{result.scenario}.json"
    try:
        plot_timeline(result, figure)
        _dump([result], data, series)
    except BaseException:
        for path in (figure, data):
            path.unlink(missing_ok=True)
        raise


def _report_one(
    console: Console,
    scenario: Scenario,
    result: Result,
    plot: Path | None,
    json_path: Path | None,
    quiet: bool,
    html: Path | None = None,
) -> None:
    if plot is not None:
        from quicmig.report.plot import plot_timeline

        plot_timeline(result, plot)
        result.files["plot"] = str(plot)
    if json_path is not None:
        result.files["json"] = str(json_path)
    if html is not None:
        from quicmig.report.html import About, write_html

        write_html(html, [result], infos=[About(scenario.summary, scenario.expect.why)])
        result.files["html"] = str(html)
    if quiet:
        why = "".join(f"\n  {reason}" for reason in result.reasons)
        console.print(
            f"{result.scenario}: {verdict_words(result)}{why}", markup=False, soft_wrap=True
        )
    else:
        print_result(console, result, scenario.expect.why)


def live_result(
    scenario: Scenario,
    backend: str,
    *,
    seed: int = 1,
    pcap: Path | None = None,
    keylog: Path | None = None,
    qlog_dir: Path | None = None,
    json_path: Path | None = None,
    plot: Path | None = None,
    html: Path | None = None,
    series: bool = False,
    quiet: bool = False,
    timeout: float = 5.0,
    command: str | None = None,
) -> int:
    """One scenario over real UDP through the proxy, or through the namespace lab; report
    it like a simulator run. The exit status: 0 passed, 1 not."""
    from quicmig.live.backend import ClientOptions, LiveBackend, NetworkDriver
    from quicmig.live.stop import run_stoppable
    from quicmig.runner import execute

    if qlog_dir is not None:
        qlog_dir.mkdir(parents=True, exist_ok=True)
    options = RunOptions(seed=seed, keylog=keylog, qlog_dir=qlog_dir, pcap=pcap)
    network: NetworkDriver
    lab = None
    if backend == "lab":
        from quicmig.lab.driver import LabDriver

        def warn(line: str) -> None:
            # On stderr even with -q: without them the verdict reads as if the scenario's
            # delays and losses had been applied; stdout keeps only the verdict.
            print(f"⚠️  lab: {line}", file=sys.stderr, flush=True)

        # The not-root message names the command that was typed.
        typed = (command or "quicmig run --backend lab").removeprefix("quicmig ")
        network = lab = LabDriver(scenario, seed, pcap=pcap, command=typed, log=warn)
    else:
        from quicmig.proxy.driver import ProxyDriver

        network = ProxyDriver.for_scenario(scenario, seed, pcap)
    recorder = None
    if html is not None:
        from quicmig.report.recording import LiveRecorder

        recorder = LiveRecorder()
    live = LiveBackend(network, client=ClientOptions(timeout=timeout), on_server=recorder)
    try:
        result = run_stoppable(execute(scenario, live, options))
    finally:
        if lab is not None:
            # The backend closes the driver; this is for the Ctrl-C that gave up waiting for
            # it (a no-op otherwise).
            lab.close()
    if pcap is not None:
        result.files["pcap"] = str(pcap)
    if recorder is not None:
        # The proxy and the lab both translate the client's address, as a NAT does.
        result = recorder.result(result, nat=True)
    result = replace(result, command=command)
    console = make_console()
    _report_one(console, scenario, result, plot, json_path, quiet, html)
    if json_path is not None:
        _dump([result], json_path, series)
    return 0 if result.verdict is Verdict.PASSED else 1
