"""A NAT box: endpoint-independent mapping (RFC 4787 section 4.1), idle timeout, rebinding.

Filtering is endpoint-independent too: once a mapping exists, any outside host may send to
it. Binding states follow the explicit transition table below.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from enum import Enum

from quicmig.core.datagram import Address, Datagram
from quicmig.model.topology import Nat


class Binding(Enum):
    ACTIVE = "active"
    EXPIRED = "expired"


class NatInput(Enum):
    OUTBOUND = "outbound"
    INBOUND = "inbound"
    IDLE_TIMEOUT = "idle-timeout"
    REBIND = "rebind"


# (state, input) -> next state. A missing pair means the input does not apply (an inbound
# datagram for an expired mapping is dropped, and stays dropped).
TRANSITIONS: dict[tuple[Binding | None, NatInput], Binding] = {
    (None, NatInput.OUTBOUND): Binding.ACTIVE,
    (Binding.ACTIVE, NatInput.OUTBOUND): Binding.ACTIVE,
    (Binding.ACTIVE, NatInput.INBOUND): Binding.ACTIVE,
    (Binding.ACTIVE, NatInput.IDLE_TIMEOUT): Binding.EXPIRED,
    (Binding.ACTIVE, NatInput.REBIND): Binding.EXPIRED,
    (Binding.EXPIRED, NatInput.OUTBOUND): Binding.ACTIVE,  # with a fresh external port
}


@dataclass(slots=True)
class Mapping:
    inside: Address
    outside: Address
    last_outbound: float  # seconds; RFC 4787 REQ-6: only outbound traffic refreshes
    state: Binding = Binding.ACTIVE


@dataclass(frozen=True, slots=True)
class NatEvent:
    """A mapping was created, or an inbound datagram found no mapping and was dropped."""

    at: float
    kind: str  # "mapped" | "dropped"
    inside: Address | None
    outside: Address


class NatBox:
    """Sans-IO NAT: datagrams in, translated datagrams out, same instant."""

    def __init__(self, nat: Nat, rng: random.Random) -> None:
        self.nat = nat
        self._rng = rng
        self._pool_index = 0
        self._by_inside: dict[Address, Mapping] = {}
        self._by_outside: dict[Address, Mapping] = {}
        self._out: list[Datagram] = []
        self._events: deque[NatEvent] = deque()
        self.inbound_drops = 0

    @property
    def external_address(self) -> str:
        return self.nat.external[self._pool_index % len(self.nat.external)]

    def owns(self, ip: str) -> bool:
        return ip in self.nat.external

    def _step(self, mapping: Mapping | None, event: NatInput) -> Binding | None:
        state = mapping.state if mapping is not None else None
        nxt = TRANSITIONS.get((state, event))
        if mapping is not None and nxt is not None:
            mapping.state = nxt
        return nxt

    def _expire_idle(self, mapping: Mapping, now: float) -> None:
        if mapping.state is Binding.ACTIVE and now - mapping.last_outbound >= self.nat.idle_timeout:
            self._step(mapping, NatInput.IDLE_TIMEOUT)

    def _allocate(self, inside: Address, now: float, stale: Address | None = None) -> Mapping:
        """A new mapping; never on `stale` (the expired one), or a rebinding would not move."""
        low, high = self.nat.port_range
        ip = self.external_address
        while True:
            outside = (ip, self._rng.randint(low, high))
            if outside not in self._by_outside and (outside != stale or low == high):
                break
        mapping = Mapping(inside, outside, now)
        self._by_inside[inside] = mapping
        self._by_outside[outside] = mapping
        self._events.append(NatEvent(now, "mapped", inside, outside))
        return mapping

    def receive_datagram(self, datagram: Datagram, now: float) -> None:
        """Translate `datagram`; an inbound one is addressed to one of our external IPs."""
        if self.owns(datagram.dst[0]):
            mapping = self._by_outside.get(datagram.dst)
            if mapping is not None:
                self._expire_idle(mapping, now)
            if self._step(mapping, NatInput.INBOUND) is None or mapping is None:
                self.inbound_drops += 1
                self._events.append(NatEvent(now, "dropped", None, datagram.dst))
                return
            self._out.append(Datagram(datagram.src, mapping.inside, datagram.data))
            return
        mapping = self._by_inside.get(datagram.src)
        if mapping is not None:
            self._expire_idle(mapping, now)
        if mapping is None or mapping.state is not Binding.ACTIVE:
            stale = None
            if mapping is not None:
                stale = mapping.outside
                del self._by_outside[stale]
            mapping = self._allocate(datagram.src, now, stale)
        else:
            self._step(mapping, NatInput.OUTBOUND)
        mapping.last_outbound = now
        self._out.append(Datagram(mapping.outside, datagram.dst, datagram.data))

    def rebind(self, new_address: bool, now: float) -> None:
        """Forget every mapping; with `new_address`, move on to the next pool address."""
        for mapping in self._by_inside.values():
            self._step(mapping, NatInput.REBIND)
        if new_address:
            self._pool_index += 1

    def mapping_for(self, inside: Address) -> Address | None:
        mapping = self._by_inside.get(inside)
        return mapping.outside if mapping and mapping.state is Binding.ACTIVE else None

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        return None  # idle expiry is checked lazily when a datagram arrives

    def handle_timer(self, now: float) -> None:
        """No timers: see get_timer()."""

    def next_event(self) -> NatEvent | None:
        return self._events.popleft() if self._events else None
