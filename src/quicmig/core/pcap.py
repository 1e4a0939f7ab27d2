"""Write captures in the classic pcap format (LINKTYPE_RAW: IPv4 or IPv6 packets).

Used for the simulated wire; Wireshark and tshark read it, and with the TLS key log
decrypt the QUIC packets in it.
"""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from quicmig.core.datagram import Datagram

LINKTYPE_RAW = 101
SNAPLEN = 65535  # bytes
FILE_HEADER = 24  # bytes of a pcap file's header


def capture_started(path: Path) -> bool:
    """Has a dumpcap writing `path` begun? Its file header goes out only once the device is
    open, so from then on every packet is captured (its "Capturing on" line comes earlier)."""
    return path.is_file() and path.stat().st_size >= FILE_HEADER


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ip_udp_packet(datagram: Datagram) -> bytes:
    """The datagram as an IP packet with a UDP header and valid checksums."""
    src = ipaddress.ip_address(datagram.src[0])
    dst = ipaddress.ip_address(datagram.dst[0])
    length = 8 + len(datagram.data)
    udp = struct.pack("!HHHH", datagram.src[1], datagram.dst[1], length, 0) + datagram.data
    if src.version == 4:
        pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, 17, length)
        checksum = _checksum(pseudo + udp) or 0xFFFF
        udp = udp[:6] + struct.pack("!H", checksum) + udp[8:]
        header = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + length, 0, 0x4000, 64, 17, 0, src.packed, dst.packed
        )
        header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
        return header + udp
    pseudo = src.packed + dst.packed + struct.pack("!I3xB", length, 17)
    checksum = _checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", checksum) + udp[8:]
    header = struct.pack("!IHBB16s16s", 6 << 28, length, 17, 64, src.packed, dst.packed)
    return header + udp


class PcapWriter:
    """Appends datagrams, each stamped with a time in seconds, to a pcap stream."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        stream.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, SNAPLEN, LINKTYPE_RAW))
        self.count = 0

    def write(self, datagram: Datagram, at: float) -> None:
        packet = ip_udp_packet(datagram)
        micros = round(at * 1e6)
        self._stream.write(
            struct.pack("<IIII", micros // 1_000_000, micros % 1_000_000, len(packet), len(packet))
        )
        self._stream.write(packet)
        self.count += 1

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
