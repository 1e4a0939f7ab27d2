"""A TCP or MPTCP download as a backend of the one run pipeline (quicmig.runner).

`StreamBackend` is to TCP what quicmig.live.backend.LiveBackend is to QUIC: it asks the
race's lab driver to build the network (quicmig.race.driver.RaceLabDriver), starts the
HTTPS server in the server's namespace and the resuming client in the client's
(quicmig.race.server, quicmig.race.client), applies the plan through the same driver in
real time (each event at its time, or once its share of the body has arrived), samples
both ends' sockets, and returns an Observation whose `transport` is what carried the
bytes and whose client `stream` holds what the sockets recorded. The judge makes the
Result (quicmig.core.judge); the server's body is the QUIC server's for the same download.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from quicmig.core.app import content
from quicmig.core.connections import MPTCP, TCP, StreamRecord
from quicmig.core.judge import unsupported
from quicmig.core.observation import ClientObservation, Observation
from quicmig.core.results import Check, NetworkChange, Transfer
from quicmig.core.seeds import workload_seed
from quicmig.live.backend import apply_on_time
from quicmig.live.certs import CertPaths, write
from quicmig.model.events import TimelineEvent
from quicmig.model.scenario import Download, Scenario
from quicmig.race.client import ClientSettings, ResumingDownload, client_context
from quicmig.race.driver import RaceLabDriver, StreamDriver
from quicmig.race.server import RangeServer, server_context
from quicmig.runner import RunOptions

HTTPS_PORT = 443  # TCP, in the lab's server namespace
SERVER_NAME = "localhost"  # in the certificate quicmig.live.certs makes
SAMPLE_EVERY = 0.05  # seconds between looks at both ends' socket counters
PROGRESS_POLL = 0.005  # seconds between looks at the bytes delivered (events by progress)
LINGER = 0.2  # seconds after the download: the last samples


class StreamBackend:
    """The scenario's download over TCP + TLS 1.3 (or MPTCP) in the namespace lab."""

    def __init__(
        self,
        lab: RaceLabDriver,
        *,
        mptcp: bool,
        settings: ClientSettings,
        fallback: str | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        """`mptcp`: MPTCP sockets at both ends; `fallback`: why MPTCP was asked for and is
        not used (plain TCP runs, and the result says so)."""
        self.lab = lab
        self.driver = StreamDriver(lab)
        self.mptcp = mptcp
        self.settings = settings
        self.fallback = fallback
        self.log = log or (lambda line: None)

    @property
    def asked(self) -> str:
        return MPTCP if self.mptcp or self.fallback is not None else TCP

    def unsupported_settings(self, scenario: Scenario) -> Sequence[Check]:
        checks = []
        if not isinstance(scenario.workload, Download):
            checks.append(unsupported("workload", "the TCP and MPTCP runs download only"))
        for setting, present in (
            ("client.failover_after_s", scenario.client.failover_after is not None),
            ("server.preferred_address", scenario.server.preferred_address is not None),
            ("server.disable_active_migration", scenario.server.disable_active_migration),
            ("attackers", bool(scenario.attackers)),
            ("clients", len(scenario.topology.clients) > 1),
        ):
            if present:
                checks.append(unsupported(setting, f"QUIC only: the {self.asked} run ignores it"))
        return checks

    async def run(
        self, scenario: Scenario, plan: Sequence[TimelineEvent], options: RunOptions
    ) -> Observation:
        try:
            placement = await self.lab.place(scenario)
            with tempfile.TemporaryDirectory(prefix="quicmig-race-") as folder:
                certs = CertPaths.in_dir(Path(folder))
                write(certs)
                size = scenario.workload.size if isinstance(scenario.workload, Download) else 0
                body = content(size, workload_seed(options.seed))
                loop = asyncio.get_running_loop()
                start = loop.time()

                def clock() -> float:
                    return loop.time() - start

                server = RangeServer(
                    body,
                    address=(placement.server[0], HTTPS_PORT),
                    namespace=placement.server_netns,
                    mptcp=self.mptcp,
                    context=server_context(str(certs.cert), str(certs.key)),
                    clock=clock,
                    congestion=self.settings.congestion,
                )
                await server.start()
                try:
                    client = ResumingDownload(
                        (placement.server[0], HTTPS_PORT),
                        size=size,
                        namespace=placement.client_netns,
                        mptcp=self.mptcp,
                        context=client_context(certs.ca, options.keylog),
                        server_name=SERVER_NAME,
                        clock=clock,
                        settings=self.settings,
                    )
                    return await self._exchange(
                        scenario, plan, options, server, client, hashlib.sha256(body).hexdigest()
                    )
                finally:
                    await server.aclose()
        finally:
            await self.lab.aclose()

    async def _exchange(
        self,
        scenario: Scenario,
        plan: Sequence[TimelineEvent],
        options: RunOptions,
        server: RangeServer,
        client: ResumingDownload,
        digest: str,
    ) -> Observation:
        changes: list[NetworkChange] = []
        lock = asyncio.Lock()  # one event at a time, whichever trigger fired

        def applied(change: NetworkChange) -> None:
            changes.append(change)
            self.log(f"{change.kind.value} at {change.at:.3f} s: {change.detail}")

        async def by_progress() -> None:
            for event in (e for e in plan if e.progress is not None):
                while client.held < (event.progress or 0) * client.size:
                    await asyncio.sleep(PROGRESS_POLL)
                async with lock:
                    applied(await self.driver.apply(event, client.clock()))

        async def sampling() -> None:
            while True:
                client.sample()
                server.sample()
                await asyncio.sleep(SAMPLE_EVERY)

        timed = (e for e in plan if e.progress is None)
        tasks = [
            asyncio.ensure_future(apply_on_time(timed, self.driver, client.clock, applied, lock)),
            asyncio.ensure_future(by_progress()),
            asyncio.ensure_future(sampling()),
        ]
        try:
            # Each attempt is bounded by its timeouts, a slow one by the scenario's time too.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    client.run(until=scenario.duration),
                    max(0.0, scenario.duration - client.clock()),
                )
            # Events due during a short linger still run; the rest of the timeline is cut.
            await asyncio.sleep(min(LINGER, max(0.0, scenario.duration - client.clock())))
        finally:  # also when the run is cancelled (Ctrl-C): the tasks' outcomes are retrieved
            for task in tasks:
                task.cancel()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, Exception) and not isinstance(outcome, asyncio.CancelledError):
                raise outcome  # the network could not do an event: the run broke
        server.sample()
        run_end = client.clock()
        transfer = Transfer(
            workload="download",
            bytes=client.held,
            expected_bytes=client.size,
            intact=client.digest == digest and client.held == client.size,
            started_at=client.started_at,
            completed_at=client.completed_at,
            sha256=client.digest,
        )
        fallback = self.fallback or client.fallback
        record = StreamRecord(
            transport=self.asked,
            attempts=tuple(client.attempts),
            accepted=tuple(server.records()),
            settings={
                "stall_timeout_s": self.settings.stall_timeout,
                "connect_timeout_s": self.settings.connect_timeout,
                "tcp_congestion": self.settings.congestion,
            },
            fallback=fallback,
        )
        carried = MPTCP if self.mptcp and client.fallback is None else TCP
        return Observation(
            backend=self.lab.name,
            seed=options.seed,
            run_end=run_end,
            clients=[
                ClientObservation(
                    transfer, client.delivery.times, client.delivery.totals, None, stream=record
                )
            ],
            changes=changes,
            stats={
                "clock": "real",
                "tcp": record.to_dict(),
                "server_sha256": digest,
                **({"fallback": f"{MPTCP}: {fallback}"} if fallback else {}),
                **self.lab.stats(),
            },
            files={"keylog": str(options.keylog)} if options.keylog is not None else {},
            transport=carried,
        )
