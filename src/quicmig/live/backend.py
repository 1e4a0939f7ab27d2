"""Live runs: the scenario over real UDP sockets, for the run pipeline (quicmig.runner).

The endpoints are the simulator's (`ServerEndpoint` inside `LiveServer`, `ClientEndpoint`
inside `LiveClient`) on asyncio sockets; the network between them is a `NetworkDriver`:

- `proxy` (quicmig.proxy.driver): a userspace middlebox on loopback,
- `lab` (quicmig.lab.driver): Linux namespaces with a kernel NAT,
- `direct` (here): nothing in between; the client's own moves are the migrations.

`LiveBackend.run()`

1. asks the network where the endpoints' sockets go (`place()`: the lab builds its
   namespaces there), starts the live server there (or, with `remote`, uses one that is
   already running elsewhere), and asks for the address the client must reach (`start()`),
2. connects the live client; the scenario's workload (the simulator's own download,
   messages or stream client) starts with the connection, on the server's clock,
3. applies the plan in real time: each event at its time, or once its share of the bytes
   has arrived; CID rotations, and on a network that lets them through (`direct`) the
   client's own moves, are the client's, the rest the network's,
4. returns what was observed: the workload, and the server's tracker of the connection (for
   a remote server, fetched over the connection and put on the client's clock).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from quicmig.core.app import DownloadClient, make_workload
from quicmig.core.datagram import Address, format_address
from quicmig.core.judge import unsupported
from quicmig.core.measure import transfer_result
from quicmig.core.observation import ClientObservation, Observation
from quicmig.core.results import Check, NetworkChange
from quicmig.core.seeds import workload_seed
from quicmig.core.tracker import MigrationTracker
from quicmig.errors import QuicmigError
from quicmig.live import netns
from quicmig.live.certs import CertPaths, write
from quicmig.live.client import LiveClient, MigrationRefused, Move
from quicmig.live.server import LiveServer
from quicmig.model.events import (
    AddressChange,
    CidRotate,
    EventKind,
    NatRebind,
    Switch,
    TimelineEvent,
    kind_of,
)
from quicmig.model.scenario import Scenario, expected_bytes
from quicmig.runner import Driver, RunOptions

LINGER = 1.0  # seconds after the workload for the last validations to land
PROGRESS_POLL = 0.005  # seconds between looks at the bytes delivered (events by progress)


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


class NetworkDriver(Protocol):
    """The network between the live client and the live server."""

    name: str  # the Result's `backend`
    client_moves: bool  # the client's own moves reach the server unchanged (nothing between)

    async def place(self, scenario: Scenario) -> Placement:
        """Build the network; say where the server and the client must open sockets."""
        ...

    async def start(self, server: Address) -> Address:
        """Set up the path to `server`; return the address the client must connect to."""
        ...

    def unsupported(self, event: TimelineEvent) -> str | None: ...

    async def apply(self, event: TimelineEvent, now: float) -> NetworkChange: ...

    def unsupported_settings(self, scenario: Scenario) -> Sequence[Check]: ...

    def stats(self) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


class DirectNetwork:
    """No middlebox: the client's own moves (new sockets, other local addresses) are all."""

    name = "live"
    client_moves = True

    async def place(self, scenario: Scenario) -> Placement:
        return Placement()

    async def start(self, server: Address) -> Address:
        return server

    def unsupported(self, event: TimelineEvent) -> str | None:
        return f"there is no network to apply {kind_of(event).value} to; use --backend proxy"

    async def apply(self, event: TimelineEvent, now: float) -> NetworkChange:
        raise QuicmigError(f"{kind_of(event).value}: no network to apply it to")

    def unsupported_settings(self, scenario: Scenario) -> Sequence[Check]:
        return ()

    def stats(self) -> dict[str, Any]:
        return {}

    async def aclose(self) -> None:
        pass


CLIENT_MOVES = (NatRebind, AddressChange, Switch)  # what the client can do by itself


class LiveDriver:
    """The run's driver: CID rotations are the client's; the network's events are the
    network driver's, except on a network that lets the client's own moves through."""

    def __init__(self, network: NetworkDriver) -> None:
        self.network = network
        self.name = network.name
        self.client: LiveClient | None = None  # the backend's, once connected

    def _by_client(self, event: TimelineEvent) -> bool:
        return isinstance(event, CidRotate) or (
            self.network.client_moves and isinstance(event, CLIENT_MOVES)
        )

    def unsupported(self, event: TimelineEvent) -> str | None:
        return None if self._by_client(event) else self.network.unsupported(event)

    async def apply(self, event: TimelineEvent, now: float) -> NetworkChange:
        if not self._by_client(event):
            return await self.network.apply(event, now)
        assert self.client is not None, "connected before the timeline runs"
        try:
            move = await _client_move(self.client, event)
        except MigrationRefused as refused:
            return NetworkChange(now, EventKind.MIGRATION_REFUSED, str(refused), False)
        return _change(move)


