"""disable_active_migration live (RFC 9000 section 18.2).

The project's client refuses active migration once the server sent the parameter, a NAT
rebinding still happens, and a client that migrates anyway is validated and followed by the
server. Every assertion reads the server's tracker.
"""

from __future__ import annotations

import asyncio

from quicmig.core.tracker import MigrationTracker
from quicmig.live.certs import CertPaths
from quicmig.live.client import LiveClient, MigrationRefused, SwitchMode
from quicmig.live.server import LiveServer

LIMIT = 20.0  # seconds
KINDS = ["nat-rebinding", "ip-change", "network-switch"]


async def _session(certs: CertPaths, honour: bool) -> tuple[MigrationTracker, list[str]]:
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
            for kind in KINDS:
                try:
                    await client.migrate(kind, SwitchMode.BREAK_BEFORE_MAKE, gap=0.05)
                except MigrationRefused as exc:
                    refused.append(str(exc))
                await client.send_message(b"after")
            await client.confirmed_record()
    (live,) = server.connections
    return live.server_conn.tracker, refused


def _run(certs: CertPaths, honour: bool) -> tuple[MigrationTracker, list[str]]:
    return asyncio.run(asyncio.wait_for(_session(certs, honour), LIMIT))


def test_client_refuses_active_migration_but_nat_rebinding_happens(certs: CertPaths) -> None:
    tracker, refused = _run(certs, honour=True)
    assert [m.kind for m in tracker.migrations] == ["port_change"]
    assert tracker.migrations[0].validated_at is not None
    assert len(refused) == 2
    assert refused[0].startswith("ip-change refused: the server sent disable_active_migration")
    assert refused[1].startswith("network-switch refused:")


def test_a_client_migrating_anyway_is_followed_by_the_server(certs: CertPaths) -> None:
    tracker, refused = _run(certs, honour=False)
    assert refused == []
    kinds = [m.kind for m in tracker.migrations]
    assert kinds == ["port_change", "address_change", "address_change"]
    # RFC 9000 allows the server to validate rather than drop: aioquic does, every time.
    assert all(m.validated_at is not None for m in tracker.migrations)
