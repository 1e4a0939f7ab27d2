"""Client and server endpoints: aioquic connections plus workload and tracker, sans-IO.

Every backend drives these the way aioquic's own QuicConnection is driven:
`receive_datagram(data, addr, now)`, `handle_timer(now)`, then `datagrams_to_send(now)`,
`get_timer()` and `next_event()`. Only backends touch sockets and clocks.
"""

from __future__ import annotations

import math
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from aioquic.buffer import Buffer  # type: ignore[attr-defined]  # re-exported from _buffer
from aioquic.quic import events as quic_events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicPacketType, pull_quic_header

from quicmig.aioquic_ext import QuicmigConnection
from quicmig.core.app import ClientWorkload, ServerApp, make_workload
from quicmig.core.certs import CertificateSet
from quicmig.core.datagram import Address
from quicmig.core.tap import TapLogger, TapTrace
from quicmig.core.tracker import MigrationTracker
from quicmig.model.scenario import SERVER_PORT as SERVER_PORT  # re-exported: one definition
from quicmig.model.scenario import Workload

ALPN = "quicmig"
SMALLEST_INITIAL = 1200  # bytes: RFC 9000 section 14.1, a client Initial is padded to this

# Our own events, translated from aioquic's at the boundary.


@dataclass(frozen=True, slots=True)
class HandshakeDone:
    at: float


@dataclass(frozen=True, slots=True)
class WorkloadDone:
    at: float


@dataclass(frozen=True, slots=True)
class Closed:
    at: float
    reason: str
    error_code: int


@dataclass(frozen=True, slots=True)
class FailoverNeeded:
    """The client heard nothing from the server for `failover_after` seconds mid-workload."""

    at: float


EndpointEvent = HandshakeDone | WorkloadDone | Closed | FailoverNeeded


def client_configuration(
    ca_pem: bytes | None,
    logger: TapLogger | None = None,
    secrets_log: TextIO | None = None,
    server_name: str = "localhost",
) -> QuicConfiguration:
    """A client's configuration: verify the server against `ca_pem` (None: do not verify)."""
    config = QuicConfiguration(
        is_client=True,
        alpn_protocols=[ALPN],
        server_name=server_name,
        quic_logger=logger,
        secrets_log_file=secrets_log,
    )
    if ca_pem is None:
        config.verify_mode = ssl.CERT_NONE
    else:
        config.load_verify_locations(cadata=ca_pem)
    return config


def server_configuration(
    certs: CertificateSet, logger: TapLogger, secrets_log: TextIO | None = None
) -> QuicConfiguration:
    config = QuicConfiguration(
        is_client=False, alpn_protocols=[ALPN], quic_logger=logger, secrets_log_file=secrets_log
    )
    config.certificate = certs.cert
    config.private_key = certs.key
    return config


