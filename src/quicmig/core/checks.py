"""Checks that compare what a scenario intended with what the server observed.

The migration checks follow quic-interop-runner's `rebind-port`, `rebind-addr` and
`connectionmigration` tests: more than one path seen; the server's first packet on each
new path carries PATH_CHALLENGE (RFC 9000 section 9.3); every PATH_CHALLENGE is answered
(section 8.2.2); after an active migration the client uses a new connection ID (section 9.5).
"""

from __future__ import annotations

from quicmig.core.results import Check, MigrationResult, NetworkChange, Transfer, Verdict
from quicmig.model.scenario import Expectation


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
    checks.append(
        Check(
            "challenges-answered",
            challenges_answered == challenges_sent,
            f"{challenges_answered} of {challenges_sent} PATH_CHALLENGE frames answered",
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


def verdict(checks: list[Check]) -> tuple[Verdict, list[str]]:
    failed = [f"{c.name}: {c.detail}" for c in checks if c.passed is False]
    if failed:
        return Verdict.FAILED, failed
    unsupported = [f"{c.name}: {c.detail}" for c in checks if c.passed is None]
    if unsupported:
        return Verdict.UNSUPPORTED, unsupported
    return Verdict.PASSED, []
