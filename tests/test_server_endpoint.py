"""ServerEndpoint under many connections, floods and junk: real aioquic connections in
virtual time, no sockets.

Each test reads what crossed the wire (datagrams, their sizes and headers), what aioquic
objects still exist, or which connections were called, never what the endpoint says it did.
"""

from __future__ import annotations

import gc
import hashlib
import random
import tracemalloc
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import pytest
from aioquic.buffer import Buffer  # type: ignore[attr-defined]  # re-exported from _buffer
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic import events
from aioquic.quic.connection import NetworkAddress, QuicConnection
from aioquic.quic.packet import QuicPacketType, pull_quic_header
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quicmig.core.app import DownloadClient, content, content_chunks, content_digest
from quicmig.core.certs import simulation_certificates
from quicmig.core.datagram import Address
from quicmig.core.endpoint import (
    ClientEndpoint,
    HalfOpenLimit,
    ServerConnection,
    ServerEndpoint,
    ServerLimits,
    client_configuration,
    server_configuration,
)
from quicmig.core.tap import TapLogger
from quicmig.live.h3app import BYTES_SEED, H3App
from quicmig.model.scenario import Download

SERVER: Address = ("203.0.113.10", 4433)
ONE_WAY = 0.005  # seconds
CERTS = simulation_certificates()


class Counted(QuicConnection):
    """aioquic's connection, counting the endpoint's calls into each instance."""

    calls: ClassVar[Counter[int]] = Counter()

    def receive_datagram(self, data: bytes, addr: NetworkAddress, now: float) -> None:
        Counted.calls[id(self)] += 1
        super().receive_datagram(data, addr, now)

    def handle_timer(self, now: float) -> None:
        Counted.calls[id(self)] += 1
        super().handle_timer(now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, NetworkAddress]]:
        Counted.calls[id(self)] += 1
        return super().datagrams_to_send(now)

    def get_timer(self) -> float | None:
        Counted.calls[id(self)] += 1
        return super().get_timer()


def server(**kwargs: Any) -> ServerEndpoint:
    return ServerEndpoint(
        server_configuration(CERTS, TapLogger(keep=False)), connection_class=Counted, **kwargs
    )


class Net:
    """Clients and one server joined by a lossless ONE_WAY pipe, run event by event.

    `drop(data, src, dst)` decides which datagrams never arrive. `sent` holds every datagram
    the server sent: (time, data, destination).
    """

    def __init__(self, endpoint: ServerEndpoint) -> None:
        self.server = endpoint
        self.clients: list[ClientEndpoint] = []
        self.addrs: list[Address] = []
        self.now = 0.0
        self.sent: list[tuple[float, bytes, Address]] = []
        self.drop: Callable[[bytes, Address, Address], bool] = lambda data, src, dst: False
        self._flight: list[tuple[float, bytes, Address, Address]] = []  # (at, data, src, dst)

    def add(self, size: int, port: int) -> ClientEndpoint:
        client = ClientEndpoint(
            client_configuration(CERTS.ca_pem), SERVER, Download(size), seed=port
        )
        self.clients.append(client)
        self.addrs.append(("192.0.2.1", port))
        client.connect(self.now)
        return client

    def move(self, index: int, port: int) -> None:
        self.addrs[index] = (self.addrs[index][0], port)
        self.clients[index].migrate(self.now, new_cid=False)

    def _send(self) -> None:
        for client, addr in zip(self.clients, self.addrs, strict=True):
            for data, _ in client.datagrams_to_send(self.now):
                if not self.drop(data, addr, SERVER):
                    self._flight.append((self.now + ONE_WAY, data, addr, SERVER))
        for data, dst in self.server.datagrams_to_send(self.now):
            self.sent.append((self.now, data, dst))
            if not self.drop(data, SERVER, dst):
                self._flight.append((self.now + ONE_WAY, data, SERVER, dst))

    def run(self, until: float) -> None:
        while True:
            self._send()
            timers = [t for c in self.clients if (t := c.get_timer()) is not None]
            timers += [at for at, *_ in self._flight]
            if (t := self.server.get_timer()) is not None:
                timers.append(t)
            if not timers or min(timers) > until:
                self.now = until
                return
            self.now = max(self.now, min(timers))
            due = [f for f in self._flight if f[0] <= self.now]
            self._flight = [f for f in self._flight if f[0] > self.now]
            for _, data, src, dst in due:
                if dst == SERVER:
                    self.server.receive_datagram(data, src, self.now)
                else:
                    for client, addr in zip(self.clients, self.addrs, strict=True):
                        if addr == dst:
                            client.receive_datagram(data, src, self.now)
            for client in self.clients:
                client.handle_timer(self.now)
            self.server.handle_timer(self.now)


