"""The proxy as a NetworkDriver for `quicmig run --backend proxy` (see quicmig.live.runner).

Supported timeline events: `nat-rebind` (a new source port; `new_address` moves to
127.0.0.2 and back), `link-change` on the client's link (its settings applied to both
directions). Unsupported, reported as such: `switch`, `address-change`, `interface-down/-up`
(they need a second client interface: the namespace lab), and link changes of other links.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from quicmig.core.datagram import Address
from quicmig.core.results import NetworkChange
from quicmig.errors import QuicmigError
from quicmig.model.scenario import LinkChange, NatRebind, Scenario, TimelineEvent
from quicmig.model.settings import apply_link_settings
from quicmig.proxy.core import Proxy, ProxyConfig, describe

SOURCES = ("127.0.0.1", "127.0.0.2")  # nat-rebind with new_address alternates between them


class ProxyDriver:
    name = "proxy"

    def __init__(self, scenario: Scenario, seed: int, pcap: Path | None = None) -> None:
        """`pcap`: the proxy captures both of its legs there (client side and server side)."""
        topology = scenario.topology
        client = topology.clients[0]
        iface = scenario.client.interface or client.interfaces[0].name
        self.link = topology.link_of(client.name, iface)
        self.scenario = scenario
        self.seed = seed
        self.pcap = pcap
        self.proxy: Proxy | None = None
        self.log: list[str] = []

    async def start(self, server: Address) -> Address:
        config = ProxyConfig(
            listen=("127.0.0.1", 0),
            upstream=server,
            profile=self.link.profile,
            profile_name=self.link.name,
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
            case LinkChange(link=link) if link == self.link.name:
                return None
            case LinkChange(link=link):
                return f"link {link!r} is not the client's link {self.link.name!r}"
        kind = type(event).__name__
        return f"{kind} needs a second client interface; the proxy has one path (use the lab)"

    async def apply(self, event: TimelineEvent, now: float) -> NetworkChange:
        proxy = self.proxy
        if proxy is None:
            raise QuicmigError("the proxy driver was not started")
        match event:
            case NatRebind(nat=nat, new_address=new_address):
                done = await proxy.rebind(new_address=new_address)
                detail = "; ".join(f"{nat}: {e.old} -> {e.new}" for e in done if e.new)
                return NetworkChange(now, "nat-rebind", detail or f"{nat}: no client yet", False)
            case LinkChange(link=link, settings=settings):
                profile = apply_link_settings(proxy.up.profile, settings, f"link {link}")
                proxy.up.profile = profile
                proxy.down.profile = profile
                return NetworkChange(now, "link-change", f"{link}: {describe(profile)}", False)
        raise QuicmigError(f"{type(event).__name__} is not supported by the proxy backend")

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
