"""`quicmig check CAPTURE`: quic-interop-runner's migration checks on any capture, via tshark."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from quicmig.capture.analysis import (
    DECRYPTION_CHECKS,
    ConnectionView,
    analyse,
    capture_expectations,
)
from quicmig.capture.tshark import QuicDatagram, find_tshark, read_datagrams
from quicmig.core.datagram import format_address
from quicmig.core.observation import expectations
from quicmig.core.results import Result, check_output_file, write_atomically
from quicmig.errors import InputError
from quicmig.model.events import expand_timeline, kind_of
from quicmig.model.loader import load_scenario
from quicmig.model.scenario import Scenario
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
    )
    parser.add_argument("capture", type=Path, metavar="CAPTURE", help="pcap or pcapng file")
    parser.add_argument(
        "--keylog", type=Path, metavar="FILE", help="TLS key log (SSLKEYLOGFILE format)"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the findings as JSON")
    parser.add_argument(
        "--html",
        type=Path,
        metavar="FILE",
        help="a self-contained HTML report: the checks, and the capture's packets around each "
        "migration of its first connection as a sequence diagram",
    )
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
    for flag in ("json", "html"):
        if (path := getattr(args, flag)) is not None:
            check_output_file(path, f"--{flag}")
    if args.html is not None and args.html.suffix.lower() not in (".html", ".htm"):
        raise InputError(f"--html {args.html}: use a .html file name")
    for port in args.quic_port:
        if not 1 <= port <= 65535:
            raise InputError(f"--quic-port {port}: not a UDP port (1-65535)")
    ports = tuple(args.quic_port)
    wanted = capture_expectations(args.capture.stem, args.active)
    scenario = None
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
    argv = getattr(args, "argv", None)
    result = replace(result, command=shlex.join(["quicmig", *argv]) if argv else None)
    if args.html is not None:
        from quicmig.report.html import About, write_html
        from quicmig.report.recording import capture_packet_log

        result = replace(result, packets=capture_packet_log(result, datagrams, views, ports))
        summary = f"the capture {args.capture}, judged like a run"
        write_html(args.html, [result], infos=[About(summary)])
        result.files["html"] = str(args.html)
    if args.json is not None:
        write_atomically(args.json, json.dumps(result.to_dict(), indent=2) + "\n")
    console = make_console()
    if args.quiet:
        why = "".join(f"\n  {reason}" for reason in result.reasons)
        console.print(f"{args.capture}: {result.verdict.value}{why}", markup=False, soft_wrap=True)
    else:
        print_report(console, result, views, capture_clock(result, scenario))
    return 0 if result.verdict is Verdict.PASSED else 1


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


VIRTUAL_EPOCH = 1e6  # seconds: a capture starting before this is on a simulator's clock


@dataclass(frozen=True, slots=True)
class Clock:
    """How the capture's times relate to a run's: `offset` is the run time of the first
    datagram (known for the simulator's captures, stamped in virtual time), `change_at` the
    run time of the scenario's first network change (with --scenario)."""

    offset: float | None = None  # seconds
    change_at: float | None = None  # seconds
    change: str = ""

    def words(self) -> str:
        said = "t: seconds since the capture's first QUIC datagram"
        if self.offset is None:
            return said
        said += f", which is at {self.offset:.4f} s of the simulated run (its clock)"
        if self.change_at is not None:
            said += f"; Δ: since the scenario's first network change ({self.change})"
        return said


def capture_clock(result: Result, scenario: Scenario | None) -> Clock:
    start = result.stats.get("start_epoch")
    if not isinstance(start, int | float) or start >= VIRTUAL_EPOCH:
        return Clock()
    if scenario is None:
        return Clock(float(start))
    timed = [e for e in expand_timeline(scenario.timeline, scenario.duration) if e.progress is None]
    if not timed:
        return Clock(float(start))
    first = timed[0]
    return Clock(float(start), first.at, f"{kind_of(first).value} at {first.at:g} s")


def print_report(
    console: Console, result: Result, views: list[ConnectionView], clock: Clock | None = None
) -> None:
    stats = result.stats
    clock = clock or Clock()
    count = len(views)
    console.print(
        f"[bold]{escape(str(stats['capture']))}[/bold]: {stats['datagrams']} QUIC datagrams "
        f"({stats['decrypted']} 1-RTT decrypted), {count} connection{'s' if count != 1 else ''}, "
        f"tshark {stats['tshark']}"
    )
    console.print(f"[dim]{escape(clock.words())}[/dim]")
    for check in result.checks:
        if check.name in DECRYPTION_CHECKS:
            # One line, not wrapped: it names what to fix.
            console.print(f"[bold yellow]⚠ {escape(check.detail)}[/bold yellow]", soft_wrap=True)
    servers = {view.server for view in views}
    one = next(iter(servers)) if len(servers) == 1 else None
    # One server (the usual capture): named in the title, not repeated on every row.
    title = (
        f"Client addresses seen by {format_address(one)}"
        if one is not None
        else "Client addresses seen by each server"
    )
    paths = Table(title=title, title_justify="left")
    names = ["conn", *([] if one is not None else ["server"]), "client address"]
    for name in [*names, "from", "to", "c→s / s→c"]:
        paths.add_column(name, no_wrap=True, justify="right" if name in ("from", "to") else "left")
    for view in views:
        for use in view.paths.values():
            server = [] if one is not None else [format_address(view.server)]
            paths.add_row(
                str(view.number),
                *server,
                format_address(use.peer),
                _s(use.first_at),
                _s(use.last_at),
                f"{use.datagrams_from} / {use.datagrams_to}",
            )
    console.print(paths)
    if result.migrations:
        console.print(
            migrations_table(
                result,
                console.width,
                capture=True,
                since=(clock.change_at - (clock.offset or 0.0))
                if clock.change_at is not None
                else None,
            )
        )
    else:
        console.print("[bold yellow]no migration in this capture[/bold yellow]")
    console.print(checks_table(result, console.width))
    console.print(f"Verdict: {verdict_text(result)}")