def server_objects() -> int:
    gc.collect()
    return sum(isinstance(o, Counted) for o in gc.get_objects())


def migrating_downloads(net: Net, count: int, size: int) -> None:
    """`count` clients each download `size` bytes, moving to a new port halfway, then close."""
    for index in range(count):
        net.add(size, 40000 + index)
    moved: set[int] = set()
    while len(moved) < count or not all(c.workload.done for c in net.clients):
        assert net.now < 30, "downloads did not finish"
        net.run(net.now + 0.01)
        for index, client in enumerate(net.clients):
            if index not in moved and client.workload.delivery.total >= size // 2:
                net.move(index, 50000 + index)
                moved.add(index)
    for client in net.clients:
        client.close()
    net.run(net.now + 5.0)  # closing and draining periods end


def test_closed_connections_are_released_and_their_records_kept() -> None:
    before = server_objects()
    net = Net(server())
    migrating_downloads(net, 6, 60_000)
    assert all(c.closed is not None for c in net.clients)
    assert server_objects() == before  # no aioquic connection left on the server
    assert net.server.open_connections == []
    records = net.server.connections
    assert len(records) == 6 and all(r.released for r in records)
    for index, record in enumerate(records):
        (mig,) = record.tracker.migrations
        assert (mig.old_peer[1], mig.new_peer[1]) == (40000 + index, 50000 + index)
        # The body's digest survives the release, and it is what the client received.
        workload = net.clients[index].workload
        assert isinstance(workload, DownloadClient)
        assert list(record.app.sent_digests.values()) == [workload.digest]


def test_history_is_bounded_and_the_totals_stay_exact() -> None:
    net = Net(server(limits=ServerLimits(history=2)))
    migrating_downloads(net, 5, 30_000)
    kept = net.server.connections
    assert [c.number for c in kept] == [4, 5]
    stats = net.server.stats
    assert (stats.accepted, stats.released, stats.records_dropped) == (5, 5, 3)
    assert stats.migrations_dropped + sum(len(c.tracker.migrations) for c in kept) == 5


def test_a_datagram_touches_only_its_connection() -> None:
    net = Net(server())
    for index in range(30):
        net.add(1000, 40000 + index)
    net.run(1.0)
    assert all(c.workload.done for c in net.clients)
    Counted.calls.clear()
    net.server.handle_timer(net.now)  # nothing is due: nothing is called
    assert not Counted.calls
    client = net.clients[7]
    client.conn.send_ping(1)
    (data, _), *_ = client.datagrams_to_send(net.now)
    net.server.receive_datagram(data, net.addrs[7], net.now)
    net.server.datagrams_to_send(net.now)
    net.server.get_timer()
    conn = next(c for c in net.server.connections if c.number == 8).conn
    assert set(Counted.calls) == {id(conn)}, "other connections were serviced too"


def long_header(version: int, dcid: bytes, scid: bytes, size: int) -> bytes:
    head = bytes([0xC0]) + version.to_bytes(4, "big")
    head += bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid
    return head + bytes(size - len(head))


@pytest.mark.parametrize("dcid_length", [8, 20, 200])
def test_unknown_version_is_answered_with_version_negotiation(dcid_length: int) -> None:
    endpoint = server()
    dcid, scid = bytes(range(dcid_length)), b"\x99" * 5
    client: Address = ("192.0.2.1", 40000)
    endpoint.receive_datagram(long_header(0x1A2A3A4A, dcid, scid, 1200), client, 0.0)
    ((answer, to),) = endpoint.datagrams_to_send(0.0)
    assert to == client and len(answer) < 1200  # never more than the datagram it answers
    # RFC 9000 section 17.2.1 (read by hand: aioquic parses CIDs of up to 20 bytes only).
    assert answer[0] & 0x80 and answer[1:5] == bytes(4)
    dcid_end = 6 + answer[5]
    scid_end = dcid_end + 1 + answer[dcid_end]
    assert (answer[6:dcid_end], answer[dcid_end + 1 : scid_end]) == (scid, dcid)
    rest = answer[scid_end:]
    versions = [int.from_bytes(rest[i : i + 4], "big") for i in range(0, len(rest), 4)]
    assert versions == endpoint.configuration.supported_versions
    # Too small to start a connection, or itself a Version Negotiation packet: no answer.
    endpoint.receive_datagram(long_header(0x1A2A3A4A, dcid, scid, 1199), client, 0.1)
    endpoint.receive_datagram(long_header(0, dcid, scid, 1200), client, 0.2)
    assert endpoint.datagrams_to_send(0.2) == []
    assert endpoint.connections == []


