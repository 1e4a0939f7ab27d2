"""What the live server observed of one connection, as JSON (`MIGRATIONS`, `/migrations`).

`tracker` is the connection's MigrationTracker record (`MigrationTracker.to_dict()`): a
client that fetches it rebuilds the tracker with `MigrationTracker.from_dict()` and is judged
by the same judge as every other run. `migrations` is the same, measured for a reader: the
judge's `MigrationResult`s without network changes (a live server knows of none). Times are
seconds since the server started; `now` is the server's clock when the record was made, so a
client can put the times on its own clock.
"""

from __future__ import annotations

from typing import Any

from quicmig.core.datagram import Address, format_address
from quicmig.core.endpoint import ServerConnection
from quicmig.core.measure import migration_results

SCHEMA = "quicmig.connection/2"


def connection_record(
    number: int, alpn: str | None, listen: Address, server_conn: ServerConnection, now: float
) -> dict[str, Any]:
    tracker = server_conn.tracker
    return {
        "schema": SCHEMA,
        "connection": number,
        "alpn": alpn,
        "server_address": format_address(listen),
        "accepted_at": server_conn.accepted_at,
        "closed": server_conn.closed is not None,
        "now": now,
        "peer": format_address(tracker.peer) if tracker.peer is not None else None,
        "migrations": [m.to_dict() for m in migration_results(tracker, [], [], None, now)],
        "sent_sha256": {str(k): v for k, v in server_conn.app.sent_digests.items()},
        "tracker": tracker.to_dict(),
    }
