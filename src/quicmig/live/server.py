"""The live QUIC server: `ServerEndpoint` (the simulator's) on real asyncio UDP sockets.

One `ServerEndpoint` per listening socket, driven exactly as the simulator drives it:
`receive_datagram(data, addr, now)`, `handle_timer(now)`, `datagrams_to_send_from(now)`,
`get_timer()`, with `now` = the event loop's clock in seconds since the server started. Each
connection's `MigrationTracker` therefore sees what the kernel delivered: a migration is logged
when authenticated non-probing packets arrive from a new source address or port.

Applications by ALPN: "quicmig" (the message protocol of `core.app`, plus `MIGRATIONS`, which
returns this connection's records as JSON) and "h3" (HTTP/3, `live.h3app`). The log lines
come from `live.narration`. Closed connections are released and the newest `history` of
them kept for `/migrations`; the totals stay exact.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import socket
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from aioquic.h3.connection import H3_ALPN
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from quicmig import __version__
from quicmig.aioquic_ext import connection_class
from quicmig.core.app import ServerApp
from quicmig.core.datagram import Address, format_address
from quicmig.core.endpoint import (
    ALPN,
    DEFAULT_HISTORY,
    HalfOpenLimit,
    ServerConnection,
    ServerEndpoint,
    ServerLimits,
)
from quicmig.core.tap import TapLogger
from quicmig.core.tracker import MigrationTracker
from quicmig.errors import QuicmigError
from quicmig.live.certs import CertPaths, check_server_pair
from quicmig.live.h3app import BYTES_SEED as BYTES_SEED  # re-exported: one definition
from quicmig.live.h3app import MAX_BYTES as MAX_BYTES
from quicmig.live.h3app import H3App
from quicmig.live.narration import Narrator, Told
from quicmig.live.records import connection_record
from quicmig.live.udp import Timer, UdpSocket, bind_socket, open_socket, wrap_socket
from quicmig.model.scenario import QuicExtensions, ServerSettings

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4433
MIGRATIONS_VERB = "MIGRATIONS"
DEFAULT_MAX_HALF_OPEN = 1000  # connections: handshakes in progress per listening address
DEFAULT_HANDSHAKE_TIMEOUT = 10.0  # seconds: a handshake not done by then is dropped
RECOVERY_SAMPLES = 4096  # per connection: the figure needs far fewer (see MigrationTracker)
# bytes: the listening socket's receive buffer. Many clients' datagrams queue there while the
# server is busy; the default (about 200 kB) overflows and the kernel drops what does not fit,
# which stalls migrating clients (a lost PATH_CHALLENGE on an amplification-limited path).
RECEIVE_BUFFER = 16 << 20
LIVE_LIMITS = ServerLimits(DEFAULT_HISTORY, DEFAULT_MAX_HALF_OPEN, DEFAULT_HANDSHAKE_TIMEOUT)

Log = Callable[[str], None]


@dataclass(slots=True)
class LiveConnection:
    """A connection as the live server reports it: a number, where it came in, what was told."""

    number: int
    listener: Listener
    server_conn: ServerConnection
    told: Told = field(default_factory=Told)

    @property
    def alpn(self) -> str | None:
        return self.server_conn.alpn

    def record(self, now: float) -> dict[str, Any]:
        return connection_record(self.number, self.alpn, self.listener.local, self.server_conn, now)


class Listener:
    """One UDP socket and the ServerEndpoint behind it, plus the socket of its preferred
    address (RFC 9000 section 9.6) if it advertises one: both reach the same connections."""

    def __init__(
        self,
        server: LiveServer,
        configuration: QuicConfiguration,
        connection_class: type[QuicConnection],
    ) -> None:
        self.server = server
        self.endpoint = ServerEndpoint(
            configuration,
            functools.partial(server.make_app, self),
            connection_class,
            tracker_factory=functools.partial(MigrationTracker, RECOVERY_SAMPLES),
            limits=server.limits,
            retry=server.retry,
        )
        self.socket: UdpSocket | None = None
        self.local: Address = ("", 0)
        self.preferred: UdpSocket | None = None
        self.timer = Timer(self._on_timer, server.now)

    async def open(self, local: Address) -> Address:
        self.socket = await open_socket(
            local, self._on_datagram, "server", receive_buffer=RECEIVE_BUFFER
        )
        self.local = self.socket.local
        return self.local

    def _on_datagram(self, data: bytes, addr: Address) -> None:
        self.endpoint.receive_datagram(data, addr, self.server.now())
        self.transmit()

    def on_preferred_datagram(self, data: bytes, addr: Address) -> None:
        if self.preferred is not None:
            self.endpoint.receive_datagram(data, addr, self.server.now(), self.preferred.local)
            self.transmit()

    def _on_timer(self, now: float) -> None:
        self.endpoint.handle_timer(now)
        self.transmit()

    def transmit(self) -> None:
        """The one send loop: send what the endpoint has, tell what its trackers saw (only
        for the connections just serviced), re-arm the timer (aioquic's `transmit()` shape)."""
        endpoint = self.endpoint
        for data, addr, local in endpoint.datagrams_to_send_from(self.server.now()):
            sock = self.socket if local is None else self.preferred
            if sock is not None:
                sock.sendto(data, addr)
        while (event := endpoint.next_event()) is not None:
            if isinstance(event, HalfOpenLimit):
                self.server.narrator.half_open_limit(self.local, event)
        self.server.narrate(self, endpoint.serviced)
        self.timer.arm(endpoint.get_timer())

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
        limits: ServerLimits = LIVE_LIMITS,
        retry: bool = False,
    ) -> None:
        """`preferred_addresses`: at most one per address family, each advertised by the
        first listen address of its family (RFC 9000 section 9.6); port 0 binds any port.
        `disable_active_migration`: send that transport parameter (section 18.2).
        `extensions`: quicmig's server-side changes to aioquic (all off: stock aioquic).
        `limits`: closed connections kept, handshakes in progress, handshake timeout (per
        listening address). `retry`: validate every client address with a Retry first
        (section 8.1.2), against floods of Initials from spoofed sources."""
        if not listen:
            raise ValueError("listen on at least one address")
        self.preferred_addresses = list(preferred_addresses)
        self.disable_active_migration = disable_active_migration
        self.extensions = extensions or QuicExtensions()
        self.limits = limits
        self.retry = retry
        self.certs = certs
        self.listen = list(listen)
        self.qlog_dir = qlog_dir
        self.secrets_log = secrets_log
        self.log = log
        self.narrator = Narrator(log)
        self.listeners: list[Listener] = []
        self._numbers = 0  # connections numbered so far
        self._kept: dict[int, LiveConnection] = {}  # number -> open or recently closed
        self._by_conn: dict[int, LiveConnection] = {}  # id(ServerConnection) -> its record
        self._closed: deque[int] = deque()  # numbers of kept closed connections, oldest first
        self.dropped = {"connections": 0, "migrations": 0, "cid_rotations": 0}
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

    @property
    def connections(self) -> list[LiveConnection]:
        """The open connections and the newest closed ones (`limits.history`), in order."""
        return list(self._kept.values())

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> list[Address]:
        """Bind every listen address; returns the bound addresses (real ports for port 0).

        Everything a connection needs (its class: extensions, preferred address,
        disable_active_migration) exists before the socket that can accept it opens.
        """
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
            # Each preferred address is advertised by the first listen address of its family.
            unclaimed = {ipaddress.ip_address(p[0]).version: p for p in self.preferred_addresses}
            for local in self.listen:
                preferred = unclaimed.pop(ipaddress.ip_address(local[0]).version, None)
                await self._open_listener(configuration, local, preferred)
        except BaseException:
            await self.aclose()
            raise
        return self.addresses

    async def _open_listener(
        self, configuration: QuicConfiguration, local: Address, preferred: Address | None
    ) -> None:
        # The preferred socket is bound first (no client knows it yet): its real port goes
        # into the transport parameters of the class the endpoint is built with.
        bound = (
            bind_socket(preferred, "preferred address", receive_buffer=RECEIVE_BUFFER)
            if preferred is not None
            else None
        )
        try:
            settings = ServerSettings(
                None if bound is None else _sockname(bound), self.disable_active_migration
            )
            # aioquic 1.7.2's server sends neither parameter: quicmig's connection does.
            listener = Listener(self, configuration, connection_class(self.extensions, settings))
        except BaseException:
            if bound is not None:
                bound.close()
            raise
        self.listeners.append(listener)
        if bound is not None:
            listener.preferred = await wrap_socket(bound, listener.on_preferred_datagram)
        await listener.open(local)

    async def aclose(self) -> None:
        """Close every connection (CONNECTION_CLOSE goes out), the sockets, and the files."""
        if not self._started:
            return
        self._started = False
        for listener in self.listeners:
            listener.endpoint.close_all("server shutting down")
            listener.transmit()
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

    def make_app(
        self, listener: Listener, server_conn: ServerConnection, alpn: str | None
    ) -> ServerApp:
        """The endpoint's app factory: HTTP/3 or the message protocol, by ALPN."""
        if alpn in H3_ALPN:
            return H3App(server_conn, self)
        conn = server_conn.conn
        assert isinstance(conn, QuicConnection)
        app = ServerApp(conn)
        app.on_request = lambda line: self._extra_verb(listener, server_conn, line)
        return app

    def _extra_verb(
        self, listener: Listener, server_conn: ServerConnection, line: str
    ) -> bytes | None:
        if line.split()[:1] == [MIGRATIONS_VERB]:
            return json.dumps(self._live(listener, server_conn).record(self.now())).encode()
        return None

    def _live(self, listener: Listener, server_conn: ServerConnection) -> LiveConnection:
        live = self._by_conn.get(id(server_conn))
        if live is None:
            self._numbers += 1
            live = LiveConnection(self._numbers, listener, server_conn)
            self._kept[live.number] = live
            self._by_conn[id(server_conn)] = live
        return live

    def number_of(self, server_conn: ServerConnection) -> int | None:
        live = self._by_conn.get(id(server_conn))
        return None if live is None else live.number

    # --- records ------------------------------------------------------------------------

    def totals(self) -> dict[str, int]:
        """Counts since the start, exact whatever the history kept."""
        kept = self._kept.values()
        stats = [listener.endpoint.stats for listener in self.listeners]
        return {
            "connections": self._numbers,
            "open": sum(live.server_conn.closed is None for live in kept),
            "migrations": self.dropped["migrations"]
            + sum(len(live.server_conn.tracker.migrations) for live in kept),
            "cid_rotations": self.dropped["cid_rotations"]
            + sum(len(live.server_conn.tracker.cid_rotations) for live in kept),
            "records_dropped": self.dropped["connections"],
            "half_open": sum(s.half_open for s in stats),
            "refused_half_open": sum(s.refused_half_open for s in stats),
            "handshake_timeouts": sum(s.handshake_timeouts for s in stats),
            "retries": sum(s.retries for s in stats),
            "bad_tokens": sum(s.bad_tokens for s in stats),
            "version_negotiations": sum(s.version_negotiations for s in stats),
            "unroutable": sum(s.unroutable for s in stats),
        }

    def records(self) -> dict[str, Any]:
        """Every kept connection's records (the body of HTTP/3 `/migrations`)."""
        now = self.now()
        totals = self.totals()
        return {
            "server": {
                "version": __version__,
                "listening": [format_address(a) for a in self.addresses],
                "uptime": now,
                "history": self.limits.history,
            },
            "totals": totals,
            "dropped": {
                **self.dropped,
                "note": f"records of {totals['records_dropped']} older closed connections were "
                f"dropped (the newest {self.limits.history} are kept); the totals count them",
            },
            "connections": [live.record(now) for live in self._kept.values()],
        }

    # --- live log -----------------------------------------------------------------------

    def narrate(self, listener: Listener, serviced: list[ServerConnection]) -> None:
        """Log what the trackers of the connections just serviced observed; retire closed
        ones into the bounded history."""
        for server_conn in serviced:
            live = self._live(listener, server_conn)
            if live.told.closed:
                continue
            self.narrator.tell(f"conn #{live.number}", server_conn, live.told)
            if live.told.closed:
                self._retire(live)

    def _retire(self, live: LiveConnection) -> None:
        self._closed.append(live.number)
        while len(self._closed) > self.limits.history:
            old = self._kept.pop(self._closed.popleft())
            del self._by_conn[id(old.server_conn)]
            tracker = old.server_conn.tracker
            self.dropped["connections"] += 1
            self.dropped["migrations"] += len(tracker.migrations)
            self.dropped["cid_rotations"] += len(tracker.cid_rotations)
            if self.dropped["connections"] == 1:
                self.narrator.history_full(self.limits.history)


def _sockname(sock: socket.socket) -> Address:
    name = sock.getsockname()
    return (str(name[0]), int(name[1]))
