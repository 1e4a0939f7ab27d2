"""Real UDP sockets for the sans-IO endpoints: asyncio datagram transports and one timer.

This is the only place in the live lab that opens sockets; every socket error that a user can
fix (port in use, address not configured) becomes a QuicmigError saying how. Inside
`quicmig.live.netns.sockets_in(NAMESPACE)` sockets are created in that network namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import socket
import sys
from collections.abc import Callable
from typing import cast

from quicmig.core.datagram import Address, format_address
from quicmig.errors import QuicmigError
from quicmig.live import netns

DatagramHandler = Callable[[bytes, Address], None]

MACOS_ALIAS_HINT = (
    "on macOS only 127.0.0.1 is configured on lo0: add the others with "
    "`sudo ifconfig lo0 alias 127.0.0.2 up` (and 127.0.0.3; remove with "
    "`sudo ifconfig lo0 -alias 127.0.0.2`)"
)


class UdpSocket(asyncio.DatagramProtocol):
    """One bound UDP socket that hands every datagram to `on_datagram(data, (host, port))`."""

    def __init__(self, on_datagram: DatagramHandler) -> None:
        self.on_datagram = on_datagram
        self.transport: asyncio.DatagramTransport | None = None
        self.local: Address = ("", 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's selector datagram transport does not subclass DatagramTransport (3.11).
        self.transport = cast(asyncio.DatagramTransport, transport)
        sockname = transport.get_extra_info("sockname")
        self.local = (sockname[0], sockname[1])

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        # IPv6 addresses come as (host, port, flowinfo, scope_id): keep (host, port).
        self.on_datagram(data, (str(addr[0]), int(str(addr[1]))))

    def error_received(self, exc: Exception) -> None:
        """ICMP errors (e.g. port unreachable after the peer moved): QUIC recovers by itself."""

    def sendto(self, data: bytes, addr: Address) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, addr)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def family_of(host: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET


PORT_FIX = "choose another port (--port, or the port in --listen)"


async def open_socket(
    local: Address,
    on_datagram: DatagramHandler,
    role: str,
    fix: str = PORT_FIX,
    receive_buffer: int | None = None,
) -> UdpSocket:
    """Bind a UDP socket to `local` (port 0: any free port). `role` names it in errors, and
    `fix` says how to choose another port (the option of the command that binds it).
    `receive_buffer`: ask the kernel for this many bytes of receive buffer (see bind_socket)."""
    return await wrap_socket(bind_socket(local, role, fix, receive_buffer), on_datagram)


def bind_socket(
    local: Address, role: str, fix: str = PORT_FIX, receive_buffer: int | None = None
) -> socket.socket:
    """A non-blocking UDP socket bound to `local` now (its port is known before anything can
    arrive on it: wrap it with wrap_socket() once its handler is ready).

    `receive_buffer` (bytes) is a wish: Linux caps it at net.core.rmem_max, unless the process
    may exceed that (CAP_NET_ADMIN: SO_RCVBUFFORCE), as quic-go does. A server with many
    clients wants more than the default (about 200 kB): while the process is busy, datagrams
    queue there, and whatever does not fit is dropped by the kernel before QUIC sees it.
    """
    host = local[0]
    try:
        family = family_of(host)
    except ValueError as exc:
        raise QuicmigError(f"{host!r} is not an IP address ({role})") from exc
    namespace = netns.current()
    try:
        if namespace is not None:  # inside the namespace lab (quicmig.live.netns)
            return netns.bound_socket(namespace, family, local)
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            if receive_buffer is not None:
                _grow_receive_buffer(sock, receive_buffer)
            sock.bind(local)
        except BaseException:
            sock.close()
            raise
        return sock
    except OSError as exc:
        raise QuicmigError(bind_error(local, exc, role, fix)) from exc


SO_RCVBUFFORCE = 33  # Linux <asm-generic/socket.h>; Python's socket module lacks it


def _grow_receive_buffer(sock: socket.socket, size: int) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    # Linux reports twice what was granted (the rest is its bookkeeping).
    if sys.platform == "linux" and sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < size:
        with contextlib.suppress(OSError):  # EPERM without CAP_NET_ADMIN: keep what we got
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)


async def wrap_socket(sock: socket.socket, on_datagram: DatagramHandler) -> UdpSocket:
    """Hand a bound socket to the event loop: from now on `on_datagram` gets its datagrams."""
    loop = asyncio.get_running_loop()
    try:
        _, protocol = await loop.create_datagram_endpoint(lambda: UdpSocket(on_datagram), sock=sock)
    except BaseException:
        sock.close()
        raise
    if protocol.transport is None:  # connection_made() runs soon after creation
        await asyncio.sleep(0)
    return protocol


def bind_error(local: Address, exc: OSError, role: str, fix: str = PORT_FIX) -> str:
    where = format_address(local)
    if exc.errno == errno.EADDRINUSE:
        return (
            f"UDP port {local[1]} on {local[0]} is already in use ({role}): stop the program "
            f"using it (find it with `ss -ulpn 'sport = :{local[1]}'` on Linux or "
            f"`lsof -nP -iUDP:{local[1]}` on macOS; another quicmig program?) or {fix}"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        hint = MACOS_ALIAS_HINT if sys.platform == "darwin" else "configure it first"
        return f"cannot bind {where} ({role}): the address is not configured on this host; {hint}"
    if exc.errno == errno.EACCES:
        return f"cannot bind {where} ({role}): permission denied; use a port above 1023"
    return f"cannot bind {where} ({role}): {exc.strerror or exc}"


class Timer:
    """One pending loop.call_at() for an endpoint's next timer, re-armed after every call."""

    def __init__(self, callback: Callable[[float], None], clock: Callable[[], float]) -> None:
        self._callback = callback
        self._clock = clock  # the endpoint's `now`: seconds since the backend started
        self._handle: asyncio.TimerHandle | None = None
        self._due: float | None = None

    def arm(self, due: float | None) -> None:
        """Call back at `due` (endpoint seconds); None cancels."""
        if due == self._due and self._handle is not None:
            return
        self.cancel()
        if due is None:
            return
        loop = asyncio.get_running_loop()
        self._due = due
        self._handle = loop.call_at(loop.time() + (due - self._clock()), self._fire, due)

    def _fire(self, due: float) -> None:
        self._handle = None
        self._due = None
        # asyncio may fire a hair early; the endpoint only acts on timers that are due.
        self._callback(max(self._clock(), due))

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None
        self._due = None
