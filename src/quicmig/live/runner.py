"""Run a scenario live, over real UDP on this host, and build the simulator's Result from it.

The same Scenario as the simulator; the network in between is a `NetworkDriver`:
`proxy` (quicmig.proxy: a userspace middlebox) now, the namespace lab later. The runner

1. starts the live server (`LiveServer`, the simulator's endpoint and tracker) on 127.0.0.1,
2. asks the driver for the address the client must reach (`await driver.start(server)`),
3. connects the live client there; the scenario's workload (the simulator's own download,
   messages or stream client) starts with the connection,
4. applies the timeline in real time, on the server's clock (seconds since it started):
   each event the driver supports (`driver.unsupported(event)` returns None) is applied with
   `await driver.apply(event)`, which returns the NetworkChange that really happened; the
   others become checks with `passed=None` (verdict unsupported) and a reason,
5. builds the Result with the same `migration_results()`, checks and verdict as the
   simulator, from the live server's tracker. `backend` is the driver's name.

CID rotations are client actions and handled here.

Where the endpoints live is the driver's choice too. By default the server listens on
127.0.0.1 (any port) and the client uses LiveClient's local addresses. A driver that also has
`async place() -> Placement` (see `PlacedDriver`; the namespace lab, quicmig.lab.driver) is
asked first, before anything else: it builds its network and names the server's bind address,
and the network namespaces the server's and the client's sockets are created in. The endpoints
still run here, in this process and on this event loop: only their sockets sit in the
namespaces (quicmig.live.netns), so the tracker, the workload and the Result are exactly the
ones of the other backends. The server's sockets are closed before `driver.aclose()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from quicmig.core import checks as check_mod
from quicmig.core.app import DownloadClient, make_workload
from quicmig.core.datagram import Address, format_address
from quicmig.core.measure import migration_results, series_of, transfer_result
from quicmig.core.results import Check, NetworkChange, Result
from quicmig.errors import QuicmigError
from quicmig.live import netns
from quicmig.live.certs import CertPaths, write
from quicmig.live.client import LiveClient
from quicmig.live.server import LiveServer
from quicmig.model.scenario import CidRotate, NatRebind, Scenario, TimelineEvent

LINGER = 1.0  # seconds after the workload for the last validations to land


class NetworkDriver(Protocol):
    """The network between the live client and the live server."""

    name: str  # the Result's `backend`

    async def start(self, server: Address) -> Address:
        """Set up the path to `server`; return the address the client must connect to."""
        ...

    def unsupported(self, event: TimelineEvent) -> str | None:
        """None if `apply(event)` can do it, else the reason it cannot (one line)."""
        ...

    async def apply(self, event: TimelineEvent, now: float) -> NetworkChange:
        """Do `event` now (`now`: the run's clock); return what was done."""
        ...

    def stats(self) -> dict[str, Any]:
        """Counters for the Result's `stats` (datagrams forwarded, lost, ...)."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Placement:
    """Where the live endpoints' sockets are: bind addresses and network namespaces."""

    server: Address = ("127.0.0.1", 0)  # port 0: any free port
    server_netns: str | None = None  # None: this process's namespace
    client_addresses: tuple[str, ...] | None = None  # None: LiveClient's default for the target
    client_netns: str | None = None
    # seconds: the client PINGs after this long without sending. For networks that move the
    # client without telling it (the lab), so that a client that only receives is heard from
    # its new address; None: as the scenario's client settings say.
    client_keepalive: float | None = None


@runtime_checkable
class PlacedDriver(NetworkDriver, Protocol):
    """A driver that also decides where the endpoints' sockets are (see the module notes)."""

    async def place(self) -> Placement:
        """Build the network; return where the server and the client must open sockets."""
        ...


@dataclass(frozen=True, slots=True)
class LiveOptions:
    seed: int = 1
    keylog: Path | None = None  # server-side TLS secrets (SSLKEYLOGFILE)
    qlog_dir: Path | None = None  # one qlog per server connection, written at the end


def expand(scenario: Scenario) -> list[TimelineEvent]:
    """The timeline with periodic NAT rebindings unrolled up to the scenario's duration."""
    out: list[TimelineEvent] = []
    for event in scenario.timeline:
        out.append(event)
        if isinstance(event, NatRebind) and event.every is not None:
            at = event.at + event.every
            while at < scenario.duration:
                out.append(NatRebind(at, event.nat, event.new_address))
                at += event.every
    return sorted(out, key=lambda e: e.at)


async def run_live(scenario: Scenario, driver: NetworkDriver, options: LiveOptions) -> Result:
    wall_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="quicmig-live-") as folder:
        certs = CertPaths.in_dir(Path(folder))
        write(certs)
        try:
            placement = await driver.place() if isinstance(driver, PlacedDriver) else Placement()
            server = LiveServer(
                certs,
                [placement.server],
                secrets_log=options.keylog,
                qlog_dir=options.qlog_dir,
                log=lambda line: None,
                disable_active_migration=scenario.server.disable_active_migration,
                extensions=scenario.quic,
            )
            with netns.sockets_in(placement.server_netns):
                await server.start()
            try:
                target = await driver.start(server.addresses[0])
                with netns.sockets_in(placement.client_netns):
                    return await _run(
                        scenario, driver, options, server, certs, target, placement, wall_start
                    )
            finally:
                await server.aclose()
        finally:
            await driver.aclose()


