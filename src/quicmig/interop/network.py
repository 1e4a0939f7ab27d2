"""The network between a foreign stack's server and client: quicmig's proxy, or the lab.

`StackBackend` (quicmig.interop.backend) runs the two endpoint programs; a `StackNetwork`
says where they run and what they reach, applies the timeline through its network driver
(the same `ProxyDriver` and `LabDriver` as quicmig's own endpoints use), counts what crosses
it while the run lasts (the run's clock starts with the client's first datagram; events by
progress need the bytes delivered), and afterwards hands over what it captured:

- the server's side: every datagram the server sent or received, including those it sent
  to a retired NAT mapping (the proxy keeps the old socket open and records them; in the
  lab they cross the server's link before the kernel NAT drops them), and
- the client's side: what reached the client and from which addresses it sent.

`ProxyNetwork`: the proxy on loopback, no root. The server listens on 127.0.0.1 at a free
port; a preferred address is 127.0.0.1 at another free port, which the client reaches
directly (nothing can sit on that path without root): dumpcap captures it on lo.

`LabNetwork`: the scenario's topology in namespaces (root), the server and the client run
there with `ip netns exec`; captures on the router's side of the server's links and of the
client's link.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from quicmig.capture.tshark import QuicDatagram
from quicmig.core.datagram import Address
from quicmig.errors import InputError, QuicmigError
from quicmig.interop.pcapfile import Record, read_records, touching
from quicmig.interop.process import (
    CAPTURE_START,
    Endpoint,
    EndpointError,
    check_port_free,
    free_port,
)
from quicmig.lab.driver import LabDriver
from quicmig.live.backend import NetworkDriver, Placement
from quicmig.model.scenario import Scenario
from quicmig.proxy.core import Proxy
from quicmig.proxy.driver import SOURCES, ProxyDriver

T = TypeVar("T")
LOOPBACK = "127.0.0.1"
LAB_POLL = 0.05  # seconds between looks at the lab element's counters

# Ports handed to cells of this process and not yet bound: two cells starting at once must
# not be given the same one (free_port() only says it is free right now).
_reserved: set[int] = set()


def reserve_port(host: str, tcp: bool, base: int | None = None) -> int:
    """A free port nobody in this process was given yet: any, or the first from `base` up."""
    if base is not None:
        for port in range(base, min(base + 1000, 65536)):
            if port in _reserved:
                continue
            try:
                check_port_free(host, port, tcp, "interop")
            except InputError:
                continue
            _reserved.add(port)
            return port
        raise QuicmigError(f"no free port on {host} from {base} to {base + 999}")
    for _ in range(20):
        port = free_port(host, tcp=tcp)
        if port not in _reserved:
            _reserved.add(port)
            return port
    raise QuicmigError(f"no unreserved free port on {host}")


def release_ports(ports: Sequence[int]) -> None:
    for port in ports:
        _reserved.discard(port)


class StackNetwork(Protocol):
    name: str
    host_note: str  # how the endpoints reach each other, for the Result's stats

    @property
    def driver(self) -> NetworkDriver: ...

    def plan(self, scenario: Scenario, tcp: bool) -> Scenario:
        """Choose the server's addresses; the scenario as this network runs it (with the
        preferred address the server will really offer)."""
        ...

    @property
    def server(self) -> Address: ...

    def cannot(self, scenario: Scenario) -> str | None:
        """Why this network cannot run `scenario` here (None: it can)."""
        ...

    def local_addresses(self) -> tuple[str, ...]:
        """The client's own addresses (an active migration may move to the second)."""
        ...

    async def place(self, scenario: Scenario) -> Placement: ...

    def wrap(self, argv: list[str], role: str) -> list[str]:
        """The command line that runs `argv` where the `role` (server, client) belongs."""
        ...

    async def start(self) -> Address:
        """Set up the path to the server; the address the client must send to."""
        ...

    def preferred_capture(
        self, address: Address, path: Path
    ) -> contextlib.AbstractAsyncContextManager[None]: ...

    def now(self) -> float:
        """Seconds on the network's clock (events are applied with times on it)."""
        ...

    def epoch(self) -> float:
        """The time since the epoch at which `now()` read 0 (captures are stamped so)."""
        ...

    async def counters(self) -> tuple[int, int, int]:
        """(datagrams from the client, datagrams to the client, bytes to the client) so far."""
        ...

    def failed(self) -> asyncio.Future[None] | None:
        """A future that fails when the network breaks down (None: it cannot tell)."""
        ...

    def server_records(self) -> list[Record]:
        """After `aclose()`: the server's side of the capture."""
        ...

    def client_records(self) -> tuple[list[Record], Callable[[Address], bool]]:
        """After `aclose()`: the client's side, and which addresses there are the client's."""
        ...

    def attribute(self, datagrams: list[QuicDatagram], preferred: Address) -> list[QuicDatagram]:
        """The server-side datagrams with the client's addresses as the server saw them."""
        ...

    def captures(self) -> dict[str, str]:
        """Evidence files, by kind."""
        ...

    async def aclose(self) -> None: ...


