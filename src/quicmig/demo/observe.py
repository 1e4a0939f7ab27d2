"""Record every packet a server connection observed, plus the client socket it came from.

Nothing here changes a run. A `PacketRecorder` sits between aioquic's qlog tap and the
connection's `MigrationTracker`: each call is passed on to the tracker unchanged, and a copy
of the packet is kept. A wire tap on the client interfaces remembers which client socket
sent each datagram, so a diagram can show the NAT translating it. Only public attributes of
the simulator are used: the recorder is installed as the server endpoint's
`observer_factory`, which it calls for each connection it accepts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from quicmig.core.datagram import Address, Datagram
from quicmig.core.endpoint import ServerConnection
from quicmig.core.results import NetworkChange, Result
from quicmig.core.tap import Packet, PacketObserver
from quicmig.core.tracker import MigrationTracker, is_probing
from quicmig.model.scenario import Scenario
from quicmig.sim.runner import RunOptions, Simulation


@dataclass(frozen=True, slots=True)
class PacketRecord:
    """One packet as the server's aioquic saw it: received (`inbound`) or sent."""

    index: int  # order of observation
    inbound: bool  # client -> server
    packet: Packet  # time, peer address as seen by the server, type, number, DCID, frames
    client_socket: Address | None  # inbound only: the client socket that sent the datagram

    @property
    def at(self) -> float:
        return self.packet.at

    @property
    def probing(self) -> bool:
        """RFC 9000 section 9.1: only PATH_CHALLENGE/RESPONSE, NEW_CONNECTION_ID, PADDING."""
        return self.packet.packet_type == "1RTT" and is_probing(self.packet)

    def frame_kinds(self) -> tuple[str, ...]:
        return tuple(frame["frame_type"] for frame in self.packet.frames)


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


@dataclass(slots=True)
class PacketRecorder:
    """A PacketObserver that forwards to the connection's tracker and keeps each packet."""

    inner: PacketObserver
    wire: WireTap
    records: list[PacketRecord] = field(default_factory=list)
    lost: dict[tuple[str, int], float] = field(default_factory=dict)  # (type, number) -> at

    def on_packet_received(self, packet: Packet) -> None:
        self.inner.on_packet_received(packet)
        socket = self.wire.client_socket_of_arriving()
        if socket is None and self.records and self.records[-1].inbound:
            # Coalesced packets share a datagram: the first one took the wire record.
            last = self.records[-1]
            if last.at == packet.at and last.packet.peer == packet.peer:
                socket = last.client_socket
        self.records.append(PacketRecord(len(self.records), True, packet, socket))

    def on_packets_sent(self, packets: list[Packet]) -> None:
        self.inner.on_packets_sent(packets)
        for packet in packets:
            self.records.append(PacketRecord(len(self.records), False, packet, None))

    def on_recovery(self, at: float, name: str, data: dict[str, Any]) -> None:
        self.inner.on_recovery(at, name, data)
        if name == "packet_lost":
            self.lost[(str(data.get("type", "")), int(data.get("packet_number", -1)))] = at

    def lost_at(self, record: PacketRecord) -> float | None:
        """When aioquic declared this sent packet lost, if it did."""
        if record.inbound:
            return None
        return self.lost.get((record.packet.packet_type, record.packet.number))


class Recorders:
    """The server endpoint's observer factory: a recorder in front of each tracker."""

    def __init__(self, wire: WireTap) -> None:
        self.wire = wire
        self.recorders: list[PacketRecorder] = []

    def __call__(self, tracker: MigrationTracker) -> PacketObserver:
        recorder = PacketRecorder(tracker, self.wire)
        self.recorders.append(recorder)
        return recorder


@dataclass(frozen=True, slots=True)
class Observation:
    """A finished run: the simulator's Result and what the server's first connection saw."""

    scenario: Scenario
    result: Result
    records: list[PacketRecord]
    recorder: PacketRecorder | None
    tracker: MigrationTracker | None
    server: Address
    changes: list[NetworkChange]


def observe(scenario: Scenario, seed: int = 1) -> Observation:
    """Run `scenario` in the simulator exactly as `run_scenario` does, recording packets."""
    sim = Simulation(scenario, RunOptions(seed=seed))
    wire = WireTap(sim.server.local)
    recorders = Recorders(wire)
    sim.server.endpoint.observer_factory = recorders  # before any connection exists
    sim.network.tap_interface(sim.server.ref, wire.on_server_interface)
    topology = sim.scenario.topology
    for host in topology.clients:
        for iface in host.interfaces:
            sim.network.tap_interface(f"{host.name}.{iface.name}", wire.on_client_interface)
    result = sim.run()
    connections: list[ServerConnection] = sim.server.endpoint.connections
    tracker = connections[0].tracker if connections else None
    recorder = next((r for r in recorders.recorders if r.inner is tracker), None)
    return Observation(
        scenario=sim.scenario,
        result=result,
        records=recorder.records if recorder else [],
        recorder=recorder,
        tracker=tracker,
        server=sim.server.local,
        changes=list(sim.changes),
    )
