"""TCP and MPTCP sockets inside a lab namespace, and what the kernel says about them.

A socket belongs for good to the network namespace it was created in, so the race's
server and client stay in this process, on its event loop, while their sockets sit in the
lab (as the live backend's UDP sockets do, quicmig.live.netns): a short-lived thread
enters the namespace, creates the socket and leaves.

The kernel's own view of a connection is read with getsockopt: TCP_INFO (linux/tcp.h) for
a TCP socket; for an MPTCP socket MPTCP_INFO (linux/mptcp.h: negotiated or fallen back,
bytes retransmitted) and, per subflow, MPTCP_SUBFLOW_ADDRS and MPTCP_TCPINFO, which take a
header filled in by the caller, so they go through libc's getsockopt with ctypes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import os
import socket
import ssl
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from quicmig.core.datagram import Address
from quicmig.errors import QuicmigError
from quicmig.lab.tun import entered

IPPROTO_MPTCP = 262  # linux/in.h
SOL_MPTCP = 284  # linux/socket.h
MPTCP_INFO = 1  # linux/mptcp.h getsockopt names
MPTCP_TCPINFO = 2
MPTCP_SUBFLOW_ADDRS = 3
MPTCP_INFO_FLAG_FALLBACK = 1  # mptcpi_flags: the connection fell back to plain TCP
TCP_INFO_SIZE = 232  # bytes of struct tcp_info read (up to tcpi_snd_wnd, Linux 5.4+)
MPTCP_INFO_SIZE = 81  # bytes of struct mptcp_info read (up to mptcpi_subflows_total)
SUBFLOW_HEADER = struct.Struct("=IIII")  # struct mptcp_subflow_data (aligned to 8)
SOCKADDR_STORAGE = 128  # bytes: each address of struct mptcp_subflow_addrs
MAX_SUBFLOWS = 8  # subflows read per call (the race's limit is 2)
CONGESTION_LIST = Path("/proc/sys/net/ipv4/tcp_available_congestion_control")


class Sock(Protocol):
    """A socket, or the asyncio transport's view of one (asyncio.trsock.TransportSocket)."""

    def fileno(self) -> int: ...

    def getsockopt(self, level: int, optname: int, buflen: int, /) -> bytes: ...


ERRNO_WORDS = {
    "ECONNRESET": "reset",
    "ECONNABORTED": "aborted",
    "EPIPE": "broken pipe",
    "ETIMEDOUT": "timed out",
    "EHOSTUNREACH": "no route to host",
    "ENETUNREACH": "network unreachable",
    "EADDRNOTAVAIL": "address gone",
}


def ending(exc: BaseException) -> str:
    """How a connection ended, in a few words, with the errno's name where there is one."""
    if isinstance(exc, asyncio.IncompleteReadError):
        return "closed by the peer before the end"
    if isinstance(exc, ssl.SSLError):  # an OSError too, with a library reason
        return f"TLS error ({exc.reason or exc})"
    if isinstance(exc, OSError) and exc.errno is not None:
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        return f"{ERRNO_WORDS.get(name, 'error')} ({name})"
    return str(exc) or type(exc).__name__


@dataclass(frozen=True, slots=True)
class TcpCounters:
    """What TCP_INFO counts for one TCP connection or subflow (bytes of TCP payload)."""

    bytes_acked: int  # sent and acknowledged by the peer (SYN and FIN count one each)
    bytes_received: int
    bytes_retrans: int
    rtt: float  # seconds, smoothed


@dataclass(frozen=True, slots=True)
class MptcpInfo:
    fallback: bool  # the kernel fell back to TCP (the peer did not answer MP_CAPABLE)
    subflows: int  # additional subflows (the first one is not counted)
    bytes_retrans: int


def make_in(namespace: str | None, protocol: int) -> socket.socket:
    """A non-blocking IPv4 stream socket of `protocol` (IPPROTO_TCP or IPPROTO_MPTCP),
    created inside `namespace` (None: here). OSError as socket() raised it."""

    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, protocol)
        sock.setblocking(False)
        return sock

    if namespace is None:
        return make()
    made: list[socket.socket] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with entered(namespace):
                made.append(make())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=work, name=f"netns-{namespace}", daemon=True)
    thread.start()
    thread.join()
    if errors:
        for sock in made:
            sock.close()
        raise errors[0]
    return made[0]


async def connect(sock: socket.socket, address: Address) -> None:
    """connect() a non-blocking socket on the running loop. Not loop.sock_connect(): it
    resolves the address with getaddrinfo for the socket's protocol, which knows no MPTCP."""
    loop = asyncio.get_running_loop()
    code = sock.connect_ex(address)
    if code == 0:
        return
    if code != errno.EINPROGRESS:
        raise OSError(code, os.strerror(code))
    ready: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def writable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(fd, writable)
    try:
        await ready
    finally:
        loop.remove_writer(fd)
    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if code != 0:
        raise OSError(code, os.strerror(code))


