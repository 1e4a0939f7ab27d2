"""The movers: each changes the running lab the way the world changes under a client.

Every mover returns a `NetworkMove` dated when the change took effect (`at`, seconds on the
network's clock, `now()`), with the client's address as the server sees it before and after.
They run kernel commands and some sleep (a switch's gap or overlap): call them from a
thread, not from an event loop that serves the endpoints.

- `nat_rebind`: the NAT forgets its mappings (conntrack entries of its clients deleted) and
  its port window moves on, so the next mapping gets a new port; with `new_address`, the
  next external address of its pool from now on (RFC 9000 section 9.3: to the server the
  client moved, and the client does not know).
- `switch`: break-before-make (the old link down, `gap` s later the default route on the
  new one) or make-before-break (the route moves at once, the old link keeps receiving for
  `overlap` s, then goes down).
- `address_change`: the interface gets another address (added, the old one deleted, the
  route fixed), like a DHCP renumbering.
- `interface_down`, `interface_up`, `set_link` (a new LinkProfile on both directions; a
  blackhole is loss 100 %).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Sequence
from dataclasses import dataclass

from quicmig.errors import InputError, QuicmigError
from quicmig.lab.plan import LabPlan, validate_profile
from quicmig.lab.shaper import Shaper, ceiling_warning
from quicmig.lab.system import in_ns, run
from quicmig.model.events import SwitchMode
from quicmig.model.topology import INTERNET, LinkProfile


@dataclass(frozen=True, slots=True)
class NetworkMove:
    """One change made to the network, and the client's public address before and after."""

    kind: str  # the scenario's event name: nat-rebind, switch, address-change, ...
    at: float  # seconds on the network's clock (`now()`) when it took effect
    detail: str
    old_public: str  # the client's address as the server saw it before (IP only)
    new_public: str  # and as the server will see it now


