"""The network events of a timeline, under one name each.

A path can change in a handful of ways; `EventKind` names each once. Every front end spells
them in its own friendly way (scenario TOML `event = "nat-rebinding"`, `quicmig client
--migrate ip-change`, `quicmig proxy ctl rebind`, the seed scripts' NAT_REBINDING), and
`EVENT_NAMES` is the one table that maps each spelling onto exactly one member.

A timeline event is typed data: when it happens (`at` seconds from the start of the run, or
`progress`, the fraction of the workload's bytes delivered to the client) and what it needs.
`expand_timeline()` unrolls periodic events once, for every backend.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import ClassVar


class EventKind(Enum):
    NAT_REBINDING = "nat-rebinding"  # the NAT forgets its mappings: a new port (RFC 9000 9.3)
    ADDRESS_REBINDING = "address-rebinding"  # ... and maps to the next address of its pool
    INTERFACE_SWITCH = "interface-switch"  # the client moves to another interface (WiFi->cell)
    ADDRESS_CHANGE = "address-change"  # the interface gets another address (DHCP renewal)
    CID_ROTATION = "cid-rotation"  # a fresh connection ID on the same path (RFC 9000 9.5)
    LINK_CHANGE = "link-change"  # a link's delay, loss or rate changes
    INTERFACE_DOWN = "interface-down"
    INTERFACE_UP = "interface-up"
    BLACKHOLE = "blackhole"  # a link drops everything for a while; nobody is told
    # Recorded by a run, never scheduled: what the client did by itself.
    FAILOVER = "failover"  # the client heard nothing and moved to another interface
    MIGRATION_REFUSED = "migration-refused"  # the client declined to migrate (RFC 9000 18.2)


# Every spelling any front end accepts, case-insensitive with "_" read as "-".
EVENT_NAMES: dict[str, EventKind] = {
    **{kind.value: kind for kind in EventKind},
    "nat-rebind": EventKind.NAT_REBINDING,  # scenario files before the vocabulary was one
    "rebind": EventKind.NAT_REBINDING,  # `quicmig proxy ctl rebind`
    "rebind-port": EventKind.NAT_REBINDING,  # quic-interop-runner's test names
    "rebind-addr": EventKind.ADDRESS_REBINDING,
    "switch": EventKind.INTERFACE_SWITCH,
    "network-switch": EventKind.INTERFACE_SWITCH,  # the seed's NETWORK_SWITCH
    "ip-change": EventKind.ADDRESS_CHANGE,  # the seed's IP_CHANGE
    "cid-rotate": EventKind.CID_ROTATION,
}
# What a timeline can hold (the others are recorded by a run, never scheduled).
SCHEDULABLE = tuple(
    k for k in EventKind if k not in (EventKind.FAILOVER, EventKind.MIGRATION_REFUSED)
)


# The seed's friendly names, offered beside the canonical ones in error messages.
FRIENDLY = {EventKind.INTERFACE_SWITCH: "network-switch", EventKind.ADDRESS_CHANGE: "ip-change"}


def event_kind(
    text: str,
    where: str,
    allowed: tuple[EventKind, ...] = SCHEDULABLE,
    also: tuple[str, ...] = (),
) -> EventKind:
    """The member `text` names; InputError naming `where` and the allowed spellings (with
    `also`: other words the caller accepts beside events, such as `none`)."""
    from quicmig.errors import InputError

    kind = EVENT_NAMES.get(text.strip().lower().replace("_", "-"))
    if kind is None or kind not in allowed:
        names = [k.value + (f" (or {FRIENDLY[k]})" if k in FRIENDLY else "") for k in allowed]
        raise InputError(
            f"{where}: unknown event {text!r}; allowed: {', '.join(names + list(also))}"
        )
    return kind


class SwitchMode(Enum):
    BREAK_BEFORE_MAKE = "break-before-make"
    MAKE_BEFORE_BREAK = "make-before-break"


@dataclass(frozen=True, slots=True)
class Event:
    """When an event happens: `at` seconds from the start of the run, or, with `progress`
    set, once that fraction (0..1) of the workload's bytes has reached the client (so a
    move lands mid-transfer however fast the machine is)."""

    kind: ClassVar[EventKind]
    at: float
    progress: float | None = field(default=None, kw_only=True)

    @property
    def when(self) -> str:
        return f"{self.progress:.0%} delivered" if self.progress is not None else f"{self.at:g} s"


@dataclass(frozen=True, slots=True)
class NatRebind(Event):
    """The NAT forgets its mappings: the next outbound packet gets a new port (or address)."""

    kind: ClassVar[EventKind] = EventKind.NAT_REBINDING
    nat: str
    new_address: bool = False  # True: a carrier-grade NAT hands out the next pool address
    every: float | None = None  # seconds; repeat until the run ends

    @property
    def event_kind(self) -> EventKind:
        return EventKind.ADDRESS_REBINDING if self.new_address else EventKind.NAT_REBINDING


@dataclass(frozen=True, slots=True)
class Switch(Event):
    """The client moves its traffic to another interface (WiFi to cellular, say)."""

    kind: ClassVar[EventKind] = EventKind.INTERFACE_SWITCH
    host: str
    to: str  # interface name on `host`
    mode: SwitchMode = SwitchMode.BREAK_BEFORE_MAKE
    new_cid: bool = True  # RFC 9000 section 9.5: a new connection ID on a new path
    gap: float = 0.0  # break-before-make: seconds with no usable interface
    overlap: float = 1.0  # make-before-break: seconds the old interface keeps receiving


@dataclass(frozen=True, slots=True)
class AddressChange(Event):
    """The interface's address is replaced (a DHCP renewal handing out another lease)."""

    kind: ClassVar[EventKind] = EventKind.ADDRESS_CHANGE
    iface: str  # "host.iface"
    address: str