async def _run(
    scenario: Scenario,
    driver: NetworkDriver,
    options: LiveOptions,
    server: LiveServer,
    certs: CertPaths,
    target: Address,
    placement: Placement,
    wall_start: float,
) -> Result:
    changes: list[NetworkChange] = []
    checks: list[Check] = []  # what this backend could not do (passed=None), the connection
    for setting, missing in (
        ("client-failover_after_s", scenario.client.failover_after is not None),
        ("server-preferred_address", scenario.server.preferred_address is not None),
        ("attackers", bool(scenario.attackers)),
    ):
        if missing:
            checks.append(Check(setting, None, f"the {driver.name} backend does not apply it yet"))
    client = LiveClient(
        target,
        ca=certs.ca,
        server_name="localhost",
        addresses=placement.client_addresses,
        honour_disable_migration=scenario.quic.honour_disable_migration,
        clock=server.now,  # one clock for the workload's deliveries and the server's tracker
        # The simulator's own workload, started with the connection as in the simulator.
        workload=lambda conn: make_workload(conn, scenario.workload, options.seed),
    )
    async with client:
        keepalive = scenario.client.keepalive or placement.client_keepalive
        if keepalive is not None and client.endpoint is not None:
            client.endpoint.keepalive = keepalive
        workload = client.workload.scenario
        assert workload is not None

        async def timeline() -> None:
            for event in expand(scenario):
                await asyncio.sleep(max(0.0, event.at - server.now()))
                if isinstance(event, CidRotate):
                    await client.migrate("cid-rotation")
                    changes.append(NetworkChange(server.now(), "cid-rotate", "new CID", False))
                    continue
                reason = driver.unsupported(event)
                name = type(event).__name__
                if reason is not None:
                    checks.append(
                        Check(f"event-{name}@{event.at:g}s", None, f"{driver.name}: {reason}")
                    )
                    continue
                changes.append(await driver.apply(event, server.now()))

        events = asyncio.ensure_future(timeline())
        try:
            # The workload ends, or the connection does, or the scenario's time is up.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    client.workload.scenario_done.wait(),
                    max(0.0, scenario.duration - server.now()),
                )
            if client.closed is not None:
                checks.append(Check("connection", False, f"closed: {client.closed.reason}"))
            # Events due during a short linger still run; the rest of the timeline is cut.
            await asyncio.sleep(min(LINGER, max(0.0, scenario.duration - server.now())))
        finally:  # also when the run is cancelled (Ctrl-C): the task's outcome is retrieved
            events.cancel()
            (outcome,) = await asyncio.gather(events, return_exceptions=True)
        if isinstance(outcome, Exception):  # the network could not do an event: the run broke
            raise outcome
        with contextlib.suppress(QuicmigError):
            await client.send_message(b"done")  # the client speaks from its final path
            await client.confirmed_record(timeout=1.0)
        run_end = server.now()
    live = server.connections[0].server_conn
    tracker = live.tracker
    digest = (
        live.app.sent_digests.get(workload.stream_id)
        if isinstance(workload, DownloadClient)
        else None
    )
    transfer = transfer_result(workload, digest, run_end)
    migrations = migration_results(
        tracker, changes, workload.delivery.times, workload.completed_at, run_end
    )
    challenges = tracker.first_packet_challenges
    not_applied = any(c.passed is None for c in checks)
    checks = [
        *check_mod.workload_checks(transfer, scenario.workload),
        *check_mod.migration_checks(
            scenario.expect,
            migrations,
            changes,
            len(tracker.peers_seen),
            len(challenges),
            sum(c.answered_at is not None for c in challenges),
            len(tracker.cid_rotations),
        ),
        *checks,
    ]
    verdict, reasons = check_mod.verdict(checks, ran_as_written=not not_applied)
    wall = time.perf_counter() - wall_start
    return Result(
        scenario=scenario.name,
        backend=driver.name,
        seed=options.seed,
        verdict=verdict,
        expected_verdict=scenario.expect.verdict,
        reasons=reasons,
        checks=checks,
        transfer=transfer,
        migrations=migrations,
        cid_rotations=[r.at for r in tracker.cid_rotations],
        network_changes=changes,
        paths_seen=[format_address(p) for p in tracker.peers_seen],
        # live backends: "simulated_seconds" is the run's real length (schema kept)
        stats={
            "simulated_seconds": run_end,
            "quic_extensions": list(scenario.quic.enabled),  # empty: stock aioquic
            **driver.stats(),
        },
        wall={"seconds": wall, "datagrams_per_second": 0.0, "speedup": run_end / wall},
        series=series_of(workload.delivery, tracker),
        files={
            kind: str(path)
            for kind, path in (("keylog", options.keylog), ("qlog", options.qlog_dir))
            if path is not None
        },
    )
