"""The one judge: every Result, of every backend and of every capture, is built here.

`judge(expectations, observation)` measures each migration the server's trackers recorded
(`quicmig.core.measure`), runs the same checks whatever the backend (`quicmig.core.checks`),
and gives a verdict under each of the two rule sets (strict: quic-interop-runner's; rfc9000:
RFC 9000's own requirements). A backend's only say is what it could not do.

A TCP or MPTCP download (`observation.transport`) has no QUIC tracker: its checks come from
what its sockets recorded (quicmig.core.stream_checks) in place of the migration checks;
the workload's checks and the verdicts are the same. For every transport the Result's
`stats["continuity"]` says, from the client's deliveries, whether one connection carried
the download, the handshakes, the longest gap and each change's interruption and resume
time (quicmig.core.continuity).
"""

from __future__ import annotations

from typing import Any

from quicmig.core import checks as check_mod
from quicmig.core.connections import QUIC
from quicmig.core.continuity import continuity
from quicmig.core.datagram import Address, format_address
from quicmig.core.measure import migration_results, series_of
from quicmig.core.observation import ClientObservation, Expectations, Observation
from quicmig.core.results import (
    NO_SERIES,
    Check,
    MigrationResult,
    Result,
    Series,
    Transfer,
)
from quicmig.core.stream_checks import handshake_check, stream_checks
from quicmig.core.tracker import MigrationTracker
from quicmig.model.verdicts import CheckState, Rules


def judge(expectations: Expectations, observation: Observation) -> Result:
    """The Result of `observation` held against `expectations`."""
    checks: list[Check] = []
    migrations: list[MigrationResult] = []
    trackers: list[MigrationTracker] = []
    quic = observation.transport == QUIC
    for index, client in enumerate(observation.clients):
        if not quic:
            continue  # no tracker: the sockets' record is judged below
        tracker = client.connection
        if tracker is None:
            checks.append(
                Check.of("handshake", False, f"client {index}: no connection reached the server")
            )
            continue
        trackers.append(tracker)
        migrations += migration_results(
            tracker,
            observation.changes,
            client.delivery_times,
            client.transfer.completed_at,
            observation.run_end,
        )
    streams = [c.stream for c in observation.clients if c.stream is not None]
    if not quic:
        checks += [handshake_check(stream) for stream in streams]
    elif len(trackers) == len(observation.clients):
        checks.append(
            Check.of(
                "handshake",
                True,
                "the connection reached the server"
                if len(trackers) == 1
                else f"all {len(trackers)} connections reached the server",
            )
        )
    transfer = _combined([c.transfer for c in observation.clients])
    checks += check_mod.workload_checks(transfer, expectations.workload)
    stats = dict(observation.stats)
    if quic:
        checks += _quic_checks(expectations, observation, migrations, trackers, stats)
    else:
        for client in observation.clients:
            if client.stream is not None:
                checks += stream_checks(client.stream, client.transfer, observation.changes)
    checks += observation.problems
    checks += observation.unsupported
    ran_as_written = not observation.unsupported
    verdicts = {rules: check_mod.verdict(checks, rules, ran_as_written) for rules in Rules}
    verdict, reasons = verdicts[Rules.STRICT]
    client0 = observation.clients[0] if observation.clients else None
    series = _series(client0) if client0 is not None else NO_SERIES
    if client0 is not None and expectations.workload is not None:
        stats["continuity"] = _continuity(client0, observation)
    paths: list[Address] = [p for t in trackers for p in t.peers_seen]
    for stream in streams:
        for conn in stream.accepted:
            for peer in [conn.peer, *(s.remote for s in conn.subflows)]:
                if peer not in paths:
                    paths.append(peer)
    return Result(
        scenario=expectations.name,
        backend=observation.backend,
        seed=observation.seed,
        stack=expectations.stack,
        verdict=verdict,
        verdicts={rules: v for rules, (v, _) in verdicts.items()},
        expected_verdict=expectations.expect.verdict,
        reasons=reasons,
        checks=checks,
        transfer=transfer,
        migrations=migrations,
        cid_rotations=[r.at for t in trackers for r in t.cid_rotations],
        network_changes=list(observation.changes),
        paths_seen=paths,
        stats={"run_seconds": observation.run_end, **stats},
        wall=dict(observation.wall),
        series=series,
        files=dict(observation.files),
        transport=observation.transport,
    )


