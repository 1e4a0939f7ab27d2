"""Checks that compare what a scenario intended with what the server observed.

The migration checks follow quic-interop-runner's `rebind-port`, `rebind-addr` and
`connectionmigration` tests: more than one path seen; the server's first packet on each
new path carries PATH_CHALLENGE (RFC 9000 section 9.3); every PATH_CHALLENGE is answered
(section 8.2.2); after an active migration the client uses a new connection ID (section 9.5).
"""

from __future__ import annotations

from quicmig.core.datagram import Address, format_address
from quicmig.core.results import Check, MigrationResult, NetworkChange, Transfer, Verdict
from quicmig.core.tracker import ObservedMigration, ServerAddressUse
from quicmig.model.scenario import Expectation, Stream, Workload

AMPLIFICATION_FACTOR = 3  # RFC 9000 section 8.1: at most 3x the bytes received, unvalidated


def migration_checks(
    expect: Expectation,
    migrations: list[MigrationResult],
    changes: list[NetworkChange],
    paths_seen: int,
    challenges_sent: int,
    challenges_answered: int,
    cid_rotations: int,
) -> list[Check]:
    checks: list[Check] = []
    kinds = [m.observed for m in migrations]
    if expect.min_migrations is not None:
        checks.append(
            Check(
                "migrations-observed",
                len(migrations) >= expect.min_migrations,
                f"server saw {len(migrations)} migrations, "
                f"expected at least {expect.min_migrations}",
            )
        )
    else:
        wanted = list(expect.migrations)
        checks.append(
            Check(
                "migrations-observed",
                kinds == wanted,
                f"server saw {kinds or 'none'}, expected {wanted or 'none'}",
            )
        )
    if expect.cid_rotations:
        checks.append(
            Check(
                "cid-rotations",
                cid_rotations >= expect.cid_rotations,
                f"server saw {cid_rotations} connection ID changes on an unchanged path, "
                f"expected at least {expect.cid_rotations}",
            )
        )
    if not migrations:
        return checks
    checks.append(
        Check(
            "paths-validated",
            all(m.validated_at is not None for m in migrations),
            f"{sum(m.validated_at is not None for m in migrations)} of {len(migrations)} "
            "new paths validated by PATH_RESPONSE",
        )
    )
    checks.append(
        Check("multiple-paths", paths_seen > 1, f"{paths_seen} client addresses seen by the server")
    )
    without = [m for m in migrations if not m.first_packet_had_challenge]
    checks.append(
        Check(
            "first-packet-challenge",
            not without,
            "the server's first packet on every new path carried PATH_CHALLENGE"
            if not without
            else "no PATH_CHALLENGE in the server's first packet to "
            + ", ".join(f"{m.new_peer} (t={m.detected_at:.3f}s)" for m in without),
        )
    )
    # As quic-interop-runner's rebind checks: the challenges of those first packets must
    # be answered; one the network lost and the server sent again is "paths-validated"'s.
    checks.append(
        Check(
            "challenges-answered",
            challenges_answered == challenges_sent,
            f"{challenges_answered} of {challenges_sent} PATH_CHALLENGE frames in the server's "
            "first packet on a new path answered"
            if challenges_sent
            else "no first packet on a new path carried PATH_CHALLENGE: nothing to answer",
        )
    )
    active = [m for m in migrations if _caused_by_active(m, changes)]
    if active:
        reused = [m for m in active if not m.cid_changed]
        checks.append(
            Check(
                "new-dcid-after-active-migration",
                not reused,
                f"the client used a new DCID after all {len(active)} active migrations"
                if not reused
                else f"{len(reused)} active migrations kept the old DCID (RFC 9000 section 9.5)",
            )
        )
    return checks


def disable_migration_check(
    migrations: list[MigrationResult], changes: list[NetworkChange]
) -> Check:
    """RFC 9000 section 9: after disable_active_migration the client MUST NOT migrate
    actively; a NAT rebinding (not the client's choice) is still allowed."""
    active = [m for m in migrations if _caused_by_active(m, changes)]
    refused = sum(c.event == "migration-refused" for c in changes)
    return Check(
        "disable-active-migration-honoured",
        not active,
        f"the client refused {refused} active migrations; the server saw none"
        if not active
        else f"the client migrated actively {len(active)} times although the server sent "
        "disable_active_migration; the server validated the new path and followed it",
    )


