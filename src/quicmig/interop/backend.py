"""Foreign QUIC stacks in the one run pipeline: `StackBackend(server, client, network)`.

A backend of quicmig.runner like the simulator and the live one, for two stack programs
(quicmig.interop.stacks) instead of quicmig's own endpoints:

1. `prepare(scenario)`: the network chooses the server's addresses (the preferred address
   the server will really offer is put into the scenario the judge reads);
2. `run()`: the server starts (its UDP port bound), then the network (the proxy, or the
   lab's namespaces, where both programs run), then the client; the run's clock starts with
   the client's first datagram, and the plan's network events are applied through the
   network's own driver at their times (or once their share of the body has reached the
   client); the client's own moves (an active migration) are its stack's arguments, given
   at its start;
3. the client exits (or stalls, or outlives the scenario: then it is stopped); everything
   is stopped, the captures closed;
4. the observation comes from the captures: the server's side decrypted and replayed into
   the MigrationTracker (quicmig.interop.evidence), the client's side for the deliveries and
   the addresses it sent from; the transfer is the received file's SHA-256 against the
   served file's. An endpoint that crashed, exited at once or failed is a failed check with
   its exit status and last log line.

The judge (quicmig.core.judge) makes the Result from it, the same way for every backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quicmig.core.app import content
from quicmig.core.judge import unsupported
from quicmig.core.observation import ClientObservation, Observation
from quicmig.core.results import Check, NetworkChange, Transfer
from quicmig.errors import InputError, QuicmigError
from quicmig.interop.evidence import ClientSide, ServerView, client_side, server_view
from quicmig.interop.network import StackNetwork
from quicmig.interop.pcapfile import Record, read_records, split_gso, touching, udp_header
from quicmig.interop.process import Endpoint, EndpointError, EndpointExit
from quicmig.interop.stacks import (
    ClientSpec,
    ServerSpec,
    Stack,
    command_line,
    render,
)
from quicmig.interop.transfer import (
    SERVER_NAME,
    check_pair,
    environment,
    file_name,
    folders,
    merge_keys,
    program_of,
    received_body,
    spki_hash,
    write_files,
)
from quicmig.live.backend import apply_on_time
from quicmig.live.certs import CertPaths
from quicmig.live.server import BYTES_SEED
from quicmig.model.events import (
    AddressChange,
    CidRotate,
    EventKind,
    Switch,
    TimelineEvent,
    kind_of,
)
from quicmig.model.scenario import Download, Scenario
from quicmig.runner import RunOptions

CLIENT_MOVES = (AddressChange, Switch)  # events a client stack makes by itself
STARTUP = 15.0  # seconds for a server to bind its port
# Seconds for the client's first datagram: Chromium takes about 3, but a start on a loaded
# machine has gone silent for over 15 (its own client waits up to chromium_client.STARTUP).
FIRST_DATAGRAM = 60.0
GRACE = 10.0  # seconds past the scenario's duration before the client is stopped
STALL = 12.0  # seconds with nothing reaching the client: stopped, it is not recovering
POLL = 0.02  # seconds between looks at the network's counters
WATCH = 0.25  # seconds between looks for a stall


@dataclass(frozen=True, slots=True)
class CellSetup:
    """What a run needs besides the stacks and the network."""

    folder: Path  # the run's evidence goes here
    certs: CertPaths
    versions: dict[str, str] = field(default_factory=dict)  # role -> the program's version
    stall: float = STALL  # seconds


def is_client_move(event: TimelineEvent) -> bool:
    return isinstance(event, CLIENT_MOVES)


class StackDriver:
    """The runner's driver: network events go to the network's driver; a client's own move
    is its stack's (`active_migration` arguments) or unsupported."""

    def __init__(self, backend: StackBackend) -> None:
        self.backend = backend
        self.name = backend.network.name

    def unsupported(self, event: TimelineEvent) -> str | None:
        server, client = self.backend.server_stack, self.backend.client_stack
        if is_client_move(event):
            spec = client.client
            if spec is None or spec.active_migration is None:
                return (
                    f"the {client.name} client cannot migrate by itself (its stack file "
                    "gives no client.active_migration arguments)"
                )
            scenario = self.backend.scenario
            asked = scenario is not None and scenario.server.disable_active_migration
            always = server.server is not None and server.server.sends_disable_active_migration
            if always and not asked:
                return (
                    f"the {server.name} server sends disable_active_migration on every "
                    "connection, so a client must not migrate by itself (the "
                    "disable-migration test asks what it does)"
                )
            return None
        if isinstance(event, CidRotate):
            return "a foreign client changes connection IDs only by itself"
        return self.backend.network.driver.unsupported(event)

    async def apply(self, event: TimelineEvent, now: float) -> NetworkChange:
        if is_client_move(event):  # given to the client at its start, never applied here
            raise QuicmigError(f"{kind_of(event).value} is the client's own move")
        return await self.backend.network.driver.apply(event, now)