class ProxyNetwork:
    """quicmig's proxy between the two programs on loopback; its capture holds both legs."""

    name = "proxy"
    host_note = "through quicmig's proxy on loopback"

    def __init__(
        self, scenario: Scenario, seed: int, folder: Path, base_port: int | None = None
    ) -> None:
        self.base_port = base_port  # None: any free port
        self.pcap = folder / "proxy.pcap"
        self.driver = ProxyDriver.for_scenario(scenario, seed, self.pcap)
        self._server: Address = (LOOPBACK, 0)
        self._ports: list[int] = []
        self._extra: dict[str, str] = {}

    def plan(self, scenario: Scenario, tcp: bool) -> Scenario:
        from dataclasses import replace

        port = reserve_port(LOOPBACK, tcp, self.base_port)
        self._ports.append(port)
        self._server = (LOOPBACK, port)
        if scenario.server.preferred_address is None:
            return scenario
        preferred = reserve_port(LOOPBACK, False, self.base_port)
        self._ports.append(preferred)
        server = replace(scenario.server, preferred_address=(LOOPBACK, preferred))
        return replace(scenario, server=server)

    @property
    def server(self) -> Address:
        return self._server

    def cannot(self, scenario: Scenario) -> str | None:
        if scenario.server.preferred_address is not None and os.geteuid() != 0:
            return (
                "through the proxy the preferred address is captured on lo with dumpcap, "
                "which needs root here: run as root, or with --backend lab"
            )
        return None

    def local_addresses(self) -> tuple[str, ...]:
        return SOURCES  # 127.0.0.1 and 127.0.0.2

    async def place(self, scenario: Scenario) -> Placement:
        return Placement(server=self._server)

    def wrap(self, argv: list[str], role: str) -> list[str]:
        return argv

    async def start(self) -> Address:
        release_ports(self._ports[:1])  # bound by the server by now
        return await self.driver.start(self._server)

    @contextlib.asynccontextmanager
    async def preferred_capture(self, address: Address, path: Path) -> AsyncIterator[None]:
        exe = shutil.which("dumpcap")
        if exe is None:
            raise InputError(
                "capturing the preferred address needs dumpcap: apt-get install tshark"
            )
        argv = [exe, "-q", "-P", "-i", "lo", "-f", f"udp port {address[1]}", "-w", str(path)]
        capture = Endpoint("dumpcap", argv, log=path.with_suffix(".log"))
        async with capture:
            try:
                await capture.wait_capturing(path, CAPTURE_START)
            except EndpointError as exc:
                raise EndpointError(
                    f"capturing the preferred address on lo failed (it needs root or dumpcap's "
                    f"capture rights): {exc}"
                ) from None
            self._extra["preferred_pcap"] = str(path)
            yield

    def _proxy(self) -> Proxy:
        if self.driver.proxy is None:
            raise QuicmigError("the proxy was not started")
        return self.driver.proxy

    def now(self) -> float:
        return float(self._proxy().now())

    def epoch(self) -> float:
        return time.time() - self.now()

    async def counters(self) -> tuple[int, int, int]:
        proxy = self._proxy()
        return proxy.stats.from_client, proxy.stats.to_client, proxy.down.stats.bytes_delivered

    def failed(self) -> asyncio.Future[None] | None:
        proxy: Proxy = self._proxy()
        return asyncio.ensure_future(proxy.wait())

    def server_records(self) -> list[Record]:
        return list(touching(read_records(self.pcap), {self._server}))

    def client_records(self) -> tuple[list[Record], Callable[[Address], bool]]:
        listen = self._proxy().config.listen
        local = self._proxy().local if self.driver.proxy is not None else listen
        records = list(touching(read_records(self.pcap), {local}))
        return records, lambda addr: addr != local

    def attribute(self, datagrams: list[QuicDatagram], preferred: Address) -> list[QuicDatagram]:
        """The client reaches the preferred address directly, not through the proxy: its
        datagrams there (and the server's answers) are given the address the proxy gave it
        towards the server, as the runner's network does (the client's address stays)."""
        from dataclasses import replace

        out = []
        mapping: Address | None = None
        for dgram in datagrams:
            if dgram.dst == self._server:
                mapping = dgram.src
            if mapping is not None and dgram.dst == preferred:
                dgram = replace(dgram, src=mapping)
            elif mapping is not None and dgram.src == preferred:
                dgram = replace(dgram, dst=mapping)
            out.append(dgram)
        return out

    def captures(self) -> dict[str, str]:
        return {"pcap": str(self.pcap), **self._extra}

    async def aclose(self) -> None:
        release_ports(self._ports)
        await self.driver.aclose()


