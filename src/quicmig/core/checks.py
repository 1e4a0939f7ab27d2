"""Checks that compare what a scenario intended with what the server observed.

The migration checks follow quic-interop-runner's `rebind-port`, `rebind-addr` and
`connectionmigration` tests: more than one path seen; the server's first packet on each
new path carries PATH_CHALLENGE (RFC 9000 section 9.3; the strict rules only); every
PATH_CHALLENGE of those first packets answered (section 8.2.2); after an active migration
the client uses a new connection ID (section 9.5). Under the RFC 9000 rules the new path
must be validated and nothing beyond 3 times what arrived from it sent there before
(sections 8.1, 8.2, 9.3). A check with nothing to look at is `not_applicable`, never a pass.
"""

from __future__ import annotations

from collections.abc import Sequence

from quicmig.core.datagram import Address, format_address
from quicmig.core.results import BOTH, Check, MigrationResult, NetworkChange, Transfer
from quicmig.core.tracker import MigrationTracker, ObservedMigration, ServerAddressUse
from quicmig.model.events import EventKind
from quicmig.model.scenario import Expectation, Stream, Workload
from quicmig.model.verdicts import CheckState, Rules, Verdict
from quicmig.words import counted

AMPLIFICATION_FACTOR = 3  # RFC 9000 section 8.1: at most 3x the bytes received, unvalidated
STRICT = (Rules.STRICT,)
RFC9000 = (Rules.RFC9000,)
PASSED, FAILED = CheckState.PASSED, CheckState.FAILED
NOT_APPLICABLE, UNSUPPORTED = CheckState.NOT_APPLICABLE, CheckState.UNSUPPORTED


def _each(count: int, noun: str) -> str:
    """`the active migration` (one) or `each of the 3 active migrations`."""
    return f"the {noun}" if count == 1 else f"each of the {count} {noun}s"


def _where(addr: Address) -> str:
    return format_address(addr)


def migration_checks(
    expect: Expectation,
    migrations: Sequence[MigrationResult],
    trackers: Sequence[MigrationTracker],
    changes: Sequence[NetworkChange],
    all_active: bool | None = None,
) -> list[Check]:
    """The migration checks of every backend, from the trackers' records (each observed
    migration of `trackers` is in `migrations`, in the same order)."""
    paths = sum(len(t.peers_seen) for t in trackers)
    rotations = sum(len(t.cid_rotations) for t in trackers)
    first = [c for t in trackers for c in t.first_packet_challenges]
    checks = [_observed(expect, migrations)]
    if expect.cid_rotations:
        checks.append(
            Check.of(
                "cid-rotations",
                rotations >= expect.cid_rotations,
                f"server saw {counted(rotations, 'connection ID change')} on an unchanged path, "
                f"expected at least {expect.cid_rotations}",
            )
        )
    if not migrations:
        none = "no migration observed"
        for name, rules in (
            ("paths-validated", BOTH),
            ("multiple-paths", BOTH),
            ("first-packet-challenge", STRICT),
            ("challenges-answered", BOTH),
            ("new-path-amplification", RFC9000),
        ):
            checks.append(Check(name, NOT_APPLICABLE, none, rules))
    else:
        validated = sum(m.validated_at is not None for m in migrations)
        # RFC 9000 section 9.3: an address validated before need not be validated again.
        known = sum(m.validated_at is None and m.path_known for m in migrations)
        # The client closed the connection before it could answer (RFC 9000 section 10.2):
        # no validation to hold against the server.
        cut = sum(m.validated_at is None and not m.path_known and m.cut_short for m in migrations)
        detail = (
            f"{validated} of {counted(len(migrations), 'new path')} validated by PATH_RESPONSE"
            + (f", {known} validated before" if known else "")
            + (f", {cut} cut short by the client closing the connection" if cut else "")
        )
        if cut and validated + known == 0 and cut == len(migrations):
            checks.append(Check("paths-validated", NOT_APPLICABLE, detail))
        else:
            checks.append(
                Check.of("paths-validated", validated + known + cut == len(migrations), detail)
            )
        checks.append(
            Check.of(
                "multiple-paths",
                paths > 1,
                f"{counted(paths, 'client address', 'client addresses')} seen by the server",
            )
        )
        checks.append(_first_packet(migrations))
        # Not the challenges of a path the client left by closing the connection.
        first = [
            c
            for t in trackers
            for m in t.migrations
            if not t.cut_short(m)
            for c in m.challenges
            if c.in_first_packet
        ]
        answered = sum(c.answered_at is not None for c in first)
        checks.append(
            Check.of(
                "challenges-answered",
                answered == len(first),
                f"{answered} of {len(first)} PATH_CHALLENGE frames in the server's first packet "
                "on a new path answered",
            )
            if first
            else Check(
                "challenges-answered",
                NOT_APPLICABLE,
                "no first packet on a new path carried PATH_CHALLENGE: nothing to answer",
            )
        )
        checks.append(_amplification(migrations))
    checks.append(_new_dcid(migrations, changes, all_active))
    checks.append(_target(migrations, changes))
    return checks


