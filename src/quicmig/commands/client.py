"""`quicmig client`: a live QUIC connection that really migrates, judged from the server's view.

Its flags compile into a Scenario (the moves as a timeline, the messages or the download as
the workload) that runs through the one pipeline with a remote server: what the server's
tracker observed is fetched over the same connection, and the same judge as for every other
run says whether the server saw each move where the client went.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import re
from pathlib import Path

from rich.markup import escape
from rich.table import Table
from rich.text import Text

from quicmig.core.datagram import format_address
from quicmig.core.results import NetworkChange, Result, check_output_file
from quicmig.errors import InputError
from quicmig.live.certs import CA_FILE
from quicmig.live.client import DEFAULT_GAP, DEFAULT_TIMEOUT, default_addresses
from quicmig.live.server import DEFAULT_HOST, DEFAULT_PORT
from quicmig.model.events import (
    AddressChange,
    CidRotate,
    EventKind,
    NatRebind,
    Switch,
    SwitchMode,
    TimelineEvent,
    event_kind,
)
from quicmig.model.scenario import (
    MAX_DOWNLOAD,
    Download,
    Expectation,
    Messages,
    QuicExtensions,
    Scenario,
)
from quicmig.model.settings import check_seconds
from quicmig.model.topology import Host, Interface, Link, Nat, Topology
from quicmig.model.verdicts import MigrationKind, Verdict
from quicmig.report.table import check_mark, hanging, log_line, make_console, verdict_text

SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmg]?)i?b?\s*$", re.IGNORECASE)
UNITS = {"": 1, "k": 1_000, "m": 1_000_000, "g": 1_000_000_000}
MOVES = (
    EventKind.NAT_REBINDING,
    EventKind.ADDRESS_CHANGE,
    EventKind.INTERFACE_SWITCH,
    EventKind.CID_ROTATION,
)
NEEDS_ADDRESS = (EventKind.ADDRESS_CHANGE, EventKind.INTERFACE_SWITCH)
# What the server must see after each move (RFC 9000 section 9.3).
SEEN = {
    EventKind.NAT_REBINDING: MigrationKind.PORT_CHANGE,
    EventKind.ADDRESS_CHANGE: MigrationKind.ADDRESS_CHANGE,
    EventKind.INTERFACE_SWITCH: MigrationKind.ADDRESS_CHANGE,
}
DEFAULT_MOVES = "nat-rebinding,ip-change,network-switch,cid-rotation"

# aioquic warns on stderr about every connection closed with an error; our log says it.
QUIC_LOGGER = "quic"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "client",
        description="Connect to `quicmig server`, exchange messages, and migrate the live "
        "connection for real: nat-rebinding (new UDP socket, new source port, same address, "
        "same CID), ip-change (new local address, new CID), network-switch (to another local "
        "address, break-before-make or make-before-break, new CID), cid-rotation (new CID, same "
        "path). With no options it runs each kind in turn with messages before and after, then "
        "shows what the server confirmed (fetched from the server over the same connection) "
        "beside what the client did. Exit status 0 when the server confirmed everything.",
        epilog="examples:\n"
        "  quicmig client\n"
        "  quicmig client --migrate nat-rebinding,cid-rotation --interval 0.5\n"
        "  quicmig client --download 8M --switch-mode make-before-break\n"
        "  quicmig client --host ::1 --migrate nat-rebinding\n"
        "macOS: only 127.0.0.1 exists on lo0; for ip-change and network-switch first run\n"
        "  sudo ifconfig lo0 alias 127.0.0.2 up; sudo ifconfig lo0 alias 127.0.0.3 up",
    )
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help=f"server IP address (default {DEFAULT_HOST})"
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"server UDP port (default {DEFAULT_PORT})"
    )
    parser.add_argument(
        "--migrate",
        metavar="KIND[,KIND...]",
        help=f"migrations to perform, in order (default: {DEFAULT_MOVES}; also: "
        "address-rebinding; `none`: just the messages or the download)",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="pause before each migration (default 1); with --download the migrations are "
        "spread over the transfer instead",
    )
    parser.add_argument(
        "--messages",
        type=int,
        default=2,
        metavar="N",
        help="messages to send before the first and after each migration (default 2)",
    )
    parser.add_argument(
        "--download",
        metavar="BYTES",
        help="download this much (e.g. 4M) and perform the migrations during the transfer",
    )
    parser.add_argument(
        "--addresses",
        metavar="ADDR,ADDR...",
        help="local addresses to move between, starting on the first (default "
        "127.0.0.1,127.0.0.2,127.0.0.3 for an IPv4 loopback server, ::1 for IPv6)",
    )
    parser.add_argument(
        "--switch-mode",
        choices=[mode.value for mode in SwitchMode],
        default=SwitchMode.BREAK_BEFORE_MAKE.value,
        help="how network-switch moves (default break-before-make)",
    )
    parser.add_argument(
        "--gap",
        type=float,
        default=DEFAULT_GAP,
        metavar="SECONDS",
        help=f"network-switch: time without a network (break-before-make) or with both "
        f"(make-before-break) (default {DEFAULT_GAP:g})",
    )
    parser.add_argument(
        "--ca",
        type=Path,
        default=Path(CA_FILE),
        help=f"CA to verify the server against (default ./{CA_FILE}, written by the server)",
    )
    parser.add_argument(
        "--insecure", action="store_true", help="do not verify the server's certificate"
    )
    parser.add_argument(
        "--ignore-disable-migration",
        action="store_true",
        help="migrate even if the server sent disable_active_migration (RFC 9000 section "
        "18.2), to see what the server does then; by default ip-change and network-switch "
        "are refused after it",
    )
    parser.add_argument(
        "--server-name", metavar="NAME", help="TLS server name (default: the --host address)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"wait this long for the handshake and each answer (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--secrets-log", type=Path, metavar="FILE", help="append TLS secrets (SSLKEYLOGFILE)"
    )
    parser.add_argument(
        "--json", type=Path, metavar="FILE", help="write the result (quicmig.result/2) as JSON"
    )
    parser.set_defaults(handler=run)


def parse_size(text: str) -> int:
    match = SIZE.match(text)
    if match is None:
        raise InputError(f"--download {text!r}: give a size such as 4000000, 500k or 4M")
    size = int(float(match.group(1)) * UNITS[match.group(2).lower()])
    if not 0 < size <= MAX_DOWNLOAD:
        raise InputError(f"--download {text!r}: between 1 byte and {MAX_DOWNLOAD // 1_000_000}M")
    return size


def _ip(text: str, what: str) -> str:
    if text == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        raise InputError(f"{what}: {text!r} is not an IP address") from None


def client_scenario(
    moves: list[EventKind],
    addresses: tuple[str, ...],
    *,
    messages: int,
    interval: float,
    size: int | None,
    mode: SwitchMode,
    gap: float,
    honour_disable_migration: bool,
    timeout: float,
) -> Scenario:
    """The client's flags as a Scenario: one interface per local address (the client moves
    between them), the moves at `interval` seconds apart, or with a download spread over
    it (move k once k/(n+1) of the bytes have arrived)."""
    host = Host("client", tuple(Interface(f"a{i}", (a,)) for i, a in enumerate(addresses)))
    topology = Topology(
        hosts=(host, Host("server", (Interface("eth0", (addresses[0],)),))),
        # The "NAT" is the client's own socket: a rebinding is a new one (see LiveClient).
        links=(
            *(
                Link(f"l{i}", f"client.{iface.name}", "socket")
                for i, iface in enumerate(host.interfaces)
            ),
            Link("server", "server.eth0", "internet"),
        ),
        nats=(Nat("socket", (addresses[0],)),),
    )
    timeline: list[TimelineEvent] = []
    expected: list[MigrationKind] = []
    rotations = 0
    iface = 0
    count = len(moves)
    for index, kind in enumerate(moves):
        progress = (index + 1) / (count + 1) if size is not None else None
        at = 0.0 if size is not None else (index + 1) * interval
        if kind in NEEDS_ADDRESS:
            iface = (iface + 1) % len(addresses)
        if kind is EventKind.CID_ROTATION:
            timeline.append(CidRotate(at, "client", progress=progress))
            rotations += 1
            continue
        if kind in (EventKind.NAT_REBINDING, EventKind.ADDRESS_REBINDING):
            new_address = kind is EventKind.ADDRESS_REBINDING
            timeline.append(NatRebind(at, "socket", new_address, progress=progress))
        elif kind is EventKind.ADDRESS_CHANGE:
            timeline.append(AddressChange(at, "client.a0", addresses[0], progress=progress))
        else:
            to = f"a{iface}"
            timeline.append(Switch(at, "client", to, mode, gap=gap, overlap=gap, progress=progress))
        expected.append(SEEN.get(kind, MigrationKind.ADDRESS_CHANGE))
    each = max(messages, 1)
    workload = (
        Download(size)
        if size is not None
        else Messages(count=each * (count + 1), interval=interval / each)
    )
    length = (
        timeout + size / 500_000 if size is not None else (count + 1) * interval + timeout
    )  # seconds: loopback does 5-50 MB/s, and each answer may take `timeout`
    return Scenario(
        name="client",
        summary="quicmig client: " + ",".join(k.value for k in moves),
        topology=topology,
        workload=workload,
        timeline=tuple(timeline),
        quic=QuicExtensions(honour_disable_migration=honour_disable_migration),
        duration=length + 5.0,
        expect=Expectation(migrations=tuple(expected), cid_rotations=rotations),
    ).validated()


def run(args: argparse.Namespace) -> int:
    from quicmig.live.backend import ClientOptions, DirectNetwork, LiveBackend
    from quicmig.live.stop import run_stoppable
    from quicmig.runner import RunOptions, execute

    logging.getLogger(QUIC_LOGGER).addHandler(logging.NullHandler())
    host = _ip(args.host, "--host")
    if not 0 < args.port <= 65535:
        raise InputError(f"--port {args.port}: not a UDP port (1-65535)")
    addresses = default_addresses(host)
    if args.addresses:
        addresses = tuple(_ip(item.strip(), "--addresses") for item in args.addresses.split(","))
        if any(
            ipaddress.ip_address(a).version != ipaddress.ip_address(host).version for a in addresses
        ):
            raise InputError("--addresses: use the same IP version as the server address")
    text = args.migrate if args.migrate is not None else DEFAULT_MOVES
    allowed = (*MOVES, EventKind.ADDRESS_REBINDING)
    parts = [part for part in text.split(",") if part.strip()]
    if not parts:
        raise InputError(f"--migrate: no migration given; known: {DEFAULT_MOVES} (or none)")
    moves = (
        [] if parts == ["none"] else [event_kind(p, "--migrate", allowed, ("none",)) for p in parts]
    )
    needs_address = [k for k in moves if k in (*NEEDS_ADDRESS, EventKind.ADDRESS_REBINDING)]
    if needs_address and len(addresses) < 2:
        if args.migrate is not None:
            raise InputError(
                f"{needs_address[0].value} needs a second local address to move to: pass two "
                "or more with --addresses, e.g. 127.0.0.1,127.0.0.2"
            )
        moves = [k for k in moves if k not in NEEDS_ADDRESS]
        _say(f"⚠️  one local address only ({addresses[0]}): skipping ip-change, network-switch")
    # Moves need time between them to be told apart (each new path validated first).
    for name in ("interval", "gap", "timeout"):
        check_seconds(getattr(args, name), f"--{name}", zero=name == "gap")
    if args.messages < 0:
        raise InputError(f"--messages {args.messages}: must be 0 or more")
    size = parse_size(args.download) if args.download is not None else None
    if not args.insecure and not args.ca.is_file():
        raise InputError(
            f"CA certificate {args.ca} not found: start the server once (it writes cert.pem, "
            f"key.pem and {CA_FILE} in its directory) or run `quicmig certs`, then run the "
            "client there or pass --ca PATH; --insecure skips verification"
        )
    if args.json is not None:
        check_output_file(args.json, "--json")
    scenario = client_scenario(
        moves,
        addresses,
        messages=args.messages,
        interval=args.interval,
        size=size,
        mode=SwitchMode(args.switch_mode),
        gap=args.gap,
        honour_disable_migration=not args.ignore_disable_migration,
        timeout=args.timeout,
    )
    server = (host, args.port)
    backend = LiveBackend(
        DirectNetwork(),
        remote=server,
        client=ClientOptions(
            ca=None if args.insecure else args.ca,
            insecure=args.insecure,
            server_name=args.server_name,
            addresses=addresses,
            secrets_log=args.secrets_log,
            timeout=args.timeout,
        ),
        log=lambda line: _say(f"   {line}"),
    )
    verify = (
        "without verifying it (--insecure)" if args.insecure else f"verifying it with {args.ca}"
    )
    _say(f"🔌 Connecting to {format_address(server)} {verify} ...")
    result = run_stoppable(execute(scenario, backend, RunOptions()))
    _report(result)
    if args.json is not None:
        from quicmig.core.results import write_atomically

        write_atomically(args.json, json.dumps(result.to_dict(), indent=2) + "\n")
    return 0 if result.verdict is Verdict.PASSED else 1


def _say(line: str) -> None:
    print(log_line(line, indent=6), flush=True)


def _report(result: Result) -> None:
    console = make_console()
    table = Table(
        title="What the client did, and what the server observed (fetched over the connection)",
        title_justify="left",
    )
    for column in ("#", "client did", "at", "server observed", "validated", "CID"):
        table.add_column(column)
    for index, change in enumerate(result.network_changes, 1):
        table.add_row(*[Text(cell) for cell in _row(index, change, result)])
    console.print(table)
    for check in result.checks:
        line = f"{check_mark(check)} {check.name}: {escape(check.detail)}"
        console.print(hanging(line, console.width), highlight=False)
    transfer = result.transfer
    if transfer.workload == "download":
        _say(
            f"{'✅' if transfer.intact else '❌'} Download: {transfer.bytes:,}/"
            f"{transfer.expected_bytes or 0:,} bytes, SHA-256 {transfer.sha256 or '-'}, "
            f"{'as' if transfer.intact else 'NOT as'} the server says it sent"
        )
    console.print(f"Verdict: {verdict_text(result)}")


def _row(index: int, change: NetworkChange, result: Result) -> list[str]:
    did = f"{change.kind.value}\n{change.detail}"
    if change.kind is EventKind.CID_ROTATION:
        seen = [t for t in result.cid_rotations if t >= change.at]
        return [
            str(index),
            did,
            f"{change.at:.3f} s",
            "CID rotation" if seen else "nothing",
            "-",
            "new",
        ]
    caused = [m for m in result.migrations if m.network_change_at == change.at]
    if not caused:
        return [str(index), did, f"{change.at:.3f} s", "nothing", "-", "-"]
    mig = caused[0]
    rtt = mig.validation_rtt
    return [
        str(index),
        did,
        f"{change.at:.3f} s",
        f"{mig.observed.label}\n{format_address(mig.old_peer)} → {format_address(mig.new_peer)}",
        "never" if rtt is None else f"{rtt * 1e3:.2f} ms",
        "new" if mig.cid_changed else "same",
    ]
