"""The migration tracker, fed with hand-built packets as TapTrace would report them."""

from __future__ import annotations

from typing import Any

import pytest

from quicmig.core.datagram import Address
from quicmig.core.tap import Packet
from quicmig.core.tracker import MigrationTracker, is_probing
from quicmig.model.verdicts import MigrationKind

OLD = ("198.51.100.10", 36643)
NEW_PORT = ("198.51.100.10", 41574)
NEW_ADDR = ("198.51.100.20", 41557)
DCID = "aa" * 8
DCID2 = "bb" * 8
SERVER_DCID = "cc" * 8

ACK: dict[str, Any] = {"frame_type": "ack", "ack_delay": 0.0, "acked_ranges": [[0, 1]]}
PING: dict[str, Any] = {"frame_type": "ping"}
PADDING: dict[str, Any] = {"frame_type": "padding"}


def challenge(data: str) -> dict[str, Any]:
    return {"frame_type": "path_challenge", "data": data}


def response(data: str) -> dict[str, Any]:
    return {"frame_type": "path_response", "data": data}


def stream(stream_id: int, offset: int, length: int) -> dict[str, Any]:
    return {"frame_type": "stream", "stream_id": stream_id, "offset": offset, "length": length}


def packet(
    at: float,
    peer: Address,
    number: int,
    frames: list[dict[str, Any]],
    dcid: str = DCID,
    packet_type: str = "1RTT",
    length: int = 100,
) -> Packet:
    return Packet(at, peer, number, packet_type, dcid, tuple(frames), length)


def established(peer: Address = OLD) -> MigrationTracker:
    """A tracker that saw the handshake and one 1-RTT packet (number 1) from `peer`."""
    tracker = MigrationTracker()
    tracker.on_packet_received(packet(0.0, peer, 0, [{"frame_type": "crypto"}], "", "initial"))
    tracker.on_packet_received(packet(0.1, peer, 1, [ACK]))
    tracker.on_packets_sent([packet(0.1, peer, 1, [ACK], SERVER_DCID)])
    return tracker


def test_no_migration_on_a_steady_path() -> None:
    tracker = established()
    for n in range(2, 10):
        tracker.on_packet_received(packet(0.1 * n, OLD, n, [ACK]))
    assert tracker.migrations == []
    assert tracker.cid_rotations == []
    assert tracker.peers_seen == [OLD]
    assert tracker.peer == OLD


@pytest.mark.parametrize(
    ("new_peer", "kind"),
    [(NEW_PORT, MigrationKind.PORT_CHANGE), (NEW_ADDR, MigrationKind.ADDRESS_CHANGE)],
)
def test_non_probing_packet_from_new_address_is_a_migration(
    new_peer: Address, kind: MigrationKind
) -> None:
    tracker = established()
    tracker.on_packet_received(packet(0.5, new_peer, 2, [ACK, PING]))
    (mig,) = tracker.migrations
    assert mig.kind == kind
    assert (mig.detected_at, mig.old_peer, mig.new_peer) == (0.5, OLD, new_peer)
    assert tracker.peer == new_peer
    assert tracker.peers_seen == [OLD, new_peer]
    assert not mig.cid_changed
    assert tracker.cid_rotations == []


def test_probing_only_packet_is_not_a_migration() -> None:
    tracker = established()
    probe = packet(0.5, NEW_ADDR, 2, [challenge("01" * 8), PADDING])
    assert is_probing(probe)
    tracker.on_packet_received(probe)
    assert tracker.migrations == []
    assert tracker.peer == OLD
    assert NEW_ADDR in tracker.peers_seen  # seen, but not adopted
    tracker.on_packet_received(packet(0.6, NEW_ADDR, 3, [ACK]))
    assert [m.new_peer for m in tracker.migrations] == [NEW_ADDR]


def test_reordered_older_packet_from_old_address_is_not_a_migration() -> None:
    tracker = established()
    tracker.on_packet_received(packet(0.5, NEW_PORT, 5, [ACK]))
    # A packet sent before the rebinding, numbered lower, arrives late from the old port.
    tracker.on_packet_received(packet(0.51, OLD, 4, [ACK]))
    assert len(tracker.migrations) == 1
    assert tracker.peer == NEW_PORT


