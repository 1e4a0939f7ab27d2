"""disable_active_migration live (RFC 9000 section 18.2).

The project's client refuses active migration once the server sent the parameter, a NAT
rebinding still happens, and a client that migrates anyway is validated and followed by the
server. Every assertion reads the server's tracker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from quicmig.core.datagram import Address
from quicmig.core.tracker import MigrationTracker
from quicmig.live.certs import CertPaths
from quicmig.live.client import LiveClient, MigrationRefused, Move
from quicmig.live.server import LiveServer
from quicmig.model.events import SwitchMode
from quicmig.model.verdicts import MigrationKind

LIMIT = 20.0  # seconds

PORT, ADDRESS = MigrationKind.PORT_CHANGE, MigrationKind.ADDRESS_CHANGE


def _moves(client: LiveClient) -> list[Callable[[], Awaitable[Move]]]:
    """A NAT rebinding, an IP change, a network switch (break-before-make), in that order."""
    return [
        lambda: client.rebind(),
        lambda: client.move_to(client.next_address()),
        lambda: client.switch(client.next_address(), SwitchMode.BREAK_BEFORE_MAKE, gap=0.05),
    ]


async def _session(
    certs: CertPaths, honour: bool
) -> tuple[MigrationTracker, list[str], list[Move], Address]:
    refused: list[str] = []
    server = LiveServer(
        certs, [("127.0.0.1", 0)], log=lambda _: None, disable_active_migration=True
    )
    async with server:
        client = LiveClient(
            server.addresses[0],
            ca=certs.ca,
            server_name="localhost",
            honour_disable_migration=honour,
        )
        async with client:
            await client.send_message(b"before")
            for move in _moves(client):
                try:
                    await move()
                except MigrationRefused as exc:
                    refused.append(str(exc))
                await client.send_message(b"after")
            await client.confirmed_record()
            local = client.local
    (live,) = server.connections
    return live.server_conn.tracker, refused, client.moves, local


def _run(certs: CertPaths, honour: bool) -> tuple[MigrationTracker, list[str], list[Move], Address]:
    return asyncio.run(asyncio.wait_for(_session(certs, honour), LIMIT))


def test_client_refuses_active_migration_but_nat_rebinding_happens(certs: CertPaths) -> None:
    tracker, refused, moves, local = _run(certs, honour=True)
    assert [m.kind for m in tracker.migrations] == [PORT]
    assert tracker.migrations[0].validated_at is not None
    assert len(refused) == 2
    assert refused[0].startswith("ip-change refused: the server sent disable_active_migration")
    assert refused[1].startswith("network-switch refused:")
    # The refused moves opened no socket: the client still speaks from the rebound port,
    # and that is where the server's newest packets came from.
    assert len(moves) == 1 and moves[0].new_local == local == tracker.peer
    assert tracker.peers_seen == [moves[0].old_local, local]


def test_a_client_migrating_anyway_is_followed_by_the_server(certs: CertPaths) -> None:
    tracker, refused, moves, local = _run(certs, honour=False)
    assert refused == []
    assert [m.kind for m in tracker.migrations] == [PORT, ADDRESS, ADDRESS]
    # The server saw each new socket of the client, in order, and follows it to the last.
    assert [m.new_peer for m in tracker.migrations] == [m.new_local for m in moves]
    assert tracker.peer == local
    # RFC 9000 allows the server to validate rather than drop: aioquic does, every time.
    assert all(m.validated_at is not None for m in tracker.migrations)
