"""`quicmig lab`: the live server and client in Linux network namespaces, moved by the kernel.

`lab run` compiles its flags into a Scenario on the phone topology (WiFi behind a home NAT,
cellular behind a carrier NAT) and runs it like `quicmig run --backend lab`: same pipeline,
same checks, same Result.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import replace
from pathlib import Path

from quicmig.commands.client import parse_size
from quicmig.core.results import check_output_dir, check_output_file
from quicmig.errors import InputError, QuicmigError
from quicmig.lab import owners, system
from quicmig.model.events import AddressChange, EventKind, NatRebind, Switch, TimelineEvent
from quicmig.model.events import event_kind as parse_event
from quicmig.model.loader import load_scenario
from quicmig.model.scenario import STACKS, Download, Expectation, Messages, Scenario
from quicmig.model.topology import LinkProfile
from quicmig.model.verdicts import MigrationKind

MOVES = (EventKind.NAT_REBINDING, EventKind.INTERFACE_SWITCH, EventKind.ADDRESS_CHANGE)
MOVE_NAMES = "nat-rebinding, network-switch, ip-change"
DEFAULT_MOVES = "nat-rebinding,network-switch,ip-change"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "lab",
        description="Build the phone topology in Linux network namespaces (a client with WiFi "
        "and cellular links, each behind its own NAT made with nftables and conntrack, and a "
        "server; every link shaped by the simulator's link model), run the live server and "
        "client in it, and move the network under the client mid-transfer: NAT rebinding (new "
        "port range, conntrack entries deleted), network switch (WiFi link down, default route "
        "to cellular) and IP change (the interface's address replaced). The client never moves "
        "its socket: the kernel changes its source address. Reports what the server's tracker "
        "observed for each. `lab race` makes the same move under a QUIC, a TCP + TLS and an "
        "MPTCP download, side by side. Needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN), iproute2, "
        "nftables, conntrack and /dev/net/tun (tshark for --pcap). Everything created carries a "
        "per-run prefix (qm + 6 hex digits) and is removed at the end, on failure and on Ctrl-C.",
        epilog="examples:\n"
        "  sudo quicmig lab run\n"
        "  sudo quicmig lab run --migrate nat-rebinding,network-switch --download 8M \\\n"
        "      --pcap caps/\n"
        "  sudo quicmig lab run --messages 3 --json lab.json\n"
        "  sudo quicmig lab race --plot race.png --json race.json  # QUIC, TCP, MPTCP\n"
        "  sudo quicmig lab clean  # remove what runs killed with SIGKILL left behind",
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)
    run = actions.add_parser(
        "run",
        help="build the network, run server and client, migrate, report, remove everything",
        description="Build the namespace network, run the live server and client in it, perform "
        "the migrations at the network level while the client downloads (or between messages) "
        "and report what the server observed. Exit 0 when the server saw every move as "
        "expected and the checks of `quicmig run` pass (the same judge: PATH_CHALLENGE in its "
        "first packet on each new path, answered; every path validated; the download intact).",
    )
    run.add_argument(
        "--migrate",
        metavar="KIND[,KIND...]",
        default=DEFAULT_MOVES,
        help=f"network moves, in order, spread over the transfer (default {DEFAULT_MOVES})",
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
        help="rate of both client links, each direction (default 20; 0 = unlimited)",
    )
    run.add_argument(
        "--delay-ms", type=float, default=0.0, metavar="MS", help="one-way delay, both links"
    )
    run.add_argument(
        "--loss-pct", type=float, default=0.0, metavar="PCT", help="random loss, each way"
    )
    run.add_argument(
        "--gap",
        type=float,
        default=0.2,
        metavar="SECONDS",
        help="network-switch: time between link down and the new route (default 0.2)",
    )
    run.add_argument(
        "--pcap",
        type=Path,
        metavar="DIR",
        help="capture the router's server side into DIR/server-side.pcap, with the TLS key log "
        "DIR/keys.log (`quicmig check` reads both)",
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
    _register_race(actions)
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


def _register_race(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from quicmig.race import DEFAULT_RACE, race_names

    names = ", ".join(race_names())
    race = actions.add_parser(
        "race",
        help="the same download and the same move over QUIC, TCP and MPTCP, side by side",
        description="Download the same bytes from the lab's server over QUIC (quicmig's live "
        "client and server, as `lab run`), TCP + TLS 1.3 (HTTP/1.1; on a broken connection "
        "the client reconnects and resumes with a Range request) and MPTCP (the kernel's, "
        "with a subflow on each client interface), one run after another, each through the "
        "same topology and the same timeline in a lab of its own; then a table of what each "
        "transport lost: did its connection survive, handshakes, the interruption and the "
        "time from the move to the next byte, the longest gap, bytes fetched twice, when it "
        f"finished. SCENARIO is a race ({names}; default {DEFAULT_RACE}: the phone topology, "
        "WiFi 20 ms / 50 Mbit/s, cellular 60 ms / 10 Mbit/s / 1 % loss, a 4 MB download, "
        "the move once 1 MB has arrived), or any other scenario name or FILE.toml with a "
        "download. "
        "Exit status: 0 when every transport's download completed intact (whether its "
        "connection survived is the measurement), 1 when one did not, 2 for bad input. "
        "Needs root, like `lab run`.",
        epilog="examples:\n"
        "  sudo quicmig lab race\n"
        "  sudo quicmig lab race nat-rebinding --plot nat.png --json nat.json\n"
        "  sudo quicmig lab race make-before-break --transports tcp,mptcp \\\n"
        "      --stall-timeout 30\n"
        "  quicmig compare nat.json          # the three Results side by side",
    )
    race.add_argument(
        "scenario", nargs="?", default=DEFAULT_RACE, metavar="SCENARIO", help=f"({names})"
    )
    race.add_argument(
        "--transports",
        metavar="LIST",
        help="comma-separated, in the order to run (default quic,tcp,mptcp, where an "
        "unavailable MPTCP runs as plain TCP and says so; MPTCP named here must be available)",
    )
    race.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a scenario value, e.g. links.cellular.loss_pct=0, timeline.0.at_s=1",
    )
    race.add_argument("--download", metavar="BYTES", help="download this much (e.g. 8M)")
    race.add_argument(
        "--stall-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="TCP client: a connection that brings no byte for this long is broken (default "
        "10, OkHttp's read timeout)",
    )
    race.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="TCP client: for the TCP and TLS handshakes (default 10, OkHttp's)",
    )
    race.add_argument(
        "--tcp-congestion",
        choices=("cubic", "reno", "bbr"),
        default="cubic",
        help="TCP congestion control of both ends' sockets (default cubic, Linux's default; "
        "aioquic 1.7.2's QUIC uses Reno)",
    )
    race.add_argument(
        "--mptcp-subflow",
        choices=("backup", "active"),
        default="backup",
        help="the second interface's subflow: `backup` stands by until the first fails "
        "(default, iOS's handover mode), `active` carries data too",
    )
    race.add_argument(
        "--stack",
        choices=STACKS,
        default="stock",
        help="the QUIC server's stack, as for `lab run` (default stock aioquic)",
    )
    race.add_argument("--seed", type=int, default=1, help="run seed (default 1)")
    race.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="QUIC client: wait this long for the handshake and each answer (default 5)",
    )
    race.add_argument(
        "--json", type=Path, metavar="FILE", help="write the Results (with series) as JSON"
    )
    race.add_argument(
        "--plot", type=Path, metavar="FILE", help="figure: the three curves (.png, .svg, .pdf)"
    )
    race.add_argument(
        "--pcap",
        type=Path,
        metavar="DIR",
        help="capture the server's side of each run into DIR/TRANSPORT.pcap, with the TLS key "
        "log DIR/TRANSPORT.keys (Wireshark decrypts both QUIC and TLS with it)",
    )
    race.set_defaults(handler=race_command)


def race_command(args: argparse.Namespace) -> int:
    from quicmig.race.command import race_command as command

    return command(args)


def lab_scenario(args: argparse.Namespace) -> Scenario:
    """The flags of `lab run` as a Scenario: the phone topology, the moves spread evenly over
    the transfer (move k once k/(n+1) of the bytes have arrived), both client links at the
    rate, delay and loss given."""
    moves = [parse_event(part, "--migrate", MOVES) for part in args.migrate.split(",") if part]
    if not moves:
        raise InputError(f"--migrate: no move given; the lab performs {MOVE_NAMES}")
    if args.messages is not None:
        if args.messages < 1:
            raise InputError(f"--messages {args.messages}: at least 1")
        workload: Download | Messages = Messages(count=args.messages * (len(moves) + 1))
    else:
        workload = Download(parse_size(args.download if args.download is not None else "4M"))
    for flag, value, high in (
        ("--rate-mbit", args.rate_mbit, 10_000.0),
        ("--delay-ms", args.delay_ms, 10_000.0),
        ("--loss-pct", args.loss_pct, 99.0),
        ("--gap", args.gap, 10.0),
        ("--timeout", args.timeout, 300.0),
    ):
        if not 0 <= value <= high:
            raise InputError(f"{flag} {value:g}: between 0 and {high:g}")
    base = load_scenario("network-switch")  # the phone topology, on WiFi first
    topology = base.topology
    profile = LinkProfile(
        delay=args.delay_ms / 1e3,
        loss=args.loss_pct / 100,
        rate=args.rate_mbit * 1e6 or None,
        queue=100,
    ).validated("lab link")
    for name in ("wifi", "cellular"):
        topology = topology.with_link_profile(name, profile)
    timeline: list[TimelineEvent] = []
    expected: list[MigrationKind] = []
    current = "wifi"
    for index, kind in enumerate(moves):
        share = (index + 1) / (len(moves) + 1)
        nat = topology.link_of("client", current).b
        behind_nat = nat != "internet"
        if kind is EventKind.NAT_REBINDING:
            timeline.append(NatRebind(0.0, nat, progress=share))
            expected.append(MigrationKind.PORT_CHANGE)
        elif kind is EventKind.INTERFACE_SWITCH:
            current = "cellular" if current == "wifi" else "wifi"
            timeline.append(Switch(0.0, "client", current, gap=args.gap, progress=share))
            expected.append(MigrationKind.ADDRESS_CHANGE)
        else:
            address = topology.host("client").interface(current).addresses[0]
            head, _, last = address.rpartition(".")
            new = f"{head}.{int(last) % 250 + index + 1}"
            timeline.append(AddressChange(0.0, f"client.{current}", new, progress=share))
            # Behind a NAT a new private address leaves from the NAT's address again: the
            # server sees a new port (RFC 4787 endpoint-independent mapping).
            expected.append(
                MigrationKind.PORT_CHANGE if behind_nat else MigrationKind.ADDRESS_CHANGE
            )
    scenario = replace(
        base,
        name="lab-run",
        summary=f"quicmig lab run: {args.migrate}",
        doc="",
        topology=topology,
        workload=workload,
        timeline=tuple(timeline),
        duration=120.0,
        expect=Expectation(migrations=tuple(expected)),
    ).validated()
    return scenario.with_stack(args.stack)


def run_command(args: argparse.Namespace) -> int:
    from quicmig.commands.run import live_result

    scenario = lab_scenario(args)  # every input error before anything is created
    if args.json is not None:
        check_output_file(args.json, "--json")
    pcap = keylog = None
    if args.pcap is not None:
        check_output_dir(args.pcap, "--pcap")
        args.pcap.mkdir(parents=True, exist_ok=True)
        pcap, keylog = args.pcap / "server-side.pcap", args.pcap / "keys.log"
    return live_result(
        scenario,
        "lab",
        seed=1,
        pcap=pcap,
        keylog=keylog,
        json_path=args.json,
        timeout=args.timeout,
        command=shlex.join(["quicmig", *getattr(args, "argv", ["lab", "run"])]),
    )


def clean_command(args: argparse.Namespace) -> int:
    system.require("lab clean")
    done = owners.clean()
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
