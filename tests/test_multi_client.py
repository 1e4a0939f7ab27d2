"""Two clients behind one NAT: one tracker per connection, both downloads intact."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from quicmig.core.app import DownloadClient, content
from quicmig.core.endpoint import ServerConnection
from quicmig.core.results import Result
from quicmig.model.events import EventKind
from quicmig.model.loader import load_scenario
from quicmig.model.scenario import Download
from quicmig.model.verdicts import MigrationKind, Verdict
from quicmig.runner import RunOptions, run
from quicmig.sim.runner import SimBackend, SimClient, Simulation

REBIND_AT = 0.3  # seconds: both downloads (2 MB at 50 Mbit/s) are still running then
SIZE = 2_000_000  # bytes per client
NAT_IP = "198.51.100.10"

SCENARIO = f"""
name = "two-clients"
summary = "two hosts behind one home NAT, which forgets its mappings once"
duration_s = 20

[topology]
server = "server"

[topology.hosts.alice.interfaces]
eth0 = "192.0.2.10"

[topology.hosts.bob.interfaces]
eth0 = "192.0.2.11"

[topology.hosts.server.interfaces]
eth0 = "203.0.113.10"

[topology.nats.home]
external = ["{NAT_IP}"]

[topology.links.alice]
a = "alice.eth0"
b = "home"
profile = "wifi"

[topology.links.bob]
a = "bob.eth0"
b = "home"
profile = "wifi"

[topology.links.server]
a = "server.eth0"
b = "internet"
profile = "lan"

[workload]
kind = "download"
bytes = {SIZE}

[[timeline]]
at_s = {REBIND_AT}
event = "nat-rebind"
nat = "home"

[expect]
verdict = "passed"
migrations = ["port_change", "port_change"]
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Simulation, Result]:
    path: Path = tmp_path_factory.mktemp("multi") / "two-clients.toml"
    path.write_text(SCENARIO)
    scenario = load_scenario(str(path))
    assert [h.name for h in scenario.topology.clients] == ["alice", "bob"]
    built: list[Simulation] = []
    result = run(scenario, SimBackend(on_built=built.append), RunOptions(seed=1))
    (sim,) = built
    return sim, result


@pytest.fixture
def two_clients(finished: tuple[Simulation, Result]) -> Simulation:
    return finished[0]


def connection_of(sim: Simulation, client: SimClient) -> ServerConnection:
    odcid = client.endpoint.conn.original_destination_connection_id
    (conn,) = [
        c
        for c in sim.server.endpoint.connections
        if c.conn.original_destination_connection_id == odcid
    ]
    return conn


def test_one_connection_and_tracker_per_client(two_clients: Simulation) -> None:
    connections = two_clients.server.endpoint.connections
    assert len(connections) == 2
    assert connections[0].tracker is not connections[1].tracker
    peers = [set(c.tracker.peers_seen) for c in connections]
    assert peers[0].isdisjoint(peers[1])  # neither tracker saw the other client's packets


def test_each_connection_saw_its_own_port_change(two_clients: Simulation) -> None:
    nat = two_clients.network.nats["home"]
    new_ports = []
    for client in two_clients.clients:
        tracker = connection_of(two_clients, client).tracker
        (mig,) = tracker.migrations
        assert mig.kind is MigrationKind.PORT_CHANGE
        assert mig.old_peer[0] == mig.new_peer[0] == NAT_IP
        assert mig.detected_at >= REBIND_AT
        assert mig.validated_at is not None and mig.validated_at > mig.detected_at
        assert mig.first_packet_had_challenge is True
        # The new peer is the NAT's current mapping of this very client.
        assert nat.mapping_for(client.local) == mig.new_peer
        assert tracker.peer == mig.new_peer
        new_ports.append(mig.new_peer[1])
    assert len(set(new_ports)) == 2


def test_both_downloads_intact(two_clients: Simulation) -> None:
    digests = set()
    for client in two_clients.clients:
        workload = client.endpoint.workload
        assert isinstance(workload, DownloadClient)
        assert isinstance(two_clients.scenario.workload, Download)
        expected = hashlib.sha256(content(SIZE, workload.seed)).hexdigest()
        assert workload.delivery.total == SIZE
        assert workload.digest == expected
        sent = connection_of(two_clients, client).app.sent_digests
        assert list(sent.values()) == [expected]
        digests.add(expected)
    assert len(digests) == 2  # different content per client, so a mix-up would show


def test_result_combines_both(finished: tuple[Simulation, Result]) -> None:
    result = finished[1]
    assert result.verdict is Verdict.PASSED, result.reasons
    assert result.transfer.bytes == 2 * SIZE
    assert result.transfer.detail["clients"] == [SIZE, SIZE]
    assert [m.observed for m in result.migrations] == [MigrationKind.PORT_CHANGE] * 2
    # Each migration the judge reports is one the server's trackers saw, and each is put
    # down to the one rebinding that the network really made.
    (change,) = result.network_changes
    assert change.at == REBIND_AT and change.kind is EventKind.NAT_REBINDING
    assert all(m.network_change_at == REBIND_AT for m in result.migrations)
    assert {m.new_peer for m in result.migrations} == {
        t.peer for t in (c.tracker for c in finished[0].server.endpoint.connections)
    }
