"""Scenarios: a topology, a timeline of network events, a workload and what we expect."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import ClassVar

from quicmig.errors import InputError
from quicmig.model.topology import Topology, check_ip

SERVER_PORT = 4433  # the port the server listens on in the simulator


class SwitchMode(Enum):
    BREAK_BEFORE_MAKE = "break-before-make"
    MAKE_BEFORE_BREAK = "make-before-break"


# Timeline events. `at` is in seconds from the start of the run.


@dataclass(frozen=True, slots=True)
class NatRebind:
    """The NAT forgets its mappings: the next outbound packet gets a new port (or address)."""

    at: float
    nat: str
    new_address: bool = False  # True: a carrier-grade NAT hands out the next pool address
    every: float | None = None  # seconds; repeat until the run ends


@dataclass(frozen=True, slots=True)
class InterfaceDown:
    at: float
    iface: str  # "host.iface"


@dataclass(frozen=True, slots=True)
class InterfaceUp:
    at: float
    iface: str


@dataclass(frozen=True, slots=True)
class AddressChange:
    """The interface's address is replaced (a DHCP renewal handing out another lease)."""

    at: float
    iface: str
    address: str


@dataclass(frozen=True, slots=True)
class Switch:
    """The client moves its traffic to another interface (WiFi to cellular, say)."""

    at: float
    host: str
    to: str  # interface name on `host`
    mode: SwitchMode = SwitchMode.BREAK_BEFORE_MAKE
    new_cid: bool = True  # RFC 9000 section 9.5: a new connection ID on a new path
    gap: float = 0.0  # break-before-make: seconds with no usable interface
    overlap: float = 1.0  # make-before-break: seconds the old interface keeps receiving


@dataclass(frozen=True, slots=True)
class CidRotate:
    """The client switches to a fresh connection ID on the same path (RFC 9000 section 9.5)."""

    at: float
    host: str


@dataclass(frozen=True, slots=True)
class LinkChange:
    """A link's impairments change: loss_pct=100 is a blackhole the endpoints cannot see."""

    at: float
    link: str
    settings: tuple[tuple[str, float], ...]  # (TOML key, value), e.g. ("loss_pct", 100.0)


TimelineEvent = (
    NatRebind | InterfaceDown | InterfaceUp | AddressChange | Switch | CidRotate | LinkChange
)
ACTIVE_MIGRATIONS = (Switch, AddressChange)  # the client knows it moved


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

    verdict: str = "passed"  # passed | failed | unsupported
    migrations: tuple[str, ...] = ()  # observed kinds in order: port_change, address_change
    min_migrations: int | None = None  # for periodic events: at least this many
    cid_rotations: int = 0  # connection-ID changes on an unchanged path
    why: str = ""  # one line: why this verdict is expected
    # The verdict expected with every quicmig extension on (`--stack quicmig`); None: the
    # same as `verdict`. Lets a scenario document stock aioquic and quicmig side by side.
    quicmig_verdict: str | None = None
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
            where = f"timeline[{index}] ({type(event).__name__})"
            if event.at < 0:
                raise InputError(f"{where}.at_s: {event.at:g} is negative; use >= 0 seconds")
            if event.at >= self.duration:
                raise InputError(
                    f"{where}.at_s: {event.at:g} s is at or after the end of the run "
                    f"({self.duration:g} s); raise duration_s or move the event"
                )
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
