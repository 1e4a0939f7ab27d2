"""The live QUIC server: `ServerEndpoint` (the simulator's) on real asyncio UDP sockets.

One `ServerEndpoint` per listening socket, driven exactly as the simulator drives it:
`receive_datagram(data, addr, now)`, `handle_timer(now)`, `datagrams_to_send(now)`,
`get_timer()`, with `now` = the event loop's clock in seconds since the server started. Each
connection's `MigrationTracker` therefore sees what the kernel delivered: a migration is logged
when authenticated non-probing packets arrive from a new source address or port.

Applications by ALPN: "quicmig" (the message protocol of `core.app`, plus `MIGRATIONS`, which
returns this connection's records as JSON) and "h3" (HTTP/3: `/`, `/migrations`, `/bytes/N`,
`/fetch/N`).
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import ipaddress
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import HeadersReceived
from aioquic.quic import events as quic_events
from aioquic.quic.configuration import QuicConfiguration

from quicmig import __version__
from quicmig.aioquic_ext import connection_class
from quicmig.core.app import ServerApp, content
from quicmig.core.datagram import Address, format_address
from quicmig.core.endpoint import ALPN, ServerConnection, ServerEndpoint
from quicmig.core.tap import TapLogger
from quicmig.errors import QuicmigError
from quicmig.live.certs import CertPaths, check_server_pair
from quicmig.live.records import connection_record
from quicmig.live.udp import Timer, UdpSocket, open_socket
from quicmig.model.scenario import QuicExtensions, ServerSettings
from quicmig.model.verdicts import MigrationKind

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4433
MIGRATIONS_VERB = "MIGRATIONS"
MAX_BYTES = 50_000_000  # bytes: the largest /bytes/N
BYTES_SEED = 0  # /bytes/N serves content(N, BYTES_SEED)

Log = Callable[[str], None]


@dataclass(slots=True)
class LiveConnection:
    """A connection as the live server reports it: a number, its ALPN, what was logged."""

    number: int
    listener: Listener
    server_conn: ServerConnection
    alpn: str | None = None
    logged_migrations: int = 0
    logged_validations: set[int] = field(default_factory=set)
    logged_rotations: int = 0
    logged_server_moves: set[Address] = field(default_factory=set)
    logged_closed: bool = False

    def record(self, now: float) -> dict[str, Any]:
        return connection_record(self.number, self.alpn, self.listener.local, self.server_conn, now)


class Listener:
    """One UDP socket and the ServerEndpoint behind it, plus the socket of its preferred
    address (RFC 9000 section 9.6) if it advertises one: both reach the same connections."""

    def __init__(self, server: LiveServer, endpoint: ServerEndpoint) -> None:
        self.server = server
        self.endpoint = endpoint
        self.socket: UdpSocket | None = None
        self.local: Address = ("", 0)
        self.preferred: UdpSocket | None = None
        self.timer = Timer(self._on_timer, server.now)

    async def open(self, local: Address) -> Address:
        self.socket = await open_socket(local, self._on_datagram, "server")
        self.local = self.socket.local
        return self.local

    async def open_preferred(self, local: Address) -> Address:
        """Bind the preferred address; datagrams there reach this listener's connections."""
        self.preferred = await open_socket(local, self._on_preferred_datagram, "preferred address")
        return self.preferred.local

    def _on_datagram(self, data: bytes, addr: Address) -> None:
        self.endpoint.receive_datagram(data, addr, self.server.now())
        self.service()

    def _on_preferred_datagram(self, data: bytes, addr: Address) -> None:
        assert self.preferred is not None
        self.endpoint.receive_datagram(data, addr, self.server.now(), self.preferred.local)
        self.service()

    def _on_timer(self, now: float) -> None:
        self.endpoint.handle_timer(now)
        self.service()

    def service(self) -> None:
        """Send what the endpoint has, report what its trackers saw, re-arm the timer."""
        now = self.server.now()
        for data, addr, local in self.endpoint.datagrams_to_send_from(now):
            sock = self.socket if local is None else self.preferred
            if sock is not None:
                sock.sendto(data, addr)
        while self.endpoint.next_event() is not None:
            pass
        self.server.report(self)
        self.timer.arm(self.endpoint.get_timer())

    def close(self) -> None:
        self.timer.cancel()
        for sock in (self.socket, self.preferred):
            if sock is not None:
                sock.close()


