"""An HTTP/3 file server and download client on qh3's public API (qh3 2.x: an aioquic fork
whose packet core is Rust, keeping the sans-IO QuicConnection).

    python -m quicmig.interop.qh3_endpoint server --host H --port P --cert C --key K --docroot D
    python -m quicmig.interop.qh3_endpoint client --connect H:P --url https://localhost:P/f ...

The server is qh3's own `serve()` with a protocol answering GET requests from a document
root. The client drives a `QuicConnection` over a UDP socket of its own, so that it can move
to a new socket mid-download (`--migrate-at-ms`): an active migration (RFC 9000 section 9),
with a new connection ID first (section 9.5: a new local address must not reuse one). The
client saves the body in --download-dir and prints its SHA-256.

What qh3 2.1's public API cannot do: offer a preferred address (QuicConfiguration has no
field for it and the transport parameters are built inside qh3), send
disable_active_migration, or follow a server's preferred address (qh3 parses it and leaves it
inactive, see its QuicConnection docstring).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from qh3 import H3Connection, QuicConfiguration, QuicConnection, QuicConnectionProtocol, serve
from qh3.h3.events import DataReceived, H3Event, HeadersReceived
from qh3.quic.events import ConnectionTerminated, HandshakeCompleted, QuicEvent
from qh3.quic.logger import QuicFileLogger

from quicmig.core.datagram import Address, format_address
from quicmig.errors import InputError, QuicmigError
from quicmig.live.stop import run_stoppable
from quicmig.live.udp import Timer, UdpSocket, open_socket

H3_ALPN = ["h3"]
# qh3's H3Connection always announces the H3_DATAGRAM setting, which a peer must refuse
# unless the transport parameters carry max_datagram_frame_size (RFC 9297 section 3).
MAX_DATAGRAM_FRAME = 65536  # bytes
DEFAULT_TIMEOUT = 30.0  # seconds for a whole download
CLOSE_LINGER = 0.2  # seconds to let CONNECTION_CLOSE leave before the socket closes
READY_LINE = "qh3 server listening on"  # what the server prints once it is bound


# --- server --------------------------------------------------------------------------------


class FileServerProtocol(QuicConnectionProtocol):
    """One server connection: answers each GET with a file from `docroot` (or 404)."""

    def __init__(self, quic: QuicConnection, docroot: Path, log: TextIO) -> None:
        super().__init__(quic)
        self.connection = quic  # the connection serve() created for us (create_protocol's arg)
        self.h3 = H3Connection(quic)
        self.docroot = docroot
        self.log = log

    def quic_event_received(self, event: QuicEvent) -> None:
        for h3_event in self.h3.handle_event(event):
            if isinstance(h3_event, HeadersReceived):
                self._answer(h3_event)

    def _answer(self, request: HeadersReceived) -> None:
        headers = dict(request.headers)
        method = headers.get(b":method", b"").decode()
        path = headers.get(b":path", b"/").decode().partition("?")[0]
        status, body = self._lookup(method, path)
        self.h3.send_headers(
            request.stream_id,
            [
                (b":status", str(status).encode()),
                (b"content-type", b"application/octet-stream"),
                (b"content-length", str(len(body)).encode()),
            ],
        )
        self.h3.send_data(request.stream_id, body, end_stream=True)
        self.transmit()
        print(f"{method} {path} -> {status} ({len(body)} bytes)", file=self.log, flush=True)

    def _lookup(self, method: str, path: str) -> tuple[int, bytes]:
        if method != "GET":
            return 405, b"GET only\n"
        root = self.docroot.resolve()
        target = (root / path.lstrip("/")).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            return 404, b"not found\n"
        return 200, target.read_bytes()


def server_configuration(args: argparse.Namespace, keylog: TextIO | None) -> QuicConfiguration:
    config = QuicConfiguration(
        is_client=False, alpn_protocols=H3_ALPN, max_datagram_frame_size=MAX_DATAGRAM_FRAME
    )
    try:
        config.load_cert_chain(args.cert, args.key)
    except (OSError, ValueError) as exc:
        raise InputError(
            f"--cert {args.cert} / --key {args.key}: cannot load them ({exc})"
        ) from None
    if keylog is not None:  # qh3 annotates the field as TextIO, though None is its default
        config.secrets_log_file = keylog
    if args.qlog_dir is not None:
        config.quic_logger = QuicFileLogger(str(args.qlog_dir))
    return config


async def run_server(args: argparse.Namespace, keylog: TextIO | None) -> None:
    if not args.docroot.is_dir():
        raise InputError(f"--docroot {args.docroot}: not a directory")
    config = server_configuration(args, keylog)
    docroot: Path = args.docroot

    def create_protocol(quic: QuicConnection, **_: Any) -> FileServerProtocol:
        return FileServerProtocol(quic, docroot, sys.stdout)

    try:
        server = await serve(
            args.host, args.port, configuration=config, create_protocol=create_protocol
        )
    except OSError as exc:
        raise QuicmigError(
            f"qh3 server: cannot listen on {args.host}:{args.port}/udp ({exc.strerror or exc})"
        ) from None
    print(f"{READY_LINE} {format_address((args.host, args.port))}", flush=True)
    try:
        await asyncio.Event().wait()  # until cancelled (Ctrl-C, SIGTERM)
    finally:
        server.close()  # type: ignore[no-untyped-call]  # qh3 2.1 leaves it unannotated


# --- client --------------------------------------------------------------------------------


class MigrationRefused(QuicmigError):
    """The client stays where it is (and says why)."""


@dataclass(frozen=True, slots=True)
class Migration:
    at: float  # seconds since the client started
    old: Address
    new: Address
    received: int  # body bytes received before it


class DownloadClient:
    """GET one URL over a QuicConnection of ours; `migrate()` moves it to a new socket.

    The sans-IO calls are qh3's public ones: connect(), receive_datagram(), datagrams_to_send(),
    get_timer(), handle_timer(), next_event(), change_connection_id().
    """

    def __init__(self, config: QuicConfiguration, server: Address, out: Path) -> None:
        self.config = config
        self.server = server
        self.quic = QuicConnection(configuration=config)
        self.h3 = H3Connection(self.quic)
        self.out = out
        self.sha256 = hashlib.sha256()
        self.received = 0
        self.status: int | None = None
        self.migrations: list[Migration] = []
        self.socket: UdpSocket | None = None
        self._t0 = 0.0
        self._timer: Timer | None = None
        self._stream_id: int | None = None
        self._sink: Any = None
        self._connected: asyncio.Future[None] | None = None
        self._done: asyncio.Future[None] | None = None

    def now(self) -> float:
        return asyncio.get_running_loop().time() - self._t0

    @property
    def local(self) -> Address:
        assert self.socket is not None, "start() first"
        return self.socket.local

    async def start(self, local_host: str) -> None:
        loop = asyncio.get_running_loop()
        self._t0 = loop.time()
        self._connected = loop.create_future()
        self._done = loop.create_future()
        for future in (self._connected, self._done):  # a failure may reach one nobody awaits
            future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._timer = Timer(self._on_timer, self.now)
        self.socket = await open_socket((local_host, 0), self._on_datagram, "qh3 client")
        self.quic.connect(self.server, now=self.now())
        self._transmit()
        await self._connected

    async def get(self, authority: str, path: str) -> None:
        """GET `path`; the body goes to `self.out` and into `self.sha256` as it arrives."""
        assert self._done is not None
        self._stream_id = self.quic.get_next_available_stream_id()
        self._sink = self.out.open("wb")
        try:
            self.h3.send_headers(
                self._stream_id,
                [
                    (b":method", b"GET"),
                    (b":scheme", b"https"),
                    (b":authority", authority.encode()),
                    (b":path", path.encode()),
                ],
                end_stream=True,
            )
            self._transmit()
            await self._done
        finally:
            self._sink.close()

    async def migrate(self, local_host: str) -> Migration:
        """Send from a new UDP socket (new port; `local_host` may be another address) with a
        new connection ID: the server sees a new path and validates it (RFC 9000 section 8.2).

        Raises MigrationRefused, staying on the old socket, when the server left no unused
        connection ID: moving with the old one would link the two paths (section 9.5)."""
        old = self.socket
        assert old is not None
        new = await open_socket((local_host, 0), self._on_datagram, "qh3 client")
        try:
            self.quic.change_connection_id()
        except ValueError as exc:  # qh3: "no unused peer connection ID"
            new.close()
            raise MigrationRefused(f"not migrating: {exc} (RFC 9000 section 9.5)") from None
        self.socket = new
        move = Migration(self.now(), old.local, new.local, self.received)
        self.migrations.append(move)
        self._transmit()
        old.close()
        return move

    async def close(self) -> None:
        self.quic.close()
        self._transmit()
        await asyncio.sleep(CLOSE_LINGER)
        if self._timer is not None:
            self._timer.cancel()
        if self.socket is not None:
            self.socket.close()

    def _on_datagram(self, data: bytes, addr: Address) -> None:
        self.quic.receive_datagram(data, addr, now=self.now())
        self._process()
        self._transmit()

    def _on_timer(self, now: float) -> None:
        self.quic.handle_timer(now=now)
        self._process()
        self._transmit()

    def _transmit(self) -> None:
        assert self.socket is not None and self._timer is not None
        for data, addr in self.quic.datagrams_to_send(now=self.now()):
            self.socket.sendto(data, (str(addr[0]), int(addr[1])))
        self._timer.arm(self.quic.get_timer())

    def _process(self) -> None:
        while (event := self.quic.next_event()) is not None:
            if isinstance(event, HandshakeCompleted):
                _resolve(self._connected)
            elif isinstance(event, ConnectionTerminated):
                error = QuicmigError(
                    f"the connection was closed (error {event.error_code}: "
                    f"{event.reason_phrase or 'no reason'}) after {self.received} body bytes"
                )
                for future in (self._connected, self._done):
                    if future is not None and not future.done():
                        future.set_exception(error)
            for h3_event in self.h3.handle_event(event):
                self._h3_event(h3_event)

    def _h3_event(self, event: H3Event) -> None:
        if not isinstance(event, HeadersReceived | DataReceived):
            return
        if event.stream_id != self._stream_id:
            return
        if isinstance(event, HeadersReceived):
            self.status = int(dict(event.headers).get(b":status", b"0"))
        else:
            self._sink.write(event.data)
            self.sha256.update(event.data)
            self.received += len(event.data)
        if event.stream_ended:
            _resolve(self._done)


def _resolve(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


def client_configuration(
    args: argparse.Namespace, server_name: str, keylog: TextIO | None
) -> QuicConfiguration:
    config = QuicConfiguration(
        is_client=True,
        alpn_protocols=H3_ALPN,
        server_name=server_name,
        max_datagram_frame_size=MAX_DATAGRAM_FRAME,
    )
    if args.ca is not None:
        if not args.ca.is_file():
            raise InputError(f"--ca {args.ca}: no such file")
        config.load_verify_locations(cafile=str(args.ca))
    else:
        config.verify_mode = 0  # ssl.CERT_NONE: --insecure
    if keylog is not None:  # qh3 annotates the field as TextIO, though None is its default
        config.secrets_log_file = keylog
    if args.qlog_dir is not None:
        config.quic_logger = QuicFileLogger(str(args.qlog_dir))
    return config


def parse_connect(text: str) -> Address:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise InputError(f"--connect {text!r}: expected HOST:PORT, e.g. 127.0.0.1:4433")
    return host.strip("[]"), int(port)


async def run_client(args: argparse.Namespace, keylog: TextIO | None) -> int:
    url = urlsplit(args.url)
    if url.scheme != "https" or not url.hostname:
        raise InputError(f"--url {args.url!r}: expected https://NAME[:PORT]/PATH")
    server = parse_connect(args.connect) if args.connect else (url.hostname, url.port or 443)
    if not args.download_dir.is_dir():
        raise InputError(f"--download-dir {args.download_dir}: not a directory")
    name = Path(url.path).name or "index.html"
    config = client_configuration(args, url.hostname, keylog)
    client = DownloadClient(config, server, args.download_dir / name)
    local_host = args.local_host or ("::1" if ":" in server[0] else "127.0.0.1")
    started = time.monotonic()
    migrate: asyncio.Task[None] | None = None
    try:
        await client.start(local_host)
        print(
            f"connected to {format_address(server)} from {format_address(client.local)}", flush=True
        )
        if args.migrate_at_ms is not None:
            migrate = asyncio.ensure_future(_migrate_later(client, args))
        await client.get(url.netloc, url.path or "/")
    finally:
        if migrate is not None and not migrate.done():
            migrate.cancel()
        await client.close()
    for move in client.migrations:
        print(
            f"migrated at {move.at:.3f} s from {format_address(move.old)} to "
            f"{format_address(move.new)} after {move.received} body bytes",
            flush=True,
        )
    seconds = time.monotonic() - started
    print(
        f"status {client.status} received {client.received} bytes in {seconds:.2f} s "
        f"sha256 {client.sha256.hexdigest()}",
        flush=True,
    )
    return 0 if client.status == 200 else 1


async def _migrate_later(client: DownloadClient, args: argparse.Namespace) -> None:
    await asyncio.sleep(args.migrate_at_ms / 1000)
    try:
        await client.migrate(args.migrate_to or client.local[0])
    except MigrationRefused as refused:
        print(str(refused), flush=True)


# --- command line --------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m quicmig.interop.qh3_endpoint",
        description="HTTP/3 file server and client on qh3's public API",
    )
    roles = top.add_subparsers(dest="role", required=True)
    server = roles.add_parser("server", help="serve files of --docroot over HTTP/3")
    server.add_argument("--host", default="127.0.0.1")
    server.add_argument("--port", type=int, default=4433)
    server.add_argument("--cert", type=Path, required=True)
    server.add_argument("--key", type=Path, required=True)
    server.add_argument("--docroot", type=Path, required=True)
    client = roles.add_parser("client", help="download one URL over HTTP/3")
    client.add_argument("--url", required=True, help="https://NAME:PORT/PATH (NAME is the SNI)")
    client.add_argument("--connect", help="HOST:PORT to send to (default: the URL's)")
    client.add_argument("--ca", type=Path, help="CA to verify the server (default: no check)")
    client.add_argument("--download-dir", type=Path, required=True)
    client.add_argument("--local-host", help="local address to send from (default loopback)")
    client.add_argument(
        "--migrate-at-ms", type=float, help="move to a new UDP socket this long after connecting"
    )
    client.add_argument("--migrate-to", help="local address of the new socket (default: same)")
    client.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds")
    for sub in (server, client):
        sub.add_argument("--keylog", type=Path, help="append TLS secrets (SSLKEYLOGFILE format)")
        sub.add_argument("--qlog-dir", type=Path, help="write a qlog per connection here")
    return top


async def _main(args: argparse.Namespace) -> int:
    keylog = args.keylog.open("a") if args.keylog is not None else None
    try:
        if args.role == "server":
            await run_server(args, keylog)
            return 0
        return await asyncio.wait_for(run_client(args, keylog), args.timeout)
    except TimeoutError:
        print(f"qh3 client: no complete answer within {args.timeout:g} s", file=sys.stderr)
        return 1
    finally:
        if keylog is not None:
            keylog.close()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.getLogger("quic").addHandler(logging.NullHandler())
    try:
        return run_stoppable(_main(args))
    except KeyboardInterrupt:
        return 0 if args.role == "server" else 130
    except QuicmigError as exc:
        print(f"qh3 {args.role}: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
