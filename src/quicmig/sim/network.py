"""The simulated network: pipes, NAT boxes and host interfaces wired up from a Topology.

Routing follows the star shape of the topology: a datagram leaving a host interface
crosses that interface's link, then its NAT if the link ends in one, then the internet
core, which hands it to the NAT that owns the destination address or to the link of the
host interface that holds it. Unroutable datagrams are counted and dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from quicmig.core.datagram import Address, Datagram
from quicmig.core.seeds import derive_rng, link_rng
from quicmig.model.topology import INTERNET, LinkProfile, Topology
from quicmig.sim.link import Pipe
from quicmig.sim.nat import NatBox

Receiver = Callable[[Datagram, float], None]


@dataclass(slots=True)
class InterfaceState:
    host: str
    name: str
    addresses: list[str]
    up: bool
    link: str
    receivers: dict[Address, Receiver] = field(default_factory=dict)  # bound sockets


@dataclass(slots=True)
class NetworkStats:
    unroutable: int = 0  # no interface or NAT holds the destination
    interface_drops: int = 0  # arrived at an interface that is down or no socket bound


class Network:
    """Moves datagrams between host sockets; `on_arm(pipe)` asks the engine to re-arm a pipe."""

    def __init__(self, topology: Topology, seed: int, on_arm: Callable[[Pipe], None]) -> None:
        self.topology = topology
        self.stats = NetworkStats()
        self._on_arm = on_arm
        self.up: dict[str, Pipe] = {}  # link name -> pipe from the host interface outwards
        self.down: dict[str, Pipe] = {}  # link name -> pipe towards the host interface
        self._link_end: dict[str, str] = {}  # link name -> NAT name or INTERNET
        self._pipe_link: dict[int, tuple[str, bool]] = {}  # id(pipe) -> (link, is_up)
        self.nats = {
            nat.name: NatBox(nat, derive_rng(seed, f"nat/{nat.name}")) for nat in topology.nats
        }
        self.interfaces: dict[str, InterfaceState] = {}
        for link in topology.links:
            up = Pipe(f"{link.name}/up", link.profile, link_rng(seed, link.name, "up"))
            down = Pipe(f"{link.name}/down", link.profile, link_rng(seed, link.name, "down"))
            self.up[link.name], self.down[link.name] = up, down
            self._pipe_link[id(up)] = (link.name, True)
            self._pipe_link[id(down)] = (link.name, False)
            self._link_end[link.name] = link.b
        for host in topology.hosts:
            for iface in host.interfaces:
                ref = f"{host.name}.{iface.name}"
                link = topology.link_of(host.name, iface.name)
                self.interfaces[ref] = InterfaceState(
                    host.name, iface.name, list(iface.addresses), iface.up, link.name
                )
        self._iface_of_link = {i.link: ref for ref, i in self.interfaces.items()}
        self._routes: dict[str, tuple[NatBox | None, str | None]] = {}  # ip -> (NAT, link)
        self._iface_taps: dict[str, list[Callable[[Datagram, float], None]]] = {}

    @property
    def pipes(self) -> list[Pipe]:
        return [*self.up.values(), *self.down.values()]

    def interface(self, ref: str) -> InterfaceState:
        return self.interfaces[ref]

    def bind(self, ref: str, addr: Address, receiver: Receiver) -> None:
        self.interfaces[ref].receivers[addr] = receiver

    def unbind(self, ref: str, addr: Address) -> None:
        self.interfaces[ref].receivers.pop(addr, None)

    def set_address(self, ref: str, address: str) -> None:
        """Replace the primary address of interface `ref` (a DHCP renewal, say)."""
        self.interfaces[ref].addresses[0] = address
        self._routes.clear()

    def set_link_profile(self, link: str, profile: LinkProfile) -> None:
        self.up[link].profile = profile
        self.down[link].profile = profile

    def send(self, ref: str, datagram: Datagram, now: float) -> None:
        """A socket on interface `ref` sends `datagram` at `now`."""
        iface = self.interfaces[ref]
        if not iface.up or datagram.src[0] not in iface.addresses:
            self.stats.interface_drops += 1
            return
        for tap in self._iface_taps.get(ref, ()):
            tap(datagram, now)
        self._enter(self.up[iface.link], datagram, now)

    def inject(self, datagram: Datagram, now: float) -> None:
        """Hand `datagram` to the internet core as it is, forged source address included: an
        attacker on the internet side, where nothing filters sources (no BCP 38)."""
        self._core(datagram, now)

    def _enter(self, pipe: Pipe, datagram: Datagram, now: float) -> None:
        idle = pipe.get_timer() is None
        pipe.receive_datagram(datagram, now)
        # Drop events are already counted in pipe.stats; consume them so a lossy run does
        # not keep every lost datagram in memory.
        while pipe.next_event() is not None:
            pass
        if idle:  # a busy pipe keeps its FIFO head, so its timer cannot have moved
            self._on_arm(pipe)

    def pipe_output(self, pipe: Pipe, now: float) -> None:
        """Forward what `pipe` delivered by `now` to its next hop."""
        link, is_up = self._pipe_link[id(pipe)]
        for datagram in pipe.datagrams_to_send(now):
            if is_up:
                end = self._link_end[link]
                if end == INTERNET:
                    self._core(datagram, now)
                else:
                    self._through_nat(self.nats[end], datagram, now)
            else:
                self._arrive(link, datagram, now)

    def _through_nat(self, nat: NatBox, datagram: Datagram, now: float) -> None:
        nat.receive_datagram(datagram, now)
        while nat.next_event() is not None:  # counted in nat.inbound_drops
            pass
        for out in nat.datagrams_to_send(now):
            if nat.owns(datagram.dst[0]):  # inbound: towards a host behind this NAT
                link = self._inside_link(nat.nat.name, out.dst[0])
                if link is None:
                    self.stats.unroutable += 1
                else:
                    self._enter(self.down[link], out, now)
            else:
                self._core(out, now)

    def _inside_link(self, nat: str, ip: str) -> str | None:
        for iface in self.interfaces.values():
            if ip in iface.addresses and self._link_end[iface.link] == nat:
                return iface.link
        return None

    def _route(self, ip: str) -> tuple[NatBox | None, str | None]:
        """Where the core sends datagrams for `ip`: the NAT owning it, or a host's link."""
        route = self._routes.get(ip)
        if route is None:
            route = next(((nat, None) for nat in self.nats.values() if nat.owns(ip)), (None, None))
            if route[0] is None:
                for iface in self.interfaces.values():
                    if ip in iface.addresses and self._link_end[iface.link] == INTERNET:
                        route = (None, iface.link)
                        break
            self._routes[ip] = route
        return route

    def _core(self, datagram: Datagram, now: float) -> None:
        nat, link = self._route(datagram.dst[0])
        if nat is not None:
            self._through_nat(nat, datagram, now)
        elif link is not None:
            self._enter(self.down[link], datagram, now)
        else:
            self.stats.unroutable += 1

    def _arrive(self, link: str, datagram: Datagram, now: float) -> None:
        ref = self._iface_of_link[link]
        iface = self.interfaces[ref]
        receiver = iface.receivers.get(datagram.dst) if iface.up else None
        if receiver is None or datagram.dst[0] not in iface.addresses:
            self.stats.interface_drops += 1
            return
        for tap in self._iface_taps.get(ref, ()):
            tap(datagram, now)
        receiver(datagram, now)

    def tap_interface(self, ref: str, tap: Callable[[Datagram, float], None]) -> None:
        """Call `tap(datagram, now)` for every datagram sent or received on interface `ref`."""
        self._iface_taps.setdefault(ref, []).append(tap)
