"""The namespace lab as a network driver: `quicmig run --backend lab` and `quicmig lab run`.

The endpoints stay in this process, only their sockets move into the lab. `place()` builds
the scenario's own topology (quicmig.lab.build: one namespace per host, a router namespace
holding every NAT, each link a TUN pair shaped by the simulator's link model), and the live
backend creates the server's socket inside the server's namespace and the client's inside
the first client's (bound to 0.0.0.0, never moved), through setns(2) on a short-lived thread
(quicmig.live.netns). A socket keeps the namespace it was created in, so the event loop, the
aioquic connections, the tracker and the Result are the same code as for the simulator and
the proxy, while every datagram crosses the element and the kernel's NAT.

Every event of the vocabulary is built, by the kernel: NAT and address rebindings,
interface switches of both modes, address changes, interfaces down and up, link changes and
blackholes (the element's link model). The client's socket never moves and it is not told:
every migration in the lab is passive (RFC 9000 section 9.3: the same connection ID, so
`active` is false and a scenario's `new_cid` cannot be honoured here; the simulator and
`quicmig client` make the active kind). The client PINGs after 0.1 s without sending
(`CLIENT_KEEPALIVE`), so a client that only receives is heard from its new address once the
kernel has moved it. Everything the lab made goes in `aclose()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from quicmig.core.datagram import Address
from quicmig.core.results import Check, NetworkChange
from quicmig.errors import QuicmigError
from quicmig.lab.build import NamespaceLab
from quicmig.lab.moves import NetworkMove
from quicmig.live.backend import Placement
from quicmig.model.events import (
    AddressChange,
    Blackhole,
    InterfaceDown,
    InterfaceUp,
    LinkChange,
    NatRebind,
    Switch,
    TimelineEvent,
    kind_of,
)
from quicmig.model.scenario import SERVER_PORT, Scenario
from quicmig.model.settings import changed_profile
from quicmig.model.topology import LinkProfile

CLIENT_KEEPALIVE = 0.1  # seconds without sending before the client PINGs


class LabDriver:
    name = "lab"
    client_moves = False  # the kernel moves the client; its socket never moves

    def __init__(
        self,
        scenario: Scenario,
        seed: int,
        *,
        prefix: str | None = None,
        pcap: Path | None = None,
        command: str = "run --backend lab",
        log: Callable[[str], None] | None = None,
    ) -> None:
        """`pcap`: capture the router's side of the server's link there: what the server
        sent and received, after the NATs (the trace quic-interop-runner's checks read).
        `command`: how the user started us (named when root is missing). `log` gets each
        warning of the lab (a rate the element cannot sustain) once."""
        self.scenario = scenario
        self.seed = seed
        self.prefix = prefix
        self.pcap = pcap
        self.command = command
        self.log = log
        self.net: NamespaceLab | None = None
        self.profiles = {link.name: link.profile for link in scenario.topology.links}
        self._stack = contextlib.ExitStack()
        self._tasks: set[asyncio.Task[None]] = set()

    def unsupported_settings(self, scenario: Scenario) -> Sequence[Check]:
        return ()

    async def place(self, scenario: Scenario) -> Placement:
        topology = scenario.topology
        start = {
            host.name: scenario.client.interface or host.interfaces[0].name
            for host in topology.clients
        }
        workdir = Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix="qm-lab-")))
        lab = NamespaceLab(
            topology,
            start=start,
            prefix=self.prefix,
            seed=self.seed,
            workdir=workdir,
            command=self.command,
            log=self.log,
        )
        net = self._stack.enter_context(lab)
        self.net = net
        server = topology.host(topology.server)
        if self.pcap is not None:
            link = topology.link_of(server.name, server.interfaces[0].name).name
            tun = net.plan.links[link].router_tun
            await asyncio.to_thread(net.start_capture, tun, self.pcap.resolve())
        return Placement(
            server=(server.interfaces[0].addresses[0], SERVER_PORT),
            server_netns=net.server_namespace,
            client_addresses=("0.0.0.0",),
            client_netns=net.client_namespace(topology.clients[0].name),
            client_keepalive=CLIENT_KEEPALIVE,
        )

    async def start(self, server: Address) -> Address:
        return server  # the client reaches the server's own address, through the router

    def unsupported(self, event: TimelineEvent) -> str | None:
        return None  # every network event is built; CID rotations are the client's

    def _net(self) -> NamespaceLab:
        if self.net is None:
            raise QuicmigError("the lab driver was not placed")
        return self.net

    async def apply(self, event: TimelineEvent, now: float) -> NetworkChange:
        net = self._net()
        # The kernel commands run in a thread: the event loop keeps serving both endpoints.
        # Each move is dated when it took effect, on the lab's clock; both clocks are
        # time.monotonic() with different origins.
        offset = now - net.now()
        move: NetworkMove
        match event:
            case NatRebind(nat=nat, new_address=new_address):
                move = await asyncio.to_thread(net.nat_rebind, nat, new_address)
            case Switch(host=host, to=to, mode=mode, gap=gap, overlap=overlap):
                move = await asyncio.to_thread(net.switch, host, to, mode, gap, overlap)
            case AddressChange(iface=ref, address=address):
                move = await asyncio.to_thread(net.address_change, ref, address)
            case InterfaceDown(iface=ref):
                move = await asyncio.to_thread(net.interface_down, ref)
            case InterfaceUp(iface=ref):
                move = await asyncio.to_thread(net.interface_up, ref)
            case LinkChange(link=link, settings=settings, profile=name):
                profile = changed_profile(self.profiles[link], name, settings, f"link {link}")
                move = await self._set_link(link, profile)
            case Blackhole(link=link, seconds=seconds):
                before = self.profiles[link]
                move = await self._set_link(link, replace(before, loss=1.0))
                self._later(self._restore(link, before, seconds))
            case _:
                raise QuicmigError(f"{kind_of(event).value} is not built in the lab")
        public = f"public {move.old_public} -> {move.new_public}"
        detail = f"{move.detail} ({public})"
        if isinstance(event, Switch | AddressChange):
            detail += "; the client was not told, so it kept its connection ID"
        # Passive: the client's socket never moved and nobody told it (RFC 9000 9.3).
        return NetworkChange(move.at + offset, kind_of(event), detail, False, move.new_public)

    async def _set_link(self, link: str, profile: LinkProfile) -> NetworkMove:
        self.profiles[link] = profile
        return await asyncio.to_thread(self._net().set_link, link, profile)

    async def _restore(self, link: str, profile: LinkProfile, seconds: float) -> None:
        await asyncio.sleep(seconds)
        if self.net is not None:
            await self._set_link(link, profile)

    def _later(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def stats(self) -> dict[str, Any]:
        return {"lab": self.net.stats() if self.net is not None else {}}

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.close()

    def close(self) -> None:
        """What `aclose()` does, callable without a loop; a second call does nothing."""
        self.net = None
        self._stack.close()  # NamespaceLab.__exit__: namespaces, element and tables go
