"""Checks of a TCP or MPTCP download, in place of the QUIC migration checks.

TCP names a connection by its 4-tuple (RFC 9293 section 3.1): when the network gives the
client a new address or port, the old connection cannot follow and the application must
notice, connect again (a new TCP and TLS handshake) and resume where it was, which HTTP
allows with a Range request (RFC 9110 section 14.2). MPTCP (RFC 8684) keeps one connection
over several TCP subflows, one per path: it lives on while one subflow does. These checks
read what the sockets of both ends recorded (quicmig.core.connections), never what the
client meant to do:

- `handshake`: a connection reached the server;
- `connection-survived`: one connection carried the whole download;
- `resumed-with-range`: each later connection asked for the bytes from where the client
  was, and got them (206), so no byte came twice;
- `mptcp-negotiated` (MPTCP only): both ends' sockets report MPTCP, not a fallback to TCP;
- `path-after-move`: after each change that says where the network put the client, the
  server received data acknowledged from there (TCP: a new connection; MPTCP: a subflow).
"""

from __future__ import annotations

from collections.abc import Sequence

from quicmig.core.connections import MPTCP, Accepted, StreamRecord, Subflow
from quicmig.core.continuity import MOVE_WINDOW
from quicmig.core.datagram import Address, format_address
from quicmig.core.results import Check, NetworkChange, Transfer
from quicmig.model.verdicts import CheckState
from quicmig.words import counted

BEFORE = 1.0  # seconds: what carried the most data in this time before a change is the old path
HANDSHAKE_BYTES = 2  # bytes: TCP_INFO counts the SYN and the FIN as one byte each


def _name(record: StreamRecord) -> str:
    return "MPTCP" if record.transport == MPTCP and record.fallback is None else "TCP"


def stream_checks(
    record: StreamRecord, transfer: Transfer, changes: Sequence[NetworkChange]
) -> list[Check]:
    """The checks above, after `handshake` (see `handshake_check`) and the workload's."""
    checks = [_survived(record, transfer, changes), _resumed(record)]
    if record.transport == MPTCP:
        checks.append(_negotiated(record))
    checks.append(_path_after(record, changes, transfer.completed_at))
    return checks


def handshake_check(record: StreamRecord) -> Check:
    if record.accepted:
        return Check.of("handshake", True, f"the {_name(record)} connection reached the server")
    why = record.attempts[0].end if record.attempts else "no connection was attempted"
    return Check.of("handshake", False, f"no connection reached the server ({why})")


def _survived(record: StreamRecord, transfer: Transfer, changes: Sequence[NetworkChange]) -> Check:
    name = _name(record)
    done = [a for a in record.attempts if a.handshake_done]
    if len(done) == 1 and len(record.accepted) == 1 and transfer.completed_at is not None:
        subflows = {s.remote for s in record.accepted[0].subflows}
        over = f" over {counted(len(subflows), 'subflow')}" if subflows else ""
        return Check.of(
            "connection-survived",
            True,
            f"one {name} connection carried all {transfer.bytes:,} bytes{over}",
        )
    if not done:
        return Check.of("connection-survived", False, "no connection was established")
    first = done[0]
    ended = f"{first.ended_at:.3f} s" if first.ended_at is not None else "the end"
    moved = [c for c in changes if first.ended_at is None or c.at <= first.ended_at]
    cause = (
        f", {first.ended_at - moved[-1].at:.3f} s after {moved[-1].kind.value}"
        if (moved and first.ended_at is not None)
        else ""
    )
    return Check.of(
        "connection-survived",
        False,
        f"the first {name} connection ended at {ended} ({first.end}){cause}; "
        f"the download took {counted(len(done), 'TCP and TLS handshake')}",
    )