class StackBackend:
    """Two stack programs over `network`; see the module."""

    def __init__(
        self,
        server: Stack,
        client: Stack,
        network: StackNetwork,
        setup: CellSetup,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.server_stack = server
        self.client_stack = client
        self.network = network
        self.setup = setup
        self.progress = progress or (lambda status: None)
        self.scenario: Scenario | None = None
        self._driver = StackDriver(self)

    @property
    def driver(self) -> StackDriver:
        return self._driver

    def prepare(self, scenario: Scenario) -> Scenario:
        """The scenario as this backend runs it: call before quicmig.runner.execute()."""
        server_spec, _ = check_pair(self.server_stack, self.client_stack)
        self.scenario = self.network.plan(scenario, server_spec.tcp)
        return self.scenario

    def unsupported_settings(self, scenario: Scenario) -> Sequence[Check]:
        checks = []
        server = self.server_stack
        spec = server.server
        wants = scenario.server
        if spec is not None and wants.preferred_address is not None and not spec.preferred_address:
            why = f" ({spec.notes})" if spec.notes else ""
            checks.append(
                unsupported(
                    "server.preferred_address",
                    f"the {server.name} server cannot offer a preferred address{why}",
                )
            )
        sends = spec is not None and (
            spec.disable_active_migration is not None or spec.sends_disable_active_migration
        )
        if wants.disable_active_migration and not sends:
            checks.append(
                unsupported(
                    "server.disable_active_migration",
                    f"the {server.name} server cannot send disable_active_migration",
                )
            )
        if not isinstance(scenario.workload, Download):
            checks.append(
                unsupported("workload", "a foreign stack runs downloads only (a file it serves)")
            )
        blocked = self.network.cannot(scenario)
        if blocked is not None:
            checks.append(unsupported("network", f"{self.network.name}: {blocked}"))
        for setting, present in (
            ("client.failover_after_s", scenario.client.failover_after is not None),
            ("client.keepalive_s", scenario.client.keepalive is not None),
            ("attackers", bool(scenario.attackers)),
            ("quic", bool(scenario.quic.enabled)),
        ):
            if present:
                checks.append(unsupported(setting, "a foreign stack does what its program does"))
        return checks

    async def run(
        self, scenario: Scenario, plan: Sequence[TimelineEvent], options: RunOptions
    ) -> Observation:
        if not isinstance(scenario.workload, Download):
            raise InputError(f"scenario {scenario.name}: a foreign stack runs downloads only")
        return await _Run(self, scenario, plan, options, scenario.workload.size).run()


class _Run:
    """One run of a StackBackend (its state, from start to observation)."""

    def __init__(
        self,
        backend: StackBackend,
        scenario: Scenario,
        plan: Sequence[TimelineEvent],
        options: RunOptions,
        size: int,
    ) -> None:
        self.backend = backend
        self.network = backend.network
        self.scenario = scenario
        self.moves = [e for e in plan if is_client_move(e)]
        self.events = [e for e in plan if not is_client_move(e)]
        self.options = options
        self.size = size
        self.folder = backend.setup.folder
        self.server_spec, self.client_spec = check_pair(backend.server_stack, backend.client_stack)
        self.problems: list[Check] = []
        self.changes: list[NetworkChange] = []
        self.zero: float | None = None  # the network's clock at the client's first datagram
        self.epoch_zero = 0.0
        self.run_end = 0.0
        self.exits: dict[str, EndpointExit] = {}
        self.move_arguments = ""  # what the client was given to migrate by itself
        # When the run stopped the client (run's clock): what it sent as it was stopped (a
        # CONNECTION_CLOSE from wherever the NAT maps it now) is no part of the run.
        self.stopped_at: float | None = None
        self.network_stats: dict[str, Any] = {}  # the driver's, taken before it closes

    def clock(self) -> float:
        assert self.zero is not None
        return self.network.now() - self.zero

    async def run(self) -> Observation:
        dirs = folders(self.folder)
        name = file_name(self.size)
        served = dirs["docroot"] / name
        served.write_bytes(content(self.size, BYTES_SEED))
        seed = self.client_spec.content_seed
        body = served.read_bytes() if seed is None else content(self.size, seed)
        expected = hashlib.sha256(body).hexdigest()
        keys = (self.folder / "server.keys", self.folder / "client.keys")
        try:
            await self._endpoints(dirs, name, keys)
        finally:
            served.unlink(missing_ok=True)  # its SHA-256 is kept; 10 MB per cell is not
        keylog = merge_keys(self.folder / "keys.log", list(keys))
        view, side = await asyncio.to_thread(self._read_captures, keylog)
        return self._observation(dirs, expected, view, side, keylog)

    # --- running -----------------------------------------------------------------------------

    async def _endpoints(self, dirs: dict[str, Path], name: str, keys: tuple[Path, Path]) -> None:
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(self.network.aclose)
            stack.callback(self._network_stats)  # runs first: the lab's go with it
            self.backend.progress("building the network")
            await self.network.place(self.scenario)
            server = self._server(dirs, name, keys[0])
            stack.push_async_callback(self._stop_server, server)
            try:
                await server.start()
                await server.wait_ready(self.network.server[0], self.network.server[1], STARTUP)
            except EndpointError as exc:
                self.problems.append(Check.of("server-start", False, str(exc)))
                return
            preferred = self.scenario.server.preferred_address
            if preferred is not None:
                pcap = self.folder / "preferred.pcap"
                await stack.enter_async_context(self.network.preferred_capture(preferred, pcap))
            target = await self.network.start()
            client = self._client(dirs, name, keys[1], target)
            await stack.enter_async_context(client)
            self.backend.progress("handshake")
            if not await self._first_datagram(client):
                exited = client.exited()
                end = await client.stop()
                self.exits["client"] = end
                why = (
                    "it exited before sending a datagram"
                    if exited
                    else f"no datagram from it within {FIRST_DATAGRAM:g} s"
                )
                self.problems.append(Check.of("client-exit", False, f"{why}: {end.describe()}"))
                return
            tasks = [
                asyncio.ensure_future(
                    apply_on_time(
                        (e for e in self.events if e.progress is None),
                        self.backend.driver,
                        self.clock,
                        self._applied,
                        lock := asyncio.Lock(),
                    )
                ),
                asyncio.ensure_future(self._by_progress(lock)),
            ]
            try:
                await self._client_done(client)
            finally:
                for task in tasks:
                    task.cancel()
                outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            self.run_end = self.clock()
            for outcome in outcomes:
                if isinstance(outcome, Exception) and not isinstance(
                    outcome, asyncio.CancelledError
                ):
                    self.problems.append(
                        Check.of("network", False, f"the network could not do an event: {outcome}")
                    )

    def _network_stats(self) -> None:
        try:
            self.network_stats = self.network.driver.stats()
        except QuicmigError as exc:  # the lab's element already gone: say so, do not fail
            self.network_stats = {"error": str(exc)}

    def _values(self, role: str, workdir: Path, keylog: Path, qlog: Path) -> dict[str, str]:
        stack = self.backend.server_stack if role == "server" else self.backend.client_stack
        certs = self.backend.setup.certs
        return {
            "python": sys.executable,
            "program": program_of(stack, role),
            "workdir": str(workdir),
            "keylog": str(keylog),
            "qlog_dir": str(qlog),
            "server_name": SERVER_NAME,
            "cert": str(certs.cert),
            "key": str(certs.key),
            "ca": str(certs.ca),
            "size": str(self.size),
            "file": file_name(self.size),
            "timeout": str(max(1, round(self.scenario.duration))),
            **dict(stack.values),
        }

    def _server(self, dirs: dict[str, Path], name: str, keylog: Path) -> Endpoint:
        spec: ServerSpec = self.server_spec
        host, port = self.network.server
        values = {
            **self._values("server", dirs["server"], keylog, dirs["server_qlog"]),
            "host": host,
            "port": str(port),
            "docroot": str(dirs["docroot"]),
        }
        options: tuple[str, ...] = ()
        preferred = self.scenario.server.preferred_address
        if preferred is not None and spec.preferred_address is not None:
            values["preferred_host"], values["preferred_port"] = preferred[0], str(preferred[1])
            options += spec.preferred_address
        if self.scenario.server.disable_active_migration and spec.disable_active_migration:
            options += spec.disable_active_migration
        write_files(spec.launch.files, values, dirs["server"])
        return Endpoint(
            f"{self.backend.server_stack.name} server",
            self.network.wrap(command_line(spec.launch, values, options), "server"),
            env=environment(spec.launch.env, values),
            cwd=dirs["server"],
            log=self.folder / "server.log",
        )

    def _client(
        self, dirs: dict[str, Path], name: str, keylog: Path, target: tuple[str, int]
    ) -> Endpoint:
        spec: ClientSpec = self.client_spec
        url_path = render(
            self.server_spec.path,
            {"server_name": SERVER_NAME, "size": str(self.size), "file": name},
        )
        move_at = self.moves[0].at if self.moves else 0.0
        values = {
            **self._values("client", dirs["client"], keylog, dirs["client_qlog"]),
            "host": target[0],
            "port": str(target[1]),
            "url": f"https://{SERVER_NAME}:{target[1]}{url_path}",
            "spki": spki_hash(self.backend.setup.certs.cert),
            "download_dir": str(dirs["download"]),
            "migrate_at_ms": str(round(move_at * 1000)),
            "local_addresses": ",".join(self.network.local_addresses()),
            "local_host": self.network.local_addresses()[0],
        }
        options = (spec.active_migration or ()) if self.moves else ()
        self.move_arguments = " ".join(render(option, values) for option in options)
        return Endpoint(
            f"{self.backend.client_stack.name} client",
            self.network.wrap(command_line(spec.launch, values, options), "client"),
            env=environment(spec.launch.env, values),
            cwd=dirs["client"],
            log=self.folder / "client.log",
        )

    async def _first_datagram(self, client: Endpoint) -> bool:
        """Wait for the client's first datagram; then the run's clock starts (False: the
        client exited first, or sent nothing in time)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FIRST_DATAGRAM
        while loop.time() < deadline and not client.exited():
            from_client, _, _ = await self.network.counters()
            if from_client:
                self.zero = self.network.now()
                self.epoch_zero = self.network.epoch() + self.zero
                return True
            await asyncio.sleep(POLL)
        return False

    def _applied(self, change: NetworkChange) -> None:
        self.changes.append(change)
        self.backend.progress(f"{change.kind.value} at {change.at:.1f} s")

    async def _by_progress(self, lock: asyncio.Lock) -> None:
        for event in (e for e in self.events if e.progress is not None):
            while (await self.network.counters())[2] < (event.progress or 0) * self.size:
                await asyncio.sleep(POLL)
            async with lock:
                self._applied(await self.backend.driver.apply(event, self.clock()))

    async def _client_done(self, client: Endpoint) -> None:
        """Wait for the client to exit by itself; stop it when it outlives the scenario,
        when nothing has reached it for `stall` seconds, or when the network fails."""
        limit = max(0.0, self.scenario.duration + GRACE - self.clock())
        deadline = self.clock() + limit
        waiting = asyncio.ensure_future(client.wait(limit))
        watchers: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._stalled())]
        failed = self.network.failed()
        if failed is not None:
            watchers.append(failed)
        try:
            done, _ = await asyncio.wait({waiting, *watchers}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for watcher in watchers:
                watcher.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
        if waiting in done:
            end = waiting.result()
            if end.timed_out:
                self.stopped_at = deadline
            self.exits["client"] = end
            self.problems.append(self._client_check(end))
            return
        self.stopped_at = self.clock()
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        why = next(
            (
                str(w.exception() or w.result())
                for w in done
                if not w.cancelled() and (w.exception() is not None or w.result())
            ),
            "stopped",
        )
        end = await client.stop()
        self.exits["client"] = end
        self.problems.append(Check.of("client-exit", False, f"{why}; {end.describe()}"))

    def _client_check(self, end: EndpointExit) -> Check:
        own = self.client_spec.verdict_exit_status
        if end.ok:
            return Check.of("client-exit", True, f"{end.name}: {end.status()}")
        if own is not None and end.returncode == own and not end.timed_out:
            return Check.of(
                "client-exit",
                True,
                f"{end.name}: {end.status()}: its own checks failed (judged here from the "
                "capture and the body instead); last log line: "
                + (end.tail[-1] if end.tail else "-"),
            )
        return Check.of("client-exit", False, end.describe())

    async def _stalled(self) -> str:
        """Returns (a reason) once nothing has reached the client for `stall` seconds;
        never when the client may be reached by a path the network does not see."""
        if self.scenario.server.preferred_address is not None and self.network.name == "proxy":
            await asyncio.Event().wait()  # the preferred address bypasses the proxy
        stall = self.backend.setup.stall
        _, last, _ = await self.network.counters()
        since = self.clock()
        while True:
            await asyncio.sleep(WATCH)
            _, count, _ = await self.network.counters()
            if count != last:
                last, since = count, self.clock()
            elif self.clock() - since > stall:
                return (
                    f"nothing reached the client for {stall:g} s (since t={since:.1f} s): "
                    "stopped, the download was not recovering"
                )

    async def _stop_server(self, server: Endpoint) -> None:
        crashed = server.exited() and "server" not in self.exits
        end = await server.stop()
        self.exits["server"] = end
        if crashed and not any(p.name == "server-start" for p in self.problems):
            self.problems.append(
                Check.of("server-exit", False, f"it exited during the run: {end.describe()}")
            )

    # --- observing ---------------------------------------------------------------------------

    def _read_captures(self, keylog: Path) -> tuple[ServerView | None, ClientSide | None]:
        if self.zero is None:
            return None, None
        preferred = self.scenario.server.preferred_address
        records = self.network.server_records()
        bypass: list[Record] = []
        captures = self.network.captures()
        if preferred is not None and "preferred_pcap" in captures:
            # On lo a sender's UDP GSO batch is one captured packet: cut into its datagrams.
            path = Path(captures["preferred_pcap"])
            extra = list(split_gso(touching(read_records(path), {preferred})))
            records += extra
            if self.network.name == "proxy":  # reached the client without crossing the proxy
                bypass = [r for r in extra if _source(r) == preferred]
        if self.stopped_at is not None:
            until = self.epoch_zero + self.stopped_at
            records = [r for r in records if r.at <= until]
            bypass = [r for r in bypass if r.at <= until]
        view = server_view(
            records,
            self.folder / "server-side.pcap",
            keylog,
            self.network.server,
            preferred,
            self.network.attribute,
            self.epoch_zero,
        )
        client_records, is_client = self.network.client_records()
        if self.stopped_at is not None:
            client_records = [r for r in client_records if r.at <= until]
        side = client_side(client_records, is_client, self.epoch_zero, bypass)
        return view, side

    def _client_moves(self, side: ClientSide | None) -> list[NetworkChange]:
        """The client's own moves, as its side of the capture shows them."""
        out = []
        sources = side.sources if side is not None else []
        moved = sources[1:]
        for event in self.moves:
            how = self.move_arguments
            name = self.backend.client_stack.name
            if moved:
                at, new = moved.pop(0)
                old = sources[0][1]
                out.append(
                    NetworkChange(
                        at,
                        kind_of(event),
                        f"the {name} client moved by itself from {old[0]}:{old[1]} to "
                        f"{new[0]}:{new[1]} (asked for {event.at:g} s: {how})",
                        True,
                    )
                )
            else:
                out.append(
                    NetworkChange(
                        event.at,
                        EventKind.MIGRATION_REFUSED,
                        f"the {name} client sent from no other address (asked to move at "
                        f"{event.at:g} s: {how})",
                        False,
                    )
                )
        return out

    def _observation(
        self,
        dirs: dict[str, Path],
        expected: str,
        view: ServerView | None,
        side: ClientSide | None,
        keylog: Path,
    ) -> Observation:
        end = self.exits.get("client")
        received, count = (
            received_body(self.client_spec, dirs["download"], end) if end else (None, None)
        )
        for body in dirs["download"].iterdir():
            body.unlink()  # its SHA-256 is in the Result
        intact = received == expected and count in (None, self.size)
        times = side.delivery_times if side is not None else []
        transfer = Transfer(
            workload="download",
            bytes=count if count is not None else (self.size if intact else 0),
            expected_bytes=self.size,
            intact=intact,
            started_at=0.0 if self.zero is not None else None,
            completed_at=(times[-1] if times else self.run_end) if intact else None,
            sha256=received,
            detail={"expected_sha256": expected, "received_sha256": received},
        )
        changes = sorted([*self.changes, *self._client_moves(side)], key=lambda c: c.at)
        client = ClientObservation(
            transfer,
            times,
            side.delivery_totals if side is not None else [],
            view.tracker if view is not None else None,
        )
        files = {
            "keylog": str(keylog),
            "server_log": str(self.folder / "server.log"),
            "client_log": str(self.folder / "client.log"),
            **self.network.captures(),
        }
        if view is not None:
            files["server_side_pcap"] = str(self.folder / "server-side.pcap")
        for role in ("server", "client"):
            qlogs = dirs[f"{role}_qlog"]
            if any(qlogs.iterdir()):
                files[f"{role}_qlog"] = str(qlogs)
        return Observation(
            backend=self.network.name,
            seed=self.options.seed,
            run_end=self.run_end,
            clients=[client],
            changes=changes,
            unsupported=view.checks if view is not None else [],
            problems=self.problems,
            stats={
                "clock": "real, from the client's first datagram",
                "network": self.network.host_note,
                "stacks": {
                    "server": self.backend.server_stack.name,
                    "client": self.backend.client_stack.name,
                },
                "versions": dict(self.backend.setup.versions),
                "endpoints": {role: _exit_record(e) for role, e in self.exits.items()},
                "capture": _capture_record(view),
                **self.network_stats,
            },
            files=files,
        )


def _source(record: Record) -> tuple[str, int] | None:
    header = udp_header(record.ip)
    return header.src if header is not None else None


def _exit_record(end: EndpointExit) -> dict[str, Any]:
    return {
        "status": end.status(),
        "returncode": end.returncode,
        "seconds": round(end.seconds, 3),
        "log": str(end.log),
        "tail": list(end.tail),
    }


def _capture_record(view: ServerView | None) -> dict[str, Any]:
    if view is None:
        return {"read": False}
    return {
        "read": True,
        "tshark": view.tshark,
        "datagrams": view.datagrams,
        "decrypted_1rtt": view.decrypted,
        "connections": view.connections,
        "warnings": view.warnings,
    }