@dataclass(frozen=True, slots=True)
class CidRotate(Event):
    """The client switches to a fresh connection ID on the same path (RFC 9000 section 9.5)."""

    kind: ClassVar[EventKind] = EventKind.CID_ROTATION
    host: str


@dataclass(frozen=True, slots=True)
class LinkChange(Event):
    """A link's impairments change: to a named profile (wifi, cellular, ...), and/or single
    settings on top; loss_pct=100 is a blackhole the endpoints cannot see."""

    kind: ClassVar[EventKind] = EventKind.LINK_CHANGE
    link: str
    settings: tuple[tuple[str, float], ...] = ()  # (TOML key, value), e.g. ("loss_pct", 100.0)
    profile: str | None = None  # start from this named profile instead of the link's own


@dataclass(frozen=True, slots=True)
class InterfaceDown(Event):
    kind: ClassVar[EventKind] = EventKind.INTERFACE_DOWN
    iface: str  # "host.iface"


@dataclass(frozen=True, slots=True)
class InterfaceUp(Event):
    kind: ClassVar[EventKind] = EventKind.INTERFACE_UP
    iface: str


@dataclass(frozen=True, slots=True)
class Blackhole(Event):
    """A link drops every packet, both ways, for `seconds`; its interfaces stay up."""

    kind: ClassVar[EventKind] = EventKind.BLACKHOLE
    link: str
    seconds: float


TimelineEvent = (
    NatRebind
    | Switch
    | AddressChange
    | CidRotate
    | LinkChange
    | InterfaceDown
    | InterfaceUp
    | Blackhole
)


def kind_of(event: TimelineEvent) -> EventKind:
    """The vocabulary's name for `event` (a rebinding with new_address is an address one)."""
    return event.event_kind if isinstance(event, NatRebind) else event.kind


def timed_events(timeline: Sequence[TimelineEvent], until: float) -> Iterator[TimelineEvent]:
    """The events with a time, periodic ones unrolled, in order of time up to `until`
    (seconds; may be infinite: the events are made as they are asked for). Events due at
    the same time keep the order of the timeline."""
    queue: list[tuple[float, int, TimelineEvent]] = [
        (event.at, index, event) for index, event in enumerate(timeline) if event.progress is None
    ]
    heapq.heapify(queue)
    while queue:
        at, index, event = heapq.heappop(queue)
        if not isinstance(event, NatRebind) or event.every is None:
            yield event
            continue
        yield event if at == event.at else replace(event, at=at, every=None)
        if at + event.every < until:
            heapq.heappush(queue, (at + event.every, index, event))


def expand_timeline(timeline: Sequence[TimelineEvent], duration: float) -> list[TimelineEvent]:
    """The whole plan of a run lasting `duration` seconds: the timed events (see
    `timed_events`), then those triggered by progress, in order of their share. Backends
    apply what this returns and nothing else."""
    by_progress = sorted(
        (e for e in timeline if e.progress is not None), key=lambda e: e.progress or 0.0
    )
    return [*timed_events(timeline, duration), *by_progress]
