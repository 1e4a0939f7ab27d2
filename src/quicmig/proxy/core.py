"""A userspace UDP middlebox between a QUIC client and server on this machine.

Client datagrams arrive on the listen socket and leave towards the upstream server from one
socket per client (the "NAT mapping"). A rebinding replaces that socket with a new one: a new
source port, or with rebind addresses the next loopback address, exactly what a NAT that
forgot its mapping does. The old socket stays open for RETIRED_LINGER seconds and drops what
the server still sends to it, as quic-interop-runner's NAT drops it (no ICMP port
unreachable tells the server), and the capture records each such datagram: a server that
never follows the client's new port is seen sending to the old one (RFC 9000 section 9.3).

Impairments are the simulator's: one `sim.link.Pipe` per direction (delay, jitter, random and
Gilbert-Elliott loss, rate with a drop-tail queue), driven by the event loop's clock in
seconds since the proxy started. A blackhole drops everything in both directions.

The proxy only does what it is told, when it is told (`rebind()`, `set_profile()`,
`blackhole()`): schedules are timelines, applied by its driver (quicmig.proxy.driver).
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from quicmig.core.datagram import Address, Datagram, format_address
from quicmig.core.pcap import PcapWriter
from quicmig.core.seeds import link_rng
from quicmig.errors import InputError, QuicmigError
from quicmig.live.udp import (
    Timer,
    UdpSocket,
    bind_error,
    family_of,
    open_socket,
)
from quicmig.model.topology import PROFILES, LinkProfile
from quicmig.sim.link import Pipe

Log = Callable[[str], None]
DEFAULT_UPSTREAM_TIMEOUT = 5.0  # seconds without any answer from the upstream: give up
RETIRED_LINGER = 30.0  # seconds a mapping's old socket keeps dropping after a rebinding


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    listen: Address
    upstream: Address
    profile: LinkProfile = field(default_factory=lambda: PROFILES["ideal"])
    profile_name: str = "ideal"
    link: str = "client"  # the link it stands for: its loss draws are that link's (core.seeds)
    source_addresses: tuple[str, ...] = ("127.0.0.1",)  # cycled through by rebindings
    pcap: Path | None = None
    seed: int = 1
    upstream_timeout: float = DEFAULT_UPSTREAM_TIMEOUT


@dataclass(frozen=True, slots=True)
class ProxyEvent:
    """Something the proxy did to the network, as printed."""

    at: float  # seconds since the proxy started
    kind: str  # "rebind" | "link-change" | "blackhole" | "blackhole-end"
    detail: str
    client: Address | None = None
    old: Address | None = None  # rebind: old source address towards the upstream
    new: Address | None = None


@dataclass(slots=True)
class ProxyStats:
    from_client: int = 0
    from_upstream: int = 0
    to_upstream: int = 0
    to_client: int = 0
    blackholed: int = 0
    late: int = 0  # upstream datagrams to a retired mapping (after a rebinding): dropped


def is_loopback(host: str) -> bool:
    return ipaddress.ip_address(host).is_loopback


class UpstreamSocket(UdpSocket):
    """A session's socket: datagrams and ICMP errors go to the proxy."""

    def __init__(self, session: Session) -> None:
        super().__init__(lambda data, addr: session.proxy.from_upstream(session, data, addr))
        self.session = session

    def error_received(self, exc: Exception) -> None:
        self.session.proxy.upstream_error(self.session, exc)

    def send(self, data: bytes) -> None:
        """Send to the upstream (the socket is connected to it)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data)


class Session:
    """One client's mapping: its address and the socket that speaks for it upstream."""

    def __init__(self, proxy: Proxy, client: Address, source_index: int) -> None:
        self.proxy = proxy
        self.client = client
        self.source_index = source_index
        self.socket: UpstreamSocket | None = None
        self.answered = False

    async def open(self) -> Address:
        """A new connected UDP socket towards the upstream (connected: ICMP errors come back)."""
        host = self.proxy.config.source_addresses[self.source_index]
        loop = asyncio.get_running_loop()
        try:
            _, sock = await loop.create_datagram_endpoint(
                lambda: UpstreamSocket(self),
                local_addr=(host, 0),
                remote_addr=self.proxy.config.upstream,
                family=family_of(host),
            )
        except OSError as exc:
            raise QuicmigError(bind_error((host, 0), exc, "proxy, towards the upstream")) from None
        self.socket = sock
        return sock.local

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close()
            self.socket = None


