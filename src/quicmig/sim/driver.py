"""The simulator as a driver: every timeline event, applied to the simulated network.

Each `apply()` happens at an instant of virtual time and returns the NetworkChange that
really happened, including what the server should see next (`expect_ip`: the NAT's external
address or the interface's own). An active move the client refuses (it honours the server's
disable_active_migration, RFC 9000 section 18.2) is recorded as `migration-refused`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from quicmig.core.results import NetworkChange
from quicmig.model.events import (
    AddressChange,
    Blackhole,
    CidRotate,
    EventKind,
    InterfaceDown,
    InterfaceUp,
    LinkChange,
    NatRebind,
    Switch,
    SwitchMode,
    TimelineEvent,
    kind_of,
)
from quicmig.model.settings import changed_profile
from quicmig.model.topology import INTERNET

if TYPE_CHECKING:
    from quicmig.sim.runner import SimClient, Simulation


class SimDriver:
    """Applies events to the `Simulation` it is attached to (by `Simulation` itself)."""

    name = "sim"

    def __init__(self) -> None:
        self.sim: Simulation | None = None

    def unsupported(self, event: TimelineEvent) -> str | None:
        return None  # the simulator models every event of the vocabulary

    def _sim(self) -> Simulation:
        assert self.sim is not None, "attached by Simulation"
        return self.sim

    async def apply(self, event: TimelineEvent, now: float) -> NetworkChange:
        sim = self._sim()
        network = sim.network
        match event:
            case NatRebind(nat=name, new_address=new_address):
                nat = network.nats[name]
                nat.rebind(new_address, now)
                detail = f"{name}: mappings dropped" + (
                    f", external address now {nat.external_address}" if new_address else ""
                )
                return NetworkChange(
                    now, kind_of(event), detail, False, expect_ip=nat.external_address
                )
            case InterfaceDown(iface=ref) | InterfaceUp(iface=ref):
                network.interface(ref).up = isinstance(event, InterfaceUp)
                return NetworkChange(now, event.kind, ref, False)
            case AddressChange(iface=ref, address=address):
                old = network.interface(ref).addresses[0]
                network.set_address(ref, address)
                for client in sim.clients:
                    if client.ref == ref:
                        # The socket is bound to the port on all addresses: only the source
                        # address changes, and the client knows it (an active migration).
                        client.unbind(ref, client.local)
                        client.bind(client.iface, port=client.local[1])
                        client.endpoint.migrate(now, new_cid=True)
                        sim.service(client)
                return NetworkChange(
                    now, event.kind, f"{ref}: {old} -> {address}", True, self.public_ip(ref)
                )
            case Switch(host=host):
                return self._switch(sim.client_on(host), event, now)
            case CidRotate(host=host):
                client = sim.client_on(host)
                client.endpoint.rotate_cid(now)
                sim.service(client)
                return NetworkChange(now, event.kind, host, False)
            case LinkChange(link=link, settings=settings, profile=name):
                profile = changed_profile(network.up[link].profile, name, settings, f"link {link}")
                network.set_link_profile(link, profile)
                detail = f"{link}: " + ", ".join(
                    ([f"profile {name}"] if name else []) + [f"{k}={v:g}" for k, v in settings]
                )
                return NetworkChange(now, event.kind, detail, False)
            case Blackhole(link=link, seconds=seconds):
                before = network.up[link].profile
                network.set_link_profile(link, replace(before, loss=1.0))
                sim.scheduler.call_at(now + seconds, lambda: network.set_link_profile(link, before))
                detail = f"{link}: nothing passes for {seconds:g} s"
                return NetworkChange(now, event.kind, detail, False)
        raise AssertionError(event)

    def public_ip(self, ref: str) -> str:
        """The address the server sees behind interface `ref`: its NAT's, or its own."""
        network = self._sim().network
        state = network.interface(ref)
        end = self._sim().scenario.topology.link(state.link).b
        return state.addresses[0] if end == INTERNET else network.nats[end].external_address

    def refusal(self, client: SimClient, now: float) -> NetworkChange | None:
        """The client refuses to migrate actively (RFC 9000 section 18.2): say so, stay."""
        reason = client.endpoint.active_migration_refusal()
        if reason is None:
            return None
        return NetworkChange(now, EventKind.MIGRATION_REFUSED, f"{client.host}: {reason}", False)

    def _switch(self, client: SimClient, event: Switch, now: float) -> NetworkChange:
        sim = self._sim()
        refused = self.refusal(client, now)
        if refused is not None:
            return refused
        old_ref, old_local, old_iface = client.ref, client.local, client.iface
        detail = (
            f"{client.host}: {old_iface} -> {event.to} ({event.mode.value}, "
            f"{'new' if event.new_cid else 'same'} CID)"
        )

        def move() -> None:
            client.bind(event.to)
            client.endpoint.migrate(sim.scheduler.now, new_cid=event.new_cid)
            sim.service(client)

        def retire_old() -> None:
            client.unbind(old_ref, old_local)
            sim.network.interface(old_ref).up = False

        if event.mode is SwitchMode.BREAK_BEFORE_MAKE:
            retire_old()
            sim.scheduler.call_at(now + event.gap, move)
        else:
            move()
            sim.scheduler.call_at(now + event.overlap, retire_old)
        return NetworkChange(
            now,
            event.kind,
            detail,
            # The client chose to move, whatever it does with its CID: with new_cid = false
            # the new-DCID check runs and fails (RFC 9000 section 9.5).
            True,
            self.public_ip(f"{client.host}.{event.to}"),
        )
