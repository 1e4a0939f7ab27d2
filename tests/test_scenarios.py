"""Every built-in scenario, end to end in the simulator, checked against what was observed.

Expected values come from the scenario's parameters: link delays and rates give the path's
round trip, the NAT's address pool says where a rebinding must land, the workload's size
and content seed give the SHA-256 the client must end up with.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SEED, BuiltinRuns, Run

from quicmig.core.app import DownloadClient, content
from quicmig.core.endpoint import ServerConnection
from quicmig.core.results import MigrationResult
from quicmig.core.tracker import ObservedMigration
from quicmig.model.events import AddressChange, EventKind, NatRebind, Switch
from quicmig.model.loader import builtin_names, load_scenario
from quicmig.model.scenario import Download, Messages, Scenario, Stream
from quicmig.model.topology import Link
from quicmig.model.verdicts import CheckState, MigrationKind, Rules, Verdict
from quicmig.report.plot import plot_timeline
from quicmig.runner import RunOptions
from quicmig.sim.runner import run_scenario

NAMES = builtin_names()
MAX_WIRE = 1500  # bytes: no simulated datagram is larger (aioquic sends at most 1200 + headers)


def server_conn(run: Run) -> ServerConnection:
    (conn,) = run.sim.server.endpoint.connections
    return conn


def observed(run: Run) -> list[ObservedMigration]:
    """The server's migrations, without moves to or from an attacker's address (those are
    judged by the attack checks, tests/test_paths_and_attacks.py)."""
    forged = {a.source for a in run.scenario.attackers}
    return [
        m
        for m in server_conn(run).tracker.migrations
        if m.old_peer not in forged and m.new_peer not in forged
    ]


# Scenarios whose stock run migrates where `expect.migrations` (written for the client that
# behaves) says it must not: the failure is the point (tests/test_paths_and_attacks.py).
STOCK_MIGRATES_ANYWAY = {
    "disable-migration": [MigrationKind.PORT_CHANGE, MigrationKind.ADDRESS_CHANGE]
}
ACTIVE = (EventKind.INTERFACE_SWITCH, EventKind.ADDRESS_CHANGE, EventKind.FAILOVER)


def path_links(scenario: Scenario, client_ip: str) -> list[Link]:
    """The links a datagram from `client_ip` (as the server sees it) crosses to the server."""
    topo = scenario.topology
    server_links = [lk for lk in topo.links if lk.a.startswith(f"{topo.server}.")]
    for nat in topo.nats:
        if client_ip in nat.external:
            (client_link,) = [lk for lk in topo.links if lk.b == nat.name]
            return [client_link, *server_links]
    for event in scenario.timeline:
        if isinstance(event, AddressChange) and event.address == client_ip:
            host, iface = topo.split_iface(event.iface, "test")
            return [topo.link_of(host.name, iface.name), *server_links]
    for host in topo.clients:
        for iface in host.interfaces:
            if client_ip in iface.addresses:
                return [topo.link_of(host.name, iface.name), *server_links]
    raise AssertionError(f"{client_ip} is on no path of {scenario.name}")


def one_way(links: list[Link]) -> float:
    return sum(lk.profile.delay for lk in links)


def worst_queueing(links: list[Link]) -> float:
    """Seconds a datagram can wait behind full queues and jitter, one way, on `links`."""
    total = 0.0
    for lk in links:
        p = lk.profile
        if p.rate is not None:
            total += (p.queue + 1) * MAX_WIRE * 8 / p.rate
        total += p.jitter
    return total


def rebind_event(scenario: Scenario, at: float) -> NatRebind:
    """The NatRebind (or one of its repetitions) that happened at `at`."""
    for event in scenario.timeline:
        if isinstance(event, NatRebind):
            if event.at == at:
                return event
            if event.every is not None:
                periods = (at - event.at) / event.every
                if periods > 0 and math.isclose(periods, round(periods)):
                    return event
    raise AssertionError(f"no NAT rebinding at {at}")


def migrations_with_cause(run: Run) -> list[tuple[ObservedMigration, MigrationResult]]:
    pairs = list(zip(observed(run), run.result.migrations, strict=True))
    for _, res in pairs:
        assert res.network_change_at is not None, "every migration follows a network change"
    return pairs


# --- verdicts and observed migrations ----------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_verdict_is_the_expected_one(builtin_run: BuiltinRuns, name: str) -> None:
    run = builtin_run(name)
    assert run.result.verdict is run.scenario.expect.verdict, run.result.reasons
    assert run.result.seed == SEED


@pytest.mark.parametrize("name", NAMES)
def test_observed_migration_kinds(builtin_run: BuiltinRuns, name: str) -> None:
    run = builtin_run(name)
    kinds = [m.kind for m in observed(run)]
    expect = run.scenario.expect
    if expect.min_migrations is not None:
        assert len(kinds) >= expect.min_migrations
    else:
        assert kinds == STOCK_MIGRATES_ANYWAY.get(name, list(expect.migrations))
    assert [m.observed for m in run.result.migrations] == kinds
    # Migrations chain: each starts where the previous one ended, on a fresh address.
    migs = observed(run)
    tracker = server_conn(run).tracker
    for before, after in itertools.pairwise(migs):
        assert after.old_peer == before.new_peer
    assert len({m.new_peer for m in migs}) == len(migs)
    assert tracker.peers_seen[0] == (migs[0].old_peer if migs else tracker.peer)
    assert len(run.result.paths_seen) == len(kinds) + 1 + len(run.scenario.attackers)


# Stock aioquic 1.7.2 sends only an ACK first when the old path's packets fill the congestion
# window (documented in these scenarios' TOML); `--stack quicmig` changes that.
CHALLENGE_LATE = {"blackhole", "network-switch", "make-before-break"}


def _download_expected_intact(name: str) -> bool:
    """Downloads that must arrive whole: passing scenarios, and those failing only on the late
    challenge or on the stock client migrating against disable_active_migration."""
    scenario = load_scenario(name)
    if not isinstance(scenario.workload, Download):
        return False
    return (
        scenario.expect.verdict is Verdict.PASSED
        or name in CHALLENGE_LATE
        or name in STOCK_MIGRATES_ANYWAY
    )


@pytest.mark.parametrize("name", [n for n in NAMES if _download_expected_intact(n)])
def test_download_arrives_intact(builtin_run: BuiltinRuns, name: str) -> None:
    run = builtin_run(name)
    spec = run.scenario.workload
    assert isinstance(spec, Download)
    (client,) = run.sim.clients
    workload = client.endpoint.workload
    assert isinstance(workload, DownloadClient)
    expected = hashlib.sha256(content(spec.size, workload.seed)).hexdigest()
    assert workload.delivery.total == spec.size
    assert workload.digest == expected
    assert list(server_conn(run).app.sent_digests.values()) == [expected]
    assert run.result.transfer.bytes == spec.size
    assert run.result.transfer.sha256 == expected
    assert run.result.transfer.completed_at is not None
    assert run.result.transfer.completed_at <= run.result.stats["run_seconds"]


@pytest.mark.parametrize("name", NAMES)
def test_migration_timeline_is_causal(builtin_run: BuiltinRuns, name: str) -> None:
    run = builtin_run(name)
    for mig, res in migrations_with_cause(run):
        assert res.network_change_at is not None
        links = path_links(run.scenario, mig.new_peer[0])
        assert mig.validated_at is not None
        assert mig.validated_at > mig.detected_at >= res.network_change_at
        # The new address can only reach the server after crossing the server's link; a
        # client that moved itself must also cross its own new link first.
        least = one_way(links) if res.network_change in ACTIVE else one_way(links[1:])
        assert mig.detected_at - res.network_change_at >= least - 1e-9
        assert res.detected_at == mig.detected_at
        assert res.validated_at == mig.validated_at


@pytest.mark.parametrize("name", NAMES)
def test_validation_rtt_matches_path(builtin_run: BuiltinRuns, name: str) -> None:
    run = builtin_run(name)
    for mig in observed(run):
        links = path_links(run.scenario, mig.new_peer[0])
        rtt = 2 * one_way(links)
        assert mig.validation_rtt is not None
        assert rtt <= mig.validation_rtt <= rtt + 2 * worst_queueing(links), (
            mig.validation_rtt,
            rtt,
        )
        answered = [c for c in mig.challenges if c.answered_at is not None]
        assert answered and all(c.peer == mig.new_peer for c in mig.challenges)


def test_a_switch_that_keeps_its_dcid_fails_the_new_dcid_check() -> None:
    """RFC 9000 section 9.5: the check judges what the server saw, not what the client meant."""
    scenario = load_scenario("network-switch", ["timeline.0.new_cid=false"]).with_stack("quicmig")
    result = run_scenario(scenario, RunOptions(seed=SEED))
    (moved,) = result.migrations
    assert moved.observed is MigrationKind.ADDRESS_CHANGE and not moved.cid_changed
    checks = {c.name: c.state for c in result.checks}
    assert checks["new-dcid-after-active-migration"] is CheckState.FAILED
    assert result.verdict is Verdict.FAILED


@pytest.mark.parametrize("name", NAMES)
def test_active_migrations_use_a_new_cid(builtin_run: BuiltinRuns, name: str) -> None:
    run = builtin_run(name)
    pairs = migrations_with_cause(run)
    active = [(mig, res) for mig, res in pairs if res.network_change in ACTIVE]
    if any(isinstance(e, Switch | AddressChange) for e in run.scenario.timeline):
        assert active, "the scenario moves the client itself"
    for mig, res in active:
        assert mig.cid_changed
        assert mig.old_dcid != mig.new_dcid
        assert res.cid_changed
        checks = {c.name: c.state for c in run.result.checks}
        assert checks["new-dcid-after-active-migration"] is CheckState.PASSED


@pytest.mark.parametrize("name", NAMES)
def test_nat_rebinding_moves_where_the_nat_says(builtin_run: BuiltinRuns, name: str) -> None:
    run = builtin_run(name)
    for mig, res in migrations_with_cause(run):
        if res.network_change not in (EventKind.NAT_REBINDING, EventKind.ADDRESS_REBINDING):
            continue
        assert res.network_change_at is not None
        event = rebind_event(run.scenario, res.network_change_at)
        pool = run.scenario.topology.nat(event.nat).external
        if event.new_address:
            assert mig.kind is MigrationKind.ADDRESS_CHANGE
            old_index = pool.index(mig.old_peer[0])
            assert mig.new_peer[0] == pool[(old_index + 1) % len(pool)]
        else:
            assert mig.kind is MigrationKind.PORT_CHANGE
            assert mig.old_peer[0] == mig.new_peer[0]
            assert mig.old_peer[1] != mig.new_peer[1]
        assert not mig.cid_changed  # the client did not know it moved
        # The server ends up talking to the NAT's current mapping for the client.
        nat = run.sim.network.nats[event.nat]
        (client,) = run.sim.clients
        if mig is observed(run)[-1]:
            assert nat.mapping_for(client.local) == mig.new_peer


@pytest.mark.parametrize("name", NAMES)
def test_first_packet_on_new_path_carries_challenge(builtin_run: BuiltinRuns, name: str) -> None:
    run = builtin_run(name)
    for mig in observed(run):
        assert mig.first_packet_to_peer_at is not None
        assert mig.first_packet_to_peer_at >= mig.detected_at
        if name in CHALLENGE_LATE:
            continue
        assert mig.first_packet_had_challenge is True
        assert mig.challenges[0].sent_at == mig.first_packet_to_peer_at


# --- scenario-specific behaviour ---------------------------------------------------------


def test_cid_rotation(builtin_run: BuiltinRuns) -> None:
    run = builtin_run("cid-rotation")
    tracker = server_conn(run).tracker
    assert tracker.migrations == []
    rotations = [r.at for r in tracker.cid_rotations]
    assert len(rotations) >= 2
    assert len(tracker.peers_seen) == 1
    (client,) = run.sim.clients
    links = path_links(run.scenario, tracker.peers_seen[0][0])
    # Each rotation is seen one trip after the client switched: its PING crosses the path.
    assert len(rotations) == len(run.scenario.timeline)
    for event, seen in zip(run.scenario.timeline, rotations, strict=True):
        earliest = event.at + one_way(links)
        assert earliest <= seen <= earliest + worst_queueing(links)
    spec = run.scenario.workload
    assert isinstance(spec, Messages)
    assert run.result.transfer.bytes == spec.count * spec.size
    assert client.endpoint.workload.completed_at is not None


def test_nat_rebinding_idle_stalls_for_good(builtin_run: BuiltinRuns) -> None:
    run = builtin_run("nat-rebinding-idle")
    spec = run.scenario.workload
    assert isinstance(spec, Stream)
    (event,) = run.scenario.timeline
    (client,) = run.sim.clients
    workload = client.endpoint.workload
    assert workload.completed_at is None
    assert run.result.transfer.completed_at is None
    assert not run.result.transfer.intact
    failed = {c.name for c in run.result.checks if c.state is CheckState.FAILED}
    assert "transfer-intact" in failed
    # Nothing reached the client after the rebinding (plus the path's one-way delay) ...
    links = path_links(run.scenario, server_conn(run).tracker.peers_seen[0][0])
    assert workload.delivery.times
    assert max(workload.delivery.times) < event.at + one_way(links) + worst_queueing(links)
    assert workload.delivery.total < spec.rate * spec.duration / 8
    # ... because the server's datagrams died at the NAT, and the server never saw a new path.
    assert run.result.stats["nat_inbound_drops"]["home"] > 0
    assert observed(run) == []


def test_nat_rebinding_keepalive_recovers(builtin_run: BuiltinRuns) -> None:
    run = builtin_run("nat-rebinding-keepalive")
    assert run.result.verdict is Verdict.PASSED
    (mig,) = observed(run)
    (event,) = run.scenario.timeline
    keepalive = run.scenario.client.keepalive
    assert keepalive is not None
    links = path_links(run.scenario, mig.new_peer[0])
    # The client sends within one keepalive interval, and that reaches the server one way later.
    assert mig.detected_at <= event.at + keepalive + one_way(links) + worst_queueing(links)
    spec = run.scenario.workload
    assert isinstance(spec, Stream)
    (client,) = run.sim.clients
    assert client.endpoint.workload.completed_at is not None
    # Every frame of the stream arrived.
    assert client.endpoint.workload.delivery.total == pytest.approx(
        spec.rate * spec.duration / 8, abs=spec.chunk
    )


@pytest.mark.parametrize("name", sorted(CHALLENGE_LATE))
def test_stock_aioquic_fails_only_on_first_packet_challenge(
    builtin_run: BuiltinRuns, name: str
) -> None:
    run = builtin_run(name)
    failed = [c.name for c in run.result.checks if c.state is CheckState.FAILED]
    assert failed == ["first-packet-challenge"]
    # Under RFC 9000's own rules (validation before use beyond 3x) the run passes.
    assert run.result.verdicts[Rules.RFC9000] is Verdict.PASSED
    (mig,) = observed(run)
    assert mig.first_packet_had_challenge is False
    # The challenge did go out later on the new path and was answered.
    assert mig.challenges and mig.validated_at is not None
    assert mig.first_packet_to_peer_at is not None
    assert mig.challenges[0].sent_at > mig.first_packet_to_peer_at


def test_blackhole_fails_over_after_the_silence(builtin_run: BuiltinRuns) -> None:
    run = builtin_run("blackhole")
    # The failover happened after the link went dead plus the client's silence threshold.
    (change,) = run.scenario.timeline
    failover = run.scenario.client.failover_after
    assert failover is not None
    (res,) = run.result.migrations
    assert res.network_change is EventKind.FAILOVER
    assert res.network_change_at is not None
    assert res.network_change_at >= change.at + failover


# --- determinism -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["nat-rebinding", "cid-rotation", "nat-rebinding-keepalive"])
def test_same_seed_same_result(builtin_run: BuiltinRuns, name: str) -> None:
    first = builtin_run(name).result.to_dict(series=True)
    again = run_scenario(load_scenario(name), RunOptions(seed=SEED)).to_dict(series=True)
    del first["wall"], again["wall"]
    assert again == first


@pytest.mark.parametrize("suffix", [".png", ".svg", ".pdf"])
def test_same_seed_same_figure(builtin_run: BuiltinRuns, tmp_path: Path, suffix: str) -> None:
    result = builtin_run("nat-rebinding-keepalive").result
    first, again = tmp_path / f"a{suffix}", tmp_path / f"b{suffix}"
    plot_timeline(result, first)
    plot_timeline(result, again)
    assert first.read_bytes() == again.read_bytes()


def test_another_seed_still_passes() -> None:
    result = run_scenario(load_scenario("nat-rebinding-keepalive"), RunOptions(seed=2))
    assert result.seed == 2
    assert result.verdict is Verdict.PASSED


def test_same_seed_same_result_in_another_process(builtin_run: BuiltinRuns) -> None:
    """Nothing process-specific (hash seed, certificate serials, ...) leaks into a run."""
    name = "nat-rebinding-keepalive"
    code = (
        "import json, sys\n"
        "from quicmig.model.loader import load_scenario\n"
        "from quicmig.runner import RunOptions\n"
        "from quicmig.sim.runner import run_scenario\n"
        f"data = run_scenario(load_scenario({name!r}), RunOptions(seed={SEED})).to_dict(True)\n"
        "del data['wall']\n"
        "json.dump(data, sys.stdout)\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, env=env
    )
    assert proc.returncode == 0, proc.stderr
    here = builtin_run(name).result.to_dict(series=True)
    del here["wall"]
    assert json.loads(proc.stdout) == json.loads(json.dumps(here))