def test_first_packet_with_challenge() -> None:
    tracker = established()
    tracker.on_packet_received(packet(0.5, NEW_PORT, 2, [ACK]))
    tracker.on_packets_sent([packet(0.5, NEW_PORT, 10, [challenge("0a" * 8), ACK], SERVER_DCID)])
    (mig,) = tracker.migrations
    assert mig.first_packet_had_challenge is True
    assert mig.first_packet_to_peer_at == 0.5
    assert [c.data for c in mig.challenges] == ["0a" * 8]
    assert mig.challenges[0].in_first_packet


def test_first_packet_without_challenge() -> None:
    tracker = established()
    tracker.on_packet_received(packet(0.5, NEW_ADDR, 2, [ACK]))
    tracker.on_packets_sent([packet(0.5, NEW_ADDR, 10, [ACK], SERVER_DCID)])
    tracker.on_packets_sent([packet(0.7, NEW_ADDR, 11, [challenge("0b" * 8)], SERVER_DCID)])
    (mig,) = tracker.migrations
    assert mig.first_packet_had_challenge is False
    assert mig.first_packet_to_peer_at == 0.5
    assert len(mig.challenges) == 1 and not mig.challenges[0].in_first_packet


def test_packets_to_old_peer_do_not_count_as_first_on_new_path() -> None:
    tracker = established()
    tracker.on_packet_received(packet(0.5, NEW_PORT, 2, [ACK]))
    tracker.on_packets_sent([packet(0.5, OLD, 10, [ACK], SERVER_DCID)])
    (mig,) = tracker.migrations
    assert mig.first_packet_to_peer_at is None
    tracker.on_packets_sent([packet(0.6, NEW_PORT, 11, [challenge("0c" * 8)], SERVER_DCID)])
    assert mig.first_packet_had_challenge is True


def test_path_response_validates_and_gives_rtt() -> None:
    tracker = established()
    tracker.on_packet_received(packet(0.5, NEW_PORT, 2, [ACK]))
    tracker.on_packets_sent([packet(0.5, NEW_PORT, 10, [challenge("0d" * 8)], SERVER_DCID)])
    (mig,) = tracker.migrations
    assert mig.validated_at is None and mig.validation_rtt is None
    tracker.on_packet_received(packet(0.55, NEW_PORT, 3, [response("ff" * 8)]))  # not ours
    assert mig.validated_at is None
    tracker.on_packet_received(packet(0.56, NEW_PORT, 4, [response("0d" * 8), ACK]))
    assert mig.validated_at == 0.56
    assert mig.validation_rtt == pytest.approx(0.06)
    assert tracker.challenges[0].answered_at == 0.56
    # A duplicate response does not move the validation time.
    tracker.on_packet_received(packet(0.9, NEW_PORT, 5, [response("0d" * 8)]))
    assert mig.validated_at == 0.56


def test_validation_uses_first_answered_challenge() -> None:
    tracker = established()
    tracker.on_packet_received(packet(1.0, NEW_ADDR, 2, [ACK]))
    tracker.on_packets_sent([packet(1.0, NEW_ADDR, 10, [challenge("01" * 8)], SERVER_DCID)])
    tracker.on_packets_sent([packet(1.3, NEW_ADDR, 11, [challenge("02" * 8)], SERVER_DCID)])
    # The first challenge was lost; the second is answered 0.1 s after it was sent.
    tracker.on_packet_received(packet(1.4, NEW_ADDR, 3, [response("02" * 8)]))
    (mig,) = tracker.migrations
    assert len(mig.challenges) == 2
    assert mig.validated_at == 1.4
    assert mig.validation_rtt == pytest.approx(0.1)