class ClientEndpoint:
    """One client connection and its workload.

    The backend owns the socket: it tells the endpoint when the client moved (`migrate()`)
    and sends what `datagrams_to_send()` returns from the current local address.
    """

    def __init__(
        self,
        configuration: QuicConfiguration,
        server: Address,
        workload: Workload | Callable[[QuicConnection], ClientWorkload],
        seed: int,
        keepalive: float | None = None,  # seconds
        failover_after: float | None = None,  # seconds
        connection_class: type[QuicConnection] = QuicConnection,
    ) -> None:
        self.server = server
        self.conn = connection_class(configuration=configuration)
        self._logger = (
            configuration.quic_logger if isinstance(configuration.quic_logger, TapLogger) else None
        )
        # A scenario's workload spec, or (live client) a factory given this connection.
        self.workload: ClientWorkload = (
            workload(self.conn) if callable(workload) else make_workload(self.conn, workload, seed)
        )
        self.keepalive = keepalive
        self.failover_after = failover_after
        self.handshake_at: float | None = None
        self.closed: Closed | None = None
        self._events: deque[EndpointEvent] = deque()
        self._last_sent = 0.0
        self._last_received = 0.0
        self._failover_armed = True
        self._ping_uid = 0

    def _set_now(self, now: float) -> None:
        if self._logger is not None:
            self._logger.now = now

    def connect(self, now: float) -> None:
        """Start the handshake. After this, call datagrams_to_send(now)."""
        self._set_now(now)
        self.conn.connect(self.server, now=now)
        self._last_received = now

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        self._set_now(now)
        self.conn.receive_datagram(data, addr, now=now)
        self._last_received = now
        self._failover_armed = True
        self._drain(now)

    def handle_timer(self, now: float) -> None:
        self._set_now(now)
        timer = self.conn.get_timer()
        if timer is not None and timer <= now:
            self.conn.handle_timer(now=now)
        if self.handshake_at is not None and not self.workload.done:
            self.workload.handle_timer(now)
        if self._keepalive_at() <= now:
            self._ping(now)
        if self._failover_at() <= now:
            self._failover_armed = False
            self._events.append(FailoverNeeded(now))
        self._drain(now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        self._set_now(now)
        datagrams = self.conn.datagrams_to_send(now=now)
        if datagrams:
            self._last_sent = now
        self._drain(now)
        return datagrams

    def get_timer(self) -> float | None:
        if self.closed is not None:
            return None
        due = self.conn.get_timer()
        for timer in (self._keepalive_at(), self._failover_at(), self._workload_timer()):
            if timer is not None and (due is None or timer < due):
                due = timer
        return None if due == math.inf else due

    def _workload_timer(self) -> float | None:
        if self.handshake_at is None or self.workload.done:
            return None
        return self.workload.get_timer()

    def next_event(self) -> EndpointEvent | None:
        return self._events.popleft() if self._events else None

    def active_migration_refusal(self) -> str | None:
        """Why this client refuses to migrate actively (the server sent
        disable_active_migration and the client honours it), or None: ask before migrate()."""
        if isinstance(self.conn, QuicmigConnection):
            return self.conn.active_migration_refusal()
        return None

    def migrate(self, now: float, new_cid: bool) -> None:
        """The backend moved this client to a new local address: say so on the wire.

        With `new_cid`, switch to a fresh connection ID first (RFC 9000 section 9.5). A
        PING makes the next packet non-probing and ack-eliciting, so the server learns the
        new address at once (RFC 9000 section 9.2) even if the client had nothing to send.
        """
        if new_cid:
            self.conn.change_connection_id()
        self._ping(now)
        self._last_received = now
        self._failover_armed = True

    def rotate_cid(self, now: float) -> None:
        """Use a fresh connection ID on the same path (RFC 9000 section 9.5)."""
        self.conn.change_connection_id()
        self._ping(now)

    def close(self) -> None:
        self.conn.close()

    def _ping(self, now: float) -> None:
        self._ping_uid += 1
        self.conn.send_ping(self._ping_uid)
        self._last_sent = now

    def _keepalive_at(self) -> float:
        if self.keepalive is None or self.handshake_at is None:
            return math.inf
        return self._last_sent + self.keepalive

    def _failover_at(self) -> float:
        if (
            self.failover_after is None
            or not self._failover_armed
            or self.handshake_at is None
            or self.workload.done
        ):
            return math.inf
        return self._last_received + self.failover_after

    def _drain(self, now: float) -> None:
        workload = self.workload
        while (event := self.conn.next_event()) is not None:
            match event:
                case quic_events.HandshakeCompleted():
                    self.handshake_at = now
                    self._events.append(HandshakeDone(now))
                    workload.start(now)
                    workload.handle_timer(now)
                case quic_events.StreamDataReceived():
                    was_done = workload.done
                    workload.stream_data(event.stream_id, event.data, event.end_stream, now)
                    if workload.done and not was_done:
                        self._events.append(WorkloadDone(now))
                case quic_events.StreamReset():
                    workload.stream_reset(event.stream_id, now)
                case quic_events.ConnectionTerminated():
                    self.closed = Closed(now, event.reason_phrase, event.error_code)
                    self._events.append(self.closed)


# aioquic 1.7.2 keys a path by the address it is given (an opaque NetworkAddress) and has
# no notion of the server's own address. A server with a preferred address (RFC 9000
# section 9.6) is reached at two addresses, and a path is a pair of addresses: datagrams
# reaching a server address other than the first are given to aioquic with that address
# appended, so aioquic sees a new path there and applies its own rules to it (probing
# packets answered there, PATH_CHALLENGE, the anti-amplification limit, promotion by a
# non-probing packet). Datagrams to the first address keep the plain (host, port) key.
PathKey = tuple[str, int] | tuple[str, int, str, int]


def _path_key(addr: Address, local: Address | None) -> PathKey:
    return addr if local is None else (addr[0], addr[1], local[0], local[1])


def _split_path_key(key: PathKey) -> tuple[Address, Address | None]:
    if len(key) == 4:
        return (key[0], key[1]), (key[2], key[3])
    return (key[0], key[1]), None


class ServerConnection:
    """One accepted connection: aioquic's state machine, our tracker, the application."""

    def __init__(self, conn: QuicConnection, tracker: MigrationTracker, trace: TapTrace) -> None:
        self.conn = conn
        self.tracker = tracker
        self.trace = trace
        self.app = ServerApp(conn)
        self.closed: Closed | None = None
        self.accepted_at = 0.0


# Called when a connection's handshake completes, with the negotiated ALPN: returns the
# application that serves it from then on (the live server: message protocol or HTTP/3).
AppFactory = Callable[[ServerConnection, str | None], ServerApp]


class ServerEndpoint:
    """A QUIC server on one UDP socket: demultiplexes by connection ID, as a real one does."""

    def __init__(
        self,
        configuration: QuicConfiguration,
        app_factory: AppFactory | None = None,
        connection_class: type[QuicConnection] = QuicConnection,
    ) -> None:
        """`connection_class`: aioquic's QuicConnection or a subclass (one of quicmig's
        extensions, chosen by quicmig.aioquic_ext.connection_class)."""
        if not isinstance(configuration.quic_logger, TapLogger):
            raise TypeError("the server configuration needs a TapLogger as quic_logger")
        self.configuration = configuration
        self.app_factory = app_factory
        self.connection_class = connection_class
        self._logger = configuration.quic_logger
        self.connections: list[ServerConnection] = []
        self._by_cid: dict[bytes, ServerConnection] = {}
        self._events: deque[EndpointEvent] = deque()
        self.unroutable = 0  # datagrams matching no connection

    def receive_datagram(
        self, data: bytes, addr: Address, now: float, local: Address | None = None
    ) -> None:
        """A datagram from `addr` arrived at the server's `local` address; None: its first.

        A backend with more than one server address (a preferred address, RFC 9000 section
        9.6) passes `local` for datagrams reaching the others, and sends what
        datagrams_to_send_from() returns from the address it names.
        """
        self._logger.now = now
        try:
            header = pull_quic_header(
                Buffer(data=data), host_cid_length=self.configuration.connection_id_length
            )
        except ValueError:
            self.unroutable += 1
            return
        server_conn = self._by_cid.get(header.destination_cid)
        if (
            server_conn is None
            and header.packet_type == QuicPacketType.INITIAL
            and header.version in self.configuration.supported_versions
            and len(data) >= SMALLEST_INITIAL
        ):
            server_conn = self._accept(header.destination_cid, now)
        if server_conn is None:
            self.unroutable += 1
            return
        server_conn.trace.peer = addr
        server_conn.trace.local = local
        server_conn.conn.receive_datagram(data, _path_key(addr, local), now=now)
        server_conn.trace.after_receive()
        self._drain(server_conn, now)

    def _accept(self, odcid: bytes, now: float) -> ServerConnection:
        tracker = MigrationTracker()
        self._logger.next_observer = tracker
        conn = self.connection_class(
            configuration=self.configuration, original_destination_connection_id=odcid
        )
        trace = self._logger.last_trace
        assert trace is not None
        server_conn = ServerConnection(conn, tracker, trace)
        server_conn.accepted_at = now
        self.connections.append(server_conn)
        self._by_cid[odcid] = server_conn
        self._by_cid[conn.host_cid] = server_conn
        return server_conn

    def handle_timer(self, now: float) -> None:
        self._logger.now = now
        for server_conn in self.connections:
            if server_conn.closed is not None:
                continue
            timer = server_conn.conn.get_timer()
            if timer is not None and timer <= now:
                server_conn.conn.handle_timer(now=now)
            app_timer = server_conn.app.get_timer()
            if app_timer is not None and app_timer <= now:
                server_conn.app.handle_timer(now)
            self._drain(server_conn, now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """What to send, for a backend with one server address (see datagrams_to_send_from)."""
        return [(data, addr) for data, addr, _ in self.datagrams_to_send_from(now)]

    def datagrams_to_send_from(self, now: float) -> list[tuple[bytes, Address, Address | None]]:
        """(datagram, client address, server address to send it from; None: the first)."""
        self._logger.now = now
        out: list[tuple[bytes, Address, Address | None]] = []
        for server_conn in self.connections:
            if server_conn.closed is not None:
                continue
            datagrams = [
                (data, *_split_path_key(key))
                for data, key in server_conn.conn.datagrams_to_send(now=now)
            ]
            server_conn.trace.after_send(
                [addr for _, addr, _ in datagrams], [local for _, _, local in datagrams]
            )
            out += datagrams
            self._drain(server_conn, now)
        return out

    def get_timer(self) -> float | None:
        due = math.inf
        for server_conn in self.connections:
            if server_conn.closed is not None:
                continue
            for timer in (server_conn.conn.get_timer(), server_conn.app.get_timer()):
                if timer is not None and timer < due:
                    due = timer
        return None if due == math.inf else due

    def next_event(self) -> EndpointEvent | None:
        return self._events.popleft() if self._events else None

    def _drain(self, server_conn: ServerConnection, now: float) -> None:
        while (event := server_conn.conn.next_event()) is not None:
            match event:
                case quic_events.StreamDataReceived():
                    server_conn.app.stream_data(event.stream_id, event.data, event.end_stream, now)
                case quic_events.ConnectionIdIssued():
                    self._by_cid[event.connection_id] = server_conn
                case quic_events.ConnectionIdRetired():
                    self._by_cid.pop(event.connection_id, None)
                case quic_events.HandshakeCompleted():
                    if self.app_factory is not None:
                        server_conn.app = self.app_factory(server_conn, event.alpn_protocol)
                    self._events.append(HandshakeDone(now))
                case quic_events.ConnectionTerminated():
                    server_conn.closed = Closed(now, event.reason_phrase, event.error_code)
                    self._events.append(server_conn.closed)
                    for cid in [c for c, s in self._by_cid.items() if s is server_conn]:
                        del self._by_cid[cid]
