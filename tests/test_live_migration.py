"""Live migrations over real UDP sockets on loopback, checked against what the server observed.

Every assertion reads the server: its MigrationTracker (from the LiveServer object) or the
records it returns over the connection, and the SHA-256 of what it sent. Ports are ephemeral.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import ssl
from pathlib import Path
from typing import Any, cast

import pytest
from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent
from conftest import run_bounded as run

from quicmig.core.app import content
from quicmig.core.datagram import format_address
from quicmig.errors import QuicmigError
from quicmig.live.certs import CertPaths, write
from quicmig.live.client import (
    EXPECTED_OBSERVATION,
    LiveClient,
    SwitchMode,
    confirm,
    download_with_moves,
)
from quicmig.live.server import BYTES_SEED, LiveServer


def live_server(certs: CertPaths, log: list[str] | None = None) -> LiveServer:
    sink = log if log is not None else []
    return LiveServer(certs, [("127.0.0.1", 0)], log=sink.append)


@pytest.mark.parametrize(
    ("kind", "mode"),
    [
        ("nat-rebinding", SwitchMode.BREAK_BEFORE_MAKE),
        ("ip-change", SwitchMode.BREAK_BEFORE_MAKE),
        ("network-switch", SwitchMode.BREAK_BEFORE_MAKE),
        ("network-switch", SwitchMode.MAKE_BEFORE_BREAK),
        ("cid-rotation", SwitchMode.BREAK_BEFORE_MAKE),
    ],
    ids=["nat-rebinding", "ip-change", "switch-bbm", "switch-mbb", "cid-rotation"],
)
def test_each_kind_is_observed_by_the_server(certs: CertPaths, kind: str, mode: SwitchMode) -> None:
    async def scenario() -> tuple[LiveServer, LiveClient, dict[str, Any], list[str]]:
        log: list[str] = []
        async with (
            live_server(certs, log) as server,
            LiveClient(server.addresses[0], ca=certs.ca, server_name="localhost") as c,
        ):
            await c.send_message(b"before")
            before = c.local
            move = await c.migrate(kind, mode, gap=0.05)
            assert move.old_local == before
            await c.send_message(b"after")
            record = await c.confirmed_record()
        return server, c, record, log

    server, client, record, log = run(scenario())
    (live,) = server.connections
    tracker = live.server_conn.tracker
    (move,) = client.moves
    if kind == "cid-rotation":
        assert tracker.migrations == []
        assert len(tracker.cid_rotations) == 1
        assert tracker.cid_rotations[0].peer == move.new_local
        assert len(record["cid_rotations"]) == 1
    else:
        (mig,) = tracker.migrations
        assert mig.kind == EXPECTED_OBSERVATION[kind]
        assert mig.old_peer == move.old_local
        assert mig.new_peer == move.new_local  # the client's new socket, as the kernel saw it
        assert mig.validated_at is not None  # PATH_RESPONSE came back
        assert mig.challenges and mig.challenges[0].peer == move.new_local
        assert mig.cid_changed is (kind != "nat-rebinding")  # RFC 9000 section 9.5
        (seen,) = record["migrations"]  # the same, fetched over the connection
        assert seen["new_peer"] == format_address(move.new_local)
        assert seen["validation_rtt"] is not None
        first = tracker.first_packet_challenges
        assert record["first_packet_challenges_sent"] == len(first)
        assert record["first_packet_challenges_answered"] == sum(
            c.answered_at is not None for c in first
        )
        if kind == "nat-rebinding":
            assert (
                move.new_local[0] == move.old_local[0] != "" and mig.new_peer[1] != mig.old_peer[1]
            )
        else:
            assert move.new_local[0] != move.old_local[0]
        assert any("validated" in line for line in log)
    assert all(item.confirmed for item in confirm(client.moves, record))


def test_messages_and_download_survive_every_kind_in_one_connection(certs: CertPaths) -> None:
    size, seed = 3_000_000, 7
    steps = [
        ("nat-rebinding", SwitchMode.BREAK_BEFORE_MAKE),
        ("ip-change", SwitchMode.BREAK_BEFORE_MAKE),
        ("network-switch", SwitchMode.BREAK_BEFORE_MAKE),
        ("network-switch", SwitchMode.MAKE_BEFORE_BREAK),
        ("cid-rotation", SwitchMode.BREAK_BEFORE_MAKE),
    ]
    progress: list[int] = []

    async def scenario() -> tuple[LiveServer, LiveClient, Any, dict[str, Any], list[float]]:
        async with (
            live_server(certs) as server,
            LiveClient(server.addresses[0], ca=certs.ca) as client,
        ):
            rtts = [await client.send_message(b"x" * 100) for _ in range(3)]
            download, _ = await download_with_moves(
                client,
                size,
                steps,
                seed=seed,
                gap=0.05,
                on_move=lambda move, received: progress.append(received),
            )
            rtts += [await client.send_message(b"y" * 100) for _ in range(3)]
            record = await client.confirmed_record()
        return server, client, download, record, rtts

    server, client, download, record, rtts = run(scenario())
    assert len(rtts) == 6 and all(r > 0 for r in rtts)
    # Every move happened while the download was running, in order.
    assert progress == sorted(progress) and progress[0] > 0 and progress[-1] < size
    # The bytes are intact: what the client hashed is what the server says it sent.
    (live,) = server.connections
    expected = hashlib.sha256(content(size, seed)).hexdigest()
    assert download.received == size
    assert download.sha256 == expected
    assert live.server_conn.app.sent_digests[download.stream_id] == expected
    assert record["sent_sha256"][str(download.stream_id)] == expected
    # The server observed four path changes, all validated, and one CID rotation.
    tracker = live.server_conn.tracker
    assert [m.kind for m in tracker.migrations] == [
        "port_change",
        "address_change",
        "address_change",
        "address_change",
    ]
    assert all(m.validated_at is not None for m in tracker.migrations)
    assert [m.new_peer for m in tracker.migrations] == [
        move.new_local for move in client.moves if move.moves_path
    ]
    assert len(tracker.cid_rotations) == 1
    assert all(item.confirmed for item in confirm(client.moves, record))


def test_wrong_ca_fails_verification_and_generated_ca_passes(
    certs: CertPaths, tmp_path: Path
) -> None:
    other = CertPaths.in_dir(tmp_path)
    write(other)

    async def scenario() -> str:
        async with live_server(certs) as server:
            async with LiveClient(server.addresses[0], ca=certs.ca, timeout=3):
                pass  # verified against the CA that signed the server's certificate
            try:
                async with LiveClient(server.addresses[0], ca=other.ca, timeout=3):
                    pass
            except QuicmigError as exc:
                return str(exc)
        return "connected"

    message = run(scenario())
    assert "TLS handshake" in message and "--insecure" in message


class H3Client(QuicConnectionProtocol):
    """aioquic's own HTTP/3 client, reduced to one GET at a time."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self._responses: dict[int, tuple[list[H3Event], asyncio.Future[list[H3Event]]]] = {}

    async def get(self, path: str) -> tuple[int, bytes]:
        stream_id = self._quic.get_next_available_stream_id()
        future: asyncio.Future[list[H3Event]] = self._loop.create_future()
        self._responses[stream_id] = ([], future)
        self.h3.send_headers(
            stream_id,
            [
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", b"localhost"),
                (b":path", path.encode()),
            ],
            end_stream=True,
        )
        self.transmit()
        events = await future
        headers = next(e for e in events if isinstance(e, HeadersReceived)).headers
        status = int(dict(headers)[b":status"])
        body = b"".join(e.data for e in events if isinstance(e, DataReceived))
        return status, body

    def quic_event_received(self, event: QuicEvent) -> None:
        for h3_event in self.h3.handle_event(event):
            if isinstance(h3_event, HeadersReceived | DataReceived):
                entry = self._responses.get(h3_event.stream_id)
                if entry is not None:
                    entry[0].append(h3_event)
                    if h3_event.stream_ended:
                        entry[1].set_result(entry[0])


