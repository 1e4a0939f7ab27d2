"""`quicmig check CAPTURE`: quic-interop-runner's migration checks on any capture, via tshark."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from quicmig.capture.analysis import KEYS_CHECK, NO_MIGRATION, CaptureReport, analyse
from quicmig.capture.tshark import QuicDatagram, find_tshark, read_datagrams
from quicmig.core.results import check_output_file
from quicmig.errors import InputError
from quicmig.report.table import VERDICT_STYLE, make_console


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
    warnings: list[str] = []
    datagrams = read_datagrams(args.capture, args.keylog, ports, warnings)
    for warning in warnings:
        print(f"quicmig: warning: {warning}", file=sys.stderr, flush=True)
    _check_decrypted(datagrams, args.capture, args.keylog)
    _, version = find_tshark()
    report = analyse(
        datagrams,
        capture=str(args.capture),
        keylog=str(args.keylog) if args.keylog else None,
        tshark=".".join(map(str, version)),
        active=args.active,
        quic_ports=ports,
        warnings=warnings,
    )
    if args.json is not None:
        report.write_json(args.json)
    console = make_console()
    if args.quiet:
        why = "".join(f"\n  {reason}" for reason in report.reasons)
        console.print(f"{args.capture}: {report.verdict.value}{why}", markup=False, soft_wrap=True)
    else:
        print_report(console, report)
    return 0 if report.verdict.value == "passed" else 1


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def print_report(console: Console, report: CaptureReport) -> None:
    console.print(
        f"[bold]{report.capture}[/bold]  {report.datagrams} QUIC datagrams "
        f"({report.decrypted} 1-RTT decrypted), {len(report.connections)} connections, "
        f"tshark {report.tshark}; times from the first QUIC datagram"
    )
    keys = [c for c in report.checks if c.name == KEYS_CHECK]
    if keys:
        # One line, not wrapped: it names what to fix.
        console.print(f"[bold yellow]⚠ {escape(keys[0].detail)}[/bold yellow]", soft_wrap=True)
    paths = Table(title="Paths (client addresses seen on each server)", title_justify="left")
    for name in ("conn", "server", "client address", "from", "to", "datagrams c→s / s→c"):
        paths.add_column(name)
    for conn in report.connections:
        for use in conn.paths:
            paths.add_row(
                str(conn.number),
                conn.server,
                use.peer,
                _s(use.first_at),
                _s(use.last_at),
                f"{use.datagrams_from} / {use.datagrams_to}",
            )
    console.print(paths)
    switches = [(c.number, s) for c in report.connections for s in c.switches]
    if not switches:
        console.print(f"[bold yellow]{NO_MIGRATION}[/bold yellow]")
    else:
        table = Table(title="Path changes", title_justify="left")
        for name in ("conn", "at", "change", "first server datagram", "challenge", "validated"):
            table.add_column(name)
        table.add_column("new DCID")
        for number, switch in switches:
            first = (
                "not captured"
                if switch.first_server_at is None
                else f"{_s(switch.first_server_at)} (frame {switch.first_server_frame})"
            )
            rtt = switch.validation_rtt
            table.add_row(
                str(number),
                _s(switch.detected_at),
                f"{switch.observed.replace('_', ' ')}\n{switch.old_peer} → {switch.new_peer}",
                first,
                {True: "✓ in it", False: "[red]✗ not in it[/red]", None: "-"}[
                    switch.first_packet_had_challenge
                ],
                "[red]never[/red]" if rtt is None else f"{rtt * 1e3:.1f} ms",
                {True: "yes", False: "no", None: "?"}[switch.cid_changed],
            )
        console.print(table)
    checks = Table(title="Checks", title_justify="left", show_header=False)
    checks.add_column("")
    checks.add_column("check")
    checks.add_column("detail")
    for check in report.checks:
        mark = {True: "[green]✓[/green]", False: "[red]✗[/red]", None: "[yellow]?[/yellow]"}
        checks.add_row(mark[check.passed], check.name, check.detail)
    console.print(checks)
    style = VERDICT_STYLE[report.verdict.value]
    console.print(f"Verdict: [{style}]{report.verdict.value.upper()}[/{style}]")
