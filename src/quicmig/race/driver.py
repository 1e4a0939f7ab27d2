"""The lab driver of the race: `quicmig run --backend lab`'s, with the race's client host.

Every transport's run builds the same lab (quicmig.lab.driver.LabDriver: the scenario's
topology in namespaces, its links shaped by the element, its moves made by the kernel),
and then configures the client as a phone is (quicmig.race.host): source routing, one TCP
congestion control, and for an MPTCP run its endpoints. After each move the routing
tables follow. A CID rotation has no TCP equivalent: the stream runs report it unsupported.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quicmig.core.results import NetworkChange
from quicmig.errors import QuicmigError
from quicmig.lab.driver import LabDriver
from quicmig.live.backend import Placement
from quicmig.model.events import CidRotate, TimelineEvent
from quicmig.model.scenario import Scenario
from quicmig.race.host import ClientHost, add_mptcp_endpoints


class RaceLabDriver(LabDriver):
    def __init__(
        self,
        scenario: Scenario,
        seed: int,
        *,
        mptcp: bool = False,
        mptcp_backup: bool = True,
        pcap: Path | None = None,
        command: str = "lab race",
        log: Callable[[str], None] | None = None,
    ) -> None:
        """`mptcp`: give the client MPTCP endpoints (`mptcp_backup`: standing by)."""
        super().__init__(scenario, seed, pcap=pcap, command=command, log=log)
        self.mptcp = mptcp
        self.mptcp_backup = mptcp_backup
        self.host: ClientHost | None = None
        self.endpoints: list[str] = []

    async def place(self, scenario: Scenario) -> Placement:
        placement = await super().place(scenario)
        await asyncio.to_thread(self._configure, scenario.topology.clients[0].name)
        return placement

    def _configure(self, client: str) -> None:
        net = self._net()
        self.host = ClientHost(net, client)
        self.host.refresh()
        if self.mptcp:
            self.endpoints = add_mptcp_endpoints(net, client, self.mptcp_backup)

    async def apply(self, event: TimelineEvent, now: float) -> NetworkChange:
        change = await super().apply(event, now)
        if self.host is not None and self.net is not None:
            await asyncio.to_thread(self.host.refresh)
        return change

    def stats(self) -> dict[str, Any]:
        host: dict[str, Any] = self.host.describe() if self.host is not None else {}
        if self.mptcp:
            host["mptcp_endpoints"] = list(self.endpoints)
        return {**super().stats(), "host": host}


class StreamDriver:
    """The race's driver for a TCP or MPTCP run: the lab's moves, no CID rotation."""

    def __init__(self, lab: RaceLabDriver) -> None:
        self.lab = lab
        self.name = lab.name

    def unsupported(self, event: TimelineEvent) -> str | None:
        if isinstance(event, CidRotate):
            return "TCP has no connection IDs to rotate (RFC 9293: a connection is its 4-tuple)"
        return self.lab.unsupported(event)

    async def apply(self, event: TimelineEvent, now: float) -> NetworkChange:
        if isinstance(event, CidRotate):
            raise QuicmigError("a CID rotation cannot be applied to TCP")
        return await self.lab.apply(event, now)
