"""Topology as data: hosts with interfaces, links with impairments, NAT boxes.

The shape is a star: every host interface joins, through one link, either a NAT or the
"internet" (an ideal core router); the outside of every NAT is on the internet. This covers
phones with WiFi and cellular behind home NATs and carrier-grade NATs, and maps one-to-one
onto the namespace lab (client namespace, router namespace doing NAT, server namespace).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace

from quicmig.errors import InputError

INTERNET = "internet"


def check_ip(value: str, where: str) -> str:
    """Return `value` if it is an IPv4 or IPv6 address, else raise InputError naming `where`."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise InputError(f"{where}: {value!r} is not an IPv4 or IPv6 address") from None


@dataclass(frozen=True, slots=True)
class LinkProfile:
    """Impairments of one link, the same in both directions (each direction queues alone)."""

    delay: float = 0.010  # seconds, one way
    jitter: float = 0.0  # seconds, uniform in [-jitter, +jitter], FIFO order kept
    loss: float = 0.0  # fraction of packets lost, 0..1
    burst_len: float = 1.0  # mean loss burst in packets (Gilbert-Elliott); 1 = independent
    rate: float | None = None  # bits per second; None = unlimited
    queue: int = 1000  # packets held behind the bottleneck before drop-tail

    def validated(self, where: str) -> LinkProfile:
        if self.delay < 0:
            raise InputError(f"{where}.delay_ms: {self.delay * 1e3:g} is negative; use >= 0")
        if self.jitter < 0:
            raise InputError(f"{where}.jitter_ms: {self.jitter * 1e3:g} is negative; use >= 0")
        if not 0.0 <= self.loss <= 1.0:
            raise InputError(
                f"{where}.loss_pct: {self.loss * 100:g} is outside 0-100; use a percentage"
            )
        if self.burst_len < 1:
            raise InputError(f"{where}.burst_len: {self.burst_len:g} is below 1; use >= 1")
        # Gilbert-Elliott enters the lossy state at most every packet, so its stationary loss
        # p / (p + 1/burst_len) is at most burst_len / (burst_len + 1) short of a blackhole.
        ceiling = self.burst_len / (self.burst_len + 1)
        if self.burst_len > 1 and ceiling < self.loss < 1.0:
            raise InputError(
                f"{where}.loss_pct: {self.loss * 100:g} is above {ceiling * 100:.4g}, the most a "
                f"burst_len of {self.burst_len:g} can give; raise burst_len or use loss_pct = 100"
            )
        if self.rate is not None and self.rate <= 0:
            raise InputError(f"{where}.rate_mbit: must be >= 0 (0 or omitted: no limit)")
        if self.queue < 1:
            raise InputError(f"{where}.queue_packets: {self.queue} is below 1; use >= 1")
        return self


# Link profiles a user can name ("wifi", "cellular") in scenarios and in the proxy.
PROFILES: dict[str, LinkProfile] = {
    "ideal": LinkProfile(delay=0.0),
    "lan": LinkProfile(delay=0.001, rate=1e9),
    "wifi": LinkProfile(delay=0.020, rate=50e6, queue=100),
    "cellular": LinkProfile(delay=0.060, rate=10e6, loss=0.01, queue=100),
    "interop": LinkProfile(delay=0.015, rate=10e6, queue=25),
}


@dataclass(frozen=True, slots=True)
class Interface:
    name: str
    addresses: tuple[str, ...]
    up: bool = True


@dataclass(frozen=True, slots=True)
class Host:
    name: str
    interfaces: tuple[Interface, ...]

    def interface(self, name: str) -> Interface:
        for iface in self.interfaces:
            if iface.name == name:
                return iface
        known = ", ".join(i.name for i in self.interfaces)
        raise InputError(f"host {self.name!r} has no interface {name!r}; it has: {known}")


@dataclass(frozen=True, slots=True)
class Nat:
    """An endpoint-independent-mapping NAT (RFC 4787 section 4.1)."""

    name: str
    external: tuple[str, ...]  # pool of public addresses; the first is used until rebinding
    idle_timeout: float = 30.0  # seconds without traffic before a mapping is dropped
    port_range: tuple[int, int] = (20000, 60999)


