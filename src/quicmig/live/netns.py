"""UDP sockets that live in another network namespace, used from this process.

A socket belongs to the network namespace it was created in, for good, whichever thread or
process uses it afterwards. So the live server and client can stay in this process, on this
asyncio loop, while their sockets sit inside the namespace lab (`quicmig.lab.build`): a
short-lived thread enters the namespace with setns(2), creates and binds the socket, leaves,
and hands the socket back; asyncio then wraps it as usual.

`with sockets_in("qm123456-server"):` makes every `open_socket()` (quicmig.live.udp) in the
block, and in tasks started from it, create its socket in that namespace. Only a dedicated
thread ever changes its namespace (never the loop's thread, never a pool thread that might
later start a subprocess), and it switches back before it ends.

Python 3.11 has no os.setns (3.12 does): setns is called through ctypes. It needs
CAP_SYS_ADMIN, as the lab itself does.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import socket
import threading
from collections.abc import Iterator
from contextvars import ContextVar

from quicmig.core.datagram import Address
from quicmig.errors import QuicmigError

CLONE_NEWNET = 0x40000000  # linux/sched.h
NETNS_DIR = "/run/netns"  # where `ip netns add` puts its namespace files

NAMESPACE: ContextVar[str | None] = ContextVar("quicmig_netns", default=None)


@contextlib.contextmanager
def sockets_in(namespace: str | None) -> Iterator[None]:
    """Sockets opened in this block are created in `namespace` (None: this process's own)."""
    token = NAMESPACE.set(namespace)
    try:
        yield
    finally:
        NAMESPACE.reset(token)


def current() -> str | None:
    return NAMESPACE.get()


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def bound_socket(namespace: str, family: int, local: Address) -> socket.socket:
    """A non-blocking UDP socket bound to `local` inside `namespace` (as named by `ip netns`)."""
    result: list[socket.socket] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        except OSError as exc:
            errors.append(exc)
            return
        try:
            target = os.open(os.path.join(NETNS_DIR, namespace), os.O_RDONLY)
            try:
                _setns(target)
            finally:
                os.close(target)
            try:
                sock = socket.socket(family, socket.SOCK_DGRAM)
                try:
                    sock.setblocking(False)
                    sock.bind(local)
                except BaseException:
                    sock.close()
                    raise
                result.append(sock)
            finally:
                _setns(own)
        except BaseException as exc:
            errors.append(exc)
        finally:
            os.close(own)

    thread = threading.Thread(target=work, name=f"netns-{namespace}", daemon=True)
    thread.start()
    thread.join()
    if errors:
        for sock in result:  # made, but the thread could not return to its own namespace
            sock.close()
        error = errors[0]
        if isinstance(error, FileNotFoundError):
            raise QuicmigError(f"network namespace {namespace} does not exist") from None
        if isinstance(error, OSError) and not result:
            raise error  # bind errors: open_socket() explains them
        raise QuicmigError(f"cannot open a socket in namespace {namespace}: {error}") from None
    return result[0]