def _observed(expect: Expectation, migrations: Sequence[MigrationResult]) -> Check:
    kinds = [m.observed for m in migrations]
    if expect.min_migrations is not None:
        return Check.of(
            "migrations-observed",
            len(migrations) >= expect.min_migrations,
            f"server saw {counted(len(migrations), 'migration')}, "
            f"expected at least {expect.min_migrations}",
        )
    wanted = list(expect.migrations)
    saw = ", ".join(k.value for k in kinds) or "none"
    return Check.of(
        "migrations-observed",
        kinds == wanted,
        f"server saw {saw}, expected {', '.join(k.value for k in wanted) or 'none'}",
    )


def _first_packet(observed: Sequence[MigrationResult]) -> Check:
    """Strict rules: PATH_CHALLENGE in the server's first packet on each new path."""
    without = [m for m in observed if m.first_packet_had_challenge is False]
    # A path the client left by closing has no first packet to judge (RFC 9000 section 10.2.2:
    # a server that received CONNECTION_CLOSE sends nothing more).
    cut = [m for m in observed if m.first_packet_had_challenge is None and m.cut_short]
    never = [m for m in observed if m.first_packet_had_challenge is None and not m.cut_short]
    if without:
        return Check(
            "first-packet-challenge",
            FAILED,
            "no PATH_CHALLENGE in the server's first packet to "
            + ", ".join(f"{_where(m.new_peer)} (t={m.detected_at:.3f}s)" for m in without),
            STRICT,
        )
    stuck = [m for m in never if m.sent_to_old_after > 0]
    if stuck:
        # It never followed the client: a failure, though no packet to the new path exists.
        m = stuck[0]
        return Check(
            "first-packet-challenge",
            FAILED,
            f"the server sent {counted(m.sent_to_old_after, 'packet')} to the old address "
            f"{_where(m.old_peer)} after the client's first packet from {_where(m.new_peer)}, "
            "none to the new one",
            STRICT,
        )
    if never:
        return Check(
            "first-packet-challenge",
            UNSUPPORTED,
            "no server packet to " + ", ".join(_where(m.new_peer) for m in never) + " was "
            "observed after the move (a capture of the client's side only, or it ended first)",
            STRICT,
        )
    return Check(
        "first-packet-challenge",
        PASSED,
        "the server's first packet on every new path carried PATH_CHALLENGE"
        + (f" ({len(cut)} cut short by the client closing the connection)" if cut else ""),
        STRICT,
    )


def _amplification(migrations: Sequence[MigrationResult]) -> Check:
    """RFC 9000 sections 8.1 and 9.3: before validating a new address, at most 3 times the
    bytes received from it go there."""
    new = [m for m in migrations if not m.path_known]  # a known address has no limit
    if not new:
        return Check(
            "new-path-amplification",
            NOT_APPLICABLE,
            "every address moved to was validated before",
            RFC9000,
        )
    over = [
        m
        for m in new
        if m.sent_before_validation > AMPLIFICATION_FACTOR * m.received_before_validation
    ]
    sent = sum(m.sent_before_validation for m in new)
    got = sum(m.received_before_validation for m in new)
    if over:
        m = over[0]
        detail = (
            f"the server sent {m.sent_before_validation} bytes to {_where(m.new_peer)} before "
            f"validating it, over {AMPLIFICATION_FACTOR} x the {m.received_before_validation} "
            "received from it"
        )
    else:
        detail = (
            f"{sent} bytes sent to new paths before their validation, within "
            f"{AMPLIFICATION_FACTOR} x the {got} received from them"
        )
    return Check("new-path-amplification", FAILED if over else PASSED, detail, RFC9000)


