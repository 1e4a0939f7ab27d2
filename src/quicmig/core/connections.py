"""What the sockets of a TCP or MPTCP run observed: the QUIC tracker's counterpart.

A QUIC run is judged from the server's `MigrationTracker`; a TCP or MPTCP run has no
connection IDs and no path validation to track, only connections. The client records each
connection it opened (`Attempt`: TCP and TLS handshakes, the Range it asked for, what it
received, how it ended), the server each one it accepted (`Accepted`: the client's address
as it arrived, after the NATs, the request, and the kernel's own counters from TCP_INFO),
and for MPTCP each subflow either socket listed (`Subflow`, from MPTCP_SUBFLOW_ADDRS and
MPTCP_TCPINFO). Times are seconds on the run's clock. Nothing here is what the client
intended: every field was read from a socket or from the bytes that crossed it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from quicmig.core.datagram import Address, format_address

TCP, MPTCP, QUIC = "tcp", "mptcp", "quic"  # Result.transport


def _growth(samples: Sequence[tuple[float, int]], start: float, end: float) -> int:
    """How much a sampled byte counter grew from `start` to `end` (seconds)."""
    inside = [b for t, b in samples if start <= t <= end]
    before = [b for t, b in samples if t < start]
    if not inside:
        return 0
    return inside[-1] - (before[-1] if before else 0)


@dataclass(frozen=True, slots=True)
class Subflow:
    """One TCP subflow of an MPTCP connection, as one end's socket listed it."""

    local: Address  # this end's address (the server's, or the client's before the NATs)
    remote: Address  # the other end's, as this end saw it
    first_seen: float  # seconds: the first sample that listed it
    last_seen: float  # the last one
    # (seconds, bytes): the server's bytes acknowledged by the client on this subflow, or
    # the client's bytes received on it (TCP_INFO bytes_acked / bytes_received), per sample
    samples: Sequence[tuple[float, int]] = ()

    def bytes_between(self, start: float, end: float = float("inf")) -> int:
        """Bytes this subflow carried from `start` to `end` (seconds), by its samples."""
        return _growth(self.samples, start, end)

    def to_dict(self) -> dict[str, Any]:
        return {
            "local": format_address(self.local),
            "remote": format_address(self.remote),
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "bytes": self.samples[-1][1] if self.samples else 0,
        }


@dataclass(frozen=True, slots=True)
class Attempt:
    """One connection the client opened: a TCP (or MPTCP) handshake, TLS, one GET."""

    started_at: float  # seconds: connect() called
    range_start: int  # the first body byte asked for (0: the whole body, no Range header)
    local: Address | None = None  # the client's socket once connected (before the NATs)
    connected_at: float | None = None  # TCP handshake done
    secured_at: float | None = None  # TLS handshake done
    status: int | None = None  # the HTTP status of the answer
    first_byte_at: float | None = None  # the first body byte arrived
    received: int = 0  # body bytes received on it
    refetched: int = 0  # of those, bytes the client held already (a 200 to a Range request)
    ended_at: float | None = None
    end: str = "run ended"  # complete | reset (ECONNRESET) | stalled 10 s | connect: ... | ...
    mptcp: bool | None = None  # MPTCP negotiated (MPTCP_INFO); None: plain TCP was asked for
    subflows: Sequence[Subflow] = ()

    @property
    def handshake_done(self) -> bool:
        return self.secured_at is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "started_at": self.started_at,
            "range_start": self.range_start,
            "local": format_address(self.local) if self.local else None,
            "connected_at": self.connected_at,
            "secured_at": self.secured_at,
            "status": self.status,
            "first_byte_at": self.first_byte_at,
            "received": self.received,
            "refetched": self.refetched,
            "ended_at": self.ended_at,
            "end": self.end,
            "mptcp": self.mptcp,
            "subflows": [s.to_dict() for s in self.subflows],
        }


@dataclass(frozen=True, slots=True)
class Accepted:
    """One connection the server accepted, as its socket saw it."""

    peer: Address  # the client's address as it reached the server (after the NATs)
    accepted_at: float  # seconds: TCP handshake done (accept returned)
    secured_at: float | None = None  # TLS handshake done
    request: str | None = None  # the request line
    range_start: int | None = None  # from its Range header; None: it had none
    status: int | None = None  # the status the server answered
    sent: int = 0  # body bytes written to the socket (the kernel holds some of them)
    ended_at: float | None = None
    end: str = "run ended"
    bytes_acked: int = 0  # TCP payload the client acknowledged (TCP_INFO, last sample)
    bytes_retrans: int = 0  # TCP payload sent again (TCP_INFO, or MPTCP_INFO for MPTCP)
    mptcp: bool | None = None  # MPTCP negotiated; None: a plain TCP socket
    congestion: str | None = None  # the socket's TCP congestion control (TCP_CONGESTION)
    subflows: Sequence[Subflow] = ()
    samples: Sequence[tuple[float, int]] = ()  # (seconds, bytes_acked) while it lived

    def bytes_between(self, start: float, end: float = float("inf")) -> int:
        """Bytes the client acknowledged from `start` to `end` (seconds), by the samples."""
        return _growth(self.samples, start, end)

    def to_dict(self) -> dict[str, Any]:
        return {
            "peer": format_address(self.peer),
            "accepted_at": self.accepted_at,
            "secured_at": self.secured_at,
            "request": self.request,
            "range_start": self.range_start,
            "status": self.status,
            "sent": self.sent,
            "ended_at": self.ended_at,
            "end": self.end,
            "bytes_acked": self.bytes_acked,
            "bytes_retrans": self.bytes_retrans,
            "mptcp": self.mptcp,
            "congestion": self.congestion,
            "subflows": [s.to_dict() for s in self.subflows],
        }


@dataclass(frozen=True, slots=True)
class StreamRecord:
    """One client's TCP or MPTCP download: both ends' view of every connection."""

    transport: str  # TCP | MPTCP: what was asked for
    attempts: Sequence[Attempt]
    accepted: Sequence[Accepted]
    settings: dict[str, Any] = field(default_factory=dict)  # stall timeout, congestion control
    fallback: str | None = None  # why MPTCP was not used, if it was asked for and was not

    @property
    def handshakes(self) -> int:
        """TCP + TLS handshakes the client completed."""
        return sum(a.handshake_done for a in self.attempts)

    @property
    def refetched(self) -> int:
        return sum(a.refetched for a in self.attempts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "transport": self.transport,
            "attempts": [a.to_dict() for a in self.attempts],
            "accepted": [a.to_dict() for a in self.accepted],
            "settings": dict(self.settings),
            "fallback": self.fallback,
        }