@dataclass(frozen=True, slots=True)
class Link:
    """Joins `a` (a host interface, "host.iface") to `b` (a NAT name or "internet")."""

    name: str
    a: str
    b: str
    profile: LinkProfile = field(default_factory=LinkProfile)


@dataclass(frozen=True, slots=True)
class Topology:
    hosts: tuple[Host, ...]
    links: tuple[Link, ...]
    nats: tuple[Nat, ...] = ()
    server: str = "server"  # name of the host that runs the QUIC server

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        known = ", ".join(h.name for h in self.hosts)
        raise InputError(f"unknown host {name!r}; hosts are: {known}")

    def nat(self, name: str) -> Nat:
        for nat in self.nats:
            if nat.name == name:
                return nat
        known = ", ".join(n.name for n in self.nats) or "none"
        raise InputError(f"unknown NAT {name!r}; NATs are: {known}")

    def link(self, name: str) -> Link:
        for link in self.links:
            if link.name == name:
                return link
        known = ", ".join(lk.name for lk in self.links)
        raise InputError(f"unknown link {name!r}; links are: {known}")

    def link_of(self, host: str, iface: str) -> Link:
        for link in self.links:
            if link.a == f"{host}.{iface}":
                return link
        raise InputError(
            f'interface {host}.{iface} has no link; add a link with a = "{host}.{iface}"'
        )

    def split_iface(self, ref: str, where: str) -> tuple[Host, Interface]:
        """Resolve "host.iface" to its objects, or raise InputError naming `where`."""
        host_name, dot, iface_name = ref.partition(".")
        if not dot:
            raise InputError(f"{where}: {ref!r} is not of the form host.interface")
        try:
            host = self.host(host_name)
            return host, host.interface(iface_name)
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from None

    @property
    def clients(self) -> tuple[Host, ...]:
        return tuple(h for h in self.hosts if h.name != self.server)

    def with_link_profile(self, name: str, profile: LinkProfile) -> Topology:
        self.link(name)
        links = tuple(replace(lk, profile=profile) if lk.name == name else lk for lk in self.links)
        return replace(self, links=links)

    def validated(self) -> Topology:
        """Check cross references; raise InputError with the first problem found."""
        names = [h.name for h in self.hosts]
        if len(set(names)) != len(names):
            raise InputError("topology: host names must be unique")
        self.host(self.server)
        if not self.clients:
            raise InputError("topology: needs at least one client host besides the server")
        for host in self.hosts:
            if not host.interfaces:
                raise InputError(f"host {host.name!r}: needs at least one interface")
            for iface in host.interfaces:
                if not iface.addresses:
                    raise InputError(f"interface {host.name}.{iface.name}: needs an address")
                for addr in iface.addresses:
                    check_ip(addr, f"interface {host.name}.{iface.name}")
                self.link_of(host.name, iface.name)
        nat_names = {n.name for n in self.nats}
        for nat in self.nats:
            if not nat.external:
                raise InputError(f"nat {nat.name!r}: needs at least one external address")
            for addr in nat.external:
                check_ip(addr, f"nat {nat.name}.external")
            if nat.idle_timeout <= 0:
                raise InputError(f"nat {nat.name}.idle_timeout_s: must be > 0 seconds")
            lo, hi = nat.port_range
            if not 1024 <= lo <= hi <= 65535:
                raise InputError(f"nat {nat.name}.port_range: need 1024 <= low <= high <= 65535")
        for link in self.links:
            self.split_iface(link.a, f"link {link.name}.a")
            if link.b != INTERNET and link.b not in nat_names:
                raise InputError(f'link {link.name}.b: {link.b!r} is neither a NAT nor "internet"')
            link.profile.validated(f"link {link.name}")
        server_links = [lk for lk in self.links if lk.a.startswith(self.server + ".")]
        if any(lk.b != INTERNET for lk in server_links):
            raise InputError(f'host {self.server!r}: the server must be linked to "internet"')
        return self
