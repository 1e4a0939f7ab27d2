"""What the live server observed, as JSON: the tracker's records in the simulator's vocabulary.

The migration entries are the simulator's `MigrationResult` (observed "port_change" or
"address_change", old/new peer, detection, PATH_CHALLENGE / PATH_RESPONSE, CIDs), computed by
the same `migration_results()` from the same `MigrationTracker`. A live server has no scenario,
so `network_change` is always null. Times are seconds since the server started.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from quicmig.core.datagram import Address, format_address
from quicmig.core.endpoint import ServerConnection
from quicmig.core.measure import migration_results

SCHEMA = "quicmig.live.connection/1"


def connection_record(
    number: int, alpn: str | None, listen: Address, server_conn: ServerConnection, now: float
) -> dict[str, Any]:
    tracker = server_conn.tracker
    challenges = tracker.challenges
    first = tracker.first_packet_challenges
    return {
        "schema": SCHEMA,
        "connection": number,
        "alpn": alpn,
        "server_address": format_address(listen),
        "accepted_at": server_conn.accepted_at,
        "closed": server_conn.closed is not None,
        "peer": format_address(tracker.peer) if tracker.peer is not None else None,
        "paths_seen": [format_address(p) for p in tracker.peers_seen],
        "migrations": [asdict(m) for m in migration_results(tracker, [], [], None, now)],
        "cid_rotations": [
            {"at": r.at, "peer": format_address(r.peer)} for r in tracker.cid_rotations
        ],
        "challenges_sent": len(challenges),
        "challenges_answered": sum(c.answered_at is not None for c in challenges),
        # the interop check's: only those in the server's first packet on each new path
        "first_packet_challenges_sent": len(first),
        "first_packet_challenges_answered": sum(c.answered_at is not None for c in first),
        "lost_packets": len(tracker.lost_packets),
        "sent_sha256": {str(k): v for k, v in server_conn.app.sent_digests.items()},
    }
