"""The one judge: verdicts under both rule sets, checks with nothing to check, the
interruption measure, and trackers read back from their records, on hand-made observations."""

from __future__ import annotations

import pytest

from quicmig.core.checks import migration_checks, verdict
from quicmig.core.judge import judge, unsupported
from quicmig.core.measure import longest_gap
from quicmig.core.observation import ClientObservation, Expectations, Observation
from quicmig.core.results import Check, NetworkChange, Result, Transfer
from quicmig.core.tap import Packet
from quicmig.core.tracker import MigrationTracker
from quicmig.model.events import EventKind
from quicmig.model.scenario import Download, Expectation
from quicmig.model.verdicts import CheckState, MigrationKind, Rules, Verdict

SERVER = ("203.0.113.10", 4433)
OLD = ("198.51.100.10", 40000)
NEW = ("198.51.100.10", 40001)
ACK = {"frame_type": "ack"}


def packet(at: float, peer: tuple[str, int], number: int, *frames: dict[str, str]) -> Packet:
    return Packet(at, peer, number, "1RTT", "d1", (ACK, *frames), 100)


def moved(*, challenge_first: bool, answered: bool, sent_before: int = 300) -> MigrationTracker:
    """A server tracker that saw one port change at 1 s, challenged (first or later)."""
    tracker = MigrationTracker()
    tracker.on_packet_received(Packet(0.0, OLD, 0, "initial", "d0", (), 1200))
    tracker.on_packet_received(packet(0.5, OLD, 1))
    tracker.on_packets_sent([packet(0.5, OLD, 1)])
    tracker.on_packet_received(packet(1.0, NEW, 2))
    challenge = {"frame_type": "path_challenge", "data": "aa"}
    if challenge_first:
        tracker.on_packets_sent([Packet(1.0, NEW, 2, "1RTT", "s1", (challenge,), sent_before)])
    else:
        tracker.on_packets_sent([Packet(1.0, NEW, 2, "1RTT", "s1", (ACK,), sent_before)])
        tracker.on_packets_sent([Packet(1.1, NEW, 3, "1RTT", "s1", (challenge,), 50)])
    if answered:
        tracker.on_packet_received(
            packet(1.05, NEW, 3, {"frame_type": "path_response", "data": "aa"})
        )
    return tracker


def observe(tracker: MigrationTracker | None, *changes: NetworkChange, **more: object) -> Result:
    done = Transfer("download", 10, 10, True, 0.0, 2.0, "x")
    observation = Observation(
        backend="test",
        seed=1,
        run_end=3.0,
        clients=[ClientObservation(done, [0.4, 0.9, 1.3], [3, 6, 10], tracker)],
        changes=changes,
        **more,  # type: ignore[arg-type]
    )
    wanted = Expectations(
        "hand-made", "stock", Expectation(migrations=(MigrationKind.PORT_CHANGE,)), Download(10)
    )
    return judge(wanted, observation)


REBIND = NetworkChange(0.9, EventKind.NAT_REBINDING, "home", False, "198.51.100.10")


def states(result: Result) -> dict[str, CheckState]:
    return {c.name: c.state for c in result.checks}


def test_a_clean_migration_passes_both_rule_sets() -> None:
    result = observe(moved(challenge_first=True, answered=True), REBIND)
    assert result.verdict is Verdict.PASSED
    assert result.verdicts == {Rules.STRICT: Verdict.PASSED, Rules.RFC9000: Verdict.PASSED}
    found = states(result)
    assert found["migration-target"] is CheckState.PASSED
    assert found["new-dcid-after-active-migration"] is CheckState.NOT_APPLICABLE
    (mig,) = result.migrations
    assert mig.network_change is EventKind.NAT_REBINDING and mig.detection_delay == pytest.approx(
        0.1
    )


