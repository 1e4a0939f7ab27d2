"""Scenarios: a topology, a timeline of network events, a workload and what we expect."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from typing import ClassVar

from quicmig.errors import InputError
from quicmig.model.events import (
    AddressChange,
    Blackhole,
    CidRotate,
    InterfaceDown,
    InterfaceUp,
    LinkChange,
    NatRebind,
    Switch,
    TimelineEvent,
    kind_of,
)
from quicmig.model.topology import Topology, check_ip
from quicmig.model.verdicts import MigrationKind, Verdict

SERVER_PORT = 4433  # UDP: where every quicmig server listens unless told otherwise


# bytes: the largest download. The server hands aioquic the whole body at once (aioquic has
# no public way to say how much of a stream is still buffered, so it cannot be fed lazily),
# and a client must not be able to make it hold gigabytes.
MAX_DOWNLOAD = 200_000_000


@dataclass(frozen=True, slots=True)
class Download:
    """The client asks for `size` bytes; the server sends them on one stream."""

    size: int = 1_000_000  # bytes


@dataclass(frozen=True, slots=True)
class Messages:
    """Request/response: `count` messages of `size` bytes, one every `interval` seconds."""

    count: int = 20
    interval: float = 0.1  # seconds
    size: int = 100  # bytes


@dataclass(frozen=True, slots=True)
class Stream:
    """Constant bitrate from the server, like a video call; gaps over `stall` are stalls."""

    rate: float = 1e6  # bits per second
    duration: float = 5.0  # seconds
    chunk: int = 1200  # bytes per frame
    stall: float = 0.2  # seconds of playout buffer: a longer gap is a stall


Workload = Download | Messages | Stream


def expected_bytes(workload: Workload) -> int | None:
    """Bytes the client's application should receive in all; None for a stream (it runs by
    time, so a fraction of it means nothing)."""
    match workload:
        case Download(size=size):
            return size
        case Messages(count=count, size=size):
            return count * size
    return None


@dataclass(frozen=True, slots=True)
class ClientSettings:
    interface: str | None = None  # initial interface; None = the client's first
    keepalive: float | None = None  # seconds between PINGs while idle; None = off
    failover_after: float | None = None  # seconds without hearing the server, then switch


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """What the server advertises in its transport parameters (RFC 9000 section 18.2).

    TOML: a `[server]` table. Either setting makes the server use quicmig's connection class
    (src/quicmig/aioquic_ext.py), as aioquic 1.7.2's server can send neither.
    """

    # RFC 9000 section 9.6: "ip:port" of another of the server's addresses; the client
    # validates it after the handshake and moves there, with the connection ID (sequence 1)
    # the server sent along with it. In the simulator the server host must hold the address.
    preferred_address: tuple[str, int] | None = None
    # RFC 9000 section 18.2: the client must not migrate actively (NAT rebinding still may).
    disable_active_migration: bool = False

    @property
    def enabled(self) -> bool:
        return self.preferred_address is not None or self.disable_active_migration


ATTACK_KINDS = ("spoof", "forward")


@dataclass(frozen=True, slots=True)
class Attacker:
    """Copies the client's packets as they leave `watch` and races them to the server.

    `spoof` (RFC 9000 section 9.3.2): the copy carries a forged source address, `source`,
    someone else's; with it goes a corrupted copy forged with the client's own address.
    `forward` (section 9.3.3): an off-path attacker sends the copy from its own address,
    `source`. Either way the copy arrives `delay` seconds after the original left, before it.
    The attacker cannot decrypt: it only copies, `count` times, `every` seconds from `at`.
    """

    kind: str
    watch: str  # "host.iface" whose outgoing datagrams the attacker sees
    source: tuple[str, int]
    at: float = 1.0  # seconds
    count: int = 3
    every: float = 1.0  # seconds
    delay: float = 0.001  # seconds from the original leaving to the copy reaching the core


STACKS = ("stock", "quicmig")  # `--stack`: aioquic as released, or every extension on


@dataclass(frozen=True, slots=True)
class QuicExtensions:
    """quicmig's extensions to aioquic 1.7.2 (src/quicmig/aioquic_ext.py), each a switch.

    All off is stock aioquic, the default of every built-in scenario. TOML: a `[quic]` table,
    e.g. `challenge_first = true`; `quicmig run NAME --stack quicmig` turns all of them on.
    """

    # RFC 9000 sections 8.2.1 and 9.3 with RFC 9002 section 7: the server's PATH_CHALLENGE to a
    # new peer address goes out in its first packet there even when old-path packets fill
    # the congestion window (stock: a bare ACK first, the challenge after a PTO or an ACK).
    challenge_first: bool = False
    # RFC 9000 section 9.4: once a new peer address (not a port-only change) is validated,
    # the server starts a fresh congestion controller and RTT estimate for it, and packets
    # still in flight on the old path stop counting towards congestion control.
    reset_recovery: bool = False
    # RFC 9000 sections 9 and 18.2: the client reads the server's disable_active_migration
    # and refuses active migration (a switch of interface, a failover); a NAT rebinding,
    # which the client does not choose, still happens (stock aioquic 1.7.2 ignores it).
    honour_disable_migration: bool = False
    # RFC 9000 section 9.3.3: "In response to an apparent migration, endpoints MUST validate
    # the previously active path using a PATH_CHALLENGE frame": the server challenges the old
    # path too, so a live client there answers (non-probing) and pulls the connection back
    # from an address an attacker forwarded its packets from (stock aioquic 1.7.2 does not).
    probe_old_path: bool = False

    NAMES: ClassVar[tuple[str, ...]] = (
        "challenge_first",
        "reset_recovery",
        "honour_disable_migration",
        "probe_old_path",
    )

    @classmethod
    def all_on(cls) -> QuicExtensions:
        return cls(**dict.fromkeys(cls.NAMES, True))

    @property
    def enabled(self) -> tuple[str, ...]:
        """Names of the switches that are on; empty means stock aioquic."""
        return tuple(name for name in self.NAMES if getattr(self, name))


@dataclass(frozen=True, slots=True)
class Expectation:
    """What the scenario's author expects: the checks compare it with observation."""

    verdict: Verdict = Verdict.PASSED
    migrations: tuple[MigrationKind, ...] = ()  # what the server must see, in order
    min_migrations: int | None = None  # for periodic events: at least this many
    cid_rotations: int = 0  # connection-ID changes on an unchanged path
    why: str = ""  # one line: why this verdict is expected
    # The verdict expected with every quicmig extension on (`--stack quicmig`); None: the
    # same as `verdict`. Lets a scenario document stock aioquic and quicmig side by side.
    quicmig_verdict: Verdict | None = None
    quicmig_why: str = ""
    # With [server] preferred_address: True, the client must move there with a new DCID
    # (interop `connectionmigration`); False, it must stay on the original address.
    preferred_address_used: bool | None = None


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    summary: str
    topology: Topology
    workload: Workload
    timeline: tuple[TimelineEvent, ...] = ()
    client: ClientSettings = field(default_factory=ClientSettings)
    quic: QuicExtensions = field(default_factory=QuicExtensions)
    server: ServerSettings = field(default_factory=ServerSettings)
    attackers: tuple[Attacker, ...] = ()
    duration: float = 30.0  # seconds of simulated time at most
    expect: Expectation = field(default_factory=Expectation)
    doc: str = ""  # longer description: what happens and what to look at

    def with_stack(self, stack: str) -> Scenario:
        """`stock`: every extension off; `quicmig`: every extension on, with the verdict the
        scenario expects of quicmig (`expect.quicmig_verdict`, if it names one)."""
        if stack == "stock":
            return replace(self, quic=QuicExtensions())
        if stack != "quicmig":
            raise InputError(f"--stack {stack!r}: allowed: {', '.join(STACKS)}")
        expect = self.expect
        if expect.quicmig_verdict is not None:
            expect = replace(
                expect, verdict=expect.quicmig_verdict, why=expect.quicmig_why or expect.why
            )
        return replace(self, quic=QuicExtensions.all_on(), expect=expect)

    def validated(self) -> Scenario:
        topo = self.topology.validated()
        if self.duration <= 0:
            raise InputError(f"scenario {self.name}: duration_s must be > 0")
        for index, event in enumerate(self.timeline):
            where = f"timeline[{index}] ({kind_of(event).value})"
            self._validate_when(event, where)
            try:
                self._validate_event(topo, event, where)
            except InputError as exc:  # name the event whose reference is unknown
                text = str(exc)
                raise InputError(text if text.startswith(where) else f"{where}: {text}") from None
        self._validate_server(topo)
        for index, attacker in enumerate(self.attackers):
            where = f"attackers[{index}]"
            topo.split_iface(attacker.watch, f"{where}.watch")
            if attacker.count < 1 or attacker.every <= 0 or attacker.delay < 0 or attacker.at < 0:
                raise InputError(
                    f"{where}: needs count >= 1, every_s > 0, delay_ms >= 0 and at_s >= 0"
                )
        for client in topo.clients:
            if self.client.interface is not None:
                try:
                    client.interface(self.client.interface)
                except InputError as exc:
                    raise InputError(f"client.interface: {exc}") from None
        match self.workload:
            case Download(size=size) if not 0 <= size <= MAX_DOWNLOAD:
                raise InputError(f"workload.bytes: must be between 0 and {MAX_DOWNLOAD:,}")
            case Messages(count=count, interval=interval) if count < 1 or interval < 0:
                raise InputError("workload: messages needs count >= 1 and interval_s >= 0")
            case Stream(rate=rate, duration=dur, chunk=chunk) if rate <= 0 or dur <= 0 or chunk < 1:
                raise InputError("workload: stream needs rate_mbit > 0, duration_s > 0, chunk >= 1")
        return self

    def _validate_when(self, event: TimelineEvent, where: str) -> None:
        if event.progress is not None:
            if not 0 < event.progress < 1:
                raise InputError(
                    f"{where}.at_progress: {event.progress:g} is not a fraction between 0 and 1 "
                    "(e.g. 0.5: once half of the workload's bytes have arrived)"
                )
            if expected_bytes(self.workload) is None:
                raise InputError(
                    f"{where}.at_progress: a {type(self.workload).__name__.lower()} workload "
                    "has no byte count to take a fraction of; use at_s"
                )
            return
        if event.at < 0:
            raise InputError(f"{where}.at_s: {event.at:g} is negative; use >= 0 seconds")
        if event.at >= self.duration:
            raise InputError(
                f"{where}.at_s: {event.at:g} s is at or after the end of the run "
                f"({self.duration:g} s); raise duration_s or move the event"
            )

    @staticmethod
    def _validate_event(topo: Topology, event: TimelineEvent, where: str) -> None:
        match event:
            case NatRebind(nat=nat, every=every):
                topo.nat(nat)
                if every is not None and every <= 0:
                    raise InputError(f"{where}.every_s: must be > 0 seconds")
            case AddressChange(iface=ref, address=address):
                _, iface = topo.split_iface(ref, f"{where}.iface")
                check_ip(address, f"{where}.address")
                old = ipaddress.ip_address(iface.addresses[0])
                if ipaddress.ip_address(address).version != old.version:
                    raise InputError(
                        f"{where}.address: {address} is not of the family of {ref}'s {old}"
                    )
            case InterfaceDown(iface=ref) | InterfaceUp(iface=ref):
                topo.split_iface(ref, f"{where}.iface")
            case Switch(host=host) | CidRotate(host=host):
                clients = [h.name for h in topo.clients]
                if host not in clients:
                    raise InputError(
                        f"{where}.host: {host!r} runs no client; clients: {', '.join(clients)}"
                    )
                if isinstance(event, Switch):
                    try:
                        topo.host(host).interface(event.to)
                    except InputError as exc:
                        raise InputError(f"{where}.to: {exc}") from None
                    if event.gap < 0 or event.overlap < 0:
                        raise InputError(f"{where}: gap_s and overlap_s must be >= 0 seconds")
            case LinkChange(link=link):
                topo.link(link)
            case Blackhole(link=link, seconds=seconds):
                topo.link(link)
                if not seconds > 0:
                    raise InputError(f"{where}.duration_s: must be > 0 seconds")

    def _validate_server(self, topo: Topology) -> None:
        preferred = self.server.preferred_address
        if preferred is None:
            return
        host = topo.host(topo.server)
        own = host.interfaces[0].addresses[0]
        if ipaddress.ip_address(preferred[0]).version != ipaddress.ip_address(own).version:
            raise InputError(
                f"server.preferred_address: {preferred[0]} is not of the family of the "
                f"server's address {own}"
            )
        if preferred == (own, SERVER_PORT):
            raise InputError(
                f"server.preferred_address: {preferred[0]}:{preferred[1]} is the server's own "
                "address; give another address or port"
            )
        if not any(preferred[0] in iface.addresses for iface in host.interfaces):
            held = ", ".join(a for iface in host.interfaces for a in iface.addresses)
            raise InputError(
                f"server.preferred_address: {preferred[0]} is not an address of host "
                f"{host.name!r} (it has {held}); add an interface holding it"
            )
