"""Helpers for the namespace lab's tests: skip reasons, small topologies, sockets made inside
a lab namespace (the test process stays where it is; only a short-lived thread enters)."""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

import pytest

from quicmig.lab import system
from quicmig.lab.owners import new_prefix
from quicmig.lab.tun import entered
from quicmig.model.topology import Host, Interface, Link, LinkProfile, Topology

T = TypeVar("T")

CLIENT_IP = "192.0.2.10"
SERVER_IP = "203.0.113.10"
PORT = 5201
IDEAL = LinkProfile(delay=0.0)


def _unavailable() -> str | None:
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    return system.unavailable(f"{new_prefix()}-probe")  # root, ip, nft, conntrack, TUN


UNAVAILABLE = _unavailable()
needs_lab = pytest.mark.skipif(UNAVAILABLE is not None, reason=UNAVAILABLE or "")


def two_hosts(client: LinkProfile = IDEAL) -> Topology:
    """A client and a server, each on its own link to the internet (no NAT)."""
    return Topology(
        hosts=(
            Host("client", (Interface("eth0", (CLIENT_IP,)),)),
            Host("server", (Interface("eth0", (SERVER_IP,)),)),
        ),
        links=(
            Link("client", "client.eth0", "internet", client),
            Link("server", "server.eth0", "internet", IDEAL),
        ),
    )


def inside(namespace: str, make: Callable[[], T]) -> T:
    """`make()` run by a thread inside `namespace` (for sockets: they stay there)."""
    made: list[T] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with entered(namespace):
                made.append(make())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return made[0]


def udp(namespace: str, bind: tuple[str, int]) -> socket.socket:
    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.bind(bind)
        sock.settimeout(5.0)
        return sock

    return inside(namespace, make)


def tcp_pair(client_ns: str, server_ns: str) -> tuple[socket.socket, socket.socket]:
    """A connected TCP pair: (client's socket, server's accepted socket), TCP_NODELAY."""
    listener = inside(server_ns, lambda: socket.create_server((SERVER_IP, PORT)))
    try:
        client = inside(client_ns, lambda: socket.create_connection((SERVER_IP, PORT), 5.0))
        listener.settimeout(5.0)
        server, _ = listener.accept()
    finally:
        listener.close()
    for sock in (client, server):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(10.0)
    return client, server