class LabNetwork:
    """The scenario's topology in network namespaces, a kernel NAT in front of the client."""

    name = "lab"
    host_note = "in the namespace lab (kernel NAT)"

    def __init__(
        self,
        scenario: Scenario,
        seed: int,
        folder: Path,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.folder = folder
        self.server_pcap = folder / "server-link.pcap"
        self.client_pcap = folder / "client-link.pcap"
        self.driver = LabDriver(
            scenario, seed, pcap=self.server_pcap, command="interop --backend lab", log=log
        )
        topology = scenario.topology
        self._client = topology.clients[0]
        server = topology.host(topology.server)
        self._server: Address = (server.interfaces[0].addresses[0], 4433)
        self._preferred_link: str | None = None
        self._extra: dict[str, str] = {}
        self._t0 = time.monotonic()
        self._epoch0 = time.time()

    def plan(self, scenario: Scenario, tcp: bool) -> Scenario:
        return scenario  # the topology's own addresses, in namespaces of this run alone

    @property
    def server(self) -> Address:
        return self._server

    def cannot(self, scenario: Scenario) -> str | None:
        return None  # the command checked for root and the tools first

    def local_addresses(self) -> tuple[str, ...]:
        return tuple(a for iface in self._client.interfaces for a in iface.addresses)

    async def place(self, scenario: Scenario) -> Placement:
        # Building the namespaces blocks for about a second: off the event loop, which
        # serves the other cells meanwhile.
        placement = await _finished(asyncio.to_thread(asyncio.run, self.driver.place(scenario)))
        self._server = placement.server
        net = self._net()
        topology = scenario.topology
        link = topology.link_of(self._client.name, self._client.interfaces[0].name).name
        tun = net.plan.links[link].router_tun
        await _finished(asyncio.to_thread(net.start_capture, tun, self.client_pcap.resolve()))
        return placement

    def _net(self) -> Any:
        if self.driver.net is None:
            raise QuicmigError("the lab is not built")
        return self.driver.net

    def wrap(self, argv: list[str], role: str) -> list[str]:
        net = self._net()
        namespace = (
            net.server_namespace if role == "server" else net.client_namespace(self._client.name)
        )
        return ["ip", "netns", "exec", namespace, *argv]

    async def start(self) -> Address:
        return self._server

    @contextlib.asynccontextmanager
    async def preferred_capture(self, address: Address, path: Path) -> AsyncIterator[None]:
        net = self._net()
        topology = self.driver.scenario.topology
        server = topology.host(topology.server)
        iface = next(i for i in server.interfaces if address[0] in i.addresses)
        link = topology.link_of(server.name, iface.name).name
        tun = net.plan.links[link].router_tun
        await _finished(asyncio.to_thread(net.start_capture, tun, path.resolve()))
        self._extra["preferred_pcap"] = str(path)
        yield  # the lab stops its captures when it is torn down

    def now(self) -> float:
        return time.monotonic() - self._t0

    def epoch(self) -> float:
        return self._epoch0  # read together with _t0

    async def counters(self) -> tuple[int, int, int]:
        links = (await asyncio.to_thread(self._net().stats))["links"]
        topology = self.driver.scenario.topology
        name = topology.link_of(self._client.name, self._client.interfaces[0].name).name
        link = links.get(name, {})
        up, down = link.get("up", {}), link.get("down", {})
        return (
            int(up.get("sent", 0)),
            int(down.get("delivered", 0)),
            int(down.get("bytes_delivered", 0)),
        )

    def failed(self) -> asyncio.Future[None] | None:
        return None

    def server_records(self) -> list[Record]:
        return list(read_records(self.server_pcap)) if self.server_pcap.is_file() else []

    def client_records(self) -> tuple[list[Record], Callable[[Address], bool]]:
        own = set(self.local_addresses())
        records = list(read_records(self.client_pcap)) if self.client_pcap.is_file() else []
        return records, lambda addr: addr[0] in own

    def attribute(self, datagrams: list[QuicDatagram], preferred: Address) -> list[QuicDatagram]:
        return datagrams  # the client's NAT maps its packets to both server addresses

    def captures(self) -> dict[str, str]:
        return {
            "pcap": str(self.server_pcap),
            "client_pcap": str(self.client_pcap),
            **self._extra,
        }

    async def aclose(self) -> None:
        await self.driver.aclose()


async def _finished(work: Coroutine[Any, Any, T]) -> T:
    """`await work`, which runs in a thread; cancelled (Ctrl-C), still wait for it to end
    before going on: tearing the lab down while a thread still builds it would leave
    namespaces behind."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await task
        raise
