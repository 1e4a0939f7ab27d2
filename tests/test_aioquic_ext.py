"""quicmig's aioquic extensions (src/quicmig/aioquic_ext.py), each observed on the wire.

Every assertion reads what the server's tracker saw (packets aioquic sent or authenticated,
with their UDP addresses, and aioquic's own recovery metrics), never what the extension
meant to do. Each extension is compared with stock aioquic on the same seed, so a test
fails if the extension stops making a difference as well as if it breaks something.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest
from aioquic.quic.connection import QuicConnection

from quicmig.aioquic_ext import QuicmigConnection, connection_class
from quicmig.cli import main
from quicmig.core.certs import simulation_certificates
from quicmig.core.datagram import Address
from quicmig.core.endpoint import (
    ClientEndpoint,
    ServerEndpoint,
    client_configuration,
    server_configuration,
)
from quicmig.core.tap import TapLogger
from quicmig.core.tracker import MigrationTracker, RecoverySample
from quicmig.errors import InputError
from quicmig.model.loader import load_scenario
from quicmig.model.scenario import Download, QuicExtensions, Scenario
from quicmig.sim.runner import RunOptions, Simulation

CHALLENGE_SCENARIOS = ("network-switch", "make-before-break", "blackhole", "rebind-port")
MAX_DATAGRAM = 1200  # bytes: aioquic's default max_datagram_size
INITIAL_WINDOW = 10 * MAX_DATAGRAM  # bytes: RFC 9002 section 7.2, aioquic's K_INITIAL_WINDOW


class Runs:
    """Each (scenario, stack) runs once per session on seed 1."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], tuple[Scenario, Simulation]] = {}

    def __call__(self, name: str, stack: str) -> tuple[Scenario, Simulation]:
        if (name, stack) not in self._cache:
            scenario = load_scenario(name).with_stack(stack)
            sim = Simulation(scenario, RunOptions(seed=1))
            sim.run()
            self._cache[name, stack] = (scenario, sim)
        return self._cache[name, stack]


_RUNS = Runs()


def tracker(name: str, stack: str) -> MigrationTracker:
    _, sim = _RUNS(name, stack)
    (conn,) = sim.server.endpoint.connections
    return conn.tracker


def result_of(name: str, stack: str) -> object:
    return _RUNS(name, stack)[1]


def sample_at(samples: list[RecoverySample], at: float) -> RecoverySample:
    """The last recovery sample logged at or before `at` with a congestion window."""
    before = [s for s in samples if s.at <= at and s.cwnd is not None]
    return before[-1]


# --- switches ----------------------------------------------------------------------------


def test_all_off_is_stock_aioquic() -> None:
    assert connection_class(QuicExtensions()) is QuicConnection
    cls = connection_class(QuicExtensions(challenge_first=True))
    assert issubclass(cls, QuicmigConnection)
    assert cls.extensions == QuicExtensions(challenge_first=True)
    # Configuring one class leaves the others alone.
    other = connection_class(QuicExtensions(reset_recovery=True))
    assert issubclass(other, QuicmigConnection)
    assert cls.extensions.challenge_first and not other.extensions.challenge_first


def test_builtin_scenarios_are_stock_and_stack_switches_everything() -> None:
    scenario = load_scenario("network-switch")
    assert scenario.quic == QuicExtensions()
    assert scenario.expect.verdict == "failed"
    on = scenario.with_stack("quicmig")
    assert on.quic == QuicExtensions.all_on()
    assert on.expect.verdict == "passed"
    assert on.with_stack("stock").quic == QuicExtensions()
    with pytest.raises(InputError, match="stock, quicmig"):
        scenario.with_stack("quiche")


def test_quic_table_and_set() -> None:
    scenario = load_scenario("rebind-port", ["quic.challenge_first=true"])
    assert scenario.quic == QuicExtensions(challenge_first=True)
    with pytest.raises(InputError, match=r"quic\.first: unknown key; allowed: challenge_first"):
        load_scenario("rebind-port", ["quic.first=true"])
    with pytest.raises(InputError, match=r"quic\.reset_recovery: expected true or false"):
        load_scenario("rebind-port", ["quic.reset_recovery=1"])


