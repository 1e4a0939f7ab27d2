"""The namespace lab as a NetworkDriver for `quicmig run --backend lab` (see quicmig.live.runner).

Design: the endpoints stay in this process, only their sockets move into the lab. `place()`
builds the network (`LabNetwork`: client, router and server namespaces, veths, nftables NAT
with conntrack), and the runner creates the live server's socket inside the server namespace
(10.199.0.2:4433) and the live client's inside the client namespace (bound to 0.0.0.0, never
moved), through setns(2) on a short-lived thread (quicmig.live.netns). A socket keeps the
namespace it was created in, so the asyncio loop, the aioquic connections, the migration
tracker and the Result are the same code as for the simulator and the proxy, while every
datagram crosses two veths and the kernel's NAT. No agent process, no JSON-lines protocol, no
second tracker to reconcile.

The migrations are made by the kernel, under a client that is not told (RFC 9000 section 9.3,
passive migration: same connection ID, so `active` is false in the network changes):

- `nat-rebind`: the NAT's port range moves on and the client's conntrack entries are deleted;
  the client's next datagram leaves from a new public port (`port_change`).
- `switch` (break-before-make, to the other one of `wifi` and `cellular`): the current link goes
  down, `gap_s` later the default route points at the other interface; the kernel picks the new
  source address and the NAT maps it to the other public address (`address_change`).
- `address-change` on the current interface: `ip addr` replaces the client's address with the
  next one (the scenario's address is a simulated label; the lab uses its own 10.199.x.y), the
  NAT maps it to a new public address (`address_change`).

Reported unsupported, with the reason: rebindings that move the NAT's public address,
make-before-break switches, interface down/up, link changes. The scenario's client interfaces
run on the lab's `wifi` and `cellular`: by name, or, for a client with other names (the interop
topology's single `eth0`), in their order; a third interface is unsupported. Link
impairments: the rate of each interface's link applies (tbf on the router); delay and loss
only with netem, which is missing from some kernels. What is left out is said once, one line
per link and impairment, through `log` when the network is placed, and kept in the Result's
`stats.lab.not_emulated`.

The client PINGs after 0.1 s without sending (`CLIENT_KEEPALIVE`, as `quicmig lab` does), so a
client that only receives is heard from its new address once the kernel has moved it.
Everything the lab created is removed in `aclose()`, which the runner always calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from quicmig.core.datagram import Address
from quicmig.core.results import Check, NetworkChange
from quicmig.errors import QuicmigError
from quicmig.lab.network import (
    INTERFACES,
    SERVER_IP,
    SERVER_PORT,
    WIFI,
    Interface,
    LabNetwork,
    NetworkMove,
    Shaping,
    new_prefix,
    owned,
)
from quicmig.lab.system import Capabilities, detect, in_ns, run
from quicmig.live.backend import Placement
from quicmig.model.events import (
    AddressChange,
    EventKind,
    NatRebind,
    Switch,
    SwitchMode,
    TimelineEvent,
    kind_of,
)
from quicmig.model.scenario import Scenario
from quicmig.model.topology import LinkProfile

CLIENT_KEEPALIVE = 0.1  # seconds without sending before the client PINGs

T = TypeVar("T")


def lab_interfaces(names: Sequence[str]) -> dict[str, Interface]:
    """The lab interface each of the client's interfaces runs on: by name where the scenario
    uses the lab's (wifi, cellular), else in order; a third interface is left out."""
    by_name = {i.name: i for i in INTERFACES}
    if set(names) <= set(by_name):
        return {name: by_name[name] for name in names}
    return dict(zip(names, INTERFACES, strict=False))


def _iface_name(ref: str) -> str:
    """`client.wifi` -> `wifi`."""
    return ref.rpartition(".")[2]


def not_emulated(profiles: dict[str, LinkProfile], start: str, netem: bool) -> list[str]:
    """One line per link and impairment of the scenario that the lab will not apply.

    Without netem only the rates apply (tbf). With it, LabNetwork shapes both client links
    like the starting one (delay, loss and rate), and has no jitter or loss bursts.
    """
    lines = []
    first = profiles.get(start)
    for name, profile in profiles.items():
        link = f"{name} link"
        if not netem:
            if profile.delay > 0:
                lines.append(f"{link}: delay {profile.delay * 1e3:g} ms not emulated (no netem)")
            if profile.jitter > 0:
                lines.append(f"{link}: jitter {profile.jitter * 1e3:g} ms not emulated (no netem)")
            if profile.loss > 0:
                lines.append(f"{link}: loss {profile.loss * 100:g} % not emulated (no netem)")
            continue
        if profile.jitter > 0:
            lines.append(f"{link}: jitter {profile.jitter * 1e3:g} ms not emulated")
        if profile.loss > 0 and profile.burst_len != 1:
            lines.append(f"{link}: loss bursts not emulated (independent loss)")
        if first is not None and name != start:
            # netem carries the rate only when it is used at all; else each link has its tbf.
            with_rate = first.delay > 0 or first.loss > 0
            for what, mine, theirs in (
                ("delay", f"{profile.delay * 1e3:g} ms", f"{first.delay * 1e3:g} ms"),
                ("loss", f"{profile.loss * 100:g} %", f"{first.loss * 100:g} %"),
                (
                    "rate",
                    _rate(profile.rate),
                    _rate(first.rate) if with_rate else _rate(profile.rate),
                ),
            ):
                if mine != theirs:
                    lines.append(f"{link}: {what} {mine} not emulated, it gets {start}'s {theirs}")
    return lines


