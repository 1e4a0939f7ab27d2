"""What a run observed, whichever backend ran it: the judge's only input besides the scenario.

A backend contributes what it saw (each client's transfer and deliveries, the server's
tracker of that client's connection, the network changes it really made) and what it could
not do (`unsupported`, one check each, with the reason). It never builds checks of its own
about the protocol: `quicmig.core.judge` does, the same way for every backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from quicmig.core.connections import QUIC, StreamRecord
from quicmig.core.datagram import Address
from quicmig.core.results import Check, NetworkChange, Transfer
from quicmig.core.tracker import MigrationTracker
from quicmig.model.scenario import Attacker, Expectation, Scenario, ServerSettings, Workload


@dataclass(frozen=True, slots=True)
class ClientObservation:
    """One client's view, and the server's tracker of its connection (None: none arrived).

    A TCP or MPTCP client has no tracker: `stream` holds what both ends' sockets recorded
    of each of its connections instead (quicmig.core.connections)."""

    transfer: Transfer
    delivery_times: Sequence[float]  # seconds: each time application data reached it
    delivery_totals: Sequence[int]  # cumulative bytes at those times
    connection: MigrationTracker | None
    stream: StreamRecord | None = None


@dataclass(frozen=True, slots=True)
class WireCounts:
    """UDP payload bytes on the server's interfaces, per remote address (the attack checks:
    an attacker's copies are not authenticated packets, so the tracker does not count them)."""

    received: dict[Address, int]  # bytes
    sent: dict[Address, int]  # bytes


@dataclass(frozen=True, slots=True)
class Observation:
    backend: str
    seed: int
    run_end: float  # seconds: how long the run was (virtual or real time)
    clients: Sequence[ClientObservation]
    changes: Sequence[NetworkChange]
    unsupported: Sequence[Check] = ()  # what the backend could not apply, state UNSUPPORTED
    problems: Sequence[Check] = ()  # failures of the run itself (the connection closed early)
    wire: WireCounts | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    wall: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    transport: str = QUIC  # quic | tcp | mptcp: what carried the bytes (Result.transport)


@dataclass(frozen=True, slots=True)
class Expectations:
    """What the judge compares an observation with: the scenario's promises, or, for a
    capture judged without one, the little a capture can be held to."""

    name: str
    stack: str  # stock | quicmig | custom
    expect: Expectation
    workload: Workload | None  # None: the transfer cannot be judged (a capture)
    server: ServerSettings = field(default_factory=ServerSettings)
    attackers: Sequence[Attacker] = ()
    # None: whether a migration was the client's choice follows from the network changes;
    # True: every migration was (`quicmig check --active`: a capture cannot tell).
    all_active: bool | None = None


def stack_name(scenario: Scenario) -> str:
    enabled = scenario.quic.enabled
    if not enabled:
        return "stock"
    return "quicmig" if len(enabled) == len(scenario.quic.NAMES) else "custom"


def expectations(scenario: Scenario) -> Expectations:
    return Expectations(
        name=scenario.name,
        stack=stack_name(scenario),
        expect=scenario.expect,
        workload=scenario.workload,
        server=scenario.server,
        attackers=scenario.attackers,
    )
