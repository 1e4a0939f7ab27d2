"""A userspace UDP middlebox between a QUIC client and server on this machine.

Client datagrams arrive on the listen socket and leave towards the upstream server from one
socket per client (the "NAT mapping"). A rebinding replaces that socket with a new one: a new
source port, or with rebind addresses the next loopback address, exactly what a NAT that
forgot its mapping does; the old socket is closed, so the server's answers to it are lost
until the client's next packet reaches the server from the new port (RFC 9000 section 9.3).

Impairments are the simulator's: one `sim.link.Pipe` per direction (delay, jitter, random and
Gilbert-Elliott loss, rate with a drop-tail queue), driven by the event loop's clock in
seconds since the proxy started. A blackhole drops everything in both directions.

The proxy only does what it is told, when it is told (`rebind()`, `set_profile()`,
`blackhole()`): schedules are timelines, applied by its driver (quicmig.proxy.driver).

The mappings behave like a NAT's (RFC 4787): one expires after `session_timeout` seconds
without traffic either way, and the table holds at most `max_sessions`, fewer if the open-file
limit leaves less room (one socket each). A new source meeting a full table takes the place
of the mapping idle longest if that one has been idle for EVICT_IDLE; otherwise the source is
refused, its datagram dropped, counted and logged. The proxy never exits over it.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import resource
import time
from collections import OrderedDict
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
# seconds: Linux conntrack's UDP timeout once traffic went both ways (udp_timeout_stream), and
# RFC 4787 REQ-5's two minutes
DEFAULT_SESSION_TIMEOUT = 120.0
DEFAULT_MAX_SESSIONS = 4096  # mappings, each one UDP socket
EVICT_IDLE = 1.0  # seconds: a full table gives up a mapping idle at least this long
RESERVED_FDS = 32  # files kept free of sessions (listener, control, pcap, stdio, the loop)
# Errors that mean "no socket for now" (the process or system is out of files or buffers):
# the source is refused, the proxy goes on.
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
LOG_BURST = 20  # lines of one kind per second; the rest are counted and summed up


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
    session_timeout: float = DEFAULT_SESSION_TIMEOUT  # seconds idle before a mapping expires
    max_sessions: int = DEFAULT_MAX_SESSIONS


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
    late: int = 0  # answers to a closed mapping (after a rebinding): dropped
    sessions_opened: int = 0
    sessions_expired: int = 0  # idle for session_timeout
    sessions_evicted: int = 0  # gave their place to a new source in a full table
    refused: int = 0  # datagrams of new sources dropped: table full, or no socket to be had


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


class SessionSocketError(QuicmigError):
    """A session's socket could not be opened; `errno` says why."""

    def __init__(self, message: str, number: int | None) -> None:
        super().__init__(message)
        self.errno = number


class Session:
    """One client's mapping: its address and the socket that speaks for it upstream."""

    def __init__(self, proxy: Proxy, client: Address, source_index: int, now: float) -> None:
        self.proxy = proxy
        self.client = client
        self.source_index = source_index
        self.socket: UpstreamSocket | None = None
        self.answered = False
        self.last_active = now  # seconds: the newest datagram either way

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
            message = bind_error((host, 0), exc, "proxy, towards the upstream")
            raise SessionSocketError(message, exc.errno) from None
        self.socket = sock
        return sock.local

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close()
            self.socket = None


def session_capacity(max_sessions: int) -> int:
    """`max_sessions`, or fewer: what the open-file limit leaves after the files open now and
    RESERVED_FDS."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return max_sessions
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:  # no /proc (macOS): assume a handful
        in_use = 16
    return max(0, min(max_sessions, soft - in_use - RESERVED_FDS))


class LogBudget:
    """At most LOG_BURST lines of each kind per second; the others are counted and the count
    is logged with the next line of that kind that gets through."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self._windows: dict[str, tuple[int, int, int]] = {}  # kind -> (second, lines, held)

    def line(self, kind: str, now: float, text: str) -> None:
        second, lines, held = self._windows.get(kind, (-1, 0, 0))
        if int(now) != second:
            second, lines = int(now), 0
        if lines >= LOG_BURST:
            self._windows[kind] = (second, lines, held + 1)
            return
        if held:
            text += f" (and {held} more like it not shown)"
        self._windows[kind] = (second, lines + 1, 0)
        self.log(text)


