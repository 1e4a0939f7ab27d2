"""`quicmig client`: a live QUIC connection that really migrates, checked against the server."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import re
from pathlib import Path
from typing import Any, TextIO

from rich.table import Table
from rich.text import Text

from quicmig.core.datagram import format_address
from quicmig.errors import InputError, QuicmigError
from quicmig.live.certs import CA_FILE
from quicmig.live.client import (
    DEFAULT_GAP,
    DEFAULT_TIMEOUT,
    KINDS,
    Confirmation,
    Download,
    LiveClient,
    MigrationRefused,
    Move,
    Step,
    SwitchMode,
    confirm,
    download_with_moves,
    parse_kinds,
)
from quicmig.live.server import DEFAULT_HOST, DEFAULT_PORT
from quicmig.model.scenario import MAX_DOWNLOAD
from quicmig.model.settings import check_seconds
from quicmig.report.table import make_console

SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmg]?)i?b?\s*$", re.IGNORECASE)
UNITS = {"": 1, "k": 1_000, "m": 1_000_000, "g": 1_000_000_000}


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
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
        help=f"migrations to perform, in order (default: all of {', '.join(KINDS)})",
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


def run(args: argparse.Namespace) -> int:
    logging.getLogger(QUIC_LOGGER).addHandler(logging.NullHandler())
    kinds = parse_kinds(args.migrate) if args.migrate is not None else list(KINDS)
    host = _ip(args.host, "--host")
    if not 0 < args.port <= 65535:
        raise InputError(f"--port {args.port}: not a UDP port (1-65535)")
    addresses = None
    if args.addresses:
        addresses = [_ip(item.strip(), "--addresses") for item in args.addresses.split(",")]
        if any(
            ipaddress.ip_address(a).version != ipaddress.ip_address(host).version for a in addresses
        ):
            raise InputError("--addresses: use the same IP version as the server address")
    for name in ("interval", "gap", "timeout"):
        check_seconds(getattr(args, name), f"--{name}", zero=name != "timeout")
    if args.messages < 0:
        raise InputError(f"--messages {args.messages}: must be 0 or more")
    size = parse_size(args.download) if args.download is not None else None
    if not args.insecure and not args.ca.is_file():
        raise InputError(
            f"CA certificate {args.ca} not found: start the server once (it writes cert.pem, "
            f"key.pem and {CA_FILE} in its directory) or run `quicmig certs`, then run the "
            "client there or pass --ca PATH; --insecure skips verification"
        )
    with contextlib.ExitStack() as stack:
        secrets: TextIO | None = None
        if args.secrets_log is not None:
            try:
                secrets = stack.enter_context(args.secrets_log.open("a"))
            except OSError as exc:
                raise QuicmigError(f"cannot open --secrets-log {args.secrets_log}: {exc}") from None
        return asyncio.run(_session(args, host, kinds, addresses, size, secrets))


def _say(line: str) -> None:
    print(line, flush=True)


async def _messages(client: LiveClient, count: int, first: int) -> int:
    for number in range(first, first + count):
        body = f"hello #{number} from {format_address(client.local)}".encode()
        rtt = await client.send_message(body)
        _say(f"   💬 message {number}: {len(body)} bytes echoed in {rtt * 1e3:.2f} ms")
    return first + count


def _describe(move: Move) -> str:
    where = (
        f"{format_address(move.old_local)} → {format_address(move.new_local)}"
        if move.moves_path
        else f"on {format_address(move.new_local)}"
    )
    return f"🔀 {move.kind}: {where} ({move.detail})"


async def _session(
    args: argparse.Namespace,
    host: str,
    kinds: list[str],
    addresses: list[str] | None,
    size: int | None,
    secrets: TextIO | None,
) -> int:
    server = (host, args.port)
    client = LiveClient(
        server,
        ca=None if args.insecure else args.ca,
        insecure=args.insecure,
        server_name=args.server_name,
        addresses=addresses,
        secrets_log=secrets,
        timeout=args.timeout,
        honour_disable_migration=not args.ignore_disable_migration,
    )
    if args.migrate is None and len(client.addresses) < 2:
        skipped = [k for k in kinds if k in ("ip-change", "network-switch")]
        kinds = [k for k in kinds if k not in skipped]
        _say(f"⚠️  one local address only ({client.addresses[0]}): skipping {', '.join(skipped)}")
    client.check_moves(kinds)
    mode = SwitchMode(args.switch_mode)
    verify = (
        "without verifying it (--insecure)" if args.insecure else f"verifying it with {args.ca}"
    )
    _say(f"🔌 Connecting to {format_address(server)} {verify} ...")
    async with client:
        assert client.handshake_seconds is not None
        _say(
            f"✅ Connected from {format_address(client.local)} in "
            f"{client.handshake_seconds * 1e3:.1f} ms"
        )
        number = await _messages(client, args.messages, 1)
        download: Download | None = None
        if size is not None:
            steps: list[Step] = [(kind, mode) for kind in kinds]
            _say(f"📦 Downloading {size:,} bytes, migrating {len(steps)} times during it ...")

            def moved(move: Move, received: int) -> None:
                _say(f"{_describe(move)} at {received:,}/{size:,} bytes")

            download, _ = await download_with_moves(
                client, size, steps, gap=args.gap, on_move=moved, on_refused=_refused
            )
            _say(
                f"📦 Downloaded {download.received:,} bytes in {download.seconds:.2f} s, "
                f"SHA-256 {download.sha256[:16]}…"
            )
            number = await _messages(client, args.messages, number)
        else:
            for kind in kinds:
                await asyncio.sleep(args.interval)
                try:
                    move = await client.migrate(kind, mode, args.gap)
                except MigrationRefused as refused:
                    _refused(str(refused))
                    continue
                _say(_describe(move))
                number = await _messages(client, args.messages, number)
        record = await client.confirmed_record()
    return _report(client, record, download)


def _refused(message: str) -> None:
    _say(f"⛔ {message}")


def _report(client: LiveClient, record: dict[str, Any], download: Download | None) -> int:
    confirmations = confirm(client.moves, record)
    console = make_console()
    table = Table(
        title="What the client did, and what the server observed (fetched over the connection)",
        title_justify="left",
    )
    for column in ("#", "client did", "client moved", "server observed", "validated", "CID", ""):
        table.add_column(column)
    for index, item in enumerate(confirmations, 1):
        table.add_row(*[Text(cell) for cell in _row(index, item)])
    console.print(table)
    ok = all(item.confirmed for item in confirmations)
    paths = sum(item.move.moves_path for item in confirmations)
    rotations = len(confirmations) - paths
    if ok:
        validated = " (every new path validated with PATH_CHALLENGE/PATH_RESPONSE)" if paths else ""
        _say(
            f"✅ The server confirmed {paths} migration{'s' if paths != 1 else ''}{validated} "
            f"and {rotations} CID rotation{'s' if rotations != 1 else ''}."
        )
    else:
        for item in confirmations:
            if not item.confirmed:
                _say(f"❌ {item.move.kind}: {item.why}")
    if download is not None:
        server_sha = record.get("sent_sha256", {}).get(str(download.stream_id))
        intact = download.intact and server_sha == download.sha256
        _say(
            f"{'✅' if intact else '❌'} Download: {download.received:,}/{download.size:,} bytes, "
            f"SHA-256 {'matches' if server_sha == download.sha256 else 'DIFFERS from'} what "
            f"the server says it sent ({(server_sha or 'nothing')[:16]}…)"
        )
        ok = ok and intact
    return 0 if ok else 1


def _row(index: int, item: Confirmation) -> list[str]:
    move, seen = item.move, item.observed
    moved = (
        f"{format_address(move.old_local)} → {format_address(move.new_local)}"
        if move.moves_path
        else "same path"
    )
    if seen is None:
        observed, validated, cid = "nothing", "-", "-"
    elif move.moves_path:
        observed = f"{seen['observed'].replace('_', ' ')}\n{seen['old_peer']} → {seen['new_peer']}"
        rtt = seen.get("validation_rtt")
        validated = "never" if rtt is None else f"{rtt * 1e3:.2f} ms"
        cid = "new" if seen["cid_changed"] else "same"
    else:
        observed, validated, cid = f"CID rotation on {seen['peer']}", "-", "new"
    return [
        str(index),
        move.kind,
        moved,
        observed,
        validated,
        cid,
        "✅" if item.confirmed else "❌",
    ]
