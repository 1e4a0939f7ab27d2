"""What crosses a network: a UDP datagram with both of its addresses, and how to write one."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from quicmig.errors import InputError

Address = tuple[str, int]  # (IP address, UDP port)


@dataclass(frozen=True, slots=True)
class Datagram:
    src: Address
    dst: Address
    data: bytes


def format_address(addr: Address) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(
    text: str, where: str = "address", *, default_host: str | None = None, any_port: bool = False
) -> Address:
    """`192.0.2.1:4433` or `[2001:db8::1]:4433` -> (ip, port): the inverse of format_address.

    With `default_host`, a bare `PORT` means that host; `any_port` allows port 0 (bind any).
    Raises InputError naming `where`.
    """
    host, sep, port = text.rpartition(":")
    if not sep and default_host is not None:
        host, sep, port = default_host, ":", text
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        sep = ""  # a bare IPv6 address without brackets is ambiguous
    low = 0 if any_port else 1
    if not sep or not port.isdigit() or not low <= int(port) <= 65535:
        raise InputError(
            f"{where}: {text!r} is not IP:PORT (e.g. 203.0.113.20:4433 or [2001:db8::20]:4433)"
        )
    try:
        ip = str(ipaddress.ip_address(host))
    except ValueError:
        raise InputError(f"{where}: {host!r} in {text!r} is not an IPv4 or IPv6 address") from None
    return ip, int(port)


def udp_ip_overhead(addr: Address) -> int:
    """Bytes of IP + UDP header around a payload sent to `addr` (IPv6: 40 + 8, IPv4: 20 + 8)."""
    return 48 if ":" in addr[0] else 28