def test_retry_validates_the_address_before_any_state() -> None:
    net = Net(server(retry=True))
    net.add(20_000, 40000)
    net._send()  # the client's Initial is in flight, nothing else
    net.run(ONE_WAY)  # it arrives: a Retry, no connection
    assert net.server.stats.accepted == 0
    ((_, retry, _),) = net.sent
    retry_header = pull_quic_header(Buffer(data=retry), host_cid_length=8)
    assert retry_header.packet_type == QuicPacketType.RETRY and len(retry) < 1200
    net.run(2.0)
    assert net.clients[0].workload.done and net.clients[0].closed is None
    assert net.server.stats.accepted == 1 and net.server.stats.retries == 1


def test_half_open_limit_refuses_then_admits() -> None:
    net = Net(server(limits=ServerLimits(max_half_open=3)))
    for index in range(5):
        net.add(5000, 40000 + index)
    net.run(ONE_WAY)
    assert net.server.stats.accepted == 3 and net.server.stats.refused_half_open == 2
    net.run(10.0)  # the refused clients send their Initial again and get in
    assert all(c.workload.done for c in net.clients)
    assert net.server.stats.accepted == 5
    limits = []
    while (event := net.server.next_event()) is not None:
        if isinstance(event, HalfOpenLimit):
            limits.append(event)
    assert [e.refused for e in limits] == [1]  # one log line for the episode


def test_handshake_timeout_drops_silently() -> None:
    net = Net(server(limits=ServerLimits(handshake_timeout=0.5)))
    net.add(5000, 40000)
    # The client never hears back, and only its first Initial arrives.
    net.drop = lambda data, src, dst: src == SERVER or net.now > 0
    net.run(3.0)
    (conn,) = net.server.connections
    deadline = conn.accepted_at + 0.5
    assert conn.released and conn.closed is not None and conn.closed.at == pytest.approx(deadline)
    assert net.server.stats.handshake_timeouts == 1
    assert net.sent and max(at for at, _, _ in net.sent) < deadline  # nothing sent after it


# --- junk: never an exception, never more half-open connections than allowed -------------


def _initials(count: int) -> list[bytes]:
    out = []
    for index in range(count):
        client = ClientEndpoint(client_configuration(CERTS.ca_pem), SERVER, Download(1), seed=index)
        client.connect(0.0)
        out.append(client.datagrams_to_send(0.0)[0][0])
    return out


INITIALS = _initials(6)
HALF_OPEN = 3

datagrams = st.one_of(
    st.binary(max_size=1400),
    st.tuples(st.sampled_from(INITIALS), st.integers(0, 1199), st.integers(0, 7)).map(
        lambda t: t[0][: t[1]] + t[0][t[1] + 1 :] if t[2] == 0 else _flip(t[0], t[1], t[2])
    ),
    st.tuples(st.sampled_from(INITIALS), st.integers(1, 1250)).map(lambda t: t[0][: t[1]]),
    st.sampled_from(INITIALS),
    st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=30), st.integers(0, 1300)).map(
        lambda t: long_header(t[0], t[1][:20], t[1][20:], max(t[2], 7 + len(t[1])))
    ),
    st.binary(min_size=9, max_size=1300).map(lambda b: bytes([0x40 | b[0] & 0x3F]) + b[1:]),
)


def _flip(data: bytes, position: int, bit: int) -> bytes:
    return data[:position] + bytes([data[position] ^ (1 << bit)]) + data[position + 1 :]


def test_a_damaged_initial_keeps_no_state() -> None:
    """An Initial that does not decrypt takes no half-open slot and gets no answer; the same
    Initial intact starts a connection."""
    endpoint = server(limits=ServerLimits(max_half_open=1))
    addr: Address = ("192.0.2.66", 40000)
    initial = INITIALS[0]
    endpoint.receive_datagram(_flip(initial, 100, 3), addr, 0.0)  # inside the AEAD payload
    assert endpoint.datagrams_to_send(0.0) == [] and endpoint.connections == []
    assert (endpoint.stats.unauthenticated, endpoint.stats.half_open) == (1, 0)
    endpoint.receive_datagram(initial, addr, 0.1)
    assert endpoint.datagrams_to_send(0.1) and endpoint.stats.half_open == 1