async def _client_move(client: LiveClient, event: TimelineEvent) -> Move:
    match event:
        case CidRotate():
            return client.rotate_cid()
        case NatRebind(new_address=new_address):
            return await client.rebind(client.next_address() if new_address else None)
        case AddressChange():
            return await client.move_to(client.next_address())
        case Switch(mode=mode, gap=gap, overlap=overlap, new_cid=new_cid):
            return await client.switch(client.next_address(), mode, gap, overlap, new_cid)
    raise AssertionError(event)


def _change(move: Move) -> NetworkChange:
    """What the client did, as a network change; it knows where the server must see it."""
    if move.kind is EventKind.CID_ROTATION:
        return NetworkChange(move.at, move.kind, move.detail, False)
    active = move.kind in (EventKind.ADDRESS_CHANGE, EventKind.INTERFACE_SWITCH)
    detail = f"{format_address(move.old_local)} -> {format_address(move.new_local)} ({move.detail})"
    return NetworkChange(move.at, move.kind, detail, active, *move.new_local)


async def apply_on_time(
    events: Iterable[TimelineEvent],
    driver: Driver,
    clock: Callable[[], float],
    applied: Callable[[NetworkChange], None],
    lock: asyncio.Lock | None = None,
) -> None:
    """Apply `events` (in order of time) through `driver`, each at its time on `clock`."""
    for event in events:
        await asyncio.sleep(max(0.0, event.at - clock()))
        async with lock or contextlib.nullcontext():
            applied(await driver.apply(event, clock()))


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """How the live client reaches a server that runs elsewhere (`LiveBackend(remote=...)`)."""

    ca: Path | None = None
    insecure: bool = False
    server_name: str | None = None
    addresses: tuple[str, ...] | None = None
    secrets_log: Path | None = None
    timeout: float = 5.0  # seconds: handshake and each request


