"""The live server after many connections: closed ones are released, the history is bounded,
/migrations says what it dropped, and unknown versions are answered. Real UDP on loopback.
"""

from __future__ import annotations

import asyncio
import gc
import socket
from typing import Any

from aioquic.quic.connection import QuicConnection
from conftest import run_bounded

from quicmig.core.endpoint import ServerLimits
from quicmig.live.certs import CertPaths
from quicmig.live.client import LiveClient
from quicmig.live.server import LiveServer

LOOPBACK = "127.0.0.1"


def server_connections() -> int:
    """aioquic connections of the server side alive in this process."""
    gc.collect()
    return sum(
        isinstance(o, QuicConnection) and not o.configuration.is_client for o in gc.get_objects()
    )


def test_closed_connections_are_released_into_a_bounded_history(certs: CertPaths) -> None:
    log: list[str] = []

    async def scenario() -> tuple[LiveServer, dict[str, Any], list[str], int]:
        limits = ServerLimits(history=1, max_half_open=10, handshake_timeout=5.0)
        async with LiveServer(certs, [(LOOPBACK, 0)], log=log.append, limits=limits) as server:
            digests = []
            for _ in range(3):
                async with LiveClient(
                    server.addresses[0], ca=certs.ca, server_name="localhost"
                ) as client:
                    download = await client.download(50_000)
                    assert download.intact
                    digests.append(download.sha256)
            for _ in range(100):  # the server's draining periods end (3 PTO each)
                if server.totals()["open"] == 0:
                    break
                await asyncio.sleep(0.05)
            left = server_connections()
            return server, server.records(), digests, left

    before = server_connections()  # other tests' leftovers, if any
    server, records, digests, left = run_bounded(scenario())
    assert left <= before  # none of this server's aioquic connections remains
    totals = records["totals"]
    assert isinstance(totals, dict)
    assert (totals["connections"], totals["open"], totals["records_dropped"]) == (3, 0, 2)
    kept = records["connections"]
    assert isinstance(kept, list) and len(kept) == 1
    assert kept[0]["connection"] == 3 and kept[0]["closed"] is True
    # The newest connection's record survives its release, digest included.
    (live,) = server.connections
    assert live.server_conn.released
    assert list(live.server_conn.app.sent_digests.values()) == [digests[-1]]
    assert list(kept[0]["sent_sha256"].values()) == [digests[-1]]
    assert sum("history full" in line for line in log) == 1


def test_unknown_version_gets_version_negotiation_over_udp(certs: CertPaths) -> None:
    async def scenario() -> bytes:
        async with LiveServer(certs, [(LOOPBACK, 0)], log=lambda line: None) as server:
            loop = asyncio.get_running_loop()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.bind((LOOPBACK, 0))
                probe = bytes([0xC0, 0x0A, 0x0A, 0x0A, 0x0A, 4, 1, 2, 3, 4, 2, 9, 9])
                await loop.sock_sendto(sock, probe.ljust(1200, b"\0"), server.addresses[0])
                return await asyncio.wait_for(loop.sock_recv(sock, 2048), 2.0)

    answer = run_bounded(scenario())
    assert answer[1:5] == bytes(4)  # version 0: Version Negotiation
    assert answer[5:13] == bytes([2, 9, 9, 4, 1, 2, 3, 4])  # the CIDs, swapped
    assert 0x00000001 in {
        int.from_bytes(answer[i : i + 4], "big") for i in range(13, len(answer), 4)
    }