def test_http3_get_migrations_returns_the_records(certs: CertPaths) -> None:
    async def scenario() -> dict[str, tuple[int, bytes]]:
        async with live_server(certs) as server:
            host, port = server.addresses[0]
            async with LiveClient((host, port), ca=certs.ca) as client:
                await client.migrate("ip-change")
                await client.confirmed_record()
            config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
            config.load_verify_locations(cafile=str(certs.ca))
            config.server_name = "localhost"
            config.verify_mode = ssl.CERT_REQUIRED
            async with connect(host, port, configuration=config, create_protocol=H3Client) as h3:
                protocol = cast(H3Client, h3)
                return {
                    path: await protocol.get(path)
                    for path in ("/migrations", "/", "/bytes/1000", "/nowhere")
                }

    answers = run(scenario())
    status, body = answers["/migrations"]
    assert status == 200
    records = json.loads(body)
    quicmig_conn, h3_conn = records["connections"]
    assert quicmig_conn["alpn"] == "quicmig" and h3_conn["alpn"] == "h3"
    assert records["requested_by"] == h3_conn["connection"]
    (migration,) = quicmig_conn["migrations"]
    assert migration["observed"] == "address_change"
    assert migration["validated_at"] is not None and migration["cid_changed"] is True
    assert answers["/"][0] == 200 and b"quicmig live server" in answers["/"][1]
    assert answers["/bytes/1000"] == (200, content(1000, BYTES_SEED))
    assert answers["/nowhere"][0] == 404


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback (::1) on this host")
def test_ipv6_nat_rebinding_is_observed(certs: CertPaths) -> None:
    async def scenario() -> tuple[LiveServer, LiveClient]:
        async with (
            LiveServer(certs, [("::1", 0)], log=lambda line: None) as server,
            LiveClient(server.addresses[0], ca=certs.ca) as client,
        ):
            await client.migrate("nat-rebinding")
            await client.send_message(b"after")
            await client.confirmed_record()
        return server, client

    server, client = run(scenario())
    (mig,) = server.connections[0].server_conn.tracker.migrations
    assert mig.kind == "port_change" and mig.validated_at is not None
    assert mig.new_peer == client.moves[0].new_local and mig.new_peer[0] == "::1"
