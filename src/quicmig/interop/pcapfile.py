"""Classic pcap files read and written without tshark: cutting one leg out of a capture, and
the UDP addresses, lengths and times of every packet.

The proxy writes both of its legs into one capture; tshark reads a capture holding each
QUIC packet twice only leg by leg (three passes per leg). Cutting the server's leg out here
leaves tshark one pass, on what the server sent and received. The client's leg needs no
decryption at all: what reached the client, and from which addresses it sent, are in the
UDP headers.

Captures of dumpcap (`-P`) and of quicmig's own writer (quicmig.core.pcap) are classic pcap;
the link types here are those they write (raw IP on the proxy and on the lab's TUN devices,
Ethernet on lo, Linux cooked captures).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from quicmig.core.datagram import Address
from quicmig.errors import QuicmigError

LINKTYPE_RAW = 101
# link type -> bytes of link header before the IP packet (None: an Ethernet-like type field)
LINK_HEADERS: dict[int, int] = {
    0: 4,  # BSD loopback: a 4-byte address family
    1: 14,  # Ethernet (lo on Linux)
    101: 0,  # raw IP (quicmig's writer, TUN devices)
    113: 16,  # Linux cooked capture (-i any)
    228: 0,  # raw IPv4
    229: 0,  # raw IPv6
    276: 20,  # Linux cooked capture v2
}
MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
UDP = 17  # IP protocol number
SNAPLEN = 65535  # bytes
# UDP payload sizes a QUIC datagram of a GSO batch may have (RFC 9000 section 14: at least
# 1200 bytes for a full-size one; 1500 covers what loopback senders use without PMTUD).
GSO_MIN_SEGMENT, GSO_MAX_SEGMENT = 1200, 1500  # bytes
CID_PREFIX = 8  # bytes of the destination connection ID compared at each segment


@dataclass(frozen=True, slots=True)
class Record:
    """One captured packet: its time and its IP packet."""

    at: float  # seconds since the epoch
    ip: bytes


@dataclass(frozen=True, slots=True)
class UdpHeader:
    src: Address
    dst: Address
    payload: int  # bytes of UDP payload


def read_records(path: Path) -> Iterator[Record]:
    """The packets of a classic pcap file, link headers removed; a record cut short at the
    end (its writer was stopped) is left out."""
    data = path.read_bytes()
    if len(data) < 24 or data[:4] not in MAGICS:
        raise QuicmigError(f"{path}: not a classic pcap file (capture with dumpcap -P)")
    order, unit = MAGICS[data[:4]]
    linktype = struct.unpack_from(f"{order}I", data, 20)[0] & 0x0FFFFFFF
    skip = LINK_HEADERS.get(linktype)
    if skip is None:
        raise QuicmigError(f"{path}: link type {linktype} is not one quicmig reads")
    offset = 24
    while offset + 16 <= len(data):
        seconds, fraction, captured, _ = struct.unpack_from(f"{order}IIII", data, offset)
        offset += 16
        if offset + captured > len(data):
            break
        packet = data[offset + skip : offset + captured]
        offset += captured
        yield Record(seconds + fraction * unit, packet)


def udp_header(ip: bytes) -> UdpHeader | None:
    """The UDP addresses and payload length of an IPv4 or IPv6 packet (None: not UDP)."""
    if not ip:
        return None
    version = ip[0] >> 4
    if version == 4 and len(ip) >= 28 and ip[9] == UDP:
        start = (ip[0] & 0x0F) * 4
        src_ip = str(ipaddress.IPv4Address(ip[12:16]))
        dst_ip = str(ipaddress.IPv4Address(ip[16:20]))
    elif version == 6 and len(ip) >= 48 and ip[6] == UDP:
        start = 40
        src_ip = str(ipaddress.IPv6Address(ip[8:24]))
        dst_ip = str(ipaddress.IPv6Address(ip[24:40]))
    else:
        return None
    if len(ip) < start + 8:
        return None
    sport, dport, length = struct.unpack_from("!HHH", ip, start)
    return UdpHeader((src_ip, sport), (dst_ip, dport), max(0, length - 8))


def write_records(path: Path, records: Iterable[Record]) -> int:
    """Write `records` (IP packets) as a raw-IP classic pcap; returns how many."""
    count = 0
    with path.open("wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, SNAPLEN, LINKTYPE_RAW))
        for record in records:
            micros = round(record.at * 1e6)
            out.write(
                struct.pack(
                    "<IIII", micros // 1_000_000, micros % 1_000_000, len(record.ip), len(record.ip)
                )
            )
            out.write(record.ip)
            count += 1
    return count


def touching(records: Iterable[Record], addresses: set[Address]) -> Iterator[Record]:
    """The UDP packets from or to one of `addresses`."""
    for record in records:
        header = udp_header(record.ip)
        if header is not None and (header.src in addresses or header.dst in addresses):
            yield record


def gso_segments(payload: bytes) -> list[bytes] | None:
    """The datagrams of a UDP GSO batch captured on lo (one packet holding several
    datagrams of one segment size, the last shorter), or None when `payload` is not one.

    A sender using UDP_SEGMENT hands the kernel one buffer; on lo the capture sees it
    before it is cut into datagrams. QUIC 1-RTT packets carry no length, so the segment size
    is found by trying each size a QUIC datagram may have: at every multiple a short header
    must start (RFC 9000 section 17.3: form bit 0; the fixed bit may be greased, RFC 9287)
    with the first packet's destination connection ID. A batch to a zero-length connection
    ID has nothing to match: it is left as it is (tshark cannot decrypt it: the cell says so).
    """
    if len(payload) <= GSO_MAX_SEGMENT or payload[0] & 0x80:
        return None
    dcid = payload[1 : 1 + CID_PREFIX]
    for size in range(GSO_MIN_SEGMENT, GSO_MAX_SEGMENT + 1):
        starts = range(size, len(payload), size)
        if (
            all(
                not payload[at] & 0x80 and payload[at + 1 : at + 1 + CID_PREFIX] == dcid
                for at in starts
            )
            and len(payload) - starts[-1] > CID_PREFIX
        ):
            return [payload[at : at + size] for at in range(0, len(payload), size)]
    return None


def split_gso(records: Iterable[Record]) -> Iterator[Record]:
    """`records` with each UDP GSO batch (see gso_segments) cut into its datagrams."""
    from quicmig.core.datagram import Datagram
    from quicmig.core.pcap import ip_udp_packet

    for record in records:
        header = udp_header(record.ip)
        payload = record.ip[len(record.ip) - header.payload :] if header is not None else b""
        segments = gso_segments(payload) if header is not None else None
        if header is None or segments is None:
            yield record
            continue
        for segment in segments:
            yield Record(record.at, ip_udp_packet(Datagram(header.src, header.dst, segment)))
