"""`quicmig server`: the live QUIC server on real UDP sockets, logging each migration it sees."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import signal
from dataclasses import replace
from pathlib import Path

from quicmig.core.datagram import Address, format_address, parse_address
from quicmig.core.endpoint import DEFAULT_HISTORY, ServerLimits
from quicmig.core.results import check_output_dir
from quicmig.errors import InputError
from quicmig.live.certs import CERT_FILE, KEY_FILE, SAN_IPS, SAN_NAMES, CertPaths, write
from quicmig.live.server import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_HOST,
    DEFAULT_MAX_HALF_OPEN,
    DEFAULT_PORT,
    LIVE_LIMITS,
    LiveServer,
)
from quicmig.model.scenario import STACKS, QuicExtensions
from quicmig.model.settings import check_seconds

# aioquic warns on stderr about every connection closed with an error; our log says it.
QUIC_LOGGER = "quic"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "server",
        description="Run a QUIC server on real UDP sockets. It serves the quicmig message "
        "protocol (ALPN quicmig, used by `quicmig client`) and HTTP/3 (ALPN h3: / is a status "
        "page, /migrations the migration records of every connection as JSON, /bytes/N N "
        "bytes, /fetch/N a page that downloads /bytes/N in the browser and checks it), and "
        "logs every migration it observes: old -> new client address, port or address "
        "change, the PATH_CHALLENGE/PATH_RESPONSE round trip. Creates cert.pem, key.pem and "
        "ca.pem on first start when there are none. Stop it with Ctrl-C.",
        epilog="examples:\n"
        "  quicmig server\n"
        "  quicmig server --port 4434\n"
        "  quicmig server --listen 127.0.0.1:4433 --listen [::1]:4433\n"
        "  quicmig server --qlog-dir qlogs --secrets-log keys.log\n"
        "  quicmig server --preferred-address 127.0.0.1:4434",
    )
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help=f"IP address to listen on (default {DEFAULT_HOST})"
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"UDP port (default {DEFAULT_PORT})"
    )
    parser.add_argument(
        "--listen",
        action="append",
        default=[],
        metavar="ADDR[:PORT]",
        help="listen here instead of --host (repeatable; IPv6 as [::1]:4433 or ::1; "
        "the port defaults to --port)",
    )
    parser.add_argument(
        "--cert", type=Path, default=Path(CERT_FILE), help=f"certificate (default ./{CERT_FILE})"
    )
    parser.add_argument(
        "--key", type=Path, help=f"private key (default: {KEY_FILE} beside the certificate)"
    )
    parser.add_argument(
        "--preferred-address",
        action="append",
        default=[],
        metavar="IP:PORT",
        help="advertise this as the server's preferred address (RFC 9000 section 9.6) and "
        "listen there too; clients validate it and move there (at most one IPv4 and one "
        "IPv6, each of the family of a listen address; IPv6 as [::1]:4434)",
    )
    parser.add_argument(
        "--disable-active-migration",
        action="store_true",
        help="send disable_active_migration (RFC 9000 section 18.2): clients must not "
        "migrate actively (NAT rebinding still works)",
    )
    parser.add_argument(
        "--stack",
        choices=STACKS,
        default="stock",
        help="`stock` (default): aioquic 1.7.2 as released; `quicmig`: with quicmig's "
        "server-side extensions (PATH_CHALLENGE in the first packet on a new path, fresh "
        "recovery state for a new address, a probe of the old path; src/quicmig/aioquic_ext.py)",
    )
    parser.add_argument(
        "--retry",
        action="store_true",
        help="validate each client's address with a Retry before keeping any state for it "
        "(RFC 9000 section 8.1.2): for a server exposed to floods of spoofed Initials; costs "
        "one round trip per handshake",
    )
    parser.add_argument(
        "--history",
        type=int,
        default=DEFAULT_HISTORY,
        metavar="N",
        help="closed connections whose records /migrations keeps (default "
        f"{DEFAULT_HISTORY}); older ones are dropped, the totals stay exact",
    )
    parser.add_argument(
        "--max-half-open",
        type=int,
        default=DEFAULT_MAX_HALF_OPEN,
        metavar="N",
        help="handshakes in progress per listen address; beyond, new connections are "
        f"refused and logged (default {DEFAULT_MAX_HALF_OPEN})",
    )
    parser.add_argument(
        "--handshake-timeout",
        type=float,
        default=DEFAULT_HANDSHAKE_TIMEOUT,
        metavar="S",
        help="drop a connection whose handshake is not done after S seconds "
        f"(default {DEFAULT_HANDSHAKE_TIMEOUT:g})",
    )
    parser.add_argument("--qlog-dir", type=Path, metavar="DIR", help="write qlogs here on exit")
    parser.add_argument(
        "--secrets-log", type=Path, metavar="FILE", help="append TLS secrets (SSLKEYLOGFILE)"
    )
    parser.set_defaults(handler=run)


def parse_listen(text: str, default_port: int) -> Address:
    """`127.0.0.1`, `127.0.0.1:4433`, `::1`, `[::1]:4433` -> (host, port)."""
    host, port = text, default_port
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise InputError(f"--listen {text!r}: write IPv6 as [::1]:4433")
        if rest:
            if not rest.startswith(":"):
                raise InputError(f"--listen {text!r}: write IPv6 as [::1]:4433")
            port = _port(rest[1:], f"--listen {text}")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = _port(port_text, f"--listen {text}")
    return _host(host, f"--listen {text}"), port


def _host(host: str, what: str) -> str:
    if host == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        raise InputError(
            f"{what}: {host!r} is not an IP address (e.g. 127.0.0.1, ::1, [::1]:4433)"
        ) from None


def _port(text: str, what: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise InputError(f"{what}: {text!r} is not a UDP port (0-65535)")
    return int(text)


def run(args: argparse.Namespace) -> int:
    logging.getLogger(QUIC_LOGGER).addHandler(logging.NullHandler())
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port {args.port}: not a UDP port (0-65535)")
    if args.listen:
        listen = [parse_listen(item, args.port) for item in args.listen]
    else:
        listen = [(_host(args.host, "--host"), args.port)]
    preferred = parse_preferred(args.preferred_address, listen)
    limits = server_limits(args.history, args.max_half_open, args.handshake_timeout)
    if args.qlog_dir is not None:  # qlogs are written on exit: find out now that they can be
        check_output_dir(args.qlog_dir, "--qlog-dir")
    paths = CertPaths.beside(args.cert, args.key)
    if not paths.cert.exists() and not paths.key.exists():
        write(paths)
        print(
            f"🔐 No certificate found: created a local CA ({paths.ca}) and a server certificate "
            f"({paths.cert}, key {paths.key}) for {', '.join(SAN_NAMES + SAN_IPS)}",
            flush=True,
        )
    return asyncio.run(
        serve(
            paths,
            listen,
            args.qlog_dir,
            args.secrets_log,
            preferred=preferred,
            disable_active_migration=args.disable_active_migration,
            extensions=server_extensions(args.stack),
            limits=limits,
            retry=args.retry,
        )
    )


def server_limits(history: int, max_half_open: int, handshake_timeout: float) -> ServerLimits:
    if history < 0:
        raise InputError(f"--history {history}: a number of connections >= 0")
    if max_half_open < 1:
        raise InputError(f"--max-half-open {max_half_open}: at least 1")
    check_seconds(handshake_timeout, "--handshake-timeout", zero=False)
    return ServerLimits(history, max_half_open, handshake_timeout)


def parse_preferred(items: list[str], listen: list[Address]) -> list[Address]:
    """`--preferred-address` values: IP:PORT, of a listen family, not a listen address."""
    preferred: list[Address] = []
    for item in items:
        what = f"--preferred-address {item}"
        address = parse_address(item, what)
        family = ipaddress.ip_address(address[0]).version
        families = {ipaddress.ip_address(host).version for host, _ in listen}
        if family not in families:
            raise InputError(
                f"{what}: an IPv{family} address, but the server listens on IPv"
                f"{' and IPv'.join(str(f) for f in sorted(families))} only; a client only "
                "moves to a preferred address of the family it connected with"
            )
        if address in listen:
            raise InputError(f"{what}: that is the server's own address; give another")
        if any(ipaddress.ip_address(p[0]).version == family for p in preferred):
            raise InputError(f"{what}: one preferred address per family (IPv4, IPv6)")
        preferred.append(address)
    return preferred


def server_extensions(stack: str) -> QuicExtensions:
    """`--stack`: every extension that acts on the server (honour_disable_migration is the
    client's)."""
    if stack == "stock":
        return QuicExtensions()
    return replace(QuicExtensions.all_on(), honour_disable_migration=False)


def _log(line: str) -> None:
    """One event per line; in a terminal narrower than the line, wrapped between words with
    the rest indented (the terminal itself would cut words and addresses)."""
    from quicmig.report.table import log_line

    print(log_line(line), flush=True)


async def serve(
    paths: CertPaths,
    listen: list[Address],
    qlog_dir: Path | None,
    secrets_log: Path | None,
    *,
    preferred: list[Address] | None = None,
    disable_active_migration: bool = False,
    extensions: QuicExtensions | None = None,
    limits: ServerLimits = LIVE_LIMITS,
    retry: bool = False,
) -> int:
    """Run until SIGINT (Ctrl-C) or SIGTERM (docker stop), then shut down cleanly."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            signals.append(sig)
        except (NotImplementedError, RuntimeError):  # not the main thread, or Windows
            pass
    server = LiveServer(
        paths,
        listen,
        qlog_dir=qlog_dir,
        secrets_log=secrets_log,
        log=_log,
        preferred_addresses=preferred or (),
        disable_active_migration=disable_active_migration,
        extensions=extensions,
        limits=limits,
        retry=retry,
    )
    try:
        addresses = await server.start()
        for address in addresses:
            _log(f"🚀 Starting QUIC server on {format_address(address)}")
        for address in server.preferred:
            _log(f"🏠 Preferred address {format_address(address)} (RFC 9000 section 9.6)")
        if server.extensions.enabled:
            _log(f"🧩 quicmig extensions on: {', '.join(server.extensions.enabled)}")
        if disable_active_migration:
            _log("🚫 disable_active_migration sent: clients must not migrate actively")
        if retry:
            _log("🎟  Retry on: every client address is validated before any state is kept")
        _log("📋 Server supports connection migration")
        first = format_address(addresses[0])
        _log(f"   ALPN quicmig: the message protocol of `quicmig client --port {addresses[0][1]}`")
        # The address itself: Chromium takes `localhost` to ::1, where the server may not be.
        _log(f"   ALPN h3: HTTP/3 at https://{first}/ , /migrations (JSON), /bytes/N, /fetch/N")
        if paths.ca.is_file():
            _log(f"   certificate {paths.cert}, clients verify it against {paths.ca}")
        else:
            _log(
                f"   certificate {paths.cert}; no {paths.ca} beside it: clients need "
                "--ca with the CA that signed it, or --insecure"
            )
        _log("   Press Ctrl-C to stop.")
        await stop.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        await server.aclose()
    totals = server.totals()
    migrations, connections = totals["migrations"], totals["connections"]
    _log(
        f"🛑 Server stopped: {connections} connection{'' if connections == 1 else 's'}, "
        f"{migrations} migration{'' if migrations == 1 else 's'} observed"
    )
    if qlog_dir is not None:
        _log(f"   qlogs in {qlog_dir}/")
    return 0
