"""Opening a TUN device inside a network namespace (for the impairment element).

A TUN device is created in the network namespace of the process that opens it (TUNSETIFF),
and it lives as long as that file descriptor: without IFF_PERSIST the kernel deletes the
device when the fd is closed, so when the element exits, however it exits, its devices go.
The opener enters the target namespace with setns(2), creates the device and goes back; the
fd keeps working from anywhere. Python 3.11 has no os.setns (3.12 does): ctypes.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import os
import struct
from collections.abc import Iterator
from pathlib import Path

CLONE_NEWNET = 0x40000000  # linux/sched.h
TUNSETIFF = 0x400454CA  # linux/if_tun.h: _IOW('T', 202, int)
IFF_TUN = 0x0001  # L3 device: packets start with the IP header (no Ethernet, no ARP)
IFF_NO_PI = 0x1000  # no 4-byte packet-information header in front of each packet
IFNAMSIZ = 16  # bytes, with the terminating NUL: names are at most 15 characters
TUN_DEVICE = "/dev/net/tun"
NETNS_DIR = Path("/run/netns")  # where `ip netns add` puts its namespace files


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"setns: {os.strerror(code)}")


@contextlib.contextmanager
def entered(namespace: str) -> Iterator[None]:
    """The calling thread is inside `namespace` for the block, then back in its own.

    Sockets and devices made in the block stay in `namespace`. Only for a thread that
    nothing else uses meanwhile (and never the thread of an event loop).
    """
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(NETNS_DIR / namespace, os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)


def open_tun(namespace: str, name: str) -> int:
    """Create TUN device `name` inside `namespace` (as named by `ip netns`); return its fd,
    non-blocking. Call it where `entered()` may be used."""
    if not 0 < len(name) < IFNAMSIZ:
        raise ValueError(f"TUN name {name!r} must be 1 to {IFNAMSIZ - 1} characters")
    with entered(namespace):
        fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            request = struct.pack(f"{IFNAMSIZ}sH", name.encode(), IFF_TUN | IFF_NO_PI)
            fcntl.ioctl(fd, TUNSETIFF, request)
        except BaseException:
            os.close(fd)
            raise
    return fd