def _caused_by_active(migration: MigrationResult, changes: Sequence[NetworkChange]) -> bool:
    return any(c.active and c.at == migration.network_change_at for c in changes)


def _new_dcid(
    migrations: Sequence[MigrationResult],
    changes: Sequence[NetworkChange],
    all_active: bool | None,
) -> Check:
    active = [m for m in migrations if all_active or _caused_by_active(m, changes)]
    if not active:
        return Check(
            "new-dcid-after-active-migration",
            NOT_APPLICABLE,
            "no active migration (the client did not choose to move)",
        )
    reused = [m for m in active if not m.cid_changed]
    return Check.of(
        "new-dcid-after-active-migration",
        not reused,
        f"the client used a new DCID after {_each(len(active), 'active migration')}"
        if not reused
        else f"{len(reused)} of {counted(len(active), 'active migration')} kept the old DCID "
        "(RFC 9000 section 9.5)",
    )


def _target(migrations: Sequence[MigrationResult], changes: Sequence[NetworkChange]) -> Check:
    """Each change that says where the server should see the client next: did it?"""
    expected = [c for c in changes if c.expect_ip is not None]
    if not expected:
        return Check(
            "migration-target", NOT_APPLICABLE, "no network change said where the client went"
        )
    wrong = []
    matched = 0
    for change in expected:
        caused = [m for m in migrations if m.network_change_at == change.at]
        ip, port = change.expect_ip, change.expect_port
        if not caused or ip is None:
            continue  # no migration: migrations-observed says so
        matched += 1
        new = caused[0].new_peer
        if new[0] != ip or port not in (None, new[1]):
            where = ip if port is None else _where((ip, port))
            wrong.append(
                f"after {change.kind.value} at {change.at:.3f}s the server saw {_where(new)}, "
                f"the network put the client at {where}"
            )
    if not matched:
        return Check(
            "migration-target", NOT_APPLICABLE, "no migration followed a change that said where"
        )
    return Check.of(
        "migration-target",
        not wrong,
        "; ".join(wrong)
        or f"the server saw the client where the network put it after {_each(matched, 'change')}",
    )


def disable_migration_check(
    migrations: Sequence[MigrationResult], changes: Sequence[NetworkChange]
) -> Check:
    """RFC 9000 section 9: after disable_active_migration the client MUST NOT migrate
    actively; a NAT rebinding (not the client's choice) is still allowed."""
    active = [m for m in migrations if _caused_by_active(m, changes)]
    refused = sum(c.kind is EventKind.MIGRATION_REFUSED for c in changes)
    return Check.of(
        "disable-active-migration-honoured",
        not active,
        f"the client refused {counted(refused, 'active migration')}; the server saw none"
        if not active
        else f"the client migrated actively {counted(len(active), 'time')} although the server "
        "sent disable_active_migration; the server validated the new path and followed it",
    )


def preferred_address_checks(
    preferred: Address, expect_used: bool, use: ServerAddressUse | None
) -> list[Check]:
    """RFC 9000 section 9.6 and interop `connectionmigration`, from the server's packets."""
    where = format_address(preferred)
    moved = use is not None and use.moved_at is not None
    if not expect_used:
        return [
            Check.of(
                "preferred-address-unused",
                not moved,
                f"the client stayed on the server's original address; {where} "
                + ("received nothing" if use is None else "received probing packets only")
                if not moved
                else f"the client moved to {where}, expected it to stay",
            )
        ]
    checks = [
        Check.of(
            "preferred-address-used",
            moved,
            f"the client moved to {where} at t={use.moved_at:.3f}s"
            if use is not None and use.moved_at is not None
            else f"no non-probing packet reached {where}",
        )
    ]
    checks.append(
        Check.of(
            "connectionmigration",
            use.first_dcid_new,
            f"the client's first packet to {where} used "
            + (
                "a new DCID" if use.first_dcid_new else "a DCID it had used on the original address"
            ),
        )
        if use is not None
        else Check("connectionmigration", NOT_APPLICABLE, f"no packet reached {where}")
    )
    return checks


