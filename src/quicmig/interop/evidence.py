"""What a foreign-stack run's captures show, as the judge's inputs.

The server's side of the capture is decrypted by tshark (one pass: it holds one leg) and
replayed, connection by connection, into the same `MigrationTracker` that watches quicmig's
own server (quicmig.capture.analysis: `group()`, `replay()`); the connection of the download
is the one with the most datagrams. What tshark could not decrypt becomes unsupported
checks (`decryption_checks()`), never missing frames that read as a failure.

The client's side needs no keys: the datagrams that reached the client (the deliveries the
interruption of a migration is measured on), and the addresses it sent from (an active
migration is the first datagram from another one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from quicmig.capture.analysis import ConnectionView, decryption_checks, group, replay
from quicmig.capture.tshark import QuicDatagram, find_tshark, read_datagrams
from quicmig.core.datagram import Address
from quicmig.core.results import Check
from quicmig.core.tracker import MigrationTracker
from quicmig.interop.decrypt import Direction, Opened, read_secrets
from quicmig.interop.pcapfile import (
    GSO_MAX_SEGMENT,
    Record,
    UdpHeader,
    udp_header,
    write_records,
)

RETRY_TYPE = 3  # long header packet type (RFC 9000 section 17.2)
QUIC_V1 = b"\x00\x00\x00\x01"


@dataclass(frozen=True, slots=True)
class ServerView:
    """The server's connection as the capture shows it (tracker None: none was seen)."""

    tracker: MigrationTracker | None
    checks: list[Check]  # unsupported: what tshark could not decrypt
    datagrams: int
    decrypted: int  # 1-RTT-only datagrams decrypted
    connections: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)
    tshark: str = ""
    before_retry: int = 0  # datagrams of the attempt the server answered with a Retry


@dataclass(frozen=True, slots=True)
class ClientSide:
    delivery_times: list[float]  # seconds on the run's clock: datagrams reaching the client
    delivery_totals: list[int]  # cumulative UDP payload bytes at those times
    sources: list[tuple[float, Address]]  # each address the client sent from, when first


def server_view(
    records: Sequence[Record],
    out: Path,
    keylog: Path,
    server: Address,
    preferred: Address | None,
    attribute: Callable[[list[QuicDatagram], Address], list[QuicDatagram]],
    epoch_zero: float,
) -> ServerView:
    """Write `records` (the server's side, in time order) to `out`, read it with tshark and
    replay the server's connection into a tracker; times on the run's clock (seconds since
    `epoch_zero`)."""
    ordered = sorted(records, key=lambda r: r.at)
    cut = after_retry(ordered, server)
    write_records(out, ordered[cut:])
    _, version = find_tshark()
    tshark = ".".join(map(str, version))
    ports = (server[1],) + ((preferred[1],) if preferred is not None else ())
    warnings: list[str] = []
    datagrams = read_datagrams(out, keylog, ports, warnings)
    servers = {server, *((preferred,) if preferred is not None else ())}
    datagrams, reopened = reopen(datagrams, ordered[cut:], keylog, servers)
    if reopened:
        warnings.append(
            f"{reopened} 1-RTT datagrams tshark {'.'.join(map(str, version))} did not decrypt "
            "were decrypted with aioquic's packet protection and the key log "
            "(quicmig.interop.decrypt)"
        )
    aliases: dict[Address, Address] = {}
    if preferred is not None:
        datagrams = attribute(datagrams, preferred)
        aliases = {preferred: server}
    grouped = _placed(group(datagrams, ports, aliases), server)
    if cut:
        warnings.append(
            f"the server answered the first Initial with a Retry: read from the Retry on (the "
            f"{cut} datagrams before it left out: tshark {tshark} would keep that attempt's "
            "client random, and no secret of the key log would match)"
        )
    if not grouped:
        return ServerView(None, [], len(datagrams), 0, [], warnings, tshark, cut)
    for other, members in grouped:
        replay(other, members, epoch_zero)
    view = max((v for v, _ in grouped), key=lambda v: v.datagrams_1rtt)
    return ServerView(
        view.tracker,
        decryption_checks([view], tshark),
        len(datagrams),
        view.decrypted,
        [v.to_dict() for v, _ in grouped],
        warnings,
        tshark,
        cut,
    )


def _placed(
    grouped: list[tuple[ConnectionView, list[tuple[QuicDatagram, bool]]]], server: Address
) -> list[tuple[ConnectionView, list[tuple[QuicDatagram, bool]]]]:
    """The server's connections as one cell has them: its one client downloads over one
    connection, which tshark 4.0 may split in several (it does not follow the connection ID
    of a preferred address, and places no short header to a zero-length connection ID at
    an address it has not seen). Every part holding 1-RTT datagrams, and every datagram
    tshark placed nowhere, is that connection; parts without any (an attempt given up during
    its handshake) stay apart."""
    own = [(v, m) for v, m in grouped if v.server == server]
    parts = [
        (v, m) for v, m in own if v.tshark_connection is None or any(d.only_short for d, _ in m)
    ]
    if len(parts) < 2:
        return own
    base, members = min(parts, key=lambda item: item[1][0][0].number)
    for view, more in parts:
        if view is not base:
            members += more
            base.datagrams += view.datagrams
    members.sort(key=lambda item: item[0].number)
    base.last_at = max(v.last_at for v, _ in parts)
    return [(base, members)] + [(v, m) for v, m in own if all(v is not p for p, _ in parts)]