class Movers:
    """The movers of a built lab; quicmig.lab.build.NamespaceLab holds the state they change."""

    plan: LabPlan
    current: dict[str, str]  # host -> the interface its default route uses
    addresses: dict[str, list[str]]  # "host.iface" -> its addresses, the first is the source
    down: set[str]  # "host.iface" that are down
    nat_pool: dict[str, int]  # NAT -> index of its external address in the pool
    nat_window: dict[str, int]  # NAT -> index of its port window
    moves: list[NetworkMove]
    warnings: list[str]

    def now(self) -> float:
        raise NotImplementedError

    def _shaper(self) -> Shaper:
        raise NotImplementedError

    def _log(self, line: str) -> None:
        raise NotImplementedError

    # --- what the server sees ----------------------------------------------------------------

    def nat_address(self, nat: str) -> str:
        plan = self.plan.nats[nat]
        return plan.external[self.nat_pool[nat] % len(plan.external)]

    def nat_state(self) -> dict[str, tuple[str, tuple[int, int]]]:
        return {
            name: (self.nat_address(name), nat.window(self.nat_window[name]))
            for name, nat in self.plan.nats.items()
        }

    def public_address(self, host: str) -> str:
        """The address the server sees `host`'s packets come from now (IP only)."""
        self.plan.topology.host(host)
        link = self.plan.link_of(f"{host}.{self.current[host]}")
        if link.peer == INTERNET:
            return self.addresses[link.ref][0]
        return self.nat_address(link.peer)

    def interface_of(self, ref: str) -> str:
        """The TUN device of interface `host.iface`, in the host's namespace."""
        return self.plan.link_of(ref).host_tun

    # --- movers ------------------------------------------------------------------------------

    def nat_rebind(self, nat: str, new_address: bool = False) -> NetworkMove:
        self.plan.topology.nat(nat)  # InputError naming the NATs there are
        client = self._client_behind(nat)
        old = self.public_address(client) if client else self.nat_address(nat)
        self.nat_window[nat] += 1
        if new_address:
            self.nat_pool[nat] += 1
        run(
            in_ns(self.plan.router_ns, "nft", "-f", "-"),
            input=self.plan.nat_update(self.nat_state()),
        )
        private = [
            address
            for link in self.plan.links.values()
            if link.peer == nat
            for address in self.addresses[link.ref]
        ]
        at = self.now()  # from here on the next packet of each flow gets a new mapping
        flows = 0
        for address in private:
            output = run(
                in_ns(self.plan.router_ns, "conntrack", "-D", "--orig-src", address), check=False
            )
            flows += len([line for line in output.splitlines() if line.strip()])
        low, high = self.plan.nats[nat].window(self.nat_window[nat])
        new = self.public_address(client) if client else self.nat_address(nat)
        detail = (
            f"NAT {nat}: {flows} conntrack entr{'y' if flows == 1 else 'ies'} deleted, "
            f"ports now {low}-{high}"
            + (f", external address now {self.nat_address(nat)}" if new_address else "")
        )
        return self._record("nat-rebind", at, detail, old, new)

    def switch(
        self,
        host: str,
        to_iface: str,
        mode: SwitchMode = SwitchMode.BREAK_BEFORE_MAKE,
        gap: float = 0.0,
        overlap: float = 1.0,
    ) -> NetworkMove:
        """Move `host`'s default route to `to_iface`; see the module docstring for the modes."""
        new = self.plan.link_of(f"{host}.{to_iface}")
        old = self.plan.link_of(f"{host}.{self.current[host]}")
        if new is old:
            raise QuicmigError(f"switch {host} to {to_iface}: it is on {to_iface} already")
        if gap < 0 or overlap < 0:
            raise InputError("switch: gap and overlap must be >= 0 seconds")
        ns = self.plan.namespaces[host]
        old_public = self.public_address(host)
        self._batch(ns, [f"link set {new.host_tun} up"])
        self.down.discard(new.ref)
        if mode is SwitchMode.BREAK_BEFORE_MAKE:
            at = self.now()  # the old link goes down
            self._batch(ns, [f"link set {old.host_tun} down"])
            self.down.add(old.ref)
            time.sleep(gap)
            self._batch(ns, [f"route replace default dev {new.host_tun}"])
            self.current[host] = to_iface
            detail = (
                f"{host}.{old.iface} down, {gap * 1e3:.0f} ms later default route on "
                f"{host}.{to_iface} ({new.host_tun})"
            )
        else:
            self._batch(ns, [f"route replace default dev {new.host_tun}"])
            at = self.now()  # the route has moved: the next packet leaves from the new one
            self.current[host] = to_iface
            time.sleep(overlap)
            self._batch(ns, [f"link set {old.host_tun} down"])
            self.down.add(old.ref)
            detail = (
                f"default route on {host}.{to_iface} ({new.host_tun}), {host}.{old.iface} "
                f"received for {overlap * 1e3:.0f} ms more, then down"
            )
        return self._record("switch", at, detail, old_public, self.public_address(host))

    def address_change(self, ref: str, address: str) -> NetworkMove:
        """Interface `ref` gets `address` instead of its current one."""
        link = self.plan.link_of(ref)
        try:
            parsed = ipaddress.ip_address(address)
        except ValueError:
            raise InputError(f"address-change {ref}: {address!r} is not an IPv4 address") from None
        if parsed.version != 4:
            raise InputError(f"address-change {ref}: {address} is IPv6; the lab is IPv4 only")
        if any(address in held for held in self.addresses.values()) or any(
            address in nat.external for nat in self.plan.nats.values()
        ):
            raise InputError(f"address-change {ref}: {address} is in use in the lab already")
        host = link.host
        ns = self.plan.namespaces[host]
        old_public = self.public_address(host)
        old = self.addresses[ref][0]
        self._batch(self.plan.router_ns, [f"route add {address}/32 dev {link.router_tun}"])
        self._batch(ns, [f"addr add {address}/32 dev {link.host_tun}"])
        at = self.now()  # the old address goes: the new one becomes the source
        lines = [f"addr del {old}/32 dev {link.host_tun}"]
        if self.current[host] == link.iface and ref not in self.down:
            lines.append(f"route replace default dev {link.host_tun}")
        self._batch(ns, lines)
        self._batch(self.plan.router_ns, [f"route del {old}/32 dev {link.router_tun}"])
        self.addresses[ref][0] = address
        detail = f"{ref}: {old} replaced by {address}"
        return self._record("address-change", at, detail, old_public, self.public_address(host))

    def interface_down(self, ref: str) -> NetworkMove:
        link = self.plan.link_of(ref)
        old_public = self.public_address(link.host)
        self._batch(self.plan.namespaces[link.host], [f"link set {link.host_tun} down"])
        at = self.now()
        self.down.add(ref)
        detail = f"{ref} ({link.host_tun}) down"
        return self._record(
            "interface-down", at, detail, old_public, self.public_address(link.host)
        )

    def interface_up(self, ref: str) -> NetworkMove:
        link = self.plan.link_of(ref)
        lines = [f"link set {link.host_tun} up"]
        if self.current[link.host] == link.iface:  # a link going down took its routes along
            lines.append(f"route replace default dev {link.host_tun}")
        old_public = self.public_address(link.host)
        self._batch(self.plan.namespaces[link.host], lines)
        at = self.now()
        self.down.discard(ref)
        detail = f"{ref} ({link.host_tun}) up"
        return self._record("interface-up", at, detail, old_public, self.public_address(link.host))

    def set_link(self, link: str, profile: LinkProfile) -> NetworkMove:
        """The element gives `link` (both directions) `profile` from now on."""
        plan = self.plan.links.get(link)
        if plan is None:
            self.plan.topology.link(link)  # InputError naming the links there are
            raise InputError(f"unknown link {link!r}")
        validate_profile(profile, f"link {link}")
        warning = ceiling_warning(link, profile)
        if warning is not None and warning not in self.warnings:
            self.warnings.append(warning)
            self._log(warning)
        public = self.public_address(plan.host)
        self._shaper().set_link(link, profile)
        at = self.now()
        detail = (
            f"link {link}: delay {profile.delay * 1e3:g} ms, jitter {profile.jitter * 1e3:g} ms, "
            f"loss {profile.loss * 100:g} %, rate "
            + (f"{profile.rate / 1e6:g} Mbit/s" if profile.rate else "unlimited")
        )
        return self._record("link-change", at, detail, public, public)

    # --- helpers -----------------------------------------------------------------------------

    def _client_behind(self, nat: str) -> str | None:
        """The first client whose current interface's link ends in `nat`."""
        for host in self.plan.topology.clients:
            if self.plan.link_of(f"{host.name}.{self.current[host.name]}").peer == nat:
                return host.name
        return None

    def _record(self, kind: str, at: float, detail: str, old: str, new: str) -> NetworkMove:
        move = NetworkMove(kind, at, detail, old, new)
        self.moves.append(move)
        return move

    def _batch(self, namespace: str, commands: Sequence[str]) -> None:
        """`ip` commands in `namespace`, in one process (`ip -batch`)."""
        run(["ip", "-n", namespace, "-batch", "-"], input="\n".join(commands) + "\n")