class LiveServer:
    """A QUIC server on one or more local addresses; use as `async with LiveServer(...)`."""

    def __init__(
        self,
        certs: CertPaths,
        listen: Sequence[Address] = ((DEFAULT_HOST, DEFAULT_PORT),),
        *,
        qlog_dir: Path | None = None,
        secrets_log: Path | None = None,
        log: Log = print,
        preferred_addresses: Sequence[Address] = (),
        disable_active_migration: bool = False,
        extensions: QuicExtensions | None = None,
    ) -> None:
        """`preferred_addresses`: at most one per address family, each advertised by the
        first listen address of its family (RFC 9000 section 9.6); port 0 binds any port.
        `disable_active_migration`: send that transport parameter (section 18.2).
        `extensions`: quicmig's server-side changes to aioquic (all off: stock aioquic)."""
        if not listen:
            raise ValueError("listen on at least one address")
        self.preferred_addresses = list(preferred_addresses)
        self.disable_active_migration = disable_active_migration
        self.extensions = extensions or QuicExtensions()
        self.certs = certs
        self.listen = list(listen)
        self.qlog_dir = qlog_dir
        self.secrets_log = secrets_log
        self.log = log
        self.listeners: list[Listener] = []
        self.connections: list[LiveConnection] = []
        self._by_server_conn: dict[int, LiveConnection] = {}
        self._logger = TapLogger(keep=qlog_dir is not None)
        self._secrets: TextIO | None = None
        self._t0 = 0.0
        self._started = False

    def now(self) -> float:
        """Seconds since the server started: the `now` of every endpoint call."""
        return asyncio.get_running_loop().time() - self._t0

    @property
    def addresses(self) -> list[Address]:
        return [listener.local for listener in self.listeners]

    @property
    def preferred(self) -> list[Address]:
        """The preferred addresses as bound (real ports for port 0)."""
        return [item.preferred.local for item in self.listeners if item.preferred is not None]

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> list[Address]:
        """Bind every listen address; returns the bound addresses (real ports for port 0)."""
        check_server_pair(self.certs)
        self._t0 = asyncio.get_running_loop().time()
        if self.secrets_log is not None:
            try:
                self._secrets = self.secrets_log.open("a")
            except OSError as exc:
                raise QuicmigError(f"cannot open --secrets-log {self.secrets_log}: {exc}") from exc
        configuration = QuicConfiguration(
            is_client=False,
            alpn_protocols=[ALPN, *H3_ALPN],
            quic_logger=self._logger,
            secrets_log_file=self._secrets,
        )
        configuration.load_cert_chain(self.certs.cert, self.certs.key)
        self._started = True
        try:
            for local in self.listen:
                listener = Listener(self, ServerEndpoint(configuration, self._make_app))
                self.listeners.append(listener)
                await listener.open(local)
            for listener in self.listeners:
                preferred = None
                family = ipaddress.ip_address(listener.local[0]).version
                wanted = [
                    p
                    for p in self.preferred_addresses
                    if ipaddress.ip_address(p[0]).version == family
                ]
                first_of_family = next(
                    item
                    for item in self.listeners
                    if ipaddress.ip_address(item.local[0]).version == family
                )
                if wanted and first_of_family is listener:
                    preferred = await listener.open_preferred(wanted[0])
                # aioquic 1.7.2's server sends neither parameter: quicmig's connection does.
                listener.endpoint.connection_class = connection_class(
                    self.extensions,
                    ServerSettings(preferred, self.disable_active_migration),
                )
        except BaseException:
            await self.aclose()
            raise
        return self.addresses

    async def aclose(self) -> None:
        """Close every connection (CONNECTION_CLOSE goes out), the sockets, and the files."""
        if not self._started:
            return
        self._started = False
        for listener in self.listeners:
            for server_conn in listener.endpoint.connections:
                if server_conn.closed is None:
                    server_conn.conn.close(reason_phrase="server shutting down")
            listener.service()
        for listener in self.listeners:
            listener.close()
        if self.qlog_dir is not None:
            self.write_qlogs()
        if self._secrets is not None:
            self._secrets.close()
            self._secrets = None

    async def __aenter__(self) -> LiveServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def write_qlogs(self) -> list[Path]:
        assert self.qlog_dir is not None
        try:
            self.qlog_dir.mkdir(parents=True, exist_ok=True)
            return self._logger.write_qlogs(self.qlog_dir, "live-server")
        except OSError as exc:
            self.log(f"⚠️  could not write qlogs to {self.qlog_dir}: {exc}")
            return []

    # --- applications -------------------------------------------------------------------

    def _make_app(self, server_conn: ServerConnection, alpn: str | None) -> ServerApp:
        live = self.connection_of(server_conn)
        live.alpn = alpn
        peer = server_conn.tracker.peer
        self.log(
            f"🔗 conn #{live.number}: handshake done with "
            f"{format_address(peer) if peer else '?'} (ALPN {alpn})"
        )
        if alpn in H3_ALPN:
            return H3App(server_conn, self)
        app = ServerApp(server_conn.conn)
        app.on_request = lambda line: self._extra_verb(live, line)
        return app

    def _extra_verb(self, live: LiveConnection, line: str) -> bytes | None:
        if line.split()[:1] == [MIGRATIONS_VERB]:
            return json.dumps(live.record(self.now())).encode()
        return None

    def connection_of(self, server_conn: ServerConnection) -> LiveConnection:
        live = self._by_server_conn.get(id(server_conn))
        if live is None:
            listener = next(
                item for item in self.listeners if server_conn in item.endpoint.connections
            )
            live = LiveConnection(len(self.connections) + 1, listener, server_conn)
            self.connections.append(live)
            self._by_server_conn[id(server_conn)] = live
        return live

    def records(self) -> dict[str, Any]:
        """Every connection's records (the body of HTTP/3 `/migrations`)."""
        now = self.now()
        return {
            "server": {
                "version": __version__,
                "listening": [format_address(a) for a in self.addresses],
                "uptime": now,
            },
            "connections": [live.record(now) for live in self.connections],
        }

    # --- live log -----------------------------------------------------------------------

    def report(self, listener: Listener) -> None:
        """Log what the trackers observed since the last call: migrations, validations."""
        for server_conn in listener.endpoint.connections:
            live = self.connection_of(server_conn)
            if live.logged_closed:
                continue
            self._report_connection(live)

    def _report_connection(self, live: LiveConnection) -> None:
        tracker = live.server_conn.tracker
        name = f"conn #{live.number}"
        for index in range(live.logged_migrations, len(tracker.migrations)):
            mig = tracker.migrations[index]
            what = (
                "port change (same address: a NAT rebinding or a new socket)"
                if mig.kind is MigrationKind.PORT_CHANGE
                else "address change"
            )
            cid = "new connection ID" if mig.cid_changed else "same connection ID"
            self.log(
                f"🔀 {name} migration {index + 1}: {format_address(mig.old_peer)} → "
                f"{format_address(mig.new_peer)}, {what}, {cid}"
            )
        live.logged_migrations = len(tracker.migrations)
        for index, mig in enumerate(tracker.migrations):
            rtt = mig.validation_rtt
            if index in live.logged_validations or rtt is None:
                continue
            live.logged_validations.add(index)
            self.log(
                f"✅ {name} migration {index + 1}: path {format_address(mig.new_peer)} validated, "
                f"PATH_CHALLENGE → PATH_RESPONSE in {rtt * 1e3:.2f} ms "
                f"({_count(len(tracker.migrations), 'migration')} on this connection)"
            )
        for local, use in tracker.server_addresses.items():
            if use.moved_at is None or local in live.logged_server_moves:
                continue
            live.logged_server_moves.add(local)
            self.log(
                f"🏠 {name}: the client moved to the preferred address {format_address(local)}; "
                f"its first packet there used "
                + ("a new connection ID" if use.first_dcid_new else "an old connection ID (!)")
            )
        for rotation in tracker.cid_rotations[live.logged_rotations :]:
            self.log(
                f"🆔 {name}: the client switched to a new connection ID on the same path "
                f"({format_address(rotation.peer)})"
            )
        live.logged_rotations = len(tracker.cid_rotations)
        closed = live.server_conn.closed
        if closed is not None:
            live.logged_closed = True
            reason = f": {closed.reason}" if closed.reason else ""
            if live.alpn is None:
                first = tracker.peers_seen[0] if tracker.peers_seen else None
                self.log(
                    f"❌ {name} from {format_address(first) if first else '?'}: closed before "
                    f"the handshake completed{reason}"
                )
                return
            self.log(
                f"👋 {name} closed{reason} ({_count(len(tracker.migrations), 'migration')}, "
                f"{_count(len(tracker.cid_rotations), 'CID rotation')}, "
                f"{_count(len(tracker.peers_seen), 'client address', 'es')} seen)"
            )


