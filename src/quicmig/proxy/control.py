"""The proxy's control channel: one line per UDP datagram on a loopback socket.

Requests: `rebind`, `switch PROFILE`, `blackhole SECONDS`, `status`. Each gets one line back,
starting with `ok` or `error`. `quicmig proxy ctl ...` is the client.
"""

from __future__ import annotations

import asyncio
import socket

from quicmig.core.datagram import Address, format_address
from quicmig.errors import InputError, QuicmigError
from quicmig.live.udp import UdpSocket, family_of, open_socket
from quicmig.proxy.core import Proxy

DEFAULT_CONTROL: Address = ("127.0.0.1", 4439)
CTL_TIMEOUT = 2.0  # seconds to wait for the proxy's answer


class ControlServer:
    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.socket: UdpSocket | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def open(self, local: Address) -> Address:
        """Bind the control socket; it may be opened before the proxy starts."""
        self.socket = await open_socket(
            local,
            self._on_datagram,
            "proxy control channel",
            "choose another port with --control ADDR:PORT (or --control off for none)",
        )
        return self.socket.local

    def _on_datagram(self, data: bytes, addr: Address) -> None:
        task = asyncio.ensure_future(self._answer(data.decode(errors="replace").strip(), addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, line: str, addr: Address) -> None:
        try:
            reply = "ok " + await self.handle(line)
        except QuicmigError as exc:
            reply = f"error {exc}"
        if self.socket is not None:
            self.socket.sendto(reply.encode(), addr)

    async def handle(self, line: str) -> str:
        words = line.split()
        proxy = self.proxy
        match words:
            case ["rebind"]:
                events = await proxy.rebind()
                return "; ".join(e.detail for e in events)
            case ["switch", name]:
                return proxy.switch(name).detail
            case ["blackhole", seconds]:
                try:
                    length = float(seconds)
                except ValueError:
                    raise InputError(f"blackhole {seconds!r}: not a number of seconds") from None
                return proxy.blackhole(length).detail
            case ["status"]:
                return status_line(proxy)
        raise InputError(
            f"unknown request {line!r}: use rebind, switch PROFILE, blackhole SECONDS or status"
        )

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.socket is not None:
            self.socket.close()
            self.socket = None


STATUS_CLIENTS = 8  # sessions named in `status`; the rest are counted (one datagram answers)


def status_line(proxy: Proxy) -> str:
    """The answer to `status`: profile, session table, counters."""
    stats = proxy.stats
    sessions = list(proxy.sessions.values())
    named = ", ".join(
        f"{format_address(s.client)} via {format_address(s.socket.local) if s.socket else '-'}"
        for s in sessions[-STATUS_CLIENTS:][::-1]  # the most recently active first
    )
    more = len(sessions) - STATUS_CLIENTS
    if more > 0:
        named += f" and {more} more"
    return (
        f"profile {proxy.profile_name}; {len(proxy.events)} events; sessions "
        f"{len(sessions)}/{proxy.capacity} (idle timeout {proxy.config.session_timeout:g} s; "
        f"opened {stats.sessions_opened}, expired {stats.sessions_expired}, evicted "
        f"{stats.sessions_evicted}, refused {stats.refused}); clients: {named or 'none'}; "
        f"datagrams from client {stats.from_client}, to upstream {stats.to_upstream}, from "
        f"upstream {stats.from_upstream}, to client {stats.to_client}, blackholed "
        f"{stats.blackholed}"
    )


def send_request(control: Address, line: str, timeout: float = CTL_TIMEOUT) -> str:
    """Send one request to a running proxy; returns its answer without the `ok ` prefix."""
    with socket.socket(family_of(control[0]), socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(line.encode(), control)
            answer = sock.recv(65535).decode(errors="replace")
        except (TimeoutError, ConnectionRefusedError):
            raise QuicmigError(
                f"no proxy answers on {format_address(control)}: is `quicmig proxy` running "
                "(with this --control address)?"
            ) from None
    status, _, rest = answer.partition(" ")
    if status != "ok":
        raise InputError(rest or answer)
    return rest
