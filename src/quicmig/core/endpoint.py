"""Client and server endpoints: aioquic connections plus workload and tracker, sans-IO.

Every backend drives these the way aioquic's own QuicConnection is driven:
`receive_datagram(data, addr, now)`, `handle_timer(now)`, then `datagrams_to_send(now)`,
`get_timer()` and `next_event()`. Only backends touch sockets and clocks.
"""

from __future__ import annotations

import copy
import heapq
import itertools
import math
import os
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from aioquic.buffer import Buffer  # type: ignore[attr-defined]  # re-exported from _buffer
from aioquic.quic import events as quic_events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import (
    QuicHeader,
    QuicPacketType,
    QuicProtocolVersion,
    encode_quic_retry,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from aioquic.quic.retry import QuicRetryTokenHandler

from quicmig.aioquic_ext import QuicmigConnection
from quicmig.core.app import ClientWorkload, ServerApp, make_workload
from quicmig.core.certs import CertificateSet
from quicmig.core.datagram import Address
from quicmig.core.tap import OneTraceLogger, PacketObserver, TapLogger, TapTrace
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


@dataclass(frozen=True, slots=True)
class ReleasedConnection:
    """What stays of a terminated connection once its aioquic state is dropped: its IDs."""

    original_destination_connection_id: bytes
    host_cid: bytes


class ServerConnection:
    """One accepted connection: aioquic's state machine, our tracker, the application.

    Once the connection has terminated the endpoint releases it: `conn` becomes a
    ReleasedConnection (aioquic's state is dropped), the application stops serving, and
    `tracker`, `app.sent_digests`, `closed` and `accepted_at` stay for the records.
    """

    def __init__(
        self,
        number: int,
        conn: QuicConnection,
        tracker: MigrationTracker,
        trace: TapTrace,
        accepted_at: float,
    ) -> None:
        self.number = number  # accept order on its endpoint, from 1
        self.conn: QuicConnection | ReleasedConnection = conn
        self.tracker = tracker
        self.trace: TapTrace | None = trace
        self.app = ServerApp(conn)
        self.closed: Closed | None = None
        self.accepted_at = accepted_at  # seconds
        self.handshake_at: float | None = None  # seconds
        self.alpn: str | None = None
        self.cids: set[bytes] = set()  # connection IDs routed to it
        self.timer_seq = -1  # its entry in the endpoint's timer heap (-1: none)
        self.timer_due: float | None = None

    @property
    def released(self) -> bool:
        return isinstance(self.conn, ReleasedConnection)

    def next_timer(self, handshake_deadline: float | None) -> float | None:
        """When this connection needs handle_timer(): aioquic's, the app's, the handshake's."""
        assert isinstance(self.conn, QuicConnection)
        due = self.conn.get_timer()
        for timer in (self.app.get_timer(), handshake_deadline):
            if timer is not None and (due is None or timer < due):
                due = timer
        return due


# Called when a connection's handshake completes, with the negotiated ALPN: returns the
# application that serves it from then on (the live server: message protocol or HTTP/3).
AppFactory = Callable[[ServerConnection, str | None], ServerApp]
# Given a connection's tracker, the observer its tap feeds (which must pass every call on to
# the tracker), e.g. a recorder of packets; None: the tracker itself.
ObserverFactory = Callable[[MigrationTracker], PacketObserver]

DEFAULT_HISTORY = 1000  # closed connections whose records an endpoint keeps


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """What one endpoint holds at most. None: no limit."""

    history: int = DEFAULT_HISTORY  # closed connections kept (their records); older dropped
    max_half_open: int | None = None  # accepted connections whose handshake is not done
    handshake_timeout: float | None = None  # seconds: a handshake not done by then is dropped

    def __post_init__(self) -> None:
        if self.history < 0:
            raise ValueError("history: a number of connections >= 0")
        if self.max_half_open is not None and self.max_half_open < 1:
            raise ValueError("max_half_open: at least 1")
        if self.handshake_timeout is not None and not 0 < self.handshake_timeout < math.inf:
            raise ValueError("handshake_timeout: seconds > 0")


@dataclass(frozen=True, slots=True)
class HalfOpenLimit:
    """New connections are being refused: `limit` handshakes are in progress (server)."""

    at: float
    limit: int
    refused: int  # Initials refused so far, this one included


ServerEvent = EndpointEvent | HalfOpenLimit


@dataclass(slots=True)
class EndpointStats:
    """Counters of one server endpoint since it started; they stay exact whatever the
    history keeps."""

    accepted: int = 0  # connections created
    handshakes: int = 0  # of them, handshakes completed
    released: int = 0  # terminated, and their aioquic state dropped
    half_open: int = 0  # now: accepted, handshake not done, not released
    handshake_timeouts: int = 0  # dropped at ServerLimits.handshake_timeout
    refused_half_open: int = 0  # Initials dropped at ServerLimits.max_half_open
    retries: int = 0  # Retry packets sent (RFC 9000 section 8.1.2)
    bad_tokens: int = 0  # Initials with a token that failed validation, dropped
    version_negotiations: int = 0  # Version Negotiation packets sent (RFC 9000 section 6)
    unauthenticated: int = 0  # Initials for a new connection that did not decrypt: dropped
    unroutable: int = 0  # datagrams matching no connection and starting none
    records_dropped: int = 0  # closed connections dropped from the history
    migrations_dropped: int = 0  # migrations those connections had
    rotations_dropped: int = 0  # CID rotations those connections had


def _long_header_cids(data: bytes) -> tuple[int, bytes, bytes] | None:
    """(version, DCID, SCID) of a long-header packet by the version-independent layout
    (RFC 8999 section 5.1: connection IDs up to 255 bytes), or None."""
    if len(data) < 7 or not data[0] & 0x80:
        return None
    dcid_end = 6 + data[5]
    if len(data) <= dcid_end:
        return None
    scid_end = dcid_end + 1 + data[dcid_end]
    if len(data) < scid_end:
        return None
    return int.from_bytes(data[1:5], "big"), data[6:dcid_end], data[dcid_end + 1 : scid_end]


class ServerEndpoint:
    """A QUIC server on one UDP socket: demultiplexes by connection ID, as a real one does.

    Work per datagram is that of its connection only: datagrams are routed by DCID, each
    connection's next timer sits in one heap (due, sequence, connection) with stale entries
    skipped when they surface, and only connections that had input are asked what to send.
    Terminated connections are released (aioquic's state dropped) and the newest
    `limits.history` of them kept for their records; `stats` stays exact.
    """

    def __init__(
        self,
        configuration: QuicConfiguration,
        app_factory: AppFactory | None = None,
        connection_class: type[QuicConnection] = QuicConnection,
        *,
        tracker_factory: Callable[[], MigrationTracker] = MigrationTracker,
        observer_factory: ObserverFactory | None = None,
        limits: ServerLimits | None = None,
        retry: bool = False,
    ) -> None:
        """`connection_class`: aioquic's QuicConnection or a subclass (quicmig.aioquic_ext).
        `tracker_factory` makes each accepted connection's tracker; `observer_factory`, if
        given, puts an observer in front of it. `retry`: validate client addresses with a
        Retry before creating any state (RFC 9000 section 8.1.2)."""
        if not isinstance(configuration.quic_logger, TapLogger):
            raise TypeError("the server configuration needs a TapLogger as quic_logger")
        self.configuration = configuration
        self.app_factory = app_factory
        self.connection_class = connection_class
        self.tracker_factory = tracker_factory
        self.observer_factory = observer_factory
        self.limits = limits or ServerLimits()
        self.stats = EndpointStats()
        self._retry = QuicRetryTokenHandler() if retry else None
        self._logger = configuration.quic_logger
        self._numbers = itertools.count(1)
        self._open: dict[int, ServerConnection] = {}  # number -> open connection
        self._kept: dict[int, ServerConnection] = {}  # number -> every connection kept
        self._closed: deque[int] = deque()  # numbers of kept closed connections, oldest first
        self._by_cid: dict[bytes, ServerConnection] = {}
        self._timers: list[tuple[float, int, ServerConnection]] = []
        self._sequence = itertools.count()
        self._pending: dict[int, ServerConnection] = {}  # had input since the last send
        self._stateless: list[tuple[bytes, Address, Address | None]] = []
        self._at_half_open_limit = False
        self._events: deque[ServerEvent] = deque()
        self.serviced: list[ServerConnection] = []  # see datagrams_to_send_from()

    @property
    def connections(self) -> list[ServerConnection]:
        """Every open connection and the newest closed ones, in accept order."""
        return list(self._kept.values())

    @property
    def open_connections(self) -> list[ServerConnection]:
        return list(self._open.values())

    @property
    def unroutable(self) -> int:
        return self.stats.unroutable

    # --- input --------------------------------------------------------------------------

    def receive_datagram(
        self, data: bytes, addr: Address, now: float, local: Address | None = None
    ) -> None:
        """A datagram from `addr` arrived at the server's `local` address; None: its first.

        A backend with more than one server address (a preferred address, RFC 9000 section
        9.6) passes `local` for datagrams reaching the others, and sends what
        datagrams_to_send_from() returns from the address it names. After this, call
        datagrams_to_send_from(now), then get_timer().
        """
        self._logger.now = now
        supported = self.configuration.supported_versions
        invariant = _long_header_cids(data)
        if invariant is not None and invariant[0] not in supported:
            self._negotiate_version(invariant, len(data), addr, local)
            return
        try:
            header = pull_quic_header(
                Buffer(data=data), host_cid_length=self.configuration.connection_id_length
            )
        except ValueError:
            self.stats.unroutable += 1
            return
        server_conn = self._by_cid.get(header.destination_cid)
        if (
            server_conn is None
            and header.packet_type == QuicPacketType.INITIAL
            and len(data) >= SMALLEST_INITIAL
        ):
            server_conn = self._admit(header, addr, local, now)
            if server_conn is None:
                return
            self._receive(server_conn, data, addr, local, now)
            if not server_conn.tracker.peers_seen:
                # Nothing in it authenticated (a forged or damaged Initial): no state is
                # kept, no half-open slot taken, nothing was sent.
                self.stats.unauthenticated += 1
                self._logger.discard(server_conn.trace)
                return
            self._register(server_conn)
        elif server_conn is None or not isinstance(server_conn.conn, QuicConnection):
            self.stats.unroutable += 1
            return
        else:
            self._receive(server_conn, data, addr, local, now)
        self._after_input(server_conn, now)

    def _receive(
        self,
        server_conn: ServerConnection,
        data: bytes,
        addr: Address,
        local: Address | None,
        now: float,
    ) -> None:
        conn, trace = server_conn.conn, server_conn.trace
        assert isinstance(conn, QuicConnection) and trace is not None
        trace.peer = addr
        trace.local = local
        conn.receive_datagram(data, _path_key(addr, local), now=now)
        trace.after_receive()

    def _negotiate_version(
        self,
        invariant: tuple[int, bytes, bytes],
        size: int,
        addr: Address,
        local: Address | None,
    ) -> None:
        """RFC 9000 section 6.1: answer an unknown version with the versions we speak, but
        never a Version Negotiation packet (version 0), and only datagrams large enough to
        start a connection (section 14.1), so the answer is always the smaller."""
        version, dcid, scid = invariant
        if version == QuicProtocolVersion.NEGOTIATION or size < SMALLEST_INITIAL:
            self.stats.unroutable += 1
            return
        packet = encode_quic_version_negotiation(
            source_cid=dcid,
            destination_cid=scid,
            supported_versions=list(self.configuration.supported_versions),
        )
        self._stateless.append((packet, addr, local))
        self.stats.version_negotiations += 1

    def _admit(
        self, header: QuicHeader, addr: Address, local: Address | None, now: float
    ) -> ServerConnection | None:
        """A new client's Initial: validate its address with a Retry if asked, respect the
        half-open limit, then accept it."""
        original_dcid = header.destination_cid
        retry_scid: bytes | None = None
        if self._retry is not None:
            version = header.version
            assert version is not None  # an Initial has a long header
            if not header.token:
                scid = os.urandom(self.configuration.connection_id_length)
                token = self._retry.create_token(
                    address=addr,
                    original_destination_connection_id=header.destination_cid,
                    retry_source_connection_id=scid,
                    now=now,
                )
                packet = encode_quic_retry(
                    version=version,
                    source_cid=scid,
                    destination_cid=header.source_cid,
                    original_destination_cid=header.destination_cid,
                    retry_token=token,
                )
                self._stateless.append((packet, addr, local))
                self.stats.retries += 1
                return None
            try:
                original_dcid = self._retry.validate_token(
                    address=addr,
                    destination_cid=header.destination_cid,
                    token=header.token,
                    now=now,
                )
            except ValueError:
                # RFC 9000 section 8.1.3 lets a server discard it; the client times out.
                self.stats.bad_tokens += 1
                return None
            retry_scid = header.destination_cid
        limit = self.limits.max_half_open
        if limit is not None and self.stats.half_open >= limit:
            self.stats.refused_half_open += 1
            if not self._at_half_open_limit:
                self._at_half_open_limit = True
                self._events.append(HalfOpenLimit(now, limit, self.stats.refused_half_open))
            return None
        return self._accept(original_dcid, retry_scid, now)

    def _accept(self, odcid: bytes, retry_scid: bytes | None, now: float) -> ServerConnection:
        """A new connection, not yet routed or counted (see _register)."""
        tracker = self.tracker_factory()
        observer = tracker if self.observer_factory is None else self.observer_factory(tracker)
        trace = self._logger.trace(is_client=False, odcid=odcid, observer=observer)
        configuration = copy.copy(self.configuration)  # this connection's own logger
        configuration.quic_logger = OneTraceLogger(trace, self._logger)
        conn = self.connection_class(
            configuration=configuration,
            original_destination_connection_id=odcid,
            retry_source_connection_id=retry_scid,
        )
        server_conn = ServerConnection(0, conn, tracker, trace, now)
        server_conn.cids.update({retry_scid or odcid, conn.host_cid})
        return server_conn

    def _register(self, server_conn: ServerConnection) -> None:
        """Its first Initial authenticated: number it, route its IDs, count it half-open."""
        server_conn.number = number = next(self._numbers)
        self._open[number] = server_conn
        self._kept[number] = server_conn
        self.stats.accepted += 1
        self.stats.half_open += 1
        for cid in list(server_conn.cids):
            self._route(server_conn, cid)

    def _route(self, server_conn: ServerConnection, cid: bytes) -> None:
        self._by_cid[cid] = server_conn
        server_conn.cids.add(cid)

    def handle_timer(self, now: float) -> None:
        """Run the timers due by `now` (only those connections'). After this, call
        datagrams_to_send_from(now), then get_timer()."""
        self._logger.now = now
        timers = self._timers
        due: list[ServerConnection] = []
        while timers and timers[0][0] <= now:
            _, sequence, server_conn = heapq.heappop(timers)
            if sequence == server_conn.timer_seq:
                server_conn.timer_seq = -1
                server_conn.timer_due = None
                due.append(server_conn)
        for server_conn in due:
            conn = server_conn.conn
            if not isinstance(conn, QuicConnection):
                continue
            timer = conn.get_timer()
            if timer is not None and timer <= now:
                conn.handle_timer(now=now)
            app_timer = server_conn.app.get_timer()
            if app_timer is not None and app_timer <= now:
                server_conn.app.handle_timer(now)
            deadline = self._handshake_deadline(server_conn)
            if deadline is not None and deadline <= now:
                self._drain(server_conn, now)
                if not server_conn.released:  # RFC 9000 section 10.1: dropped silently
                    self.stats.handshake_timeouts += 1
                    self._terminated(server_conn, now, "handshake not completed in time", 0)
            self._after_input(server_conn, now)

    def close(self, server_conn: ServerConnection, reason: str = "") -> None:
        """Close one connection (CONNECTION_CLOSE goes out with the next datagrams_to_send)."""
        if isinstance(server_conn.conn, QuicConnection) and server_conn.closed is None:
            server_conn.conn.close(reason_phrase=reason)
            self._pending[server_conn.number] = server_conn

    def close_all(self, reason: str = "") -> None:
        for server_conn in list(self._open.values()):
            self.close(server_conn, reason)

    # --- output -------------------------------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """What to send, for a backend with one server address (see datagrams_to_send_from)."""
        return [(data, addr) for data, addr, _ in self.datagrams_to_send_from(now)]

    def datagrams_to_send_from(self, now: float) -> list[tuple[bytes, Address, Address | None]]:
        """(datagram, client address, server address to send it from; None: the first).

        Only connections that had input since the last call are asked; they are listed in
        `serviced` until the next call (the live server reports on them). After this, call
        get_timer().
        """
        self._logger.now = now
        out, self._stateless = self._stateless, []
        pending, self._pending = self._pending, {}
        # In accept order, as a loop over every connection would have them.
        serviced = (
            sorted(pending.values(), key=_number) if len(pending) > 1 else [*pending.values()]
        )
        self.serviced = serviced
        for server_conn in serviced:
            conn, trace = server_conn.conn, server_conn.trace
            if not isinstance(conn, QuicConnection) or trace is None:
                continue
            datagrams = [
                (data, *_split_path_key(key)) for data, key in conn.datagrams_to_send(now=now)
            ]
            trace.after_send([addr for _, addr, _ in datagrams], [src for _, _, src in datagrams])
            out += datagrams
            self._drain(server_conn, now)
            self._rearm(server_conn)
        return out

    def get_timer(self) -> float | None:
        """The earliest time any connection needs handle_timer(), or None."""
        for server_conn in self._pending.values():  # input not yet followed by a send
            self._rearm(server_conn)
        timers = self._timers
        while timers and timers[0][1] != timers[0][2].timer_seq:
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    def next_event(self) -> ServerEvent | None:
        return self._events.popleft() if self._events else None

    # --- per connection -----------------------------------------------------------------

    def _after_input(self, server_conn: ServerConnection, now: float) -> None:
        """Serve what arrived; the connection is pending: datagrams_to_send_from() asks it
        what to send and then re-arms its timer (aioquic's changes with what it sends)."""
        self._drain(server_conn, now)
        if not server_conn.released:
            server_conn.app.pump()
            self._drain(server_conn, now)
        self._pending[server_conn.number] = server_conn

    def _handshake_deadline(self, server_conn: ServerConnection) -> float | None:
        timeout = self.limits.handshake_timeout
        if timeout is None or server_conn.handshake_at is not None:
            return None
        return server_conn.accepted_at + timeout

    def _rearm(self, server_conn: ServerConnection) -> None:
        """Put the connection's next timer in the heap; its older entry goes stale."""
        due = None
        if not server_conn.released:
            due = server_conn.next_timer(self._handshake_deadline(server_conn))
        if due == server_conn.timer_due and (due is None or server_conn.timer_seq >= 0):
            return
        server_conn.timer_due = due
        if due is None:
            server_conn.timer_seq = -1
            return
        sequence = next(self._sequence)
        server_conn.timer_seq = sequence
        heapq.heappush(self._timers, (due, sequence, server_conn))
        if len(self._timers) > 2 * len(self._open) + 64:  # mostly stale: rebuild
            self._timers = [entry for entry in self._timers if entry[1] == entry[2].timer_seq]
            heapq.heapify(self._timers)

    def _drain(self, server_conn: ServerConnection, now: float) -> None:
        conn = server_conn.conn
        if not isinstance(conn, QuicConnection):
            return
        while (event := conn.next_event()) is not None:
            match event:
                case quic_events.StreamDataReceived():
                    server_conn.app.stream_data(event.stream_id, event.data, event.end_stream, now)
                case quic_events.ConnectionIdIssued():
                    self._route(server_conn, event.connection_id)
                case quic_events.ConnectionIdRetired():
                    self._by_cid.pop(event.connection_id, None)
                    server_conn.cids.discard(event.connection_id)
                case quic_events.HandshakeCompleted():
                    server_conn.handshake_at = now
                    server_conn.alpn = event.alpn_protocol
                    self.stats.handshakes += 1
                    self._half_open_ended()
                    if self.app_factory is not None:
                        server_conn.app = self.app_factory(server_conn, event.alpn_protocol)
                    self._events.append(HandshakeDone(now))
                case quic_events.ConnectionTerminated():
                    self._terminated(server_conn, now, event.reason_phrase, event.error_code)
                    return

    def _half_open_ended(self) -> None:
        self.stats.half_open -= 1
        limit = self.limits.max_half_open
        if limit is not None and self.stats.half_open < limit:
            self._at_half_open_limit = False

    def _terminated(
        self, server_conn: ServerConnection, now: float, reason: str, error_code: int
    ) -> None:
        """The connection is over: record how, and release its aioquic state."""
        server_conn.closed = Closed(now, reason, error_code)
        self._events.append(server_conn.closed)
        conn = server_conn.conn
        assert isinstance(conn, QuicConnection)
        for cid in server_conn.cids:
            if self._by_cid.get(cid) is server_conn:
                del self._by_cid[cid]
        server_conn.cids.clear()
        server_conn.conn = ReleasedConnection(
            conn.original_destination_connection_id, conn.host_cid
        )
        server_conn.app.release()
        server_conn.trace = None
        server_conn.timer_seq = -1
        server_conn.timer_due = None
        if server_conn.handshake_at is None:
            self._half_open_ended()
        self.stats.released += 1
        self._open.pop(server_conn.number, None)
        self._closed.append(server_conn.number)
        while len(self._closed) > self.limits.history:
            dropped = self._kept.pop(self._closed.popleft())
            self.stats.records_dropped += 1
            self.stats.migrations_dropped += len(dropped.tracker.migrations)
            self.stats.rotations_dropped += len(dropped.tracker.cid_rotations)


def _number(server_conn: ServerConnection) -> int:
    return server_conn.number