@settings(
    max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.lists(st.tuples(datagrams, st.integers(0, 3)), max_size=25))
def test_junk_never_raises_nor_exceeds_limits(batch: Sequence[tuple[bytes, int]]) -> None:
    endpoint = server(limits=ServerLimits(max_half_open=HALF_OPEN, handshake_timeout=1.0))
    received: Counter[Address] = Counter()
    sent: Counter[Address] = Counter()
    now = 0.0
    for data, source in batch:
        addr: Address = ("192.0.2.66", 40000 + source)
        received[addr] += len(data)
        endpoint.receive_datagram(data, addr, now)
        endpoint.handle_timer(now)
        for out, to in endpoint.datagrams_to_send(now):
            sent[to] += len(out)
        assert len(endpoint.open_connections) <= HALF_OPEN
        assert endpoint.stats.half_open <= HALF_OPEN
        now += 0.1
    for addr, size in sent.items():
        assert size <= 3 * received[addr], "more than three times what came from there"


# --- memory: a long /bytes body is generated as it is sent ----------------------------------


class StubView:
    """The pages' view of a server with no other connection (only /bytes is fetched)."""

    def now(self) -> float:
        return 0.0

    @property
    def addresses(self) -> list[Address]:
        return [SERVER]

    @property
    def connections(self) -> list[Any]:
        return []

    def records(self) -> dict[str, Any]:
        return {}

    def totals(self) -> dict[str, int]:
        return {}

    def number_of(self, server_conn: ServerConnection) -> int | None:
        return None


BOUND = 3_000_000  # bytes: the client's flow-control windows (1 MB) and SEND_AHEAD fit


def test_bytes_body_keeps_memory_bounded() -> None:
    size = 6_000_000  # bytes
    config = server_configuration(CERTS, TapLogger(keep=False))
    config.alpn_protocols = H3_ALPN
    endpoint = ServerEndpoint(config, lambda conn, alpn: H3App(conn, StubView()))
    client_config = client_configuration(CERTS.ca_pem)
    client_config.alpn_protocols = H3_ALPN
    client = QuicConnection(configuration=client_config)
    h3 = H3Connection(client)
    client_addr: Address = ("192.0.2.1", 40000)
    now = 0.0
    client.connect(SERVER, now=now)
    digest, received, status = hashlib.sha256(), 0, b""
    stream_id: int | None = None
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        for _ in range(200_000):
            for data, _ in client.datagrams_to_send(now=now):
                endpoint.receive_datagram(data, client_addr, now)
            endpoint.handle_timer(now)
            for data, _ in endpoint.datagrams_to_send(now):
                client.receive_datagram(data, SERVER, now=now)
            while (event := client.next_event()) is not None:
                if isinstance(event, events.HandshakeCompleted):
                    stream_id = client.get_next_available_stream_id()
                    h3.send_headers(
                        stream_id,
                        [
                            (b":method", b"GET"),
                            (b":scheme", b"https"),
                            (b":authority", b"localhost"),
                            (b":path", f"/bytes/{size}".encode()),
                        ],
                        end_stream=True,
                    )
                for h3_event in h3.handle_event(event):
                    if isinstance(h3_event, HeadersReceived):
                        status = dict(h3_event.headers)[b":status"]
                    elif isinstance(h3_event, DataReceived):
                        digest.update(h3_event.data)
                        received += len(h3_event.data)
            if received >= size:
                break
            now += 0.0005
        peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()
    assert stream_id is not None and status == b"200" and received == size
    assert digest.hexdigest() == content_digest(size, BYTES_SEED)
    # Built whole, the body alone would take `size` bytes, and as much again in its copies;
    # generated as sent, what is held is about aioquic's windows (measured 1.6 MB).
    assert peak < BOUND, f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.0f} MB body"


def test_content_pieces_join_to_the_whole_body() -> None:
    rng = random.Random(0)
    for size in (0, 1, 3, 65_536, 65_539, rng.randint(1, 300_000)):
        assert b"".join(content_chunks(size, 5, chunk=4096)) == content(size, 5)
    with pytest.raises(ValueError, match="multiple of 4"):
        content_chunks(10, 1, chunk=6)
