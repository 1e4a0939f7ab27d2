"""What crosses a network: a UDP datagram with both of its addresses."""

from __future__ import annotations

from dataclasses import dataclass

Address = tuple[str, int]  # (IP address, UDP port)


@dataclass(frozen=True, slots=True)
class Datagram:
    src: Address
    dst: Address
    data: bytes


def format_address(addr: Address) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def udp_ip_overhead(addr: Address) -> int:
    """Bytes of IP + UDP header around a payload sent to `addr` (IPv6: 40 + 8, IPv4: 20 + 8)."""
    return 48 if ":" in addr[0] else 28
