"""Measurements derived from observed records: interruptions, per-migration losses, transfers."""

from __future__ import annotations

import bisect
import statistics
from collections.abc import Sequence

from quicmig.core.app import ClientWorkload, DownloadClient, MessagesClient, StreamClient
from quicmig.core.results import MigrationResult, NetworkChange, Series, Transfer
from quicmig.core.tracker import MigrationTracker, ObservedMigration
from quicmig.model.events import EventKind


def longest_gap(times: Sequence[float], start: float, end: float, run_end: float) -> float | None:
    """Longest gap between consecutive deliveries that overlaps [start, end].

    If nothing was delivered after `start`, the gap runs from the last delivery to
    `run_end`. Returns None when nothing was delivered before `start` either.
    """
    first_after = bisect.bisect_right(times, start)
    if first_after == 0:
        return None
    if first_after == len(times):
        return run_end - times[-1]
    gaps = [times[first_after] - times[first_after - 1]]  # the gap that spans `start`
    for index in range(first_after + 1, len(times)):
        if times[index - 1] >= end:
            break  # this gap and the later ones begin after the window
        gaps.append(times[index] - times[index - 1])
    return max(gaps)


def migration_results(
    tracker: MigrationTracker,
    changes: Sequence[NetworkChange],
    delivery_times: Sequence[float],
    workload_done_at: float | None,
    run_end: float,
) -> list[MigrationResult]:
    results = []
    observed = tracker.migrations
    for index, mig in enumerate(observed):
        cause = _cause(mig, changes)
        window_start = cause.at if cause else mig.detected_at
        window_end = observed[index + 1].detected_at if index + 1 < len(observed) else run_end
        settled = mig.validated_at or mig.detected_at
        interruption = None
        if workload_done_at is None or workload_done_at > window_start:
            interruption = longest_gap(delivery_times, window_start, settled, run_end)
        results.append(
            MigrationResult(
                observed=mig.kind,
                old_peer=mig.old_peer,
                new_peer=mig.new_peer,
                network_change_at=cause.at if cause else None,
                network_change=cause.kind if cause else None,
                detected_at=mig.detected_at,
                detection_delay=mig.detected_at - cause.at if cause else None,
                first_packet_had_challenge=mig.first_packet_had_challenge,
                challenge_sent_at=mig.challenges[0].sent_at if mig.challenges else None,
                validated_at=mig.validated_at,
                validation_rtt=mig.validation_rtt,
                challenges=len(mig.challenges),
                cid_changed=mig.cid_changed,
                server_cid_changed=(
                    mig.server_dcid_after != mig.server_dcid_before
                    if mig.server_dcid_after is not None
                    else None
                ),
                interruption=interruption,
                lost_packets=sum(window_start <= t < window_end for t in tracker.lost_packets),
                retransmitted_bytes=sum(
                    size for t, size in tracker.retransmitted if window_start <= t < window_end
                ),
                sent_before_validation=mig.sent_before_validation,
                received_before_validation=mig.received_before_validation,
                sent_to_old_after=mig.sent_to_old_after,
                path_known=mig.known_path,
                cut_short=tracker.cut_short(mig),
            )
        )
    return results


def _cause(mig: ObservedMigration, changes: Sequence[NetworkChange]) -> NetworkChange | None:
    """The latest change of the network at or before the server noticed the migration."""
    before = [
        c for c in changes if c.at <= mig.detected_at and c.kind is not EventKind.CID_ROTATION
    ]
    return before[-1] if before else None


def transfer_result(
    workload: ClientWorkload, server_digest: str | None, run_end: float
) -> Transfer:
    delivered = workload.delivery.total
    match workload:
        case DownloadClient():
            return Transfer(
                workload="download",
                bytes=delivered,
                expected_bytes=workload.spec.size,
                intact=(
                    workload.digest is not None
                    and workload.digest == server_digest
                    and delivered == workload.spec.size
                ),
                sha256=workload.digest,
                started_at=workload.started_at,
                completed_at=workload.completed_at,
            )
        case MessagesClient():
            rtts = sorted(workload.rtts.values())
            return Transfer(
                workload="messages",
                bytes=delivered,
                expected_bytes=workload.spec.count * workload.spec.size,
                intact=len(rtts) == workload.spec.count and workload.mismatches == 0,
                sha256=None,
                detail={
                    "answered": len(rtts),
                    "sent": len(workload.records),
                    "rtt_median": statistics.median(rtts) if rtts else None,
                    "rtt_max": rtts[-1] if rtts else None,
                    "rtts": [[r.sent_at, r.rtt] for r in workload.records],
                },
                started_at=workload.started_at,
                completed_at=workload.completed_at,
            )
        case StreamClient():
            stalls = workload.stalls(run_end)
            return Transfer(
                workload="stream",
                bytes=delivered,
                expected_bytes=None,
                intact=workload.completed_at is not None,
                sha256=None,
                detail={
                    "frames": len(workload.frame_times),
                    "stalls": len(stalls),
                    "stalled_seconds": sum(length for _, length in stalls),
                    "longest_stall": max((length for _, length in stalls), default=0.0),
                    "stall_threshold": workload.spec.stall,
                },
                started_at=workload.started_at,
                completed_at=workload.completed_at,
            )
    raise TypeError(f"unknown workload {workload!r}")


def series_of(times: Sequence[float], totals: Sequence[int], tracker: MigrationTracker) -> Series:
    """The figure's time series: bytes delivered to the client's application, and the
    server's smoothed RTT and congestion window as aioquic's recovery reported them."""
    return Series(
        delivered=list(zip(times, totals, strict=True)),
        rtt=[(s.at, s.smoothed_rtt) for s in tracker.recovery if s.smoothed_rtt is not None],
        cwnd=[(s.at, s.cwnd) for s in tracker.recovery if s.cwnd is not None],
    )
