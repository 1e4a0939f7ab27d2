"""The NAT box: endpoint-independent mapping, translation both ways, rebinding, idle expiry."""

from __future__ import annotations

import itertools
import random

import pytest

from quicmig.core.datagram import Address, Datagram
from quicmig.model.topology import Nat
from quicmig.sim.nat import TRANSITIONS, Binding, NatBox, NatInput

POOL = ("198.51.100.10", "198.51.100.11")
LOW, HIGH = 20000, 20999
INSIDE = ("192.0.2.10", 50000)
OTHER_INSIDE = ("192.0.2.11", 50000)
SERVER = ("203.0.113.10", 4433)
IDLE = 30.0  # seconds


def make_nat(seed: int = 1, port_range: tuple[int, int] = (LOW, HIGH)) -> NatBox:
    return NatBox(Nat("home", POOL, idle_timeout=IDLE, port_range=port_range), random.Random(seed))


def outbound(nat: NatBox, now: float, inside: Address = INSIDE, data: bytes = b"up") -> Datagram:
    """Send `data` from `inside` to the server; return the one translated datagram."""
    nat.receive_datagram(Datagram(inside, SERVER, data), now)
    (out,) = nat.datagrams_to_send(now)
    return out


def inbound(nat: NatBox, to: Address, now: float, data: bytes = b"down") -> list[Datagram]:
    nat.receive_datagram(Datagram(SERVER, to, data), now)
    return nat.datagrams_to_send(now)


def test_outbound_creates_mapping_on_external_address() -> None:
    nat = make_nat()
    out = outbound(nat, 0.0, data=b"hello")
    assert out.src[0] == POOL[0]
    assert LOW <= out.src[1] <= HIGH
    assert out.dst == SERVER
    assert out.data == b"hello"
    assert nat.mapping_for(INSIDE) == out.src
    event = nat.next_event()
    assert event is not None
    assert (event.kind, event.inside, event.outside, event.at) == ("mapped", INSIDE, out.src, 0.0)
    assert nat.next_event() is None


def test_same_inside_address_reuses_mapping() -> None:
    nat = make_nat()
    first = outbound(nat, 0.0)
    nat.next_event()
    for t in (0.1, 1.0, 10.0):
        assert outbound(nat, t).src == first.src
    assert nat.next_event() is None  # no further mappings were created


def test_different_inside_addresses_get_different_ports() -> None:
    nat = make_nat()
    a = outbound(nat, 0.0, INSIDE)
    b = outbound(nat, 0.0, OTHER_INSIDE)
    assert a.src[0] == b.src[0] == POOL[0]
    assert a.src != b.src
    assert inbound(nat, a.src, 0.1)[0].dst == INSIDE
    assert inbound(nat, b.src, 0.1)[0].dst == OTHER_INSIDE


def test_inbound_to_mapping_is_translated_back() -> None:
    nat = make_nat()
    external = outbound(nat, 0.0).src
    (back,) = inbound(nat, external, 0.05, data=b"reply")
    assert back == Datagram(SERVER, INSIDE, b"reply")
    assert nat.inbound_drops == 0


def test_inbound_without_mapping_is_dropped() -> None:
    nat = make_nat()
    assert inbound(nat, (POOL[0], LOW), 0.0) == []
    assert nat.inbound_drops == 1
    event = nat.next_event()
    assert event is not None
    assert (event.kind, event.inside, event.outside) == ("dropped", None, (POOL[0], LOW))
    external = outbound(nat, 0.1).src
    wrong_port = (external[0], LOW if external[1] != LOW else LOW + 1)
    assert inbound(nat, wrong_port, 0.2) == []
    assert nat.inbound_drops == 2


def test_rebind_gives_new_port_and_old_port_is_dead() -> None:
    nat = make_nat()
    old = outbound(nat, 0.0).src
    nat.rebind(new_address=False, now=1.0)
    assert nat.mapping_for(INSIDE) is None
    # Before the client sends again, the server's datagrams to the old port die.
    assert inbound(nat, old, 1.1) == []
    new = outbound(nat, 1.2).src
    assert new[0] == old[0]
    assert new[1] != old[1]
    assert LOW <= new[1] <= HIGH
    assert inbound(nat, old, 1.3) == []
    assert nat.inbound_drops == 2
    assert inbound(nat, new, 1.3)[0].dst == INSIDE