def test_a_late_challenge_fails_only_the_strict_rules() -> None:
    """quic-interop-runner wants PATH_CHALLENGE in the first packet; RFC 9000 does not."""
    result = observe(moved(challenge_first=False, answered=True, sent_before=200), REBIND)
    assert result.verdicts == {Rules.STRICT: Verdict.FAILED, Rules.RFC9000: Verdict.PASSED}
    found = states(result)
    assert found["first-packet-challenge"] is CheckState.FAILED
    # Its only challenge was not in a first packet: nothing for this check to look at.
    assert found["challenges-answered"] is CheckState.NOT_APPLICABLE
    assert result.reasons[0].startswith("first-packet-challenge: no PATH_CHALLENGE")


def test_too_much_before_validation_fails_the_rfc9000_rules() -> None:
    """RFC 9000 section 8.1: at most 3 times what arrived from the new address."""
    result = observe(moved(challenge_first=True, answered=True, sent_before=301), REBIND)
    (mig,) = result.migrations
    assert (mig.sent_before_validation, mig.received_before_validation) == (301, 100)
    assert result.verdicts == {Rules.STRICT: Verdict.PASSED, Rules.RFC9000: Verdict.FAILED}
    assert states(result)["new-path-amplification"] is CheckState.FAILED


def test_an_unanswered_challenge_fails_validation_and_answering() -> None:
    result = observe(moved(challenge_first=True, answered=False), REBIND)
    found = states(result)
    assert found["paths-validated"] is CheckState.FAILED
    assert found["challenges-answered"] is CheckState.FAILED
    assert result.verdicts[Rules.RFC9000] is Verdict.FAILED


def test_the_server_seen_elsewhere_than_the_network_said_fails() -> None:
    elsewhere = NetworkChange(0.9, EventKind.NAT_REBINDING, "home", False, "198.51.100.99")
    check = next(
        c
        for c in observe(moved(challenge_first=True, answered=True), elsewhere).checks
        if c.name == "migration-target"
    )
    assert check.state is CheckState.FAILED and "198.51.100.99" in check.detail


def test_a_server_that_never_follows_fails_even_without_a_packet_to_the_new_path() -> None:
    tracker = MigrationTracker()
    tracker.on_packet_received(packet(0.5, OLD, 1))
    tracker.on_packet_received(packet(1.0, NEW, 2))
    tracker.on_packets_sent([packet(1.01, OLD, 2), packet(1.02, OLD, 3)])  # still to OLD
    check = next(c for c in observe(tracker, REBIND).checks if c.name == "first-packet-challenge")
    assert check.state is CheckState.FAILED
    assert (
        "sent 2 packets to the old address" in check.detail
        and "none to the new one" in check.detail
    )


def test_what_a_backend_could_not_do_makes_the_verdict_unsupported_first() -> None:
    skipped = unsupported("event interface-switch at 1 s", "proxy: needs a second interface")
    result = observe(moved(challenge_first=False, answered=True), REBIND, unsupported=[skipped])
    # A failure on a run that was not the scenario cannot say the scenario fails.
    assert result.verdict is Verdict.UNSUPPORTED
    assert result.reasons[0].startswith("event interface-switch at 1 s:")
    assert any(r.startswith("first-packet-challenge") for r in result.reasons)


def test_no_connection_fails_the_handshake() -> None:
    result = observe(None)
    assert states(result)["handshake"] is CheckState.FAILED
    assert result.verdict is Verdict.FAILED


def test_verdict_counts_only_its_rules_and_ignores_not_applicable() -> None:
    checks = [
        Check("a", CheckState.NOT_APPLICABLE, ""),
        Check("b", CheckState.FAILED, "x", (Rules.STRICT,)),
        Check("c", CheckState.UNSUPPORTED, "y", (Rules.RFC9000,)),
    ]
    assert verdict(checks, Rules.STRICT) == (Verdict.FAILED, ["b: x"])
    assert verdict(checks, Rules.RFC9000) == (Verdict.UNSUPPORTED, ["c: y"])
    assert verdict([Check("a", CheckState.NOT_APPLICABLE, "")]) == (Verdict.PASSED, [])