def preferred_address_checks(
    preferred: Address, expect_used: bool, use: ServerAddressUse | None
) -> list[Check]:
    """RFC 9000 section 9.6 and interop `connectionmigration`, from the server's packets."""
    where = format_address(preferred)
    moved = use is not None and use.moved_at is not None
    if not expect_used:
        return [
            Check(
                "preferred-address-unused",
                not moved,
                f"the client stayed on the server's original address; {where} "
                + ("received nothing" if use is None else "received probing packets only")
                if not moved
                else f"the client moved to {where}, expected it to stay",
            )
        ]
    checks = [
        Check(
            "preferred-address-used",
            moved,
            f"the client moved to {where} at t={use.moved_at:.3f}s"
            if use is not None and use.moved_at is not None
            else f"no non-probing packet reached {where}",
        )
    ]
    if use is not None:
        checks.append(
            Check(
                "connectionmigration",
                use.first_dcid_new,
                f"the client's first packet to {where} used "
                + (
                    "a new DCID"
                    if use.first_dcid_new
                    else "a DCID it had used on the original address"
                ),
            )
        )
    return checks


def attack_checks(
    sources: list[Address],
    received: dict[Address, int],
    sent: dict[Address, int],
    observed: list[ObservedMigration],
    final_peer: Address | None,
) -> list[Check]:
    """RFC 9000 sections 8.1, 9.3.2, 9.3.3: an attacker's copies from another address."""
    checks = []
    for source in sources:
        where = format_address(source)
        got, gave = received.get(source, 0), sent.get(source, 0)
        to_it = [m for m in observed if m.new_peer == source]
        checks.append(
            Check(
                "attack-reached-server",
                got > 0,
                f"{got} bytes from {where} reached the server; it moved there {len(to_it)} times",
            )
        )
        checks.append(
            Check(
                "amplification-limit",
                gave <= AMPLIFICATION_FACTOR * got,
                f"the server sent {gave} bytes to unvalidated {where}, "
                f"{'within' if gave <= AMPLIFICATION_FACTOR * got else 'over'} "
                f"{AMPLIFICATION_FACTOR} x {got} received",
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
            Check(
                "attacker-path-abandoned",
                not validated and not stayed,
                f"{where} never passed validation and the server left it each time"
                if not validated and not stayed
                else f"{where}: {len(validated)} validations passed, "
                f"{'stayed there' if stayed else 'left'}",
            )
        )
    return checks


def _caused_by_active(migration: MigrationResult, changes: list[NetworkChange]) -> bool:
    return any(c.active and c.at == migration.network_change_at for c in changes)


def transfer_check(transfer: Transfer) -> Check:
    if transfer.completed_at is None:
        return Check(
            "transfer-intact",
            False,
            f"{transfer.workload} did not complete: {transfer.bytes} bytes received"
            + (f" of {transfer.expected_bytes}" if transfer.expected_bytes is not None else ""),
        )
    return Check(
        "transfer-intact",
        transfer.intact,
        f"{transfer.bytes} bytes, SHA-256 of sent and received bodies "
        + ("match" if transfer.intact else "differ"),
    )


def workload_checks(transfer: Transfer, spec: Workload) -> list[Check]:
    """The transfer arrived (intact), and a constant-bitrate stream never stalled."""
    checks = [transfer_check(transfer)]
    if isinstance(spec, Stream):
        stalls = transfer.detail.get("stalls", 0)
        checks.append(
            Check(
                "no-stall",
                stalls == 0,
                f"{stalls} stalls longer than {spec.stall:g} s "
                f"(longest {transfer.detail.get('longest_stall', 0.0):.3f} s)",
            )
        )
    return checks


def verdict(checks: list[Check], ran_as_written: bool = True) -> tuple[Verdict, list[str]]:
    """Failed checks fail the run, then unsupported ones make it unsupported. With
    `ran_as_written` False (a backend could not apply part of the scenario: its unsupported
    checks say which) unsupported comes first: what failed was observed, but on a run that
    was not the scenario, so it cannot say that the scenario fails."""
    failed = [f"{c.name}: {c.detail}" for c in checks if c.passed is False]
    unsupported = [f"{c.name}: {c.detail}" for c in checks if c.passed is None]
    if unsupported and not ran_as_written:
        return Verdict.UNSUPPORTED, unsupported + failed
    if failed:
        return Verdict.FAILED, failed
    if unsupported:
        return Verdict.UNSUPPORTED, unsupported
    return Verdict.PASSED, []