@pytest.mark.parametrize("seed", range(20))
def test_rebind_always_moves_even_with_two_ports(seed: int) -> None:
    nat = make_nat(seed, port_range=(LOW, LOW + 1))
    ports = [outbound(nat, 0.0).src[1]]
    for k in range(1, 6):
        nat.rebind(new_address=False, now=float(k))
        ports.append(outbound(nat, k + 0.5).src[1])
    # With only two ports, every rebinding must flip to the other one.
    assert all(a != b for a, b in itertools.pairwise(ports))


def test_rebind_new_address_moves_through_the_pool() -> None:
    nat = make_nat()
    old = outbound(nat, 0.0).src
    nat.rebind(new_address=True, now=1.0)
    new = outbound(nat, 1.1).src
    assert (old[0], new[0]) == POOL
    assert nat.external_address == POOL[1]
    assert inbound(nat, old, 1.2) == []
    assert inbound(nat, new, 1.2)[0].dst == INSIDE
    nat.rebind(new_address=True, now=2.0)
    assert outbound(nat, 2.1).src[0] == POOL[0]  # the pool wraps around


def test_idle_timeout_expiry_creates_new_mapping() -> None:
    nat = make_nat()
    first = outbound(nat, 0.0).src
    refreshed = outbound(nat, IDLE - 0.1).src  # outbound traffic keeps it alive
    assert refreshed == first
    last_outbound = IDLE - 0.1
    nat.next_event()
    after = outbound(nat, last_outbound + IDLE).src  # exactly the timeout: expired
    assert after != first
    event = nat.next_event()
    assert event is not None and event.kind == "mapped" and event.outside == after


def test_only_outbound_traffic_refreshes_a_mapping() -> None:
    nat = make_nat()
    external = outbound(nat, 0.0).src
    assert len(inbound(nat, external, IDLE - 1.0)) == 1  # alive, but does not refresh
    assert inbound(nat, external, IDLE + 1.0) == []  # expired 30 s after the last outbound
    assert nat.inbound_drops == 1


def test_transition_table_is_consistent() -> None:
    states: set[Binding | None] = {None, *Binding}
    for (state, event), nxt in TRANSITIONS.items():
        assert state in states
        assert isinstance(event, NatInput)
        assert isinstance(nxt, Binding)
    # Every state can be left by outbound traffic, and it always leads to ACTIVE.
    for state in states:
        assert TRANSITIONS[(state, NatInput.OUTBOUND)] is Binding.ACTIVE
    # Inbound traffic never creates or revives a mapping.
    assert (None, NatInput.INBOUND) not in TRANSITIONS
    assert (Binding.EXPIRED, NatInput.INBOUND) not in TRANSITIONS
    # Only an active mapping can time out or be rebound, and that expires it.
    for event in (NatInput.IDLE_TIMEOUT, NatInput.REBIND):
        assert {s for s, e in TRANSITIONS if e is event} == {Binding.ACTIVE}
        assert TRANSITIONS[(Binding.ACTIVE, event)] is Binding.EXPIRED
    # Every state is reachable from "no mapping".
    reachable: set[Binding | None] = {None}
    while True:
        grown = reachable | {n for (s, _), n in TRANSITIONS.items() if s in reachable}
        if grown == reachable:
            break
        reachable = grown
    assert reachable == states


def test_box_follows_the_table() -> None:
    """Drive one mapping through every transition and watch what the box does."""
    nat = make_nat()
    ext = outbound(nat, 0.0).src  # (None, OUTBOUND) -> ACTIVE
    assert nat.mapping_for(INSIDE) == ext
    assert outbound(nat, 1.0).src == ext  # (ACTIVE, OUTBOUND) -> ACTIVE
    assert len(inbound(nat, ext, 2.0)) == 1  # (ACTIVE, INBOUND) -> ACTIVE
    nat.rebind(False, 3.0)  # (ACTIVE, REBIND) -> EXPIRED
    assert nat.mapping_for(INSIDE) is None
    assert inbound(nat, ext, 3.5) == []  # (EXPIRED, INBOUND): no transition, dropped
    ext2 = outbound(nat, 4.0).src  # (EXPIRED, OUTBOUND) -> ACTIVE, fresh port
    assert ext2 != ext and nat.mapping_for(INSIDE) == ext2
    assert inbound(nat, ext2, 4.0 + IDLE) == []  # (ACTIVE, IDLE_TIMEOUT) -> EXPIRED
    assert nat.mapping_for(INSIDE) is None
