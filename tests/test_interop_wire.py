"""What a capture shows after a rebinding, on hand-made datagrams (no tshark): a server that
keeps sending to the old address, one that validates the new one, and packets tshark could
not decrypt on the new path."""

from __future__ import annotations

from datagrams import quic_datagram as dgram

from quicmig.core.datagram import Address
from quicmig.interop.wire import PATH_CHALLENGE, PATH_RESPONSE, path_counts, rebind_view

SERVER: Address = ("127.0.0.1", 4433)
OLD: Address = ("127.0.0.1", 50000)
NEW: Address = ("127.0.0.1", 50001)
ACK, STREAM = 0x02, 0x0E


def test_a_server_that_never_follows_is_seen_sending_to_the_old_address() -> None:
    leg = [
        dgram(1, OLD, SERVER, (ACK,)),
        dgram(2, SERVER, OLD, (STREAM,)),
        dgram(3, NEW, SERVER, (ACK,)),  # the client's first packet from the new port
        dgram(4, SERVER, OLD, (STREAM,)),
        dgram(5, SERVER, OLD, (STREAM,)),
        dgram(6, NEW, SERVER, (ACK,)),
    ]
    view = rebind_view(leg, SERVER, OLD, NEW)
    assert view.client_first_new == 3
    assert view.server_to_old_after == 2 and view.server_to_new == 0
    assert view.server_first_new_frames is None and view.challenges_to_new == 0
    assert "sent 2 datagrams to the old address" in view.describe()
    assert "0 to the new one" in view.describe()


def test_a_server_that_validates_the_new_port_and_what_tshark_could_not_read() -> None:
    leg = [
        dgram(1, OLD, SERVER, (ACK,)),
        dgram(2, NEW, SERVER, (ACK,)),
        dgram(3, SERVER, NEW, (PATH_CHALLENGE, STREAM)),
        dgram(4, NEW, SERVER, (PATH_RESPONSE, ACK)),
        dgram(5, SERVER, NEW, ()),  # not decrypted
    ]
    view = rebind_view(leg, SERVER, OLD, NEW)
    assert view.server_first_new_challenge is True
    assert view.server_first_new_frames == (PATH_CHALLENGE, STREAM)
    assert (view.challenges_to_new, view.responses_from_new) == (1, 1)
    assert (view.undecrypted_to_new, view.undecrypted_from_new) == (1, 0)
    assert not view.decryptable
    counts = {count.peer: count for count in path_counts(leg, SERVER)}
    assert counts["127.0.0.1:50001"].short == 4 and counts["127.0.0.1:50001"].decrypted == 3


def test_the_old_address_count_comes_from_the_lo_capture_when_there_is_one() -> None:
    proxy_leg = [dgram(1, NEW, SERVER, (ACK,)), dgram(2, SERVER, NEW, (PATH_CHALLENGE,))]
    lo_leg = [
        dgram(10, NEW, SERVER, (ACK,)),
        dgram(11, SERVER, OLD, (STREAM,)),  # the proxy had closed this mapping: only lo saw it
        dgram(12, SERVER, NEW, (PATH_CHALLENGE,)),
    ]
    assert rebind_view(proxy_leg, SERVER, OLD, NEW).server_to_old_after == 0
    view = rebind_view(proxy_leg, SERVER, OLD, NEW, lo_leg)
    assert view.server_to_old_after == 1 and view.server_to_new == 1