class LiveBackend:
    """Real endpoints over `network`; with `remote`, the server is one already running there
    (`quicmig server`), and what it observed is fetched over the connection."""

    def __init__(
        self,
        network: NetworkDriver,
        *,
        remote: Address | None = None,
        client: ClientOptions | None = None,
        log: Callable[[str], None] | None = None,
        on_server: Callable[[LiveServer], None] | None = None,
    ) -> None:
        """`on_server(server)` is called once the local server listens, before any client:
        a way to watch more of it (a packet recorder for `--html`) without changing it."""
        self.network = network
        self.driver = LiveDriver(network)
        self.remote = remote
        self.client_options = client or ClientOptions()
        self.log = log or (lambda line: None)
        self.on_server = on_server

    def unsupported_settings(self, scenario: Scenario) -> Sequence[Check]:
        checks = list(self.network.unsupported_settings(scenario))
        for setting, present in (
            ("client.failover_after_s", scenario.client.failover_after is not None),
            ("server.preferred_address", scenario.server.preferred_address is not None),
            ("attackers", bool(scenario.attackers)),
        ):
            if present:
                checks.append(
                    unsupported(setting, f"the {self.network.name} backend does not apply it")
                )
        return checks

    async def run(
        self, scenario: Scenario, plan: Sequence[TimelineEvent], options: RunOptions
    ) -> Observation:
        try:
            with tempfile.TemporaryDirectory(prefix="quicmig-live-") as folder:
                placement = await self.network.place(scenario)
                if self.remote is not None:
                    target = await self.network.start(self.remote)
                    return await self._session(scenario, plan, options, None, target, placement)
                certs = CertPaths.in_dir(Path(folder))
                write(certs)
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
                if self.on_server is not None:
                    self.on_server(server)
                try:
                    target = await self.network.start(server.addresses[0])
                    return await self._session(
                        scenario, plan, options, server, target, placement, certs.ca
                    )
                finally:
                    await server.aclose()
        finally:
            await self.network.aclose()

    async def _session(
        self,
        scenario: Scenario,
        plan: Sequence[TimelineEvent],
        options: RunOptions,
        server: LiveServer | None,
        target: Address,
        placement: Placement,
        ca: Path | None = None,
    ) -> Observation:
        opts = self.client_options
        secrets = opts.secrets_log.open("a") if opts.secrets_log is not None else None
        try:
            client = LiveClient(
                target,
                ca=ca or opts.ca,
                insecure=opts.insecure and ca is None,
                server_name="localhost" if server is not None else opts.server_name,
                addresses=placement.client_addresses or opts.addresses,
                secrets_log=secrets,
                timeout=opts.timeout,
                honour_disable_migration=scenario.quic.honour_disable_migration,
                keepalive=scenario.client.keepalive or placement.client_keepalive,
                # One clock for the workload's deliveries and the server's tracker.
                clock=server.now if server is not None else None,
                workload=lambda conn: make_workload(
                    conn, scenario.workload, workload_seed(options.seed)
                ),
            )
            with netns.sockets_in(placement.client_netns):
                async with client:
                    self.driver.client = client
                    self.log(
                        f"connected to {format_address(target)} from "
                        f"{format_address(client.local)} in "
                        f"{(client.handshake_seconds or 0) * 1e3:.1f} ms"
                    )
                    return await self._exchange(scenario, plan, options, client, server)
        finally:
            self.driver.client = None
            if secrets is not None:
                secrets.close()

    async def _exchange(
        self,
        scenario: Scenario,
        plan: Sequence[TimelineEvent],
        options: RunOptions,
        client: LiveClient,
        server: LiveServer | None,
    ) -> Observation:
        changes: list[NetworkChange] = []
        problems: list[Check] = []
        workload = client.workload.scenario
        assert workload is not None
        lock = asyncio.Lock()  # one event at a time, whichever trigger fired

        def applied(change: NetworkChange) -> None:
            changes.append(change)
            self.log(f"{change.kind.value} at {change.at:.3f} s: {change.detail}")

        async def by_progress() -> None:
            total = expected_bytes(scenario.workload) or 0
            for event in (e for e in plan if e.progress is not None):
                while workload.delivery.total < (event.progress or 0) * total:
                    await asyncio.sleep(PROGRESS_POLL)
                async with lock:
                    applied(await self.driver.apply(event, client.now()))

        timed = (e for e in plan if e.progress is None)
        tasks = [
            asyncio.ensure_future(apply_on_time(timed, self.driver, client.now, applied, lock)),
            asyncio.ensure_future(by_progress()),
        ]
        try:
            # The workload ends, or the connection does, or the scenario's time is up.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    client.workload.scenario_done.wait(),
                    max(0.0, scenario.duration - client.now()),
                )
            if client.closed is not None:
                problems.append(Check.of("connection", False, f"closed: {client.closed.reason}"))
            # Events due during a short linger still run; the rest of the timeline is cut.
            await asyncio.sleep(min(LINGER, max(0.0, scenario.duration - client.now())))
        finally:  # also when the run is cancelled (Ctrl-C): the tasks' outcomes are retrieved
            for task in tasks:
                task.cancel()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, Exception) and not isinstance(outcome, asyncio.CancelledError):
                raise outcome  # the network could not do an event: the run broke
        tracker, digests = await self._server_view(client, server)
        run_end = client.now()
        stream = workload.stream_id if isinstance(workload, DownloadClient) else None
        transfer = transfer_result(
            workload, digests.get(stream) if stream is not None else None, run_end
        )
        return Observation(
            backend=self.network.name,
            seed=options.seed,
            run_end=run_end,
            clients=[
                ClientObservation(
                    transfer, workload.delivery.times, workload.delivery.totals, tracker
                )
            ],
            changes=changes,
            problems=problems,
            stats={
                "clock": "real",
                "quic_extensions": list(scenario.quic.enabled),  # empty: stock aioquic
                **self.network.stats(),
            },
            files={
                kind: str(path)
                for kind, path in (("keylog", options.keylog), ("qlog", options.qlog_dir))
                if path is not None
            },
        )

    async def _server_view(
        self, client: LiveClient, server: LiveServer | None
    ) -> tuple[MigrationTracker | None, dict[int, str]]:
        """The server's tracker of this connection and the digests of what it sent."""
        with contextlib.suppress(QuicmigError):
            await client.send_message(b"done")  # the client speaks from its final path
        if server is not None:
            if not server.connections:
                return None, {}
            live = server.connections[0].server_conn
            await client.confirmed_record(timeout=1.0)
            return live.tracker, dict(live.app.sent_digests)
        try:
            await client.confirmed_record(timeout=1.0)
            sent = client.now()
            record = await client.server_record()
        except QuicmigError:
            return None, {}
        # The server's times are on its own clock: put them on ours (the record was made
        # about half-way through the request's round trip).
        offset = record["now"] - (sent + client.now()) / 2
        tracker = MigrationTracker.from_dict(record["tracker"], clock_offset=offset)
        digests = {int(k): v for k, v in record.get("sent_sha256", {}).items()}
        return tracker, digests
