"""Runs that keep their packets: the simulator with a recorder in front of the server's
tracker, and a capture's decrypted datagrams; both give a Result with a packet log.

Nothing here changes a run. A `PacketRecorder` is installed as the server endpoint's
observer factory (before anything runs), in front of each connection's tracker, and in the
simulator a wire tap on the client interfaces remembers which client socket sent each
datagram, so a diagram can show the NAT translating it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from quicmig.capture.analysis import ConnectionView, group, packet_of
from quicmig.capture.tshark import QuicDatagram
from quicmig.core.datagram import Address, Datagram
from quicmig.core.endpoint import ServerConnection
from quicmig.core.packetlog import (
    MAX_WINDOWS,
    PacketLog,
    PacketRecord,
    PacketRecorder,
    packet_log,
)
from quicmig.core.qlogpaths import path_events
from quicmig.core.results import Result
from quicmig.core.tap import PacketObserver
from quicmig.core.tracker import MigrationTracker
from quicmig.model.scenario import Scenario
from quicmig.runner import RunOptions, run
from quicmig.sim.runner import SimBackend, Simulation

if TYPE_CHECKING:
    from quicmig.live.server import LiveServer


class WireTap:
    """Watches host interfaces: which client socket sent each datagram, and what just arrived."""

    def __init__(self, server: Address) -> None:
        self.server = server
        self._client_socket: dict[bytes, Address] = {}
        self.arriving: Datagram | None = None  # the datagram the server is receiving now

    def on_client_interface(self, datagram: Datagram, now: float) -> None:
        if datagram.dst == self.server:
            self._client_socket[datagram.data] = datagram.src

    def on_server_interface(self, datagram: Datagram, now: float) -> None:
        if datagram.dst == self.server:
            self.arriving = datagram

    def client_socket_of_arriving(self) -> Address | None:
        if self.arriving is None:
            return None
        return self._client_socket.pop(self.arriving.data, None)


class Recorders:
    """A server endpoint's observer factory: a recorder in front of each connection's tracker.

    `socket_of_arriving` names the client socket of the datagram being received, where the
    client's side is watched (the simulator's WireTap); None elsewhere."""

    def __init__(self, socket_of_arriving: Callable[[], Address | None] | None = None) -> None:
        self.socket_of_arriving = socket_of_arriving or (lambda: None)
        self.recorders: list[PacketRecorder] = []

    def __call__(self, tracker: MigrationTracker) -> PacketObserver:
        recorder = PacketRecorder(tracker, self.socket_of_arriving)
        self.recorders.append(recorder)
        return recorder


@dataclass(frozen=True, slots=True)
class Recording:
    """A finished simulator run: its Result and what the server's first connection saw."""

    scenario: Scenario
    result: Result
    records: list[PacketRecord]  # every packet, `lost_at` filled in
    tracker: MigrationTracker | None
    server: Address


def record(scenario: Scenario, options: RunOptions | None = None) -> Recording:
    """Run `scenario` in the simulator exactly as `run_scenario` does, recording packets."""
    built: list[tuple[Simulation, Recorders]] = []

    def watch(sim: Simulation) -> None:  # before anything runs
        wire = WireTap(sim.server.local)
        recorders = Recorders(wire.client_socket_of_arriving)
        sim.server.endpoint.observer_factory = recorders
        sim.network.tap_interface(sim.server.ref, wire.on_server_interface)
        for host in sim.scenario.topology.clients:
            for iface in host.interfaces:
                sim.network.tap_interface(f"{host.name}.{iface.name}", wire.on_client_interface)
        built.append((sim, recorders))

    result = run(scenario, SimBackend(on_built=watch), options or RunOptions())
    sim, recorders = built[0]
    connections: list[ServerConnection] = sim.server.endpoint.connections
    tracker = connections[0].tracker if connections else None
    recorder = next((r for r in recorders.recorders if r.inner is tracker), None)
    return Recording(
        scenario=sim.scenario,
        result=result,
        records=recorder.finished() if recorder is not None else [],
        tracker=tracker,
        server=sim.server.local,
    )


def _attack_instants(result: Result) -> list[tuple[str, float]]:
    """An attacker's first copy, for a scenario whose only moves are the attacker's."""
    out = []
    for attack in result.stats.get("attacks", []):
        copies = attack.get("copies") or []
        if copies:
            out.append((f"{attack.get('kind', 'attack')} from {attack.get('source')}", copies[0]))
    return out


def recorded_result(recording: Recording, limit: int = MAX_WINDOWS) -> Result:
    """The run's Result with its packet log (the windows around its migrations)."""
    result = recording.result
    tracker = recording.tracker
    records = recording.records
    first = records[0].at if records else 0.0
    events = path_events(tracker, recording.server, first) if tracker is not None else []
    log = packet_log(
        records,
        result.migrations,
        result.network_changes,
        source="tap",
        nat=bool(recording.scenario.topology.nats),
        path_events=events,
        extra=_attack_instants(result),
        limit=limit,
    )
    return replace(result, packets=log)


def run_recorded(scenario: Scenario, options: RunOptions) -> Result:
    """`run_scenario` with a packet log in the Result (for `--html`)."""
    return recorded_result(record(scenario, options))


def capture_packet_log(
    result: Result,
    datagrams: Sequence[QuicDatagram],
    views: Sequence[ConnectionView],
    quic_ports: tuple[int, ...] = (),
) -> PacketLog | None:
    """The packet log of a capture's first judged connection, from the same datagrams the
    tracker was fed (capture.analysis.replay's order and addresses)."""
    judged = [v for v in views if not v.undecrypted]
    if not judged or not datagrams:
        return None
    target = judged[0]
    start = datagrams[0].at
    records: list[PacketRecord] = []
    for view, members in group(list(datagrams), quic_ports):
        if view.number != target.number:
            continue
        for dgram, from_client in members:
            if dgram.has_short and not dgram.frames:
                continue  # as replay(): undecrypted, nothing to say about it
            at = dgram.at - start
            peer = dgram.src if from_client else dgram.dst
            socket = dgram.src if from_client else None
            packet = packet_of(dgram, at, peer)
            records.append(PacketRecord(len(records), from_client, packet, socket))
    # The judge lists each connection's migrations in the order of the views: the first
    # judged connection's come first.
    migrations = result.migrations[: len(target.tracker.migrations)]
    return packet_log(
        records,
        migrations,
        result.network_changes,
        source="capture",
        nat=False,
        path_events=path_events(target.tracker, target.server, records[0].at if records else 0.0),
    )


class LiveRecorder:
    """The recorder for a live run's own server (`LiveBackend(on_server=...)`): installed in
    the server's configuration once it listens, so each connection aioquic creates gets one."""

    def __init__(self) -> None:
        self.recorders = Recorders()
        self.server: Address | None = None

    def __call__(self, server: LiveServer) -> None:
        self.server = server.addresses[0]
        for listener in server.listeners:
            listener.endpoint.observer_factory = self.recorders

    def result(self, result: Result, nat: bool) -> Result:
        """`result` with the packet log of the server's first connection."""
        recorders = self.recorders.recorders
        if not recorders:
            return result
        recorder = recorders[0]
        records = recorder.finished()
        tracker = recorder.inner if isinstance(recorder.inner, MigrationTracker) else None
        first = records[0].at if records else 0.0
        events = path_events(tracker, self.server, first) if tracker is not None else []
        log = packet_log(
            records,
            result.migrations,
            result.network_changes,
            source="tap",
            nat=nat,
            path_events=events,
        )
        return replace(result, packets=log)
