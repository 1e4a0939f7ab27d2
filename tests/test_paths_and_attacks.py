"""Preferred address, disable_active_migration, spoofing and amplification, each observed
on the wire.

Assertions read what crossed the simulated wire (a tap on the server's interfaces), what the
server's tracker saw (packets aioquic authenticated, with the server address they reached),
or, live, what the server observed on real loopback sockets.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from conftest import Run, simulate

from quicmig.aioquic_ext import QuicmigConnection, connection_class
from quicmig.cli import main
from quicmig.core.checks import attack_checks, preferred_address_checks
from quicmig.core.datagram import Address, Datagram
from quicmig.core.tracker import ObservedMigration, ServerAddressUse
from quicmig.errors import InputError
from quicmig.live.certs import CertPaths
from quicmig.live.client import LiveClient
from quicmig.live.server import LiveServer
from quicmig.model.events import EventKind
from quicmig.model.loader import load_scenario
from quicmig.model.scenario import QuicExtensions, ServerSettings
from quicmig.model.verdicts import CheckState, MigrationKind, Verdict
from quicmig.runner import RunOptions
from quicmig.sim.runner import Simulation

PASSED, FAILED = CheckState.PASSED, CheckState.FAILED
ORIGINAL: Address = ("203.0.113.10", 4433)
PREFERRED: Address = ("203.0.113.20", 4433)


def run(name: str, stack: str = "stock", *overrides: str) -> Run:
    return simulate(load_scenario(name, overrides).with_stack(stack), RunOptions(seed=1))


def checks(run: Run) -> dict[str, CheckState]:
    return {c.name: c.state for c in run.result.checks}


# --- disable_active_migration -------------------------------------------------------------


def test_disable_active_migration_is_read_and_honoured() -> None:
    done = run("disable-migration", "quicmig")
    sim = done.sim
    client = sim.clients[0].endpoint
    assert isinstance(client.conn, QuicmigConnection)
    assert client.conn.peer_disabled_active_migration  # from the server's transport parameters
    assert client.active_migration_refusal() is not None
    refused = [c for c in sim.changes if c.kind is EventKind.MIGRATION_REFUSED]
    assert len(refused) == 1 and "disable_active_migration" in refused[0].detail
    (conn,) = sim.server.endpoint.connections
    tracker = conn.tracker
    # The NAT rebinding still moved the connection; the switch to cellular never happened.
    assert [m.kind for m in tracker.migrations] == [MigrationKind.PORT_CHANGE]
    assert tracker.migrations[0].validated_at is not None
    assert all(peer[0].startswith("198.51.100.1") for peer in tracker.peers_seen)  # home NAT
    assert done.result.verdict is Verdict.PASSED
    assert checks(done)["disable-active-migration-honoured"] is CheckState.PASSED


def test_stock_client_migrates_against_disable_active_migration() -> None:
    """What the server does when a client migrates anyway: it validates and follows."""
    done = run("disable-migration", "stock")
    sim = done.sim
    assert not [c for c in sim.changes if c.kind is EventKind.MIGRATION_REFUSED]
    (conn,) = sim.server.endpoint.connections
    kinds = [m.kind for m in conn.tracker.migrations]
    assert kinds == [MigrationKind.PORT_CHANGE, MigrationKind.ADDRESS_CHANGE]
    moved = conn.tracker.migrations[1]
    assert moved.new_peer[0].startswith("198.51.100.2")  # the cellular carrier's NAT
    assert moved.challenges and moved.validated_at is not None
    assert checks(done)["disable-active-migration-honoured"] is CheckState.FAILED
    assert done.result.verdict is Verdict.FAILED is sim.scenario.expect.verdict


def test_stock_server_sends_no_disable_active_migration() -> None:
    done = run("nat-rebinding", "quicmig", "duration_s=1", "timeline.0.at_s=0.5")
    conn = done.sim.clients[0].endpoint.conn
    assert isinstance(conn, QuicmigConnection) and not conn.peer_disabled_active_migration


# --- spoofing and amplification -----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "source"),
    [("spoofed-address", ("198.51.100.99", 4444)), ("off-path-forward", ("203.0.113.66", 5555))],
)
@pytest.mark.parametrize("stack", ["stock", "quicmig"])
def test_attack_does_not_hurt(name: str, source: Address, stack: str) -> None:
    arrived: list[Datagram] = []

    def tap(sim: Simulation) -> None:  # what reached the server's interface from the attacker
        sim.network.tap_interface(
            sim.server.ref, lambda d, now: arrived.append(d) if d.src == source else None
        )

    done = simulate(load_scenario(name).with_stack(stack), RunOptions(seed=1), tap)
    sim = done.sim
    wire = sim.wire  # a tap on the server's interface: UDP payload bytes by address
    assert len(arrived) == 3  # every copy reached the server
    assert wire.received[source] == sum(len(d.data) for d in arrived)
    assert 0 < wire.sent[source] <= 3 * wire.received[source]  # RFC 9000 section 8.1
    (conn,) = sim.server.endpoint.connections
    tracker = conn.tracker
    to_attacker = [m for m in tracker.migrations if m.new_peer == source]
    assert len(to_attacker) == 3  # each copy won the race: a spurious migration
    assert all(m.validated_at is None and m.challenges for m in to_attacker)
    client = sim.clients[0].local
    back = [m for m in tracker.migrations if m.old_peer == source]
    assert len(back) == 3 and all(m.new_peer == client for m in back)
    for there, away in zip(to_attacker, back, strict=True):
        assert away.detected_at - there.detected_at < 0.1  # seconds on the attacker's address
    assert tracker.peer == client
    assert sim.clients[0].endpoint.closed is None or sim.clients[0].done_at is not None
    assert done.result.transfer.intact
    assert done.result.verdict is Verdict.PASSED


def test_spoof_tampered_copies_from_the_client_address_are_dropped() -> None:
    done = run("spoofed-address")
    sim = done.sim
    client = sim.clients[0].local
    # The client's address brought three extra (tampered) datagrams; none was authenticated.
    (conn,) = sim.server.endpoint.connections
    authenticated = conn.tracker.datagrams_from[client]
    assert sim.wire.received[client] > authenticated  # tampered bytes never authenticated
    assert done.result.transfer.intact


def test_attack_checks_fail_when_the_server_misbehaves() -> None:
    attacker: Address = ("198.51.100.99", 4444)
    client: Address = ("198.51.100.50", 1000)
    there = ObservedMigration(1.0, client, attacker, "a", "a")
    ok = attack_checks([attacker], {attacker: 100}, {attacker: 300}, [there], client)
    assert [c.state for c in ok] == [PASSED, PASSED, FAILED]  # never left the attacker
    back = ObservedMigration(1.05, attacker, client, "a", "a")
    ok = attack_checks([attacker], {attacker: 100}, {attacker: 300}, [there, back], client)
    assert all(c.state is PASSED for c in ok)
    over = attack_checks([attacker], {attacker: 100}, {attacker: 301}, [there, back], client)
    assert [c.name for c in over if c.state is FAILED] == ["amplification-limit"]
    stayed = attack_checks([attacker], {attacker: 100}, {}, [there, back], attacker)
    assert [c.name for c in stayed if c.state is FAILED] == ["attacker-path-abandoned"]
    none = attack_checks([attacker], {}, {}, [], client)
    assert [c.name for c in none if c.state is FAILED] == ["attack-reached-server"]


# --- preferred address, in the simulator ---------------------------------------------------


def test_stock_server_cannot_send_a_preferred_address() -> None:
    from aioquic.quic.connection import QuicConnection

    assert connection_class(QuicExtensions()) is QuicConnection
    cls = connection_class(QuicExtensions(), ServerSettings(preferred_address=PREFERRED))
    assert issubclass(cls, QuicmigConnection)


def test_client_moves_to_the_preferred_address() -> None:
    on_wire: list[tuple[float, Datagram]] = []

    def tap(sim: Simulation) -> None:
        sim.network.tap_interface("server.eth1", lambda d, now: on_wire.append((now, d)))

    done = simulate(load_scenario("preferred-address"), RunOptions(seed=1), tap)
    sim, result = done.sim, done.result
    assert result.verdict is Verdict.PASSED, result.reasons
    (conn,) = sim.server.endpoint.connections
    use = conn.tracker.server_addresses[PREFERRED]
    assert use.first_packet_probing  # the client's PATH_CHALLENGE
    assert use.first_dcid_new  # interop connectionmigration
    assert use.moved_at is not None and use.moved_at > use.first_packet_at
    assert conn.tracker.local == PREFERRED
    # The new DCID came with the move to another server address: not a rotation, not a
    # migration of the client's address.
    assert conn.tracker.cid_rotations == [] and conn.tracker.migrations == []
    assert sim.clients[0].endpoint.conn.get_peer_address() == PREFERRED
    # On the wire: the server answered at the preferred address, and sent its bulk data
    # from there only after the client's first non-probing packet arrived (RFC 9000 9.6.3).
    sent = [(now, d) for now, d in on_wire if d.src == PREFERRED]
    assert sent and sum(len(d.data) for _, d in sent) > 1_000_000
    early = [len(d.data) for now, d in sent if now < use.moved_at]
    assert sum(early) < 3 * 1252  # probing packets only (PATH_RESPONSE, PATH_CHALLENGE)
    assert result.transfer.intact
    assert result.stats["preferred_address"]["first_dcid_new"] is True


def test_unreachable_preferred_address_client_stays() -> None:
    done = run("preferred-address-unreachable")
    sim = done.sim
    (conn,) = sim.server.endpoint.connections
    assert PREFERRED not in conn.tracker.server_addresses  # nothing got through
    assert conn.tracker.local is None
    assert sim.clients[0].endpoint.conn.get_peer_address() == ORIGINAL
    assert done.result.transfer.intact
    assert done.result.verdict is Verdict.PASSED
    # The same run expecting a move fails: the check can fail.
    moved = run("preferred-address-unreachable", "stock", "expect.preferred_address_used=true")
    assert checks(moved)["preferred-address-used"] is CheckState.FAILED


def test_preferred_address_checks_fail_on_an_old_dcid() -> None:
    use = ServerAddressUse(PREFERRED, 0.1, "aa", False, True, moved_at=0.2)
    assert [c.state for c in preferred_address_checks(PREFERRED, True, use)] == [PASSED, FAILED]
    assert [c.state for c in preferred_address_checks(PREFERRED, False, use)] == [FAILED]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"nonsense"', "is not IP:PORT"),
        ('"203.0.113.20"', "is not IP:PORT"),
        ('"[2001:db8::20]:4433"', "not of the family"),
        ('"203.0.113.10:4433"', "the server's own address"),
        ('"203.0.113.99:4433"', "not an address of host"),
    ],
)
def test_bad_preferred_address(
    value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(InputError, match=message):
        load_scenario("preferred-address", [f"server.preferred_address={value}"])
    assert main(["run", "preferred-address", "--set", f"server.preferred_address={value}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_cli_run_preferred_address(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "preferred-address", "-q"]) == 0
    assert capsys.readouterr().out.split() == ["preferred-address:", "passed"]


def test_same_seed_same_json() -> None:
    for name in ("preferred-address", "spoofed-address"):
        scenario = load_scenario(name)
        first, second = (simulate(scenario, RunOptions(seed=5)).result.to_dict() for _ in "ab")
        first.pop("wall")
        second.pop("wall")
        assert json.dumps(first) == json.dumps(second)


# --- preferred address, live on loopback ---------------------------------------------------


def test_live_client_follows_the_preferred_address(certs: CertPaths) -> None:
    async def scenario() -> tuple[LiveServer, Address, list[str], bool]:
        log: list[str] = []
        server = LiveServer(
            certs, [("127.0.0.1", 0)], log=log.append, preferred_addresses=[("127.0.0.1", 0)]
        )
        async with server:
            (preferred,) = server.preferred
            async with LiveClient(server.addresses[0], ca=certs.ca, server_name="localhost") as c:
                intact = (await c.download(200_000)).intact
                for _ in range(20):  # the move follows the handshake's confirmation
                    await c.send_message(b"ping")
                    tracker = server.connections[0].server_conn.tracker
                    use = tracker.server_addresses.get(preferred)
                    if use is not None and use.moved_at is not None:
                        break
                    await asyncio.sleep(0.01)
                intact = intact and (await c.download(200_000)).intact
                assert c.endpoint is not None
                assert c.endpoint.conn.get_peer_address() == preferred
        return server, preferred, log, intact

    server, preferred, log, intact = asyncio.run(asyncio.wait_for(scenario(), 20))
    tracker = server.connections[0].server_conn.tracker
    use = tracker.server_addresses[preferred]
    assert use.first_packet_probing and use.first_dcid_new and use.moved_at is not None
    assert tracker.local == preferred
    assert tracker.peers_seen == tracker.peers_seen[:1]  # the client's address never changed
    assert intact
    assert any("moved to the preferred address" in line for line in log)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("localhost:x", "not IP:PORT"),
        ("[::1]:4434", "listens on IPv4 only"),
        ("127.0.0.1:4433", "the server's own address"),
    ],
)
def test_live_bad_preferred_address(
    value: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["server", "--cert", str(tmp_path / "c.pem"), "--key", str(tmp_path / "k.pem")]
    assert main([*args, "--preferred-address", value]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "c.pem").exists()  # rejected before anything was created


@pytest.mark.parametrize("probe", [False, True], ids=["stock", "probe_old_path"])
def test_apparent_migration_makes_the_server_challenge_the_old_path(probe: bool) -> None:
    """RFC 9000 section 9.3.3: after a move to the forwarding attacker's address, the server
    challenges the previously active path; the real client there answers it."""
    switch = f"quic.probe_old_path={'true' if probe else 'false'}"
    done = simulate(load_scenario("off-path-forward", [switch]), RunOptions(seed=1))
    sim, result = done.sim, done.result
    (conn,) = sim.server.endpoint.connections
    tracker = conn.tracker
    (attacker,) = sim.scenario.attackers
    to_attacker = [m for m in tracker.migrations if m.new_peer == attacker.source]
    assert to_attacker  # the forwarded copies won the race, as in the stock run
    client = to_attacker[0].old_peer
    to_client = [c for c in tracker.challenges if c.peer == client]
    if not probe:
        assert to_client == []  # stock aioquic 1.7.2 never challenges the old path
        return
    # One challenge to the client's address per apparent migration, sent at that instant...
    assert [c.sent_at for c in to_client] == [m.detected_at for m in to_attacker]
    # ...and answered by the live client within a round trip or two of the 20 ms WiFi link.
    assert all(c.answered_at is not None and c.answered_at - c.sent_at < 0.2 for c in to_client)
    assert result.verdict is Verdict.PASSED