class Proxy:
    """The middlebox; use as `async with Proxy(config) as proxy:` then `await proxy.wait()`."""

    def __init__(self, config: ProxyConfig, log: Log = print) -> None:
        self.config = config
        self.log = log
        self.events: list[ProxyEvent] = []
        self.stats = ProxyStats()
        self.sessions: dict[Address, Session] = {}
        self.profile_name = config.profile_name
        self.up = Pipe("client->upstream", config.profile, link_rng(config.seed, config.link, "up"))
        self.down = Pipe(
            "upstream->client", config.profile, link_rng(config.seed, config.link, "down")
        )
        self.listener: UdpSocket | None = None
        self._up_timer: Timer | None = None
        self._down_timer: Timer | None = None
        self._pcap: PcapWriter | None = None
        self._epoch = 0.0
        self._t0 = 0.0
        self._blackhole_until = 0.0
        self._rebinds = 0
        self._next_source = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._first_forward: float | None = None
        self._failed: asyncio.Future[None] | None = None
        self._closed = False

    # --- clock, lifecycle ---------------------------------------------------------------

    def now(self) -> float:
        return asyncio.get_running_loop().time() - self._t0

    @property
    def local(self) -> Address:
        assert self.listener is not None, "start() first"
        return self.listener.local

    async def start(self) -> Address:
        loop = asyncio.get_running_loop()
        self._t0 = loop.time()
        self._epoch = time.time()
        self._failed = loop.create_future()
        self._up_timer = Timer(lambda now: self._deliver(self.up, now), self.now)
        self._down_timer = Timer(lambda now: self._deliver(self.down, now), self.now)
        try:
            self.listener = await open_socket(
                self.config.listen,
                self._from_client,
                "proxy, listening",
                "choose another port in --listen",
            )
            # The pcap last: a startup failure leaves no empty capture behind.
            if self.config.pcap is not None:
                try:
                    self._pcap = PcapWriter(self.config.pcap.open("wb"))
                except OSError as exc:
                    raise InputError(f"--pcap {self.config.pcap}: {exc.strerror or exc}") from None
        except BaseException:
            await self.aclose()
            raise
        return self.listener.local

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for timer in (self._up_timer, self._down_timer):
            if timer is not None:
                timer.cancel()
        for session in self.sessions.values():
            session.close()
        if self.listener is not None:
            self.listener.close()
        if self._pcap is not None:
            self._pcap.close()
            self._pcap = None
        if self._failed is not None and not self._failed.done():
            self._failed.cancel()
        await asyncio.sleep(0)  # let the transports finish closing

    async def __aenter__(self) -> Proxy:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def wait(self) -> None:
        """Run until a fatal error (raised here as QuicmigError) or cancellation."""
        assert self._failed is not None, "start() first"
        await self._failed

    def _fail(self, message: str) -> None:
        if self._failed is not None and not self._failed.done():
            self._failed.set_exception(QuicmigError(message))

    # --- actions ------------------------------------------------------------------------

    def _event(self, event: ProxyEvent) -> ProxyEvent:
        self.events.append(event)
        self.log(f"[{event.at:8.3f} s] {event.detail}")
        return event

    async def rebind(self, new_address: bool = True) -> list[ProxyEvent]:
        """Give every client a new mapping: a new source port, and with `new_address` the
        next of the configured source addresses (if there are several)."""
        sources = self.config.source_addresses
        if new_address:
            self._next_source = (self._next_source + 1) % len(sources)
        self._rebinds += 1
        if not self.sessions:
            return [
                self._event(
                    ProxyEvent(
                        self.now(),
                        "rebind",
                        f"rebind {self._rebinds}: no client yet; the next mapping will use "
                        f"{sources[self._next_source]}",
                    )
                )
            ]
        out = []
        for session in list(self.sessions.values()):
            old = session.socket.local if session.socket is not None else None
            self._retire(session)
            session.source_index = self._next_source
            new = await session.open()
            out.append(
                self._event(
                    ProxyEvent(
                        self.now(),
                        "rebind",
                        f"🔀 rebind {self._rebinds}: client {format_address(session.client)} now "
                        f"reaches {format_address(self.config.upstream)} from "
                        f"{format_address(new)} (was {format_address(old) if old else '-'})",
                        client=session.client,
                        old=old,
                        new=new,
                    )
                )
            )
        return out

    def _retire(self, session: Session) -> None:
        """Take the session's socket out of service without closing it: what the upstream
        still sends there is captured and dropped (counted in `stats.late`), like a NAT that
        forgot the mapping; closing it would make the kernel answer with ICMP port
        unreachable, which tells the server more than the interop runner's NAT does."""
        retired = session.socket
        session.socket = None
        if retired is None:
            return
        local = retired.local

        def dropped(data: bytes, addr: Address) -> None:
            self.stats.late += 1
            self._write(addr, local, data)

        retired.on_datagram = dropped
        self._tasks.append(asyncio.ensure_future(self._close_later(retired)))

    async def _close_later(self, retired: UpstreamSocket) -> None:
        try:
            await asyncio.sleep(RETIRED_LINGER)
        finally:  # also when the proxy closes first (its tasks are cancelled)
            retired.close()

    def set_profile(self, profile: LinkProfile, name: str) -> ProxyEvent:
        """Both directions take `profile` (called `name`: wifi, cellular, ...) from now on."""
        old = self.profile_name
        self.up.profile = profile
        self.down.profile = profile
        self.profile_name = name
        return self._event(
            ProxyEvent(self.now(), "link-change", f"📶 link: {old} → {name} ({describe(profile)})")
        )

    def blackhole(self, seconds: float) -> ProxyEvent:
        """Drop every datagram, both ways, for `seconds`."""
        if seconds <= 0:
            raise InputError(f"blackhole {seconds:g}: give a length in seconds > 0")
        now = self.now()
        self._blackhole_until = max(self._blackhole_until, now + seconds)
        until = self._blackhole_until
        self._tasks.append(asyncio.ensure_future(self._end_blackhole(until)))
        return self._event(
            ProxyEvent(now, "blackhole", f"🕳  blackhole for {seconds:g} s (until {until:.3f} s)")
        )

    async def _end_blackhole(self, until: float) -> None:
        await asyncio.sleep(max(0.0, until - self.now()))
        if until == self._blackhole_until:
            self._event(
                ProxyEvent(
                    self.now(),
                    "blackhole-end",
                    f"blackhole over ({self.stats.blackholed} datagrams dropped so far)",
                )
            )

    # --- datagrams ----------------------------------------------------------------------

    def _write(self, src: Address, dst: Address, data: bytes) -> None:
        if self._pcap is not None:
            self._pcap.write(Datagram(src, dst, data), self._epoch + self.now())

    def _from_client(self, data: bytes, addr: Address) -> None:
        self.stats.from_client += 1
        self._write(addr, self.local, data)
        session = self.sessions.get(addr)
        if session is None:
            session = Session(self, addr, self._next_source)
            self.sessions[addr] = session
            self._tasks.append(asyncio.ensure_future(self._open_then_send(session, data)))
            return
        self._into(self.up, Datagram(addr, self.config.upstream, data), self._up_timer)

    async def _open_then_send(self, session: Session, data: bytes) -> None:
        try:
            local = await session.open()
        except QuicmigError as exc:
            self._fail(str(exc))
            return
        self.log(
            f"[{self.now():8.3f} s] client {format_address(session.client)} → "
            f"{format_address(self.config.upstream)} from {format_address(local)} "
            f"(profile {self.profile_name})"
        )
        self._into(self.up, Datagram(session.client, self.config.upstream, data), self._up_timer)

    def from_upstream(self, session: Session, data: bytes, addr: Address) -> None:
        self.stats.from_upstream += 1
        assert session.socket is not None
        self._write(addr, session.socket.local, data)
        session.answered = True
        self._into(self.down, Datagram(addr, session.client, data), self._down_timer)

    def upstream_error(self, session: Session, exc: Exception) -> None:
        if isinstance(exc, ConnectionRefusedError) and not session.answered:
            self._fail(
                f"the upstream {format_address(self.config.upstream)} does not answer (port "
                "unreachable): start the server first, or check --upstream"
            )

    def _into(self, pipe: Pipe, datagram: Datagram, timer: Timer | None) -> None:
        now = self.now()
        if now < self._blackhole_until:
            self.stats.blackholed += 1
            return
        if pipe is self.up and self._first_forward is None:
            self._first_forward = now
            self._tasks.append(asyncio.ensure_future(self._watch_upstream()))
        pipe.receive_datagram(datagram, now)
        while pipe.next_event() is not None:
            pass
        assert timer is not None
        timer.arm(pipe.get_timer())

    def _deliver(self, pipe: Pipe, now: float) -> None:
        for datagram in pipe.datagrams_to_send(now):
            if pipe is self.up:
                session = self.sessions.get(datagram.src)
                if session is None or session.socket is None:
                    continue  # mid-rebind: the mapping is being replaced
                session.socket.send(datagram.data)
                self._write(session.socket.local, datagram.dst, datagram.data)
                self.stats.to_upstream += 1
            elif self.listener is not None:
                self.listener.sendto(datagram.data, datagram.dst)
                self._write(self.local, datagram.dst, datagram.data)
                self.stats.to_client += 1
        timer = self._up_timer if pipe is self.up else self._down_timer
        assert timer is not None
        timer.arm(pipe.get_timer())

    async def _watch_upstream(self) -> None:
        await asyncio.sleep(self.config.upstream_timeout + self.config.profile.delay * 2)
        if self.stats.from_upstream == 0:
            self._fail(
                f"the upstream {format_address(self.config.upstream)} did not answer within "
                f"{self.config.upstream_timeout:g} s of the first datagram: is the server running "
                "there?"
            )


def profile_named(name: str) -> LinkProfile:
    if name not in PROFILES:
        raise InputError(f"unknown link profile {name!r}; profiles are: {', '.join(PROFILES)}")
    return PROFILES[name]


def describe(profile: LinkProfile) -> str:
    parts = [f"{profile.delay * 1e3:g} ms"]
    if profile.jitter:
        parts.append(f"± {profile.jitter * 1e3:g} ms")
    if profile.loss:
        parts.append(f"{profile.loss * 100:g} % loss")
        if profile.burst_len > 1:
            parts.append(f"bursts of {profile.burst_len:g}")
    if profile.rate is not None:
        parts.append(f"{profile.rate / 1e6:g} Mbit/s, queue {profile.queue}")
    return ", ".join(parts)
