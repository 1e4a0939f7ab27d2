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
from conftest import BuiltinRuns, Run, simulate
from pairs import NEW, OLD, Pair

from quicmig.aioquic_ext import QuicmigConnection, connection_class
from quicmig.cli import main
from quicmig.core.datagram import Address
from quicmig.core.tracker import MigrationTracker, RecoverySample
from quicmig.errors import InputError
from quicmig.model.loader import load_scenario
from quicmig.model.scenario import QuicExtensions
from quicmig.model.verdicts import MigrationKind, Verdict
from quicmig.runner import RunOptions

CHALLENGE_SCENARIOS = ("network-switch", "make-before-break", "blackhole", "rebind-port")
MAX_DATAGRAM = 1200  # bytes: aioquic's default max_datagram_size
INITIAL_WINDOW = 10 * MAX_DATAGRAM  # bytes: RFC 9002 section 7.2, aioquic's K_INITIAL_WINDOW


@pytest.fixture(scope="module")
def runs(builtin_run: BuiltinRuns) -> Callable[[str, str], Run]:
    return lambda name, stack: builtin_run(name, stack=stack)


def tracker_of(run: Run) -> MigrationTracker:
    (conn,) = run.sim.server.endpoint.connections
    return conn.tracker


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
    assert scenario.expect.verdict is Verdict.FAILED
    on = scenario.with_stack("quicmig")
    assert on.quic == QuicExtensions.all_on()
    assert on.expect.verdict is Verdict.PASSED
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
    assert lines[:2] == ["make-before-break: passed", "make-before-break: failed (as expected)"]
    # -q names what failed, one indented line per check
    assert lines[2].startswith("  first-packet-challenge: no PATH_CHALLENGE") and len(lines) == 3
    with pytest.raises(SystemExit) as exc:
        main(["run", "make-before-break", "--stack", "both"])
    assert exc.value.code == 2


# --- challenge_first (RFC 9000 sections 8.2.1, 9.3; RFC 9002 section 7) -------------------


@pytest.mark.parametrize("name", CHALLENGE_SCENARIOS)
def test_first_packet_on_new_path_carries_challenge(
    runs: Callable[[str, str], Run], name: str
) -> None:
    migrations = tracker_of(runs(name, "quicmig")).migrations
    assert migrations
    for mig in migrations:
        assert mig.first_packet_had_challenge is True, mig
        assert mig.challenges and mig.challenges[0].in_first_packet
        assert mig.challenges[0].sent_at == mig.first_packet_to_peer_at
        assert mig.validated_at is not None


@pytest.mark.parametrize("name", ["network-switch", "blackhole"])
def test_stock_challenge_is_late_where_the_window_is_full(
    runs: Callable[[str, str], Run], name: str
) -> None:
    """The difference the extension makes, on the same seed: stock sends a bare ACK first."""
    stock_tracker = tracker_of(runs(name, "stock"))
    stock = stock_tracker.migrations[0]
    ours = tracker_of(runs(name, "quicmig")).migrations[0]
    assert stock.first_packet_had_challenge is False
    # The window was full when stock aioquic sent that ACK (what the extension works around).
    assert stock.first_packet_to_peer_at is not None
    full = sample_at(stock_tracker.recovery, stock.first_packet_to_peer_at)
    assert full.bytes_in_flight is not None and full.cwnd is not None
    assert full.bytes_in_flight >= full.cwnd - MAX_DATAGRAM
    assert stock.validated_at is not None and ours.validated_at is not None
    assert ours.validated_at - ours.detected_at < stock.validated_at - stock.detected_at


def test_quicmig_stack_passes_where_stock_fails(runs: Callable[[str, str], Run]) -> None:
    for name in ("network-switch", "blackhole", "make-before-break"):
        run = runs(name, "quicmig")
        assert run.scenario.expect.verdict is Verdict.PASSED
        assert run.result.verdict is Verdict.PASSED, run.result.reasons
        assert run.result.stats["quic_extensions"] == list(QuicExtensions.NAMES)
        assert run.result.stack == "quicmig"
        assert runs(name, "stock").result.verdict is Verdict.FAILED


# --- reset_recovery (RFC 9000 section 9.4) -------------------------------------------------


def test_address_change_resets_window_and_rtt(runs: Callable[[str, str], Run]) -> None:
    """At validation the window restarts from the initial window; old-path bytes leave it."""
    for stack, reset in (("quicmig", True), ("stock", False)):
        track = tracker_of(runs("network-switch", stack))
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


def test_port_only_change_keeps_recovery_state(runs: Callable[[str, str], Run]) -> None:
    """RFC 9000 section 9.4: a NAT rebinding (port only) keeps the window."""
    track = tracker_of(runs("rebind-port", "quicmig"))
    for mig in track.migrations:
        assert mig.kind is MigrationKind.PORT_CHANGE
        assert mig.validated_at is not None
        before = sample_at(track.recovery, mig.detected_at)
        after = sample_at(track.recovery, mig.validated_at)
        assert before.cwnd is not None and after.cwnd is not None
        assert after.cwnd >= before.cwnd // 2  # at most a loss response, never a reset
        assert after.cwnd > INITIAL_WINDOW + MAX_DATAGRAM


# --- a lost challenge, a failed validation: driven by hand --------------------------------


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
    pair.migrate(NEW, new_cid=False)  # a NAT rebinding: new address, same connection ID
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
    pair.migrate(NEW, new_cid=False)
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
    first, second = (simulate(scenario, RunOptions(seed=3)).result.to_dict() for _ in range(2))
    for data in (first, second):
        data.pop("wall")
    assert first == second
