"""What the namespace lab will build for a topology: names, addresses, links, NATs, rules.

Pure (no OS state): `LabPlan(topology, prefix, start)` checks that the lab can build the
topology and raises one-line InputErrors before anything exists. quicmig.lab.build carries
the plan out; quicmig.lab.moves changes it.

The lab builds the scenario's own addresses: they are isolated inside our namespaces (no
route leaves them), so documentation ranges and private ranges alike are safe to use.

- One namespace per host, `P-<host>`, and `P-router`: the internet core, holding every NAT.
- One TUN pair per link: `P-<iface>` in the host's namespace, `P-r<link>` in the router's
  (names cut to the kernel's 15 characters and made unique across the lab).
- Each host address sits on its TUN as a /32 (a TUN is point-to-point: no subnet, no ARP);
  hosts route `default dev <tun>`, the router a /32 route per host address.
- Each NAT: nftables SNAT of its links' traffic to its current external address, TCP and UDP
  ports from its current port window (a slice of its port range), conntrack for the state.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from quicmig.errors import InputError
from quicmig.model.topology import LinkProfile, Topology

IFNAME_MAX = 15  # characters of a Linux interface name (IFNAMSIZ 16 with the NUL)
HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # a namespace file name
ROUTER = "router"  # the router namespace is P-router: no host may take the name
MAX_DELAY = 10.0  # seconds of delay or jitter: packets in flight are held in the element's memory
PORT_WINDOW = 1000  # ports per NAT window: a rebinding moves on to the next window


def validate_profile(profile: LinkProfile, where: str) -> LinkProfile:
    """The simulator's checks, and the element's own limit on delay and jitter."""
    profile.validated(where)
    for what, value in (("delay_ms", profile.delay), ("jitter_ms", profile.jitter)):
        if value > MAX_DELAY:
            raise InputError(
                f"{where}.{what}: {value * 1e3:g} is above the lab's {MAX_DELAY * 1e3:g} ms "
                "(packets in flight are held in memory); use a smaller value"
            )
    return profile


def _ifname_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "", text)


def unique_names(prefix: str, wanted: Iterable[tuple[str, str]]) -> dict[str, str]:
    """`{key: P-<stem>}` for `(key, stem)` pairs: cut to IFNAME_MAX, unique among themselves."""
    room = IFNAME_MAX - len(prefix) - 1
    names: dict[str, str] = {}
    used: set[str] = set()
    for key, stem in wanted:
        base = (_ifname_part(stem) or "if")[:room]
        name, n = base, 1
        while name in used:
            tail = str(n)
            name, n = base[: room - len(tail)] + tail, n + 1
        used.add(name)
        names[key] = f"{prefix}-{name}"
    return names


@dataclass(frozen=True, slots=True)
class LinkPlan:
    name: str  # the topology's link name
    host: str
    iface: str
    peer: str  # a NAT's name or "internet"
    host_tun: str  # in the host's namespace
    router_tun: str  # in the router's namespace
    profile: LinkProfile

    @property
    def ref(self) -> str:
        return f"{self.host}.{self.iface}"


@dataclass(frozen=True, slots=True)
class NatPlan:
    name: str
    external: tuple[str, ...]  # the pool; the first is used until a rebinding moves on
    port_range: tuple[int, int]
    idle_timeout: int  # seconds: conntrack's UDP timeout for this NAT's mappings
    mark: int  # packet mark its links' packets get on the router (nftables)
    links: tuple[str, ...]  # its links' router-side TUNs

    def window(self, index: int) -> tuple[int, int]:
        """Port window `index` (cycling): PORT_WINDOW ports, fewer for a small range."""
        low, high = self.port_range
        size = high - low + 1
        span = max(1, min(PORT_WINDOW, size // 2))
        first = low + (index % (size // span)) * span
        return first, first + span - 1


class LabPlan:
    """The namespaces, TUN names, addresses and NATs of one lab run of `topology`."""

    def __init__(self, topology: Topology, prefix: str, start: Mapping[str, str]) -> None:
        topology.validated()
        self.topology = topology
        self.prefix = prefix
        self.router_ns = f"{prefix}-{ROUTER}"
        self.table = f"{prefix}_nat"
        self.server = topology.server
        self._check_hosts()
        self.namespaces = {h.name: f"{prefix}-{h.name}" for h in topology.hosts}
        self._check_addresses()
        refs = [(f"a:{link.a}", link.a.partition(".")[2]) for link in topology.links]
        routers = [(f"r:{link.name}", "r" + link.name) for link in topology.links]
        tuns = unique_names(prefix, [*refs, *routers])
        self.links: dict[str, LinkPlan] = {}
        for link in topology.links:
            host, _, iface = link.a.partition(".")
            profile = validate_profile(link.profile, f"link {link.name}")
            self.links[link.name] = LinkPlan(
                link.name, host, iface, link.b, tuns[f"a:{link.a}"], tuns[f"r:{link.name}"], profile
            )
        self.by_ref = {plan.ref: plan for plan in self.links.values()}
        self.nats = {
            nat.name: NatPlan(
                nat.name,
                nat.external,
                nat.port_range,
                max(1, math.ceil(nat.idle_timeout)),
                index + 1,
                tuple(p.router_tun for p in self.links.values() if p.peer == nat.name),
            )
            for index, nat in enumerate(topology.nats)
        }
        self.start = self._start(start)

    def _check_hosts(self) -> None:
        for host in self.topology.hosts:
            if not HOST_NAME.match(host.name):
                raise InputError(
                    f"host {host.name!r}: the lab names a namespace after it; use letters, "
                    "digits, '.', '-' and '_'"
                )
            if host.name == ROUTER:
                raise InputError(
                    f"host {ROUTER!r}: the lab's router namespace has that name; rename the host"
                )

    def _check_addresses(self) -> None:
        """IPv4 only, and every address held once: the router routes by address."""
        holders: dict[str, str] = {}

        def hold(address: str, holder: str) -> None:
            if ipaddress.ip_address(address).version != 4:
                raise InputError(
                    f"{holder}: {address} is IPv6; the namespace lab builds IPv4 topologies "
                    "only (use the sim or proxy backend for IPv6)"
                )
            if address in holders:
                raise InputError(
                    f"{holder}: {address} is also {holders[address]}'s; the lab's router routes "
                    "by address, so each address must be unique in the topology"
                )
            holders[address] = holder

        for host in self.topology.hosts:
            for iface in host.interfaces:
                for address in iface.addresses:
                    hold(address, f"interface {host.name}.{iface.name}")
        for nat in self.topology.nats:
            for address in nat.external:
                hold(address, f"nat {nat.name}.external")

    def _start(self, start: Mapping[str, str]) -> dict[str, str]:
        """Each host's interface for its default route: `start`'s, else its first."""
        chosen = {h.name: h.interfaces[0].name for h in self.topology.hosts}
        for host, iface in start.items():
            self.topology.host(host).interface(iface)  # InputError naming what exists
            chosen[host] = iface
        return chosen

    # --- names ---------------------------------------------------------------------------

    def namespace_of(self, host: str) -> str:
        self.topology.host(host)
        return self.namespaces[host]

    def link_of(self, ref: str) -> LinkPlan:
        plan = self.by_ref.get(ref)
        if plan is None:
            self.topology.split_iface(ref, "interface")  # InputError naming what exists
            raise InputError(f"interface {ref} has no link")
        return plan

    def tun_namespaces(self) -> dict[str, str]:
        """Every TUN name of the lab -> the namespace it is in."""
        out = {}
        for plan in self.links.values():
            out[plan.host_tun] = self.namespaces[plan.host]
            out[plan.router_tun] = self.router_ns
        return out

    # --- the NAT ---------------------------------------------------------------------------

    def nat_rules(self, state: Mapping[str, tuple[str, tuple[int, int]]]) -> list[str]:
        """The postrouting rules: per NAT, `state[nat] = (external address, port window)`."""
        rules = []
        for nat in self.nats.values():
            address, (low, high) = state[nat.name]
            ports = f"{address}:{low}-{high}"
            rules.append(f"meta mark {nat.mark} meta l4proto {{ tcp, udp }} snat ip to {ports}")
            rules.append(f"meta mark {nat.mark} snat ip to {address}")  # ICMP and the rest
        return rules

    def ruleset(self, state: Mapping[str, tuple[str, tuple[int, int]]]) -> str:
        """The router's nftables table. Its links' packets are marked on the way in (the
        postrouting hook has no input interface to match), marked new UDP flows get the
        NAT's idle timeout (a conntrack timeout policy), and the mark picks the SNAT."""
        lines = [f"table ip {self.table} {{"]
        nats = [nat for nat in self.nats.values() if nat.links]
        for nat in nats:
            lines += [
                f"  ct timeout udp{nat.mark} {{",
                "    protocol udp; l3proto ip;",
                f"    policy = {{ unreplied : {nat.idle_timeout}, replied : {nat.idle_timeout} }}",
                "  }",
            ]
        lines += ["  chain prerouting {", "    type filter hook prerouting priority mangle;"]
        if nats:
            marks = ", ".join(f'"{tun}" : {nat.mark}' for nat in nats for tun in nat.links)
            lines.append(f"    meta mark set iifname map {{ {marks} }}")
            for nat in nats:
                lines.append(
                    f'    meta mark {nat.mark} meta l4proto udp ct timeout set "udp{nat.mark}"'
                )
        lines += ["  }", *self._postrouting(state), "}"]
        return "\n".join(lines) + "\n"

    def _postrouting(self, state: Mapping[str, tuple[str, tuple[int, int]]]) -> list[str]:
        return [
            "  chain postrouting {",
            "    type nat hook postrouting priority srcnat; policy accept;",
            *(f"    {rule}" for rule in self.nat_rules(state)),
            "  }",
        ]

    def nat_update(self, state: Mapping[str, tuple[str, tuple[int, int]]]) -> str:
        """One nft transaction that replaces the SNAT rules (new windows, new addresses)."""
        body = "\n".join(self._postrouting(state))
        return f"flush chain ip {self.table} postrouting\ntable ip {self.table} {{\n{body}\n}}\n"
