"""`quicmig lab race`: check every input, then race, report, write the files asked for.

Everything that can be refused is refused before the first namespace exists, in one line
each (InputError, exit 2): the scenario and its overrides, the transports, the timeouts,
the output files, what the lab can build (quicmig.lab.plan: a delay or jitter above 10 s,
IPv6, ...), root, and MPTCP when asked for by name. A link rate the lab's element cannot
carry is warned about once, with the measured ceiling. MPTCP that is unavailable while not
asked for by name (the default transports) runs as plain TCP and the result says so.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from quicmig.core.connections import MPTCP
from quicmig.core.results import (
    RUNS_SCHEMA,
    Result,
    check_output_dir,
    check_output_file,
    write_atomically,
)
from quicmig.errors import InputError
from quicmig.lab import system
from quicmig.lab.build import NamespaceLab
from quicmig.race import mptcp
from quicmig.race.client import ClientSettings
from quicmig.race.report import label, notes, race_table
from quicmig.race.run import TRANSPORTS, RaceSettings, parse_transports, race_scenario, run_race
from quicmig.report.table import make_console

PLOT_SUFFIXES = (".png", ".svg", ".pdf")
MAX_TIMEOUT = 600.0  # seconds: the longest stall or connect timeout accepted
RACE_KEY = "race"  # in a runs file: marks it as one race, which `quicmig compare` reads


def _timeout(flag: str, value: float) -> float:
    if not 0 < value <= MAX_TIMEOUT:
        raise InputError(f"{flag} {value:g}: give seconds above 0, at most {MAX_TIMEOUT:g}")
    return value


def race_command(args: argparse.Namespace) -> int:
    from quicmig.commands.client import parse_size

    explicit = args.transports is not None
    transports = parse_transports(args.transports) if explicit else TRANSPORTS
    download = parse_size(args.download) if args.download is not None else None
    scenario = race_scenario(args.scenario, args.overrides, download).with_stack(args.stack)
    client = ClientSettings(
        stall_timeout=_timeout("--stall-timeout", args.stall_timeout),
        connect_timeout=_timeout("--connect-timeout", args.connect_timeout),
        congestion=args.tcp_congestion,
    )
    _timeout("--timeout", args.timeout)
    if args.json is not None:
        check_output_file(args.json, "--json")
    if args.plot is not None:
        check_output_file(args.plot, "--plot")
        if args.plot.suffix.lower() not in PLOT_SUFFIXES:
            raise InputError(f"--plot {args.plot}: use a .png, .svg or .pdf file name")
    if args.pcap is not None:
        check_output_dir(args.pcap, "--pcap")
    # What the lab can build, and the rates its element cannot carry: no OS state yet.
    clients = scenario.topology.clients
    start = {h.name: scenario.client.interface or h.interfaces[0].name for h in clients}
    planned = NamespaceLab(scenario.topology, start=start, command="lab race")
    system.require("lab race")
    fallback = None
    if MPTCP in transports:
        reason = mptcp.unavailable()
        if reason is not None and explicit:
            raise InputError(f"--transports {args.transports}: {reason}; or leave mptcp out")
        fallback = reason
    if args.pcap is not None:
        args.pcap.mkdir(parents=True, exist_ok=True)
    warned: set[str] = set()

    def warn(line: str) -> None:
        if line not in warned:  # once, not once per transport's lab
            warned.add(line)
            print(f"⚠️  lab: {line}", file=sys.stderr, flush=True)

    for line in planned.warnings:
        warn(line)
    if fallback is not None:
        print(f"⚠️  mptcp: {fallback}; the mptcp run is plain TCP", file=sys.stderr, flush=True)
    settings = RaceSettings(
        transports=transports,
        seed=args.seed,
        client=client,
        mptcp_backup=args.mptcp_subflow == "backup",
        quic_timeout=args.timeout,
        pcap=args.pcap,
        mptcp_fallback=fallback,
    )
    console = make_console()
    console.print(
        f"[bold]{scenario.name}[/bold]: {scenario.summary}\n"
        f"{', '.join(transports)} one after another, each in a lab of its own"
    )

    def done(result: Result) -> None:
        c = result.stats.get("continuity", {})
        end = c.get("completed_at")
        console.print(
            f"  {label(result)}: "
            + (f"done at {end:.2f} s" if end is not None else "[red]did not finish[/red]")
            + f", {c.get('handshakes', 0)} handshake(s)"
        )

    results = run_race(scenario, settings, log=warn, done=done)
    report(console, results)
    if args.plot is not None:
        from quicmig.race.figure import plot_race

        plot_race(results, args.plot)
        console.print(f"figure: {args.plot}")
    if args.json is not None:
        write_race(results, args.json, settings)
        console.print(f"results: {args.json} (`quicmig compare {args.json}`)")
    return 0 if all(r.transfer.intact for r in results) else 1


def report(console: Console, results: Sequence[Result]) -> None:
    console.print(race_table(results))
    for line in notes(results):
        console.print(f"• {line}", markup=False, highlight=False)


def write_race(results: Sequence[Result], path: Path, settings: RaceSettings) -> None:
    """One runs file (quicmig.results/2) holding every transport's Result, series included,
    marked as a race so that `quicmig compare FILE` lays them side by side."""
    data = {
        "schema": RUNS_SCHEMA,
        RACE_KEY: {
            "scenario": results[0].scenario if results else None,
            "transports": [r.transport for r in results],
            "stall_timeout_s": settings.client.stall_timeout,
            "connect_timeout_s": settings.client.connect_timeout,
            "tcp_congestion": settings.client.congestion,
            "mptcp_subflow": "backup" if settings.mptcp_backup else "active",
            "quic": "quicmig.live on the lab driver, as `quicmig run --backend lab`",
        },
        "runs": [r.to_dict(series=True) for r in results],
    }
    write_atomically(path, json.dumps(data, indent=2) + "\n")
