"""What a transfer's capture shows, per path of the server's leg: decrypted datagrams, and
after a rebinding what the server sent to the old and to the new address.

The proxy's capture holds both legs; the server's leg is the one to read for migration (the
server sees the proxy's upstream sockets as the client's addresses). The proxy keeps a
retired mapping's socket open for a while and records what the server still sends there,
so the old-address count needs no root; a capture on lo (`Plan.lo_capture`, root) also
sees what the server sent after that socket closed.

An undecrypted 1-RTT datagram is one tshark dissected as QUIC with a short header but no
frames: with tshark 4.0 that is what a packet looks like whose keys tshark did not find for
its connection (docs/interop.md: tshark before 4.5 and new connection IDs).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quicmig.capture.tshark import QuicDatagram, read_datagrams
from quicmig.core.datagram import Address, format_address

if TYPE_CHECKING:
    from quicmig.interop.transfer import Outcome

PATH_CHALLENGE, PATH_RESPONSE = 0x1A, 0x1B  # frame types (RFC 9000 section 19.17, 19.18)


@dataclass(frozen=True, slots=True)
class PathCount:
    """Datagrams between the server and one client address (as the server saw it)."""

    peer: str
    to_server: int
    from_server: int
    short: int  # datagrams holding only a 1-RTT packet
    decrypted: int  # ... of which tshark decoded the frames
    challenges_from_server: int
    responses_to_server: int


@dataclass(frozen=True, slots=True)
class RebindView:
    """What the server did once the client's packets came from a new address."""

    old: str
    new: str
    source: str  # which capture this was read from
    client_first_new: int | None  # frame number of the client's first datagram from `new`
    server_first_new_frames: tuple[int, ...] | None  # frame types of its first datagram there
    server_first_new_challenge: bool | None  # PATH_CHALLENGE in that first datagram
    server_to_new: int
    server_to_old_after: int  # server datagrams to `old` after the client's first from `new`
    challenges_to_new: int
    responses_from_new: int
    short_on_new: int
    undecrypted_to_new: int  # the server's 1-RTT-only datagrams to `new` with no frames decoded
    undecrypted_from_new: int  # ... the client's from `new`

    @property
    def undecrypted_on_new(self) -> int:
        return self.undecrypted_to_new + self.undecrypted_from_new

    @property
    def decryptable(self) -> bool:
        """tshark decoded every 1-RTT datagram on the new path: a verdict may rest on frames
        (else the case is unsupported: tshark 4.0 and zero-length CIDs, see the module)."""
        return self.undecrypted_on_new == 0

    def describe(self) -> str:
        first = "nothing"
        if self.server_first_new_frames is not None:
            frames = ", ".join(hex(f) for f in self.server_first_new_frames) or "none decoded"
            challenge = "PATH_CHALLENGE" if self.server_first_new_challenge else "no PATH_CHALLENGE"
            first = f"{challenge} (frames {frames})"
        return (
            f"after the rebinding {self.old} -> {self.new} ({self.source}): the server sent "
            f"{self.server_to_old_after} datagrams to the old address after the client's first "
            f"from the new one, {self.server_to_new} to the new one; its first there held "
            f"{first}; {self.challenges_to_new} PATH_CHALLENGE to the new address, "
            f"{self.responses_from_new} PATH_RESPONSE back; not decrypted on the new path: "
            f"{self.undecrypted_to_new} of the server's and {self.undecrypted_from_new} of the "
            f"client's {self.short_on_new} 1-RTT datagrams"
        )


def server_leg(datagrams: list[QuicDatagram], server: Address) -> list[QuicDatagram]:
    return [d for d in datagrams if server in (d.src, d.dst)]