def test_without_migrations_the_migration_checks_are_not_applicable() -> None:
    checks = migration_checks(Expectation(), [], [MigrationTracker()], [])
    assert {c.name: c.state for c in checks} == {
        "migrations-observed": CheckState.PASSED,
        "paths-validated": CheckState.NOT_APPLICABLE,
        "multiple-paths": CheckState.NOT_APPLICABLE,
        "first-packet-challenge": CheckState.NOT_APPLICABLE,
        "challenges-answered": CheckState.NOT_APPLICABLE,
        "new-path-amplification": CheckState.NOT_APPLICABLE,
        "new-dcid-after-active-migration": CheckState.NOT_APPLICABLE,
        "migration-target": CheckState.NOT_APPLICABLE,
    }


def test_a_tracker_read_back_from_its_record_is_judged_the_same() -> None:
    """The live server hands out `to_dict()`; a client judges `from_dict()` of it, on its
    own clock (`clock_offset`: the server's clock minus the reader's)."""
    tracker = moved(challenge_first=True, answered=True)
    again = MigrationTracker.from_dict(tracker.to_dict())
    direct, read = observe(tracker, REBIND), observe(again, REBIND)
    assert read.to_dict() == direct.to_dict()
    shifted = MigrationTracker.from_dict(tracker.to_dict(), clock_offset=0.5)
    (mig,) = shifted.migrations
    assert mig.detected_at == pytest.approx(0.5)
    assert mig.validation_rtt == pytest.approx(tracker.migrations[0].validation_rtt or 0)


def test_result_json_reads_back() -> None:
    result = observe(moved(challenge_first=False, answered=True), REBIND)
    assert Result.from_dict(result.to_dict(series=True)).to_dict(series=True) == result.to_dict(
        series=True
    )


@pytest.mark.parametrize(
    ("times", "start", "end", "run_end", "gap"),
    [
        ([0.0, 1.0, 1.1, 3.0], 0.5, 1.05, 4.0, 1.0),  # the gap around the change
        ([0.0, 1.0, 1.1, 3.0], 1.05, 1.2, 4.0, 1.9),  # until the next delivery after it
        ([0.0, 0.2], 0.5, 0.6, 2.0, 1.8),  # nothing after: the gap runs to the end
        ([1.0], 0.5, 0.6, 2.0, None),  # nothing before: no interruption to speak of
    ],
)
def test_longest_gap(
    times: list[float], start: float, end: float, run_end: float, gap: float | None
) -> None:
    found = longest_gap(times, start, end, run_end)
    assert found == (pytest.approx(gap) if gap is not None else None)


def test_a_return_to_an_address_validated_before_needs_no_new_validation() -> None:
    """RFC 9000 section 9.3: the server may skip validating an address it validated before
    (here the handshake's); the RFC 9000 rules accept that, the strict ones do not."""
    tracker = moved(challenge_first=True, answered=True)
    tracker.on_packet_received(packet(2.0, OLD, 4))  # back where the handshake was
    tracker.on_packets_sent([packet(2.0, OLD, 4)])  # no PATH_CHALLENGE this time
    back = tracker.migrations[-1]
    assert back.new_peer == OLD and back.known_path and back.validated_at is None
    again = NetworkChange(1.9, EventKind.NAT_REBINDING, "home", False, "198.51.100.10")
    result = observe(tracker, REBIND, again)
    found = states(result)
    assert found["paths-validated"] is CheckState.PASSED
    assert "1 validated before" in next(
        c.detail for c in result.checks if c.name == "paths-validated"
    )
    assert found["first-packet-challenge"] is CheckState.FAILED
    assert (
        result.verdicts[Rules.RFC9000] is not Verdict.FAILED
        or found["migrations-observed"] is CheckState.FAILED
    )
