"""The proxy as a network driver: the live backend's `--backend proxy`, and `quicmig proxy`.

Supported timeline events: `nat-rebinding` (a new source port), `address-rebinding` (the
next of the proxy's source addresses, 127.0.0.1 and 127.0.0.2 by default), `link-change` and
`blackhole` on the client's link (both directions). Unsupported, reported as such:
`interface-switch`, `address-change`, `interface-down/-up` (they need a second client
interface: the namespace lab) and changes of other links. The proxy knows the source
address and port of each new mapping, so each rebinding says exactly where the server
should see the client next.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from quicmig.core.datagram import Address, format_address
from quicmig.core.results import Check, NetworkChange
from quicmig.errors import QuicmigError
from quicmig.live.backend import Placement
from quicmig.model.events import Blackhole, LinkChange, NatRebind, TimelineEvent, kind_of
from quicmig.model.scenario import Scenario
from quicmig.model.settings import changed_profile
from quicmig.model.topology import LinkProfile
from quicmig.proxy.core import Proxy, ProxyConfig, describe

SOURCES = ("127.0.0.1", "127.0.0.2")  # an address rebinding moves to the next one


class ProxyDriver:
    name = "proxy"
    client_moves = False  # the proxy keys its mappings by the client's address

    def __init__(
        self,
        link: str,
        profile: LinkProfile,
        seed: int = 1,
        pcap: Path | None = None,
        proxy: Proxy | None = None,
    ) -> None:
        """The proxy standing for the client's link `link`; `pcap`: capture both of its
        legs there. With `proxy`, drive that one (already started) instead of making one."""
        self.link = link
        self.profile = profile
        self.seed = seed
        self.pcap = pcap
        self.proxy = proxy
        self.log: list[str] = []

    @classmethod
    def for_scenario(cls, scenario: Scenario, seed: int, pcap: Path | None = None) -> ProxyDriver:
        topology = scenario.topology
        client = topology.clients[0]
        iface = scenario.client.interface or client.interfaces[0].name
        link = topology.link_of(client.name, iface)
        return cls(link.name, link.profile, seed, pcap)

    async def place(self, scenario: Scenario) -> Placement:
        return Placement()

    async def start(self, server: Address) -> Address:
        config = ProxyConfig(
            listen=("127.0.0.1", 0),
            upstream=server,
            profile=self.profile,
            profile_name=self.link,
            link=self.link,
            source_addresses=SOURCES,
            seed=self.seed,
            pcap=self.pcap,
        )
        self.proxy = Proxy(config, log=self.log.append)
        return await self.proxy.start()

    def unsupported(self, event: TimelineEvent) -> str | None:
        match event:
            case NatRebind():
                return None
            case LinkChange(link=link) | Blackhole(link=link) if link == self.link:
                return None
            case LinkChange(link=link) | Blackhole(link=link):
                return f"link {link!r} is not the client's link {self.link!r}"
        kind = kind_of(event).value
        return f"{kind} needs a second client interface; the proxy has one path (use the lab)"

    def unsupported_settings(self, scenario: Scenario) -> Sequence[Check]:
        return ()

    def _proxy(self) -> Proxy:
        if self.proxy is None:
            raise QuicmigError("the proxy driver was not started")
        return self.proxy

    async def apply(self, event: TimelineEvent, now: float) -> NetworkChange:
        proxy = self._proxy()
        match event:
            case NatRebind(nat=nat, new_address=new_address):
                done = await proxy.rebind(new_address=new_address)
                moved = [e for e in done if e.new]
                detail = "; ".join(
                    f"{nat}: {format_address(e.old) if e.old else '-'} -> {format_address(e.new)}"
                    for e in moved
                    if e.new is not None
                )
                where = moved[0].new if len(moved) == 1 else None
                return NetworkChange(
                    now,
                    kind_of(event),
                    detail or f"{nat}: no client yet",
                    False,
                    *(where or (None, None)),
                )
            case LinkChange(link=link, settings=settings, profile=name):
                profile = changed_profile(proxy.up.profile, name, settings, f"link {link}")
                proxy.set_profile(profile, name or f"{proxy.profile_name}+changes")
                return NetworkChange(now, event.kind, f"{link}: {describe(profile)}", False)
            case Blackhole(link=link, seconds=seconds):
                proxy.blackhole(seconds)
                return NetworkChange(
                    now, event.kind, f"{link}: nothing passes for {seconds:g} s", False
                )
        raise QuicmigError(f"{kind_of(event).value} is not supported by the proxy backend")

    def stats(self) -> dict[str, Any]:
        if self.proxy is None:
            return {}
        return {
            "proxy": asdict(self.proxy.stats),
            "links": {
                "client->upstream": asdict(self.proxy.up.stats),
                "upstream->client": asdict(self.proxy.down.stats),
            },
        }

    async def aclose(self) -> None:
        if self.proxy is not None:
            await self.proxy.aclose()
            await asyncio.sleep(0)