def _rate(bits: float | None) -> str:
    return f"{bits / 1e6:g} Mbit/s" if bits else "unlimited"


class LabDriver:
    name = "lab"
    client_moves = False  # the kernel moves the client; its socket never moves

    def __init__(
        self,
        scenario: Scenario,
        seed: int,
        *,
        capabilities: Capabilities | None = None,
        prefix: str | None = None,
        pcap: Path | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        """`pcap`: capture the router's server-side interface there: what the server sent and
        received, after the NAT (the trace quic-interop-runner's checks read). `log` gets
        each impairment the lab leaves out, once, when the network is placed."""
        topology = scenario.topology
        self.client_host = topology.clients[0]
        self.start_iface = scenario.client.interface or self.client_host.interfaces[0].name
        self.lab_of = lab_interfaces([i.name for i in self.client_host.interfaces])
        self.scenario = scenario
        self.seed = seed
        self.prefix = prefix or new_prefix()
        self.capabilities = capabilities
        self.pcap = pcap
        self.log = log
        self.net: LabNetwork | None = None
        self.not_emulated: list[str] = []
        self.moves: list[NetworkMove] = []
        self._stack = contextlib.ExitStack()

    # --- setup ---------------------------------------------------------------------------

    def _profile(self, lab: Interface) -> LinkProfile | None:
        """The link profile of the scenario's interface that runs on `lab`, if any."""
        for name, used in self.lab_of.items():
            if used is lab:
                return self.scenario.topology.link_of(self.client_host.name, name).profile
        return None

    def _unknown(self, ref: str) -> str | None:
        """Why the lab cannot use the client interface `ref` (`client.eth2` or `eth2`)."""
        if _iface_name(ref) in self.lab_of:
            return None
        return f"no room for interface {ref!r} in the lab (two client interfaces: wifi, cellular)"

    def _shaping(self, profile: LinkProfile) -> Shaping:
        return Shaping(
            rate_mbit=(profile.rate or 0.0) / 1e6,
            delay_ms=profile.delay * 1e3,
            loss_pct=profile.loss * 100,
        )

    def unsupported_settings(self, scenario: Scenario) -> Sequence[Check]:
        return ()

    async def place(self, scenario: Scenario) -> Placement:
        start = self.lab_of[self.start_iface]  # the scenario checked that the client has it
        self._stack.enter_context(owned(self.prefix))  # before the probe: see network.clean
        caps = self.capabilities or detect(f"{self.prefix}-probe")
        if self.pcap is not None and not caps.dumpcap:
            raise QuicmigError("--pcap needs dumpcap (package tshark): apt-get install -y tshark")
        profile = self._profile(start)
        assert profile is not None
        shaping = self._shaping(profile)
        profiles = {i.name: p for i in INTERFACES if (p := self._profile(i)) is not None}
        self.not_emulated = not_emulated(profiles, start.name, caps.netem)
        renamed = [
            f"{name} runs on {lab.name}" for name, lab in self.lab_of.items() if name != lab.name
        ]
        if self.log is not None:
            for line in [*(f"client interface {r}" for r in renamed), *self.not_emulated]:
                self.log(line)
        workdir = Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix="qm-lab-")))
        net = self._stack.enter_context(LabNetwork(self.prefix, shaping, caps, workdir))
        self.net = net
        if self.pcap is not None:
            await asyncio.to_thread(net.start_capture, net.router_server_if, self.pcap.resolve())
        # Each interface at its own link's rate (LabNetwork shapes both like the first).
        if not (caps.netem and (shaping.delay_ms > 0 or shaping.loss_pct > 0)):
            for interface in INTERFACES:
                other = self._profile(interface)
                if other is not None and interface is not start:
                    _tbf(net, interface, (other.rate or 0.0) / 1e6)
        if start is not WIFI:
            await asyncio.to_thread(net.switch, 0.0)  # before the client exists
            net.moves.clear()
        return Placement(
            server=(SERVER_IP, SERVER_PORT),
            server_netns=net.server_ns,
            client_addresses=("0.0.0.0",),
            client_netns=net.client_ns,
            client_keepalive=CLIENT_KEEPALIVE,
        )

    async def start(self, server: Address) -> Address:
        return server  # the client reaches the server's own address, through the router

    # --- events --------------------------------------------------------------------------

    def unsupported(self, event: TimelineEvent) -> str | None:
        match event:
            case NatRebind(new_address=True):
                return (
                    "the lab's NAT keeps each client address's public address (paired pooling); "
                    "a rebinding to a new public address is not built"
                )
            case NatRebind():
                return None
            case Switch(mode=mode) if mode is not SwitchMode.BREAK_BEFORE_MAKE:
                return f"{mode.value} switches are not built; the lab does break-before-make"
            case Switch(to=to):
                return self._unknown(to)
            case AddressChange(iface=ref):
                return self._unknown(ref)
        kind = kind_of(event).value
        return (
            f"{kind} is not built in the lab (it does nat-rebinding, interface-switch, "
            "address-change)"
        )

    async def apply(self, event: TimelineEvent, now: float) -> NetworkChange:
        net = self.net
        if net is None:
            raise QuicmigError("the lab driver was not placed")
        # The kernel commands run in a thread: the event loop keeps serving both endpoints.
        # Each change is dated when it took effect (NetworkMove.at: before the conntrack
        # deletion, the link going down, the old address going), on the runner's clock: both
        # clocks are time.monotonic() with different origins.
        offset = now - net.now()
        match event:
            case NatRebind(nat=nat):
                move = await asyncio.to_thread(net.rebind)
                detail = f"{nat}: {move.detail}"
                return self._change(move.at + offset, EventKind.NAT_REBINDING, detail, move)
            case Switch(to=to, gap=gap):
                if self.lab_of.get(to) is net.current:
                    raise QuicmigError(f"switch to {to}: the client is already on it")
                move = await asyncio.to_thread(net.switch, gap)
                return self._change(move.at + offset, EventKind.INTERFACE_SWITCH, move.detail, move)
            case AddressChange(iface=ref):
                if self.lab_of.get(_iface_name(ref)) is not net.current:
                    raise QuicmigError(
                        f"address-change on {ref}: the client is on {net.current.name} now"
                    )
                move = await asyncio.to_thread(net.ip_change)
                detail = f"{ref}: {move.detail}"
                return self._change(move.at + offset, EventKind.ADDRESS_CHANGE, detail, move)
        raise QuicmigError(f"{kind_of(event).value} is not supported by the lab backend")

    def _change(self, now: float, kind: EventKind, detail: str, move: NetworkMove) -> NetworkChange:
        self.moves.append(move)
        public = f"public {move.old_public} -> {move.new_public}"
        # Passive: the client's socket never moved and it was not told (RFC 9000 9.3).
        return NetworkChange(now, kind, f"{detail} ({public})", False, move.new_public)

    # --- results and cleanup -------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        net = self.net
        return {
            "lab": {
                "prefix": self.prefix,
                "namespaces": [] if net is None else [net.client_ns, net.router_ns, net.server_ns],
                "client_keepalive_s": CLIENT_KEEPALIVE,
                "moves": [
                    {
                        "kind": m.kind,
                        "detail": m.detail,
                        "old_public": m.old_public,
                        "new_public": m.new_public,
                        "port_range": list(m.port_range),
                    }
                    for m in self.moves
                ],
                "not_emulated": list(self.not_emulated),
            }
        }

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        """What `aclose()` does, callable without a loop; a second call does nothing."""
        self.net = None
        self._stack.close()  # LabNetwork.__exit__: namespaces and the NAT table are deleted


def _tbf(net: LabNetwork, interface: Interface, rate_mbit: float) -> None:
    """The router's side of `interface` at `rate_mbit` (0: no limit), as LabNetwork does."""
    name = net.router_if(interface)
    if rate_mbit <= 0:
        run(in_ns(net.router_ns, "tc", "qdisc", "del", "dev", name, "root"), check=False)
        return
    rate = rate_mbit * 1e6  # bits per second
    burst = max(16_000, int(rate / 8 / 100))  # bytes: at least 10 ms at the rate
    run(
        in_ns(
            net.router_ns,
            *("tc", "qdisc", "replace", "dev", name, "root", "tbf"),
            *("rate", f"{rate:.0f}bit", "burst", str(burst), "latency", "100ms"),
        )
    )