def path_counts(leg: list[QuicDatagram], server: Address) -> list[PathCount]:
    peers: dict[Address, list[QuicDatagram]] = {}
    for dgram in leg:
        peer = dgram.dst if dgram.src == server else dgram.src
        peers.setdefault(peer, []).append(dgram)
    out = []
    for peer, items in peers.items():
        out.append(
            PathCount(
                format_address(peer),
                sum(1 for d in items if d.dst == server),
                sum(1 for d in items if d.src == server),
                sum(1 for d in items if d.only_short),
                sum(1 for d in items if d.decrypted),
                sum(len(d.challenges) for d in items if d.src == server),
                sum(len(d.responses) for d in items if d.dst == server),
            )
        )
    return out


def rebind_view(
    leg: list[QuicDatagram],
    server: Address,
    old: Address,
    new: Address,
    lo_leg: list[QuicDatagram] | None = None,
) -> RebindView:
    """What the server did after the rebinding `old` -> `new`, from the proxy capture's
    server leg; with `lo_leg` (a capture on lo) the datagrams sent to the old address, which
    the proxy never receives once it closed that mapping. Frames are read from the proxy's
    capture only: on lo, a sender using UDP GSO shows up as one datagram per batch, of which
    tshark decodes the first packet."""
    first_new = next((d for d in leg if d.src == new and d.dst == server), None)
    to_new = [d for d in leg if d.src == server and d.dst == new]
    on_new = [d for d in leg if new in (d.src, d.dst) and d.only_short]
    first = to_new[0] if to_new else None
    source = "proxy capture"
    counted = leg
    if lo_leg is not None:
        source = "proxy capture; to the old address: lo capture"
        counted = lo_leg
    after = next((d.number for d in counted if d.src == new and d.dst == server), None)
    to_old_after = (
        sum(1 for d in counted if d.src == server and d.dst == old and d.number > after)
        if after is not None
        else 0
    )
    return RebindView(
        format_address(old),
        format_address(new),
        source,
        first_new.number if first_new is not None else None,
        first.frames if first is not None else None,
        (PATH_CHALLENGE in first.frames) if first is not None else None,
        len(to_new),
        to_old_after,
        sum(len(d.challenges) for d in to_new),
        sum(len(d.responses) for d in leg if d.src == new and d.dst == server),
        len(on_new),
        sum(1 for d in on_new if not d.frames and d.src == server),
        sum(1 for d in on_new if not d.frames and d.dst == server),
    )


def summarize(outcome: Outcome) -> dict[str, Any]:
    """A JSON-ready summary: the body, both exits, per-path counts and each rebinding."""
    warnings: list[str] = []
    datagrams = read_datagrams(outcome.pcap, outcome.keylog, warnings=warnings)
    leg = server_leg(datagrams, outcome.server_address)
    lo: list[QuicDatagram] | None = None
    if outcome.lo_pcap is not None and Path(outcome.lo_pcap).is_file():
        ports = (outcome.server_address[1],)
        lo = server_leg(
            read_datagrams(outcome.lo_pcap, outcome.keylog, ports, warnings),
            outcome.server_address,
        )
    rebinds = []
    for event in outcome.proxy_events:
        if event.kind == "rebind" and event.old and event.new:
            view = rebind_view(leg, outcome.server_address, event.old, event.new, lo)
            rebinds.append(
                {**asdict(view), "decryptable": view.decryptable, "summary": view.describe()}
            )
    return {
        "server": outcome.server,
        "client": outcome.client,
        "versions": dict(outcome.versions),
        "size": outcome.size,
        "intact": outcome.intact,
        "expected_sha256": outcome.expected_sha256,
        "received_sha256": outcome.received_sha256,
        "received_bytes": outcome.received_bytes,
        "seconds": round(outcome.seconds, 3),
        "client_exit": outcome.client_exit.describe(),
        "server_exit": outcome.server_exit.describe(),
        "datagrams": len(datagrams),
        "server_leg_decrypted_short": sum(1 for d in leg if d.decrypted),
        "server_leg_short": sum(1 for d in leg if d.only_short),
        "paths": [asdict(p) for p in path_counts(leg, outcome.server_address)],
        "lo_paths": [asdict(p) for p in path_counts(lo, outcome.server_address)] if lo else None,
        "rebinds": rebinds,
        "tshark_warnings": warnings,
        "folder": str(outcome.folder),
    }
