"""The proxy's control channel: one line per UDP datagram on a loopback socket.

Requests are events of the vocabulary (quicmig.model.events), applied at once by the proxy's
driver: `nat-rebinding` (or `rebind`), `address-rebinding` (or `rebind-addr`),
`link-change PROFILE` (`switch PROFILE`, its name in earlier versions, still works),
`blackhole SECONDS`; and `status`. Each gets one line back, starting with `ok` or `error`.
`quicmig proxy ctl ...` is the client.
"""

from __future__ import annotations

import asyncio
import math
import socket

from quicmig.core.datagram import Address, format_address
from quicmig.errors import InputError, QuicmigError
from quicmig.live.udp import UdpSocket, family_of, open_socket
from quicmig.model.events import (
    Blackhole,
    EventKind,
    LinkChange,
    NatRebind,
    TimelineEvent,
    event_kind,
)
from quicmig.model.topology import PROFILES
from quicmig.proxy.core import Proxy, profile_named
from quicmig.proxy.driver import ProxyDriver
from quicmig.words import counted

DEFAULT_CONTROL: Address = ("127.0.0.1", 4439)
CTL_TIMEOUT = 2.0  # seconds to wait for the proxy's answer


USAGE = (
    "use rebind, rebind-addr, link-change PROFILE, blackhole SECONDS or status "
    f"(profiles: {', '.join(PROFILES)})"
)
VERBS = (
    EventKind.NAT_REBINDING,
    EventKind.ADDRESS_REBINDING,
    EventKind.LINK_CHANGE,
    EventKind.BLACKHOLE,
)


def request_event(words: list[str], link: str, new_address: bool = False) -> TimelineEvent:
    """The event a control request names, to apply at once; `new_address`: a plain
    `rebind` moves to the next source address too (the proxy has several, --rebind-addr)."""
    if not words:
        raise InputError(f"empty request: {USAGE}")
    verb, args = words[0], words[1:]
    kind = EventKind.LINK_CHANGE if verb == "switch" else _kind(verb)
    match kind, args:
        case ((EventKind.NAT_REBINDING | EventKind.ADDRESS_REBINDING), []):
            return NatRebind(0.0, "proxy", new_address or kind is EventKind.ADDRESS_REBINDING)
        case EventKind.LINK_CHANGE, [name]:
            profile_named(name)
            return LinkChange(0.0, link, profile=name)
        case EventKind.BLACKHOLE, [seconds]:
            return Blackhole(0.0, link, blackhole_seconds(seconds))
    raise InputError(f"request {' '.join(words)!r}: {USAGE}")


def _kind(verb: str) -> EventKind:
    try:
        return event_kind(verb, "request", VERBS)
    except InputError:
        raise InputError(f"unknown request {verb!r}: {USAGE}") from None


def blackhole_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < math.inf:
        raise InputError(f"blackhole {text!r}: give a length in seconds > 0")
    return seconds


class ControlServer:
    def __init__(self, driver: ProxyDriver) -> None:
        self.driver = driver
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
        proxy = self.driver.proxy
        if proxy is None:
            raise QuicmigError("the proxy is still starting; try again")
        if words == ["status"]:
            return status_line(proxy)
        event = request_event(words, self.driver.link, len(proxy.config.source_addresses) > 1)
        change = await self.driver.apply(event, proxy.now())
        return change.detail

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
        f"profile {proxy.profile_name}; {counted(len(proxy.events), 'event')}; sessions "
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