def attack_checks(
    sources: Sequence[Address],
    received: dict[Address, int],
    sent: dict[Address, int],
    observed: Sequence[ObservedMigration],
    final_peer: Address | None,
) -> list[Check]:
    """RFC 9000 sections 8.1, 9.3.2, 9.3.3: an attacker's copies from another address."""
    checks = []
    for source in sources:
        where = format_address(source)
        got, gave = received.get(source, 0), sent.get(source, 0)
        to_it = [m for m in observed if m.new_peer == source]
        checks.append(
            Check.of(
                "attack-reached-server",
                got > 0,
                f"{got} bytes from {where} reached the server; it moved there "
                f"{counted(len(to_it), 'time')}",
            )
        )
        within = gave <= AMPLIFICATION_FACTOR * got
        checks.append(
            Check.of(
                "amplification-limit",
                within,
                f"the server sent {gave} bytes to unvalidated {where}, "
                f"{'within' if within else 'over'} {AMPLIFICATION_FACTOR} x {got} received",
            )
        )
        validated = [m for m in to_it if m.validated_at is not None]
        stayed = final_peer == source or any(
            not any(
                later.old_peer == source and later.detected_at >= m.detected_at
                for later in observed
            )
            for m in to_it
        )
        checks.append(
            Check.of(
                "attacker-path-abandoned",
                not validated and not stayed,
                f"{where} never passed validation and the server left it each time"
                if not validated and not stayed
                else f"{where}: {len(validated)} validations passed, "
                f"{'stayed there' if stayed else 'left'}",
            )
        )
    return checks


def transfer_check(transfer: Transfer) -> Check:
    if transfer.workload == "none":
        return Check(
            "transfer-intact",
            NOT_APPLICABLE,
            "what the application received is not in this observation (a capture)",
        )
    if transfer.completed_at is None:
        return Check.of(
            "transfer-intact",
            False,
            f"{transfer.workload} did not complete: {transfer.bytes} bytes received"
            + (f" of {transfer.expected_bytes}" if transfer.expected_bytes is not None else ""),
        )
    return Check.of(
        "transfer-intact",
        transfer.intact,
        f"{transfer.bytes} bytes, SHA-256 of sent and received bodies "
        + ("match" if transfer.intact else "differ"),
    )


def workload_checks(transfer: Transfer, spec: Workload | None) -> list[Check]:
    """The transfer arrived (intact), and a constant-bitrate stream never stalled."""
    checks = [transfer_check(transfer)]
    if isinstance(spec, Stream):
        stalls = transfer.detail.get("stalls", 0)
        checks.append(
            Check.of(
                "no-stall",
                stalls == 0,
                f"{counted(stalls, 'stall')} longer than {spec.stall:g} s "
                f"(longest {transfer.detail.get('longest_stall', 0.0):.3f} s)",
            )
        )
    return checks


def verdict(
    checks: Sequence[Check], rules: Rules = Rules.STRICT, ran_as_written: bool = True
) -> tuple[Verdict, list[str]]:
    """The verdict of the checks that count under `rules`: failed checks fail the run, then
    unsupported ones make it unsupported; not-applicable ones count for nothing. With
    `ran_as_written` False (a backend could not apply part of the scenario: its unsupported
    checks say which) unsupported comes first: what failed was observed, but on a run that
    was not the scenario, so it cannot say that the scenario fails."""
    counted = [c for c in checks if rules in c.rules]
    failed = [f"{c.name}: {c.detail}" for c in counted if c.state is FAILED]
    unsupported = [f"{c.name}: {c.detail}" for c in counted if c.state is UNSUPPORTED]
    if unsupported and not ran_as_written:
        return Verdict.UNSUPPORTED, unsupported + failed
    if failed:
        return Verdict.FAILED, failed
    if unsupported:
        return Verdict.UNSUPPORTED, unsupported
    return Verdict.PASSED, []
