"""`quicmig lab`: the live server and client in Linux network namespaces, moved by the kernel."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.table import Table
from rich.text import Text

from quicmig.commands.client import parse_size
from quicmig.core.results import check_output_file
from quicmig.errors import QuicmigError
from quicmig.lab import network, system
from quicmig.lab.run import (
    KINDS,
    LabOptions,
    LabResult,
    MoveResult,
    parse_kinds,
    run_lab,
    validate,
)
from quicmig.model.scenario import STACKS
from quicmig.report.table import make_console


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "lab",
        description="Build a network in Linux network namespaces (a client with WiFi and "
        "cellular veths, a router doing NAT with nftables and conntrack, a server), run the live "
        "server and client inside it, and move the network under the client mid-transfer: NAT "
        "rebinding (new port range, conntrack entries deleted), network switch (WiFi link down, "
        "default route to cellular) and IP change (the interface's address replaced). The client "
        "never moves its socket: the kernel changes its source address. Reports what the "
        "server's tracker observed for each. Needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN) and "
        "iproute2, nftables, conntrack (tshark for --pcap). Everything created carries a per-run "
        "prefix (qm + 6 hex digits) and is removed at the end, on failure and on Ctrl-C.",
        epilog="examples:\n"
        "  sudo quicmig lab run\n"
        "  sudo quicmig lab run --migrate nat-rebinding,network-switch --download 8M --pcap caps/\n"
        "  sudo quicmig lab run --messages 3 --json lab.json\n"
        "  sudo quicmig lab clean      # remove leftovers of runs that were killed with SIGKILL",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)
    run = actions.add_parser(
        "run",
        help="build the network, run server and client, migrate, report, remove everything",
        description="Build the namespace network, run the live server and client in it, perform "
        "the migrations at the network level while the client downloads (or between messages) "
        "and report what the server observed. Exit 0 when the server saw every move as "
        "expected, the interop checks of `quicmig run`/`quicmig check` pass on its record "
        "(PATH_CHALLENGE in its first packet on each new path, answered; every path "
        "validated), and the download arrived intact.",
    )
    run.add_argument(
        "--migrate",
        metavar="KIND[,KIND...]",
        default=",".join(KINDS),
        help=f"network moves, in order (default {','.join(KINDS)})",
    )
    workload = run.add_mutually_exclusive_group()
    workload.add_argument(
        "--download", metavar="BYTES", help="download this much while moving (default 4M)"
    )
    workload.add_argument(
        "--messages",
        type=int,
        metavar="N",
        help="instead of a download: N echo messages before, between and after the moves",
    )
    run.add_argument(
        "--rate-mbit",
        type=float,
        default=20.0,
        metavar="MBIT",
        help="bandwidth toward the client, tbf on the router (default 20; 0 = unlimited)",
    )
    run.add_argument(
        "--delay-ms", type=float, default=0.0, metavar="MS", help="one-way delay (needs netem)"
    )
    run.add_argument(
        "--loss-pct", type=float, default=0.0, metavar="PCT", help="loss each way (needs netem)"
    )
    run.add_argument(
        "--gap",
        type=float,
        default=0.2,
        metavar="SECONDS",
        help="network-switch: time between link down and the new route (default 0.2)",
    )
    run.add_argument(
        "--pcap", type=Path, metavar="DIR", help="capture on the router's interfaces into DIR"
    )
    run.add_argument("--json", type=Path, metavar="FILE", help="write the result as JSON")
    run.add_argument(
        "--stack",
        choices=STACKS,
        default="stock",
        help="the server's QUIC stack: `stock` (default) is aioquic 1.7.2 as released, whose "
        "PATH_CHALLENGE misses its first packet on a new path when the congestion window is "
        "full; `quicmig` adds quicmig's server-side extensions (`quicmig server --stack`)",
    )
    run.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="client: wait this long for the handshake and each answer (default 5)",
    )
    run.set_defaults(handler=run_command)
    clean = actions.add_parser(
        "clean",
        help="remove namespaces, links and nftables tables left by earlier lab runs",
        description="Remove what earlier `quicmig lab run`s left behind (a run killed with "
        "SIGKILL cannot clean up): network namespaces, links and nftables tables whose name is "
        "qm + 6 hex digits + '-' or '_'. Nothing else is touched. Runs still going are skipped: "
        "each run writes its PID to /run/quicmig/PREFIX.pid and removes it at the end. Exit 1 "
        "when something is still there after its delete.",
    )
    clean.set_defaults(handler=clean_command)


def _options(args: argparse.Namespace) -> LabOptions:
    kinds = parse_kinds(args.migrate)
    download: int | None = parse_size(args.download if args.download is not None else "4M")
    messages = 2
    if args.messages is not None:
        download, messages = None, args.messages
    options = LabOptions(
        migrate=kinds,
        download=download,
        messages=messages,
        rate_mbit=args.rate_mbit,
        delay_ms=args.delay_ms,
        loss_pct=args.loss_pct,
        gap=args.gap,
        pcap_dir=args.pcap,
        timeout=args.timeout,
        stack=args.stack,
    )
    validate(options)
    if args.json is not None:
        check_output_file(args.json, "--json")
    return options


def run_command(args: argparse.Namespace) -> int:
    options = _options(args)  # every input error before anything is created
    result = run_lab(options, log=lambda line: print(line, flush=True))
    report(result)
    if args.json is not None:
        try:
            args.json.write_text(json.dumps(result.to_json(), indent=2) + "\n")
        except OSError as exc:
            raise QuicmigError(f"cannot write --json {args.json}: {exc}") from None
        print(f"📝 {args.json}")
    return 0 if result.passed else 1


def clean_command(args: argparse.Namespace) -> int:
    system.require()
    done = network.clean()
    for item in done.removed:
        print(f"🧹 removed {item}")
    for prefix, pid in done.skipped.items():
        print(f"⏭️  skipped {prefix}: its run (PID {pid}) is still going and removes it at the end")
    for item in done.failed:
        print(f"❌ could not remove {item}")
    counts = [f"{len(done.removed)} removed"] if done.removed else ["nothing to remove"]
    if done.skipped:
        counts.append(
            f"{len(done.skipped)} running lab{'s' if len(done.skipped) > 1 else ''} skipped"
        )
    print(f"🧹 {', '.join(counts)}")
    if done.failed:
        raise QuicmigError(
            f"{len(done.failed)} could not be removed (still listed after the delete): "
            f"{', '.join(done.failed)}"
        )
    return 0


def report(result: LabResult) -> None:
    console = make_console()
    table = Table(
        title="Network moves, and what the server observed (fetched over the connection)",
        title_justify="left",
    )
    for column in ("#", "network change", "at", "server saw", "expected", "validated", ""):
        table.add_column(column)
    for index, item in enumerate(result.moves, 1):
        table.add_row(*[Text(cell) for cell in _row(index, item)])
    console.print(table)
    for item in result.moves:
        if item.why:
            print(f"{'📌' if item.confirmed else '❌'} {item.move.kind}: {item.why}")
    confirmed = sum(item.confirmed for item in result.moves)
    print(
        f"{'✅' if confirmed == len(result.moves) else '❌'} The server saw {confirmed} of "
        f"{len(result.moves)} network moves as expected, each new path validated by "
        "PATH_CHALLENGE/PATH_RESPONSE (or validated before)"
    )
    print("Interop checks on the server's record (as `quicmig run` and `quicmig check`):")
    for check in result.checks:
        mark = {True: "✅", False: "❌", None: "❔"}[check.passed]
        print(f"  {mark} {check.name}: {check.detail}")
    if result.download is not None:
        intact = result.download_intact
        print(
            f"{'✅' if intact else '❌'} Download: {result.download['received']:,}/"
            f"{result.download['size']:,} bytes, SHA-256 "
            f"{'matches' if intact else 'does NOT match'} what the server says it sent "
            f"({str(result.download['sha256'])[:16]}…)"
        )
    if result.messages is not None:
        print(f"💬 {result.messages['count']} messages echoed")
    for path in result.files:
        print(f"📁 {path}")
    print(f"🧹 Lab {result.prefix} removed ({result.seconds:.1f} s)")
    verdict = "PASSED" if result.passed else "FAILED"
    print(f"{'✅' if result.passed else '❌'} {verdict} (server stack {result.options.stack})")


def _row(index: int, item: MoveResult) -> list[str]:
    seen = item.observed
    if seen is None:
        saw, validated = "nothing", "-"
    else:
        saw = f"{seen['observed'].replace('_', ' ')}\n{seen['old_peer']} → {seen['new_peer']}"
        rtt = seen.get("validation_rtt")
        validated = f"{rtt * 1e3:.2f} ms" if rtt is not None else "never"
        if rtt is None and item.confirmed:
            validated = "earlier"
    return [
        str(index),
        f"{item.move.kind}\n{item.move.detail}",
        f"{item.move.at:.2f} s",
        saw,
        item.expected.replace("_", " "),
        validated,
        "✅" if item.confirmed else "❌",
    ]
