"""The qlog draft's path events, from what a connection's tracker observed.

aioquic 1.7 writes qlog 0.3 with packets and recovery metrics but no path events, so qlog
tools (qvis) show no paths. These are the current QUIC event definitions for qlog
(draft-ietf-quic-qlog-quic-events, editor's copy, 2026; `tuple_assigned` was called
`path_assigned` before draft 08), seen from the server:

- `quic:tuple_assigned`: a tuple ID for each client address the server heard from ("" is the
  handshake's tuple), with `tuple_remote` (the client's address and the DCIDs the server puts
  on packets there) and `tuple_local` (the server's address and the DCIDs the client uses);
- `quic:connection_id_updated`: `initiator` "local" when the client switched to another of the
  server's own connection IDs, "remote" when the server switched to another of the client's;
- `quic:migration_state_updated`: `migration_started` when the client's non-probing packets
  arrive from a new address (RFC 9000 section 9.3), `probing_started` when the server sends
  PATH_CHALLENGE there, `probing_successful` and `migration_complete` when PATH_RESPONSE
  comes back (section 8.2), `migration_abandoned` when the client moved on before that.

Every time is the tracker's (seconds), written as qlog's relative milliseconds.
"""

from __future__ import annotations

from typing import Any

from quicmig.core.datagram import Address, format_address
from quicmig.core.tracker import MigrationTracker

TUPLE_ASSIGNED = "quic:tuple_assigned"
CID_UPDATED = "quic:connection_id_updated"
MIGRATION_STATE = "quic:migration_state_updated"
PATH_EVENT_NAMES = (TUPLE_ASSIGNED, CID_UPDATED, MIGRATION_STATE)


def endpoint_info(address: Address | None, cids: list[str]) -> dict[str, Any]:
    """A TupleEndpointInfo: the address (by family) and the connection IDs used towards it."""
    info: dict[str, Any] = {}
    if address is not None:
        family = "v6" if ":" in address[0] else "v4"
        info[f"ip_{family}"] = address[0]
        info[f"port_{family}"] = address[1]
    if cids:
        info["connection_ids"] = cids
    return info


def path_events(
    tracker: MigrationTracker,
    server: Address | None,
    start: float = 0.0,
) -> list[dict[str, Any]]:
    """The path events of one server-side connection, in time order. `server`: the address
    the client first reached (None: unknown); `start` (seconds): when the first tuple was in
    use (the connection's first event)."""
    events: list[tuple[float, int, str, dict[str, Any]]] = []
    order = 0

    def add(at: float, name: str, data: dict[str, Any]) -> None:
        nonlocal order
        events.append((at, order, name, data))
        order += 1

    ids: dict[Address, str] = {}
    if tracker.peers_seen:
        first = tracker.peers_seen[0]
        ids[first] = ""
        first_dcid = tracker.migrations[0].old_dcid if tracker.migrations else ""
        add(
            start,
            TUPLE_ASSIGNED,
            {
                "tuple_id": "",
                "tuple_remote": endpoint_info(first, []),
                "tuple_local": endpoint_info(server, [first_dcid] if first_dcid else []),
            },
        )
    state: str | None = None

    def migration_state(at: float, new: str, tuple_id: str) -> None:
        nonlocal state
        data: dict[str, Any] = {"new": new, "tuple_id": tuple_id}
        if state is not None:
            data["old"] = state
        state = new
        add(at, MIGRATION_STATE, data)

    migrations = tracker.migrations
    for index, mig in enumerate(migrations):
        tuple_id = ids.setdefault(mig.new_peer, str(len(ids)))
        remote_cids = [mig.server_dcid_after] if mig.server_dcid_after else []
        add(
            mig.detected_at,
            TUPLE_ASSIGNED,
            {
                "tuple_id": tuple_id,
                "tuple_remote": endpoint_info(mig.new_peer, remote_cids),
                "tuple_local": endpoint_info(tracker.local or server, [mig.new_dcid]),
            },
        )
        migration_state(mig.detected_at, "migration_started", tuple_id)
        if mig.cid_changed:
            add(
                mig.detected_at,
                CID_UPDATED,
                {"initiator": "local", "old": mig.old_dcid, "new": mig.new_dcid},
            )
        after = mig.server_dcid_after
        if after and mig.server_dcid_before and after != mig.server_dcid_before:
            add(
                mig.first_packet_to_peer_at or mig.detected_at,
                CID_UPDATED,
                {"initiator": "remote", "old": mig.server_dcid_before, "new": after},
            )
        if mig.challenges:
            migration_state(mig.challenges[0].sent_at, "probing_started", tuple_id)
        if mig.validated_at is not None:
            migration_state(mig.validated_at, "probing_successful", tuple_id)
            migration_state(mig.validated_at, "migration_complete", tuple_id)
        elif mig.known_path:
            # RFC 9000 section 9.3: a recently validated address need not be validated again.
            migration_state(mig.detected_at, "migration_complete", tuple_id)
        elif index + 1 < len(migrations):
            migration_state(migrations[index + 1].detected_at, "migration_abandoned", tuple_id)
    for use in tracker.server_addresses.values():
        # The client moving to another server address (its preferred address, section 9.6).
        peer = tracker.peer
        tuple_id = f"server {format_address(use.local)}"
        add(
            use.first_packet_at,
            TUPLE_ASSIGNED,
            {
                "tuple_id": tuple_id,
                "tuple_remote": endpoint_info(peer, []),
                "tuple_local": endpoint_info(use.local, [use.first_packet_dcid]),
            },
        )
        if use.first_packet_probing:
            migration_state(use.first_packet_at, "probing_started", tuple_id)
        if use.moved_at is not None:
            migration_state(use.moved_at, "migration_complete", tuple_id)
    for rotation in tracker.cid_rotations:
        add(rotation.at, CID_UPDATED, {"initiator": "local"})
    events.sort(key=lambda e: (e[0], e[1]))
    return [{"time": at * 1e3, "name": name, "data": data} for at, _, name, data in events]