def reopen(
    datagrams: list[QuicDatagram],
    records: Sequence[Record],
    keylog: Path,
    servers: set[Address],
) -> tuple[list[QuicDatagram], int]:
    """`datagrams` (tshark's rows of `records`, frame N being records[N - 1]) with the 1-RTT
    datagrams tshark did not decrypt decrypted here where the key log allows
    (quicmig.interop.decrypt); and how many were."""
    if not any(d.only_short and not d.frames for d in datagrams):
        return datagrams, 0
    random = next((d.client_random for d in datagrams if d.client_random), None)
    secrets = read_secrets(keylog, random) if random is not None else None
    if secrets is None:
        return datagrams, 0
    # A short header's DCID length is not in the packet: each side's own, from its first
    # long header (the client's Initial, the server's Initial).
    lengths: dict[bool, int] = {}
    for record in records:
        header, payload = _payload(record)
        cids = long_header_cids(payload)
        if header is not None and cids is not None:
            from_client = header.dst in servers
            lengths.setdefault(from_client, len(cids[1]))
    directions = {True: Direction(secrets[0]), False: Direction(secrets[1])}
    out, count = [], 0
    for dgram in datagrams:
        from_client = dgram.dst in servers
        direction = directions[from_client]
        if dgram.only_short and dgram.frames and dgram.short_pn is not None:
            direction.largest = max(direction.largest, dgram.short_pn)
        elif dgram.only_short and not dgram.frames and 0 < dgram.number <= len(records):
            _, payload = _payload(records[dgram.number - 1])
            # The DCID is the other side's connection ID.
            length = lengths.get(not from_client, 0)
            opened = direction.open(payload, length)
            if opened is not None:
                out.append(_opened(dgram, opened, len(payload)))
                count += 1
                continue
            if len(payload) > GSO_MAX_SEGMENT:  # a GSO batch pcapfile could not cut
                batch = direction.open_batch(payload, length)
                out += [_opened(dgram, part, size) for part, size in batch]
                count += len(batch)
                if batch:
                    continue
        out.append(dgram)
    return out, count


def _opened(dgram: QuicDatagram, opened: Opened, size: int) -> QuicDatagram:
    return replace(
        dgram,
        short_pn=opened.packet_number,
        frames=opened.frames,
        challenges=opened.challenges,
        responses=opened.responses,
        udp_length=size + 8,  # the UDP header: 8 bytes
    )


def is_retry(payload: bytes) -> bool:
    """A QUIC version 1 Retry packet (RFC 9000 section 17.2.5: long header, type 3)."""
    return (
        len(payload) > 5
        and payload[0] & 0xC0 == 0xC0
        and (payload[0] & 0x30) >> 4 == RETRY_TYPE
        and payload[1:5] == QUIC_V1
    )


def long_header_cids(payload: bytes) -> tuple[bytes, bytes] | None:
    """(DCID, SCID) of a long header packet (RFC 9000 section 17.2), None if not one."""
    if len(payload) < 7 or not payload[0] & 0x80:
        return None
    dcid_end = 6 + payload[5]
    if len(payload) < dcid_end + 1:
        return None
    scid_end = dcid_end + 1 + payload[dcid_end]
    return payload[6:dcid_end], payload[dcid_end + 1 : scid_end]


def _payload(record: Record) -> tuple[UdpHeader | None, bytes]:
    header = udp_header(record.ip)
    return header, record.ip[len(record.ip) - header.payload :] if header is not None else b""


def after_retry(records: Sequence[Record], server: Address) -> int:
    """How many records belong to the attempt the server answered with a Retry (0: there
    was none). RFC 9000 section 17.2.5: the client answers a Retry with a new Initial to the
    connection ID the Retry gave, whose ClientHello has a new random; tshark 4.0 takes it for
    a retransmission of the first, keeps that attempt's random and finds no secret for it.
    The attempt holds nothing the tracker reads, so the capture is read from the client's
    first Initial to the Retry's connection ID on (Initials of the first attempt still in
    flight after the Retry are left out with it)."""
    retry_at, new_dcid = -1, b""
    for index, record in enumerate(records):
        header, payload = _payload(record)
        if header is None or header.src != server:
            continue
        if is_retry(payload):
            retry_at, new_dcid = index, (long_header_cids(payload) or (b"", b""))[1]
        elif payload and not payload[0] & 0x80:
            break  # a short header: the handshake is over
    if retry_at < 0:
        return 0
    for index in range(retry_at + 1, len(records)):
        header, payload = _payload(records[index])
        cids = long_header_cids(payload)
        if header is not None and header.dst == server and cids and cids[0] == new_dcid:
            return index
    return retry_at + 1


def client_side(
    records: Sequence[Record],
    is_client: Callable[[Address], bool],
    epoch_zero: float,
    extra_deliveries: Sequence[Record] = (),
) -> ClientSide:
    """Deliveries to the client and the addresses it sent from, from the client's side of
    the capture (`extra_deliveries`: what reached it by a path that capture does not see)."""
    delivered: list[tuple[float, int]] = []
    sources: list[tuple[float, Address]] = []
    seen: set[Address] = set()
    for record in records:
        header = udp_header(record.ip)
        if header is None:
            continue
        at = record.at - epoch_zero
        if is_client(header.dst):
            delivered.append((at, header.payload))
        elif is_client(header.src) and header.src not in seen:
            seen.add(header.src)
            sources.append((at, header.src))
    for record in extra_deliveries:
        header = udp_header(record.ip)
        if header is not None:
            delivered.append((record.at - epoch_zero, header.payload))
    delivered.sort()
    times, totals, total = [], [], 0
    for at, size in delivered:
        total += size
        times.append(at)
        totals.append(total)
    return ClientSide(times, totals, sources)