def _count(count: int, noun: str, plural: str = "s") -> str:
    return f"{count} {noun}{'' if count == 1 else plural}"


class H3App(ServerApp):
    """HTTP/3 on one server connection: `/`, `/migrations`, `/bytes/N`, `/fetch/N` (GET only)."""

    def __init__(self, server_conn: ServerConnection, server: LiveServer) -> None:
        super().__init__(server_conn.conn)
        self._server = server
        self._server_conn = server_conn
        self._h3 = H3Connection(server_conn.conn)

    def stream_data(self, stream_id: int, data: bytes, end_stream: bool, now: float) -> None:
        event = quic_events.StreamDataReceived(
            data=data, end_stream=end_stream, stream_id=stream_id
        )
        for h3_event in self._h3.handle_event(event):
            if isinstance(h3_event, HeadersReceived):
                self._respond(h3_event)

    def _respond(self, event: HeadersReceived) -> None:
        headers = dict(event.headers)
        method = headers.get(b":method", b"").decode()
        path = headers.get(b":path", b"/").decode().split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            status, kind, body = 405, "text/plain", b"only GET\n"
        elif path == "/":
            status, kind, body = 200, "text/html; charset=utf-8", self._status_page()
        elif path == "/migrations":
            records = self._server.records()
            records["requested_by"] = self._server.connection_of(self._server_conn).number
            status, kind, body = 200, "application/json", json.dumps(records, indent=2).encode()
        elif path.startswith("/bytes/"):
            status, kind, body = self._bytes(path.removeprefix("/bytes/"))
        elif path.startswith("/fetch/"):
            status, kind, body = _fetch_page(path.removeprefix("/fetch/"))
        else:
            status, kind = 404, "text/plain"
            body = b"not found: try /, /migrations, /bytes/N, /fetch/N\n"
        self._h3.send_headers(
            event.stream_id,
            [
                (b":status", str(status).encode()),
                (b"server", f"quicmig/{__version__}".encode()),
                (b"content-type", kind.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        )
        self._h3.send_data(event.stream_id, b"" if method == "HEAD" else body, end_stream=True)

    @staticmethod
    def _bytes(count: str) -> tuple[int, str, bytes]:
        if not count.isdigit() or int(count) > MAX_BYTES:
            return 400, "text/plain", f"/bytes/N needs 0 <= N <= {MAX_BYTES}\n".encode()
        return 200, "application/octet-stream", content(int(count), BYTES_SEED)

    def _status_page(self) -> bytes:
        now = self._server.now()
        rows = []
        for live in self._server.connections:
            tracker = live.server_conn.tracker
            validated = sum(m.validated_at is not None for m in tracker.migrations)
            peer = format_address(tracker.peer) if tracker.peer else "-"
            rows.append(
                f"<tr><td>{live.number}</td><td>{html.escape(str(live.alpn))}</td>"
                f"<td>{html.escape(peer)}</td><td>{len(tracker.migrations)} "
                f"({validated} validated)</td><td>{len(tracker.cid_rotations)}</td>"
                f"<td>{'closed' if live.server_conn.closed else 'open'}</td></tr>"
            )
        listening = ", ".join(format_address(a) for a in self._server.addresses)
        page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>quicmig live server</title></head>
<body>
<h1>quicmig live server</h1>
<p>Listening on {html.escape(listening)}, up {now:.0f} s. This page came over HTTP/3.
Connection migration is supported: move your client and watch <a href="/migrations">/migrations</a>.
</p>
<table border="1" cellpadding="4">
<tr><th>#</th><th>ALPN</th><th>client address</th><th>migrations</th><th>CID rotations</th>
<th>state</th></tr>
{"".join(rows)}
</table>
<p><a href="/migrations">/migrations</a> (JSON) · <a href="/bytes/1000000">/bytes/1000000</a>
· <a href="/fetch/10000000">/fetch/10000000</a> (your browser downloads 10 MB and checks it)</p>
</body></html>
"""
        return page.encode()


# The page of `/fetch/N`: its script downloads /bytes/N with fetch(), hashes the body with
# WebCrypto, then fetches /migrations, and writes all of it as JSON into <pre id="result">. The
# promise `window.quicmigFetch` resolves to the same object (for the DevTools protocol).
_FETCH_SCRIPT = """
window.quicmigFetch = (async () => {
  const url = "/bytes/" + COUNT;
  const out = {url: url, expected_sha256: EXPECTED, status: null, bytes: null, sha256: null,
               ms: null, protocol: null, migrations: null, error: null};
  try {
    const t0 = performance.now();
    const response = await fetch(url, {cache: "no-store"});
    const body = await response.arrayBuffer();
    out.ms = performance.now() - t0;
    out.status = response.status;
    out.bytes = body.byteLength;
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", body));
    out.sha256 = Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
    const entry = performance.getEntriesByName(new URL(url, location.href).href).pop();
    out.protocol = entry ? entry.nextHopProtocol : null;
    out.migrations = await (await fetch("/migrations", {cache: "no-store"})).json();
  } catch (error) {
    out.error = String(error);
  }
  document.getElementById("verdict").textContent = out.error ? "error: " + out.error
    : out.sha256 === out.expected_sha256 ? "body intact (SHA-256 matches)" : "BODY DIFFERS";
  document.getElementById("result").textContent = JSON.stringify(out);
  return out;
})();
"""


def _fetch_page(count: str) -> tuple[int, str, bytes]:
    """`/fetch/N`: an HTML page whose script GETs /bytes/N, then /migrations (see above)."""
    if not count.isdigit() or int(count) > MAX_BYTES:
        return 400, "text/plain", f"/fetch/N needs 0 <= N <= {MAX_BYTES}\n".encode()
    size = int(count)
    expected = hashlib.sha256(content(size, BYTES_SEED)).hexdigest()
    script = _FETCH_SCRIPT.replace("COUNT", str(size)).replace("EXPECTED", json.dumps(expected))
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>quicmig: fetching {size} bytes</title></head>
<body>
<h1>quicmig: this browser downloads /bytes/{size}</h1>
<p id="verdict">fetching…</p>
<pre id="result"></pre>
<script>{script}</script>
</body></html>
"""
    return 200, "text/html; charset=utf-8", page.encode()