def test_cli_stack(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "make-before-break", "--stack", "quicmig", "-q"]) == 0
    assert main(["run", "make-before-break", "--stack", "stock", "-q"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["make-before-break: passed", "make-before-break: failed"]
    # -q names what failed, one indented line per check
    assert lines[2].startswith("  first-packet-challenge: no PATH_CHALLENGE") and len(lines) == 3
    with pytest.raises(SystemExit) as exc:
        main(["run", "make-before-break", "--stack", "both"])
    assert exc.value.code == 2


# --- challenge_first (RFC 9000 sections 8.2.1, 9.3; RFC 9002 section 7) -------------------


@pytest.mark.parametrize("name", CHALLENGE_SCENARIOS)
def test_first_packet_on_new_path_carries_challenge(name: str) -> None:
    migrations = tracker(name, "quicmig").migrations
    assert migrations
    for mig in migrations:
        assert mig.first_packet_had_challenge is True, mig
        assert mig.challenges and mig.challenges[0].in_first_packet
        assert mig.challenges[0].sent_at == mig.first_packet_to_peer_at
        assert mig.validated_at is not None


@pytest.mark.parametrize("name", ["network-switch", "blackhole"])
def test_stock_challenge_is_late_where_the_window_is_full(name: str) -> None:
    """The difference the extension makes, on the same seed: stock sends a bare ACK first."""
    stock = tracker(name, "stock").migrations[0]
    ours = tracker(name, "quicmig").migrations[0]
    assert stock.first_packet_had_challenge is False
    # The window was full when stock aioquic sent that ACK (what the extension works around).
    assert stock.first_packet_to_peer_at is not None
    full = sample_at(tracker(name, "stock").recovery, stock.first_packet_to_peer_at)
    assert full.bytes_in_flight is not None and full.cwnd is not None
    assert full.bytes_in_flight >= full.cwnd - MAX_DATAGRAM
    assert stock.validated_at is not None and ours.validated_at is not None
    assert ours.validated_at - ours.detected_at < stock.validated_at - stock.detected_at


def test_quicmig_stack_passes_where_stock_fails() -> None:
    for name in ("network-switch", "blackhole", "make-before-break"):
        scenario, sim = _RUNS(name, "quicmig")
        assert scenario.expect.verdict == "passed"
        result = sim._result(sim.scheduler.now, 1.0)
        assert result.verdict.value == "passed", result.reasons
        assert result.stats["quic_extensions"] == list(QuicExtensions.NAMES)


# --- reset_recovery (RFC 9000 section 9.4) -------------------------------------------------


def test_address_change_resets_window_and_rtt() -> None:
    """At validation the window restarts from the initial window; old-path bytes leave it."""
    for stack, reset in (("quicmig", True), ("stock", False)):
        track = tracker("network-switch", stack)
        mig = track.migrations[0]
        assert mig.validated_at is not None
        before = sample_at(track.recovery, mig.detected_at)
        after = sample_at(track.recovery, mig.validated_at)
        assert before.cwnd is not None and before.cwnd > 10 * INITIAL_WINDOW  # WiFi's window
        assert after.cwnd is not None and after.bytes_in_flight is not None
        if reset:
            assert after.cwnd <= INITIAL_WINDOW + MAX_DATAGRAM
            # The old path's ~300 kB in flight no longer count; only the new path's packets.
            assert after.bytes_in_flight <= INITIAL_WINDOW
            # A fresh RTT estimate: the first samples are the cellular path's, not WiFi's
            # smoothed mix (cellular: 2 x (60 + 1) ms, WiFi: 2 x (20 + 1) ms).
            rtts = [s.smoothed_rtt for s in track.recovery if s.at >= mig.validated_at]
            first = next(r for r in rtts if r is not None)
            assert 0.120 <= first < 0.2
        else:
            assert after.cwnd > 10 * INITIAL_WINDOW


def test_port_only_change_keeps_recovery_state() -> None:
    """RFC 9000 section 9.4: a NAT rebinding (port only) keeps the window."""
    track = tracker("rebind-port", "quicmig")
    for mig in track.migrations:
        assert mig.kind == "port_change"
        assert mig.validated_at is not None
        before = sample_at(track.recovery, mig.detected_at)
        after = sample_at(track.recovery, mig.validated_at)
        assert before.cwnd is not None and after.cwnd is not None
        assert after.cwnd >= before.cwnd // 2  # at most a loss response, never a reset
        assert after.cwnd > INITIAL_WINDOW + MAX_DATAGRAM


# --- a lost challenge, a failed validation: driven by hand --------------------------------

SERVER: Address = ("203.0.113.10", 4433)
OLD: Address = ("198.51.100.10", 50000)
NEW: Address = ("198.51.100.20", 50001)
ONE_WAY = 0.02  # seconds


class Pair:
    """A client and a server endpoint joined by a lossless 20 ms pipe in virtual time.

    `drop(data, src, dst)` decides which datagrams never arrive; `client_addr` is where the
    client's datagrams come from, as the server sees it.
    """

    def __init__(self, extensions: QuicExtensions, size: int = 3_000_000) -> None:
        certs = simulation_certificates()
        self.logger = TapLogger(keep=False)
        self.server = ServerEndpoint(
            server_configuration(certs, self.logger),
            connection_class=connection_class(extensions),
        )
        self.client = ClientEndpoint(
            client_configuration(certs.ca_pem), SERVER, Download(size), seed=1
        )
        self.client_addr = OLD
        self.now = 0.0
        self.drop: Callable[[bytes, Address, Address], bool] = lambda data, src, dst: False
        self._flight: list[tuple[float, str, bytes, Address]] = []  # (arrival, to, data, src)

    def run(self, until: float, step: float = 0.005) -> None:
        if self.now == 0.0:
            self.client.connect(0.0)
        while self.now < until:
            for data, _ in self.client.datagrams_to_send(self.now):
                if not self.drop(data, self.client_addr, SERVER):
                    self._flight.append((self.now + ONE_WAY, "server", data, self.client_addr))
            for data, dst in self.server.datagrams_to_send(self.now):
                if not self.drop(data, SERVER, dst) and dst == self.client_addr:
                    self._flight.append((self.now + ONE_WAY, "client", data, SERVER))
            self.now = round(self.now + step, 6)
            due = [f for f in self._flight if f[0] <= self.now]
            self._flight = [f for f in self._flight if f[0] > self.now]
            for _, to, data, src in due:
                if to == "server":
                    self.server.receive_datagram(data, src, self.now)
                else:
                    self.client.receive_datagram(data, src, self.now)
            self.client.handle_timer(self.now)
            self.server.handle_timer(self.now)

    @property
    def tracker(self) -> MigrationTracker:
        (conn,) = self.server.connections
        return conn.tracker


@pytest.mark.parametrize("stack", ["stock", "quicmig"])
def test_lost_challenge_is_sent_again(stack: str) -> None:
    """The server's first datagram to the new address (carrying PATH_CHALLENGE) is lost."""
    pair = Pair(QuicExtensions.all_on() if stack == "quicmig" else QuicExtensions())
    pair.run(0.5)
    dropped: list[bytes] = []

    def drop_first_to_new(data: bytes, src: Address, dst: Address) -> bool:
        if dst == NEW and not dropped:
            dropped.append(data)
            return True
        return False

    pair.drop = drop_first_to_new
    pair.client_addr = NEW  # a NAT rebinding: new address, same connection ID
    pair.client.migrate(pair.now, new_cid=False)
    pair.run(3.0)
    assert dropped
    (mig,) = pair.tracker.migrations
    challenges = mig.challenges
    assert len(challenges) >= 2, challenges
    assert challenges[0].answered_at is None  # the lost one
    assert challenges[1].data != challenges[0].data  # new data, RFC 9000 section 8.2.1
    assert mig.validated_at is not None
    if stack == "quicmig":
        assert mig.first_packet_had_challenge is True
    assert pair.client.workload.done


def test_failed_validation_falls_back_to_the_validated_path() -> None:
    """Nothing answers on the new address: after the deadline the server returns to the old.

    This is aioquic 1.7.2's own behaviour (RFC 9000 sections 8.2.4, 9.3.2), kept with the
    extensions on: packets the server sends after the deadline go to the old address.
    """
    pair = Pair(QuicExtensions.all_on())
    pair.run(0.5)
    # One packet arrives from NEW (as a spoofer replaying it would make it), then nothing:
    # everything to NEW is lost, and the client stays on OLD.
    pair.client_addr = NEW
    pair.client.migrate(pair.now, new_cid=False)
    pair.drop = lambda data, src, dst: dst == NEW
    pair.run(pair.now + 0.01)
    pair.client_addr = OLD
    pair.drop = lambda data, src, dst: dst == NEW or (src == OLD and pair.now < 1.5)
    sent_to_old_before = pair.tracker.datagrams_to[OLD]
    # Until 1.5 s nothing from the client arrives at all, so only the server's own
    # validation deadline can send it back to OLD.
    pair.run(1.5)
    (mig,) = pair.tracker.migrations
    assert mig.new_peer == NEW and mig.validated_at is None
    assert mig.challenges and mig.challenges[0].in_first_packet
    assert pair.tracker.datagrams_to[NEW] <= 3 * pair.tracker.datagrams_from[NEW]
    assert pair.tracker.datagrams_to[OLD] > sent_to_old_before
    pair.run(6.0)
    assert pair.client.workload.done and pair.client.closed is None


def test_same_seed_same_json() -> None:
    scenario = replace(load_scenario("make-before-break"), quic=QuicExtensions.all_on())
    first, second = (Simulation(scenario, RunOptions(seed=3)).run().to_dict() for _ in range(2))
    for data in (first, second):
        data.pop("wall")
    assert first == second