def test_dcid_change_on_same_address_is_a_cid_rotation() -> None:
    tracker = established()
    tracker.on_packet_received(packet(1.0, OLD, 2, [PING], dcid=DCID2))
    tracker.on_packet_received(packet(1.1, OLD, 3, [ACK], dcid=DCID2))
    assert tracker.migrations == []
    assert [(r.at, r.peer) for r in tracker.cid_rotations] == [(1.0, OLD)]


def test_dcid_change_with_new_address_is_a_migration_not_a_rotation() -> None:
    tracker = established()
    tracker.on_packet_received(packet(1.0, NEW_ADDR, 2, [PING], dcid=DCID2))
    (mig,) = tracker.migrations
    assert mig.cid_changed
    assert (mig.old_dcid, mig.new_dcid) == (DCID, DCID2)
    assert tracker.cid_rotations == []


def test_probing_packet_with_new_dcid_is_not_a_rotation() -> None:
    tracker = established()
    tracker.on_packet_received(packet(1.0, OLD, 2, [challenge("03" * 8)], dcid=DCID2))
    assert tracker.cid_rotations == []


def test_server_dcid_before_and_after() -> None:
    tracker = established()
    tracker.on_packet_received(packet(1.0, NEW_ADDR, 2, [PING], dcid=DCID2))
    tracker.on_packets_sent([packet(1.0, NEW_ADDR, 10, [challenge("04" * 8)], "dd" * 8)])
    (mig,) = tracker.migrations
    assert (mig.server_dcid_before, mig.server_dcid_after) == (SERVER_DCID, "dd" * 8)


def test_retransmitted_stream_bytes_are_counted() -> None:
    tracker = established()
    tracker.on_packets_sent(
        [
            packet(1.0, OLD, 10, [stream(0, 0, 1000)], SERVER_DCID),
            packet(1.0, OLD, 11, [stream(0, 1000, 1000)], SERVER_DCID),
            packet(1.0, OLD, 12, [stream(4, 0, 300)], SERVER_DCID),
        ]
    )
    assert tracker.retransmitted == []
    # 500..1500 again: all 1000 bytes lie below the highest offset sent (2000).
    tracker.on_packets_sent([packet(1.2, OLD, 13, [stream(0, 500, 1000)], SERVER_DCID)])
    # 1500..2500: 500 bytes again, 500 new.
    tracker.on_packets_sent([packet(1.3, OLD, 14, [stream(0, 1500, 1000)], SERVER_DCID)])
    # Stream 4 counts on its own: 0..300 again is 300 bytes.
    tracker.on_packets_sent([packet(1.4, OLD, 15, [stream(4, 0, 300)], SERVER_DCID)])
    # New data only: nothing retransmitted.
    tracker.on_packets_sent([packet(1.5, OLD, 16, [stream(0, 2500, 100)], SERVER_DCID)])
    assert tracker.retransmitted == [(1.2, 1000), (1.3, 500), (1.4, 300)]


def test_bytes_per_address() -> None:
    tracker = established()  # received 2 packets from OLD, sent one to it (100 bytes each)
    tracker.on_packet_received(packet(1.0, NEW_PORT, 2, [ACK], length=40))
    tracker.on_packets_sent([packet(1.0, NEW_PORT, 10, [challenge("05" * 8)], length=1200)])
    assert tracker.datagrams_from == {OLD: 200, NEW_PORT: 40}
    assert tracker.datagrams_to == {OLD: 100, NEW_PORT: 1200}


def test_return_to_old_address_is_a_new_path_again() -> None:
    tracker = established()
    tracker.on_packet_received(packet(1.0, NEW_PORT, 2, [ACK]))
    tracker.on_packets_sent([packet(1.0, NEW_PORT, 10, [challenge("06" * 8)], SERVER_DCID)])
    tracker.on_packet_received(packet(2.0, OLD, 3, [ACK]))
    tracker.on_packets_sent([packet(2.0, OLD, 11, [ACK], SERVER_DCID)])
    assert [m.new_peer for m in tracker.migrations] == [NEW_PORT, OLD]
    back = tracker.migrations[-1]
    assert back.first_packet_to_peer_at == 2.0
    assert back.first_packet_had_challenge is False