def _resumed(record: StreamRecord) -> Check:
    done = [a for a in record.attempts if a.handshake_done]
    later = done[1:]
    if not later:
        return Check(
            "resumed-with-range", CheckState.NOT_APPLICABLE, "one connection: nothing to resume"
        )
    held = 0
    problems: list[str] = []
    starts: list[str] = []
    for attempt in done:
        if attempt is not done[0]:
            if attempt.range_start != held:
                problems.append(f"asked for byte {attempt.range_start:,}, held {held:,}")
            elif attempt.status not in (206, None) or attempt.refetched:
                problems.append(
                    f"got {attempt.status} to Range {attempt.range_start:,}-: "
                    f"{attempt.refetched:,} bytes fetched again"
                )
            else:
                starts.append(f"{attempt.range_start:,}")
        held += attempt.received - attempt.refetched
    served = [a.range_start for a in record.accepted[1:]]
    if not problems and len(served) >= len(later) and any(s is None for s in served):
        problems.append("the server received a later request without a Range header")
    if problems:
        return Check.of("resumed-with-range", False, "; ".join(problems))
    return Check.of(
        "resumed-with-range",
        True,
        f"{counted(len(later), 'reconnection')} resumed with Range at byte {', '.join(starts)} "
        "(206 Partial Content): no byte fetched twice",
    )


def _negotiated(record: StreamRecord) -> Check:
    if record.fallback is not None:
        return Check("mptcp-negotiated", CheckState.UNSUPPORTED, record.fallback)
    done = [a for a in record.attempts if a.handshake_done]
    fell = [a for a in done if a.mptcp is not True]
    served = [a for a in record.accepted if a.mptcp is not True]
    if not done or fell or served:
        return Check.of(
            "mptcp-negotiated",
            False,
            f"the kernel fell back to TCP on {len(fell)} of {counted(len(done), 'connection')} "
            f"(client) and {len(served)} of {len(record.accepted)} (server)",
        )
    return Check.of(
        "mptcp-negotiated", True, "both ends' sockets report MPTCP (MPTCP_INFO), no fallback"
    )


def _paths(record: StreamRecord) -> list[tuple[Address, Subflow | None, Accepted]]:
    """Every path the server sent on: (client address, its subflow or None, connection)."""
    paths: list[tuple[Address, Subflow | None, Accepted]] = []
    for conn in record.accepted:
        if conn.subflows:
            paths += [(s.remote, s, conn) for s in conn.subflows]
        else:
            paths.append((conn.peer, None, conn))
    return paths


def _carried(path: tuple[Address, Subflow | None, Accepted], start: float, end: float) -> int:
    """Bytes from the server acknowledged on this path between `start` and `end`."""
    _, subflow, conn = path
    carried = (subflow or conn).bytes_between(start, end)
    return carried if carried > HANDSHAKE_BYTES else 0


def _path_after(
    record: StreamRecord, changes: Sequence[NetworkChange], completed_at: float | None
) -> Check:
    wanted = [c for c in changes if c.expect_ip is not None]
    if not wanted:
        return Check(
            "path-after-move", CheckState.NOT_APPLICABLE, "no change said where the client went"
        )
    paths = _paths(record)
    wrong: list[str] = []
    right: list[str] = []
    for index, change in enumerate(wanted):
        until = wanted[index + 1].at if index + 1 < len(wanted) else float("inf")
        # What was past the break when it came still arrives (quicmig.core.continuity): the
        # path the data went on over is the one that carried it after that.
        settled = change.at + MOVE_WINDOW
        if completed_at is not None and completed_at < settled:
            settled = change.at
        before = max(paths, key=lambda p: _carried(p, change.at - BEFORE, change.at), default=None)
        # A change that kept the public address (a NAT rebinding) moved the port: the path
        # that carried the data before it is not the new one.
        old = before[0] if before is not None and before[0][0] == change.expect_ip else None
        after = [
            p
            for p in paths
            if p[0][0] == change.expect_ip and p[0] != old and _carried(p, settled, until)
        ]
        if after:
            right.append(f"{change.kind.value}: {format_address(after[0][0])}")
        else:
            went = sorted({format_address(p[0]) for p in paths if _carried(p, settled, until)})
            wrong.append(
                f"after {change.kind.value} at {change.at:.3f} s no data reached the client "
                f"on a new path at {change.expect_ip}"
                + (f"; it went on over {', '.join(went)}" if went else "")
            )
    if wrong:
        return Check.of("path-after-move", False, "; ".join(wrong))
    return Check.of(
        "path-after-move",
        True,
        "data reached the client where the network put it: " + "; ".join(right),
    )