def set_congestion(sock: socket.socket, algorithm: str) -> None:
    """TCP congestion control `algorithm` for this socket (an MPTCP socket passes it to its
    subflows). Per socket, not per namespace: a namespace may only pick the algorithms the
    host allows (net.ipv4.tcp_allowed_congestion_control), a socket any with CAP_NET_ADMIN."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, algorithm.encode())
    except OSError as exc:
        raise QuicmigError(
            f"TCP congestion control {algorithm!r}: {exc.strerror}; this kernel offers "
            + (available_congestion() or "none listed")
        ) from None


def available_congestion() -> str:
    """The kernel's TCP congestion controls, space-separated ("" if it does not say)."""
    with contextlib.suppress(OSError):
        return CONGESTION_LIST.read_text().strip()
    return ""


def tcp_counters(data: bytes) -> TcpCounters | None:
    """The counters of a struct tcp_info (None if the kernel gave too little of it)."""
    if len(data) < 216:
        return None
    rtt_us = struct.unpack_from("=I", data, 68)[0]  # tcpi_rtt, microseconds
    acked, received = struct.unpack_from("=QQ", data, 120)  # tcpi_bytes_acked, _received
    retrans = struct.unpack_from("=Q", data, 208)[0]  # tcpi_bytes_retrans (Linux 4.19)
    return TcpCounters(acked, received, retrans, rtt_us / 1e6)


def tcp_info(sock: Sock) -> TcpCounters | None:
    with contextlib.suppress(OSError):
        return tcp_counters(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_SIZE))
    return None


def mptcp_info(sock: Sock) -> MptcpInfo | None:
    """MPTCP_INFO; None for a socket that is no MPTCP socket (or a kernel without it). A
    fallen-back connection reports the fallback flag (older kernels: an error)."""
    try:
        data = sock.getsockopt(SOL_MPTCP, MPTCP_INFO, MPTCP_INFO_SIZE)
    except OSError:
        return None
    if len(data) < 56:
        return MptcpInfo(fallback=True, subflows=0, bytes_retrans=0)
    subflows = data[0]
    flags = struct.unpack_from("=I", data, 8)[0]
    retrans = struct.unpack_from("=Q", data, 48)[0]  # mptcpi_bytes_retrans (Linux 6.5)
    return MptcpInfo(bool(flags & MPTCP_INFO_FLAG_FALLBACK), subflows, retrans)


_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _subflow_call(sock: Sock, name: int, element: int) -> list[bytes]:
    """One MPTCP_SUBFLOW_ADDRS or MPTCP_TCPINFO call: the elements, one per subflow."""
    size = SUBFLOW_HEADER.size + MAX_SUBFLOWS * element
    buffer = ctypes.create_string_buffer(size)
    SUBFLOW_HEADER.pack_into(buffer, 0, SUBFLOW_HEADER.size, 0, 0, element)
    length = ctypes.c_uint32(size)
    if _libc.getsockopt(sock.fileno(), SOL_MPTCP, name, buffer, ctypes.byref(length)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    _, count, _, user = SUBFLOW_HEADER.unpack_from(buffer, 0)
    raw = buffer.raw[: length.value]
    count = min(count, MAX_SUBFLOWS)
    return [
        raw[SUBFLOW_HEADER.size + i * user : SUBFLOW_HEADER.size + (i + 1) * user]
        for i in range(count)
    ]


def _address(data: bytes) -> Address | None:
    family = struct.unpack_from("=H", data, 0)[0]
    if family != socket.AF_INET:
        return None
    port = struct.unpack_from("!H", data, 2)[0]
    return socket.inet_ntoa(data[4:8]), port


def subflows(sock: Sock) -> list[tuple[Address, Address, TcpCounters]] | None:
    """(local, remote, counters) of each subflow of an MPTCP socket; None if it has none to
    list (no MPTCP socket, a fallback, or a kernel before 5.16)."""
    try:
        addrs = _subflow_call(sock, MPTCP_SUBFLOW_ADDRS, 2 * SOCKADDR_STORAGE)
        infos = _subflow_call(sock, MPTCP_TCPINFO, TCP_INFO_SIZE)
    except OSError:
        return None
    if len(addrs) != len(infos):  # a subflow came or went between the calls: next sample
        return []
    out = []
    for pair, info in zip(addrs, infos, strict=True):
        local, remote = _address(pair), _address(pair[SOCKADDR_STORAGE:])
        counters = tcp_counters(info)
        if local is not None and remote is not None and counters is not None:
            out.append((local, remote, counters))
    return out