class Proxy:
    """The middlebox; use as `async with Proxy(config) as proxy:` then `await proxy.wait()`."""

    def __init__(self, config: ProxyConfig, log: Log = print) -> None:
        self.config = config
        self.log = log
        self.events: list[ProxyEvent] = []
        self.stats = ProxyStats()
        # Oldest activity first: the head is the mapping idle longest.
        self.sessions: OrderedDict[Address, Session] = OrderedDict()
        self.capacity = 0  # sessions the table may hold (start(): max_sessions and fd limit)
        self._expiry: Timer | None = None
        self._opening: set[asyncio.Task[None]] = set()
        self._log_budget = LogBudget(log)
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
        self._expiry = Timer(self._expire, self.now)
        try:
            self.listener = await open_socket(
                self.config.listen,
                self._from_client,
                "proxy, listening",
                "choose another port in --listen",
            )
            self.capacity = session_capacity(self.config.max_sessions)
            if self.capacity < 1:
                soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
                raise QuicmigError(
                    f"the open-file limit ({soft}) leaves no room for a session socket: "
                    "raise it (ulimit -n)"
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
        tasks = [*self._tasks, *self._opening]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for timer in (self._up_timer, self._down_timer, self._expiry):
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
            session.close()
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
        now = self.now()
        session = self.sessions.get(addr)
        if session is None:
            session = self._new_session(addr, now)
            if session is None:
                return
            task = asyncio.ensure_future(self._open_then_send(session, data))
            self._opening.add(task)
            task.add_done_callback(self._opening.discard)
            return
        self._touch(session, now)
        self._into(self.up, Datagram(addr, self.config.upstream, data), self._up_timer)

    def _touch(self, session: Session, now: float) -> None:
        session.last_active = now
        self.sessions.move_to_end(session.client)

    def _new_session(self, addr: Address, now: float) -> Session | None:
        """A mapping for a new source, in a full table in place of the one idle longest (if
        idle EVICT_IDLE); None: refused."""
        if len(self.sessions) >= self.capacity:
            oldest = next(iter(self.sessions.values()))
            if now - oldest.last_active < EVICT_IDLE:
                self._refuse(addr, now, f"the table is full ({self.capacity} sessions, all active)")
                return None
            self._drop(oldest)
            self.stats.sessions_evicted += 1
            self._log_budget.line(
                "evict",
                now,
                f"[{now:8.3f} s] session table full ({self.capacity}): "
                f"{format_address(oldest.client)}, idle {now - oldest.last_active:.1f} s, "
                f"makes room for {format_address(addr)}",
            )
        session = Session(self, addr, self._next_source, now)
        self.sessions[addr] = session
        self.stats.sessions_opened += 1
        if self._expiry is not None and len(self.sessions) == 1:
            self._expiry.arm(now + self.config.session_timeout)
        return session

    def _refuse(self, addr: Address, now: float, why: str) -> None:
        self.stats.refused += 1
        self._log_budget.line(
            "refuse",
            now,
            f"[{now:8.3f} s] ⛔ new source {format_address(addr)} refused: {why}; its datagram "
            f"is dropped ({self.stats.refused} refused so far)",
        )

    def _drop(self, session: Session) -> None:
        if self.sessions.get(session.client) is session:
            del self.sessions[session.client]
        session.close()

    def _expire(self, now: float) -> None:
        """Drop every mapping idle for session_timeout; re-arm for the next one due."""
        timeout = self.config.session_timeout
        while self.sessions:
            oldest = next(iter(self.sessions.values()))
            if now - oldest.last_active < timeout:
                break
            self._drop(oldest)
            self.stats.sessions_expired += 1
            self._log_budget.line(
                "expire",
                now,
                f"[{now:8.3f} s] session {format_address(oldest.client)} expired after "
                f"{timeout:g} s idle",
            )
        if self.sessions and self._expiry is not None:
            self._expiry.arm(next(iter(self.sessions.values())).last_active + timeout)

    async def _open_then_send(self, session: Session, data: bytes) -> None:
        try:
            local = await session.open()
        except SessionSocketError as exc:
            self._drop(session)
            if exc.errno in OUT_OF_RESOURCES:
                self._refuse(session.client, self.now(), f"no socket to be had ({exc})")
            else:
                self._fail(str(exc))
            return
        if self.sessions.get(session.client) is not session:  # expired or evicted meanwhile
            session.close()
            return
        self._log_budget.line(
            "session",
            self.now(),
            f"[{self.now():8.3f} s] client {format_address(session.client)} → "
            f"{format_address(self.config.upstream)} from {format_address(local)} "
            f"(profile {self.profile_name})",
        )
        self._into(self.up, Datagram(session.client, self.config.upstream, data), self._up_timer)

    def from_upstream(self, session: Session, data: bytes, addr: Address) -> None:
        self.stats.from_upstream += 1
        assert session.socket is not None
        self._write(addr, session.socket.local, data)
        session.answered = True
        if self.sessions.get(session.client) is session:
            self._touch(session, self.now())
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
