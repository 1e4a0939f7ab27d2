"""The sans-IO endpoints on the pair (tests/pairs.py): what a client puts on the wire when it
migrates, keeps alive or fails over, and what the server accepts; plus the one vocabulary of
network events every front end reads."""

from __future__ import annotations

import pytest
from pairs import NEW, SERVER, Pair

from quicmig.core.endpoint import FailoverNeeded, WorkloadDone
from quicmig.errors import InputError
from quicmig.model.events import (
    EVENT_NAMES,
    CidRotate,
    EventKind,
    NatRebind,
    event_kind,
    expand_timeline,
    timed_events,
)
from quicmig.model.scenario import Messages
from quicmig.model.verdicts import MigrationKind


def test_a_download_completes_and_says_so() -> None:
    pair = Pair()
    pair.run(3.0)
    events = []
    while (event := pair.client.next_event()) is not None:
        events.append(event)
    assert any(isinstance(e, WorkloadDone) for e in events)
    assert pair.client.workload.delivery.total == 3_000_000


@pytest.mark.parametrize("new_cid", [True, False])
def test_migrate_speaks_at_once_from_the_new_address(new_cid: bool) -> None:
    """RFC 9000 section 9.2: a PING makes the next packet non-probing, so the server learns
    the new address at once; with `new_cid`, a fresh connection ID (section 9.5)."""
    pair = Pair(workload=Messages(count=2, interval=0.1))
    pair.run(0.5)  # done and idle: nothing to send
    sent_before = len(pair.sent)
    pair.migrate(NEW, new_cid=new_cid)
    pair.run(pair.now + 0.2)
    first = pair.sent[sent_before]
    assert first[1] == NEW and first[2] == SERVER and first[0] == pytest.approx(0.5)
    (mig,) = pair.tracker.migrations
    assert mig.kind is MigrationKind.ADDRESS_CHANGE  # NEW is another address
    assert mig.new_peer == NEW and mig.validated_at is not None
    assert mig.cid_changed is new_cid


def test_keepalive_pings_an_idle_connection() -> None:
    pair = Pair(workload=Messages(count=1, interval=0.0), keepalive=0.25)
    pair.run(0.5)
    quiet = len(pair.sent)
    pair.run(2.0)
    from_client = [s for s in pair.sent[quiet:] if s[2] == SERVER]
    # One PING at least every 0.25 s of silence (and its ACKs), nothing more.
    assert 5 <= len(from_client) <= 12


def test_failover_is_asked_for_after_silence() -> None:
    pair = Pair(failover_after=0.3)
    pair.run(0.3)
    pair.drop = lambda data, src, dst: dst != SERVER  # the server's packets stop arriving
    deaf_at = pair.now
    pair.run(1.5)
    asked = []
    while (event := pair.client.next_event()) is not None:
        if isinstance(event, FailoverNeeded):
            asked.append(event.at)
    assert len(asked) == 1  # armed again only by a datagram or a move
    assert deaf_at + 0.3 <= asked[0] <= deaf_at + 0.3 + 0.05


def test_the_server_accepts_only_full_size_initials() -> None:
    """RFC 9000 section 14.1: a client Initial is at least 1200 bytes."""
    pair = Pair()
    pair.client.connect(0.0)
    (initial, _), *_ = pair.client.datagrams_to_send(0.0)
    pair.server.receive_datagram(initial[:1100], NEW, 0.0)
    assert pair.server.connections == [] and pair.server.unroutable == 1
    pair.server.receive_datagram(b"\x40" + bytes(30), NEW, 0.0)  # a short header, no one's
    assert pair.server.unroutable == 2
    pair.server.receive_datagram(initial, NEW, 0.0)
    assert len(pair.server.connections) == 1


# --- the vocabulary ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spelling", "kind"),
    [
        ("nat-rebinding", EventKind.NAT_REBINDING),
        ("NAT_REBINDING", EventKind.NAT_REBINDING),  # the seed's spelling
        ("nat-rebind", EventKind.NAT_REBINDING),
        ("rebind", EventKind.NAT_REBINDING),
        ("NETWORK_SWITCH", EventKind.INTERFACE_SWITCH),
        ("switch", EventKind.INTERFACE_SWITCH),
        ("IP_CHANGE", EventKind.ADDRESS_CHANGE),
        ("rebind-addr", EventKind.ADDRESS_REBINDING),
        ("cid-rotate", EventKind.CID_ROTATION),
    ],
)
def test_every_spelling_names_one_event(spelling: str, kind: EventKind) -> None:
    assert event_kind(spelling, "--migrate") is kind


def test_the_table_has_one_member_per_spelling_and_every_member() -> None:
    assert set(EVENT_NAMES.values()) == set(EventKind)
    assert all(EVENT_NAMES[k.value] is k for k in EventKind)


def test_unknown_or_unallowed_events_are_one_line_errors() -> None:
    with pytest.raises(InputError, match="unknown event 'teleport'; allowed: nat-rebinding"):
        event_kind("teleport", "--migrate")
    with pytest.raises(InputError, match=r"allowed: nat-rebinding$"):
        event_kind("failover", "x", (EventKind.NAT_REBINDING,))


def test_periodic_events_are_unrolled_once_in_order() -> None:
    timeline = (
        NatRebind(1.0, "n", every=5.0),
        NatRebind(6.0, "m"),
        CidRotate(0.0, "c", progress=0.5),
    )
    plan = expand_timeline(timeline, 17.0)
    assert [(type(e).__name__, e.at) for e in plan] == [
        ("NatRebind", 1.0),
        ("NatRebind", 6.0),
        ("NatRebind", 6.0),
        ("NatRebind", 11.0),
        ("NatRebind", 16.0),
        ("CidRotate", 0.0),
    ]
    assert [e.nat for e in plan[1:3] if isinstance(e, NatRebind)] == ["n", "m"]  # FIFO ties
    assert plan[-1].progress == 0.5
    endless = timed_events(timeline, float("inf"))
    assert [next(endless).at for _ in range(4)] == [1.0, 6.0, 6.0, 11.0]
