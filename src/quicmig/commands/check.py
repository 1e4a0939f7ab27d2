"""`quicmig check CAPTURE`: quic-interop-runner's migration checks on any capture, via tshark."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from quicmig.capture.analysis import (
    KEYS_CHECK,
    NEW_PATH_CHECK,
    ConnectionView,
    analyse,
    capture_expectations,
)
from quicmig.capture.tshark import QuicDatagram, find_tshark, read_datagrams
from quicmig.core.datagram import format_address
from quicmig.core.observation import expectations
from quicmig.core.results import Result, check_output_file, write_atomically
from quicmig.errors import InputError
from quicmig.model.loader import load_scenario
from quicmig.model.verdicts import Verdict
from quicmig.report.table import checks_table, make_console, migrations_table, verdict_text


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "check",
        description="Decrypt CAPTURE with tshark and the TLS key log, reconstruct each QUIC "
        "connection's paths and when it switched, and run quic-interop-runner's migration "
        "checks: more than one path; the server's first datagram on each new path carries "
        "PATH_CHALLENGE; every PATH_CHALLENGE answered with the same data; with --active, a "
        "new DCID on each new path. Works on captures from `quicmig run --pcap`, "
        "`quicmig proxy --pcap`, tcpdump or Wireshark (also one cut short mid-packet: what "
        "was written before the cut is checked, with a warning). A connection the key log "
        "has no secrets for cannot be checked: it is named, and the verdict is unsupported "
        "(never passed). Exit status: 0 passed, 1 failed (including no migration in the "
        "capture) or unsupported, 2 bad input.",
        epilog="example:\n  quicmig run nat-rebinding --pcap nr.pcap --keylog nr.keys\n"
        "  quicmig check nr.pcap --keylog nr.keys --json nr-check.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("capture", type=Path, metavar="CAPTURE", help="pcap or pcapng file")
    parser.add_argument(
        "--keylog", type=Path, metavar="FILE", help="TLS key log (SSLKEYLOGFILE format)"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the findings as JSON")
    parser.add_argument(
        "--active",
        action="store_true",
        help="the client moved on purpose (not a NAT): require a new DCID on every new path",
    )
    parser.add_argument(
        "--scenario",
        metavar="NAME|FILE.toml",
        help="hold the capture to this scenario's expectations (its migrations, its server's "
        "settings) instead of `at least one migration`; what the application received is "
        "not in a capture, so transfer-intact is not applicable",
    )
    parser.add_argument(
        "--quic-port",
        type=int,
        action="append",
        default=[],
        metavar="PORT",
        help="also decode this UDP port as QUIC (443 and 4433 always are; repeatable)",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print only the verdict line (and the reasons when it is not passed)",
    )
    parser.set_defaults(handler=run)


def _check_decrypted(datagrams: list[QuicDatagram], capture: Path, keylog: Path | None) -> None:
    if not datagrams:
        raise InputError(
            f"{capture}: no QUIC packets found (UDP ports 443 and 4433 and tshark's heuristics "
            "are tried; pass --quic-port PORT for another port)"
        )
    short = [d for d in datagrams if d.only_short]
    if short and not any(d.decrypted for d in short):
        if keylog is None:
            raise InputError(
                f"{capture}: the {len(short)} 1-RTT datagrams are encrypted; pass the TLS key "
                "log written during the capture with --keylog FILE (SSLKEYLOGFILE format)"
            )
        raise InputError(
            f"--keylog {keylog} decrypts none of the {len(short)} 1-RTT datagrams in {capture}: "
            "it holds no secrets for these connections (was it written for another run?)"
        )


def run(args: argparse.Namespace) -> int:
    if args.json is not None:
        check_output_file(args.json, "--json")
    for port in args.quic_port:
        if not 1 <= port <= 65535:
            raise InputError(f"--quic-port {port}: not a UDP port (1-65535)")
    ports = tuple(args.quic_port)
    wanted = capture_expectations(args.capture.stem, args.active)
    if args.scenario is not None:
        scenario = load_scenario(args.scenario)
        wanted = replace(expectations(scenario), workload=None, all_active=wanted.all_active)
    warnings: list[str] = []
    datagrams = read_datagrams(args.capture, args.keylog, ports, warnings)
    for warning in warnings:
        print(f"quicmig: warning: {warning}", file=sys.stderr, flush=True)
    _check_decrypted(datagrams, args.capture, args.keylog)
    _, version = find_tshark()
    result, views = analyse(
        datagrams,
        capture=str(args.capture),
        keylog=str(args.keylog) if args.keylog else None,
        tshark=".".join(map(str, version)),
        expectations=wanted,
        quic_ports=ports,
        warnings=warnings,
    )
    if args.json is not None:
        write_atomically(args.json, json.dumps(result.to_dict(), indent=2) + "\n")
    console = make_console()
    if args.quiet:
        why = "".join(f"\n  {reason}" for reason in result.reasons)
        console.print(f"{args.capture}: {result.verdict.value}{why}", markup=False, soft_wrap=True)
    else:
        print_report(console, result, views)
    return 0 if result.verdict is Verdict.PASSED else 1


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def print_report(console: Console, result: Result, views: list[ConnectionView]) -> None:
    stats = result.stats
    console.print(
        f"[bold]{escape(str(stats['capture']))}[/bold]  {stats['datagrams']} QUIC datagrams "
        f"({stats['decrypted']} 1-RTT decrypted), {len(views)} connections, "
        f"tshark {stats['tshark']}; times from the first QUIC datagram"
    )
    for check in result.checks:
        if check.name in (KEYS_CHECK, NEW_PATH_CHECK):
            # One line, not wrapped: it names what to fix.
            console.print(f"[bold yellow]⚠ {escape(check.detail)}[/bold yellow]", soft_wrap=True)
    paths = Table(title="Paths (client addresses seen on each server)", title_justify="left")
    for name in ("conn", "server", "client address", "from", "to", "datagrams c→s / s→c"):
        paths.add_column(name)
    for view in views:
        for use in view.paths.values():
            paths.add_row(
                str(view.number),
                format_address(view.server),
                format_address(use.peer),
                _s(use.first_at),
                _s(use.last_at),
                f"{use.datagrams_from} / {use.datagrams_to}",
            )
    console.print(paths)
    if result.migrations:
        console.print(migrations_table(result, console.width, capture=True))
    else:
        console.print("[bold yellow]no migration in this capture[/bold yellow]")
    console.print(checks_table(result, console.width))
    console.print(f"Verdict: {verdict_text(result)}")