def _quic_checks(
    expectations: Expectations,
    observation: Observation,
    migrations: list[MigrationResult],
    trackers: list[MigrationTracker],
    stats: dict[str, Any],
) -> list[Check]:
    """The migration checks, from the server's trackers (`migrations` loses the moves to
    and from an attacker's address, in place: the attack checks judge those)."""
    checks: list[Check] = []
    sources = [a.source for a in expectations.attackers]
    if sources:  # moves to and from an attacker's address are judged by the attack checks
        migrations[:] = [
            m for m in migrations if m.old_peer not in sources and m.new_peer not in sources
        ]
    checks += check_mod.migration_checks(
        expectations.expect, migrations, trackers, observation.changes, expectations.all_active
    )
    first = trackers[0] if trackers else None
    if expectations.server.disable_active_migration:
        checks.append(check_mod.disable_migration_check(migrations, observation.changes))
    preferred = expectations.server.preferred_address
    if preferred is not None:
        use = first.server_addresses.get(preferred) if first is not None else None
        used = expectations.expect.preferred_address_used
        checks += check_mod.preferred_address_checks(preferred, used is not False, use)
        stats["preferred_address"] = {
            "address": format_address(preferred),
            "first_packet_at": use.first_packet_at if use else None,
            "first_dcid_new": use.first_dcid_new if use else None,
            "moved_at": use.moved_at if use else None,
        }
    if sources:
        wire = observation.wire
        checks += check_mod.attack_checks(
            sources,
            wire.received if wire is not None else {},
            wire.sent if wire is not None else {},
            first.migrations if first is not None else [],
            first.peer if first is not None else None,
        )
    return checks


def _series(client: ClientObservation) -> Series:
    """The figure's series: deliveries, and the QUIC server's RTT and window where known."""
    if client.connection is not None:
        return series_of(client.delivery_times, client.delivery_totals, client.connection)
    if client.stream is not None:  # the kernel's own RTT and window are not sampled
        return Series(list(zip(client.delivery_times, client.delivery_totals, strict=True)), [], [])
    return NO_SERIES


def _continuity(client: ClientObservation, observation: Observation) -> dict[str, Any]:
    """The first client's continuity figures (quicmig.core.continuity), by transport."""
    stream, tracker = client.stream, client.connection
    if stream is not None:
        connections, handshakes = len(stream.accepted), stream.handshakes
        refetched = stream.refetched
        retransmitted: int | None = sum(c.bytes_retrans for c in stream.accepted)
    else:  # QUIC: one connection, one handshake, stream data never asked for twice
        connections = handshakes = int(tracker is not None)
        refetched = 0
        retransmitted = sum(size for _, size in tracker.retransmitted) if tracker else None
    return continuity(
        client.delivery_times,
        observation.changes,
        completed_at=client.transfer.completed_at,
        run_end=observation.run_end,
        connections=connections,
        handshakes=handshakes,
        refetched=refetched,
        retransmitted=retransmitted,
    )


def _combined(transfers: list[Transfer]) -> Transfer:
    """One client's transfer, or all of them added up."""
    if len(transfers) == 1:
        return transfers[0]
    done = [t.completed_at for t in transfers]
    return Transfer(
        workload=transfers[0].workload if transfers else "none",
        bytes=sum(t.bytes for t in transfers),
        expected_bytes=sum(t.expected_bytes or 0 for t in transfers),
        intact=bool(transfers) and all(t.intact for t in transfers),
        started_at=min((t.started_at for t in transfers if t.started_at is not None), default=None),
        completed_at=None if None in done or not done else max(d for d in done if d is not None),
        sha256=None,
        detail={"clients": [t.bytes for t in transfers]},
    )


def unsupported(name: str, reason: str) -> Check:
    """What a backend could not do, as a check (it makes the verdict unsupported)."""
    return Check(name, CheckState.UNSUPPORTED, reason)
