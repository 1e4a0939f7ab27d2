"""Run a scenario in virtual time: real aioquic endpoints on the simulated network.

`SimBackend` is the simulator's side of the run pipeline (quicmig.runner): it builds the
network and the endpoints, applies the plan's events through `SimDriver` at their instants of
virtual time (or once the workload's progress reaches theirs), and returns what was observed.
"""

from __future__ import annotations

import functools
import inspect
import io
import time
from collections.abc import Callable, Sequence

from quicmig.aioquic_ext import connection_class
from quicmig.core.certs import simulation_certificates
from quicmig.core.datagram import Address, Datagram, format_address
from quicmig.core.endpoint import (
    ClientEndpoint,
    Closed,
    FailoverNeeded,
    ServerConnection,
    ServerEndpoint,
    WorkloadDone,
    client_configuration,
    server_configuration,
)
from quicmig.core.measure import transfer_result
from quicmig.core.observation import ClientObservation, Observation, WireCounts
from quicmig.core.pcap import PcapWriter
from quicmig.core.results import Check, NetworkChange, Result, write_atomically
from quicmig.core.seeds import derive_rng, workload_seed
from quicmig.core.tap import TapLogger
from quicmig.errors import InputError
from quicmig.model.events import EventKind, TimelineEvent
from quicmig.model.scenario import SERVER_PORT, Attacker, Scenario, expected_bytes
from quicmig.runner import RunOptions, run
from quicmig.sim.driver import SimDriver
from quicmig.sim.link import Pipe
from quicmig.sim.network import Network
from quicmig.sim.scheduler import Scheduler

LINGER = 0.5  # seconds simulated after the last workload ends, for CONNECTION_CLOSE to land
EPHEMERAL_PORTS = (49152, 65535)


class _SimNode:
    """A host's endpoint as the scheduler sees it: its timer is the endpoint's."""

    endpoint: ClientEndpoint | ServerEndpoint

    def get_timer(self) -> float | None:
        return self.endpoint.get_timer()

    def handle_timer(self, now: float) -> None:
        self.endpoint.handle_timer(now)


class SimClient(_SimNode):
    """A client host's socket glue: which interface and local address the client uses."""

    endpoint: ClientEndpoint

    def __init__(self, sim: Simulation, host: str, iface: str, endpoint: ClientEndpoint) -> None:
        self.sim = sim
        self.host = host
        self.endpoint = endpoint
        self.iface = iface
        self.local: Address = ("", 0)
        self.done_at: float | None = None
        self.bind(iface)

    @property
    def ref(self) -> str:
        return f"{self.host}.{self.iface}"

    def new_port(self) -> int:
        return self.sim.rng.randint(*EPHEMERAL_PORTS)

    def bind(self, iface: str, port: int | None = None) -> None:
        """Open a socket on `iface` (a new ephemeral port unless `port` is given)."""
        self.iface = iface
        state = self.sim.network.interface(self.ref)
        self.local = (state.addresses[0], port if port is not None else self.new_port())
        self.sim.network.bind(self.ref, self.local, self.receive)

    def unbind(self, ref: str, local: Address) -> None:
        self.sim.network.unbind(ref, local)

    def receive(self, datagram: Datagram, now: float) -> None:
        self.endpoint.receive_datagram(datagram.data, datagram.src, now)
        self.sim.mark(self)

    def service(self, now: float) -> None:
        for data, addr in self.endpoint.datagrams_to_send(now):
            self.sim.network.send(self.ref, Datagram(self.local, addr, data), now)
        while (event := self.endpoint.next_event()) is not None:
            match event:
                case WorkloadDone() | Closed() if self.done_at is None:
                    self.done_at = now
                    self.endpoint.close()
                    self.sim.mark(self)
                    self.sim.client_done(now)
                case FailoverNeeded():
                    self.sim.failover(self, now)


class SimServer(_SimNode):
    """The server host's sockets: its first address and, if it has one, its preferred one."""

    endpoint: ServerEndpoint

    def __init__(
        self, sim: Simulation, ref: str, endpoint: ServerEndpoint, preferred: Address | None
    ) -> None:
        self.sim = sim
        self.ref = ref
        self.endpoint = endpoint
        self.local: Address = (sim.network.interface(ref).addresses[0], SERVER_PORT)
        sim.network.bind(ref, self.local, self.receive)
        self.refs: dict[Address | None, str] = {None: ref}  # server address -> interface
        if preferred is not None:
            pref_ref = next(
                r
                for r, iface in sim.network.interfaces.items()
                if iface.host == sim.network.interface(ref).host and preferred[0] in iface.addresses
            )
            self.refs[preferred] = pref_ref
            sim.network.bind(pref_ref, preferred, functools.partial(self.receive, local=preferred))

    def receive(self, datagram: Datagram, now: float, local: Address | None = None) -> None:
        self.endpoint.receive_datagram(datagram.data, datagram.src, now, local)
        self.sim.mark(self)

    def service(self, now: float) -> None:
        for data, addr, local in self.endpoint.datagrams_to_send_from(now):
            src = self.local if local is None else local
            self.sim.network.send(self.refs[local], Datagram(src, addr, data), now)
        while self.endpoint.next_event() is not None:
            pass


class WireCount:
    """UDP payload bytes the server's interfaces sent to and received from each address."""

    def __init__(self, servers: set[Address]) -> None:
        self.servers = servers
        self.received: dict[Address, int] = {}  # bytes
        self.sent: dict[Address, int] = {}  # bytes

    def __call__(self, datagram: Datagram, now: float) -> None:
        if datagram.src in self.servers:
            self.sent[datagram.dst] = self.sent.get(datagram.dst, 0) + len(datagram.data)
        elif datagram.dst in self.servers:
            self.received[datagram.src] = self.received.get(datagram.src, 0) + len(datagram.data)


class SimAttacker:
    """Sees the client's datagrams leave `watch` and races copies of them to the server.

    It cannot decrypt or forge a packet: it copies whole datagrams (1-RTT, short header)
    and changes only the UDP source address (see model.scenario.Attacker).
    """

    def __init__(self, sim: Simulation, attacker: Attacker, server: set[Address]) -> None:
        self.sim = sim
        self.attacker = attacker
        self.server = server
        self.copies: list[float] = []  # times a copy was injected
        self._next_at = attacker.at
        self._watched = sim.network.interface(attacker.watch)
        sim.network.tap_interface(attacker.watch, self.saw)

    def saw(self, datagram: Datagram, now: float) -> None:
        attacker = self.attacker
        if len(self.copies) >= attacker.count or now < self._next_at:
            return
        outgoing = datagram.src[0] in self._watched.addresses and datagram.dst in self.server
        if not outgoing or datagram.data[0] & 0x80:  # long header: not a 1-RTT packet
            return
        self.copies.append(now)
        self._next_at = now + attacker.every
        copy = Datagram(attacker.source, datagram.dst, datagram.data)
        forged: list[Datagram] = [copy]
        if attacker.kind == "spoof":
            # The client's own address on a packet the attacker tampered with (its last byte,
            # inside the AEAD tag): aioquic must drop it (RFC 9001 section 5.3).
            tampered = datagram.data[:-1] + bytes([datagram.data[-1] ^ 0xFF])
            forged.append(Datagram(datagram.src, datagram.dst, tampered))
        for item in forged:
            self.sim.scheduler.call_at(
                now + attacker.delay,
                functools.partial(self._inject, item),
            )

    def _inject(self, datagram: Datagram) -> None:
        self.sim.network.inject(datagram, self.sim.scheduler.now)


class Simulation:
    """One run of a scenario: the network, the endpoints and the scheduler that drives them."""

    def __init__(self, scenario: Scenario, options: RunOptions, driver: SimDriver) -> None:
        self.scenario = scenario
        self.options = options
        self.seed = options.seed
        self.driver = driver
        driver.sim = self
        self.rng = derive_rng(self.seed, "sockets")
        self.scheduler = Scheduler()
        self.network = Network(scenario.topology, self.seed, self.scheduler.arm)
        self.changes: list[NetworkChange] = []
        self._dirty: dict[int, SimClient | SimServer] = {}
        self._end = scenario.duration  # seconds: shortened once every client is done
        self._by_progress: list[TimelineEvent] = []  # due once the first client's bytes say
        keep = options.qlog_dir is not None
        self.server_logger = TapLogger(keep=keep)
        self.client_logger = TapLogger(keep=keep) if keep else None
        self.keylog = io.StringIO() if options.keylog else None
        certs = simulation_certificates()
        topo = scenario.topology
        server_host = topo.host(topo.server)
        server_ref = f"{server_host.name}.{server_host.interfaces[0].name}"
        server_endpoint = ServerEndpoint(
            server_configuration(certs, self.server_logger),
            connection_class=connection_class(scenario.quic, scenario.server),
        )
        preferred = scenario.server.preferred_address
        self.server = SimServer(self, server_ref, server_endpoint, preferred)
        server_addresses = {self.server.local} | ({preferred} if preferred else set())
        self.wire = WireCount(server_addresses)
        for ref in set(self.server.refs.values()):
            self.network.tap_interface(ref, self.wire)
        self.attackers = [SimAttacker(self, a, server_addresses) for a in scenario.attackers]
        self.clients: list[SimClient] = []
        for index, host in enumerate(topo.clients):
            iface = scenario.client.interface or host.interfaces[0].name
            endpoint = ClientEndpoint(
                client_configuration(certs.ca_pem, self.client_logger, self.keylog),
                self.server.local,
                scenario.workload,
                seed=workload_seed(self.seed, index),
                keepalive=scenario.client.keepalive,
                failover_after=scenario.client.failover_after,
                connection_class=connection_class(scenario.quic),
            )
            self.clients.append(SimClient(self, host.name, iface, endpoint))
        self.pcap: PcapWriter | None = None
        self._pcap_buffer: io.BytesIO | None = None
        if options.pcap is not None:
            self._pcap_buffer = io.BytesIO()
            self.pcap = PcapWriter(self._pcap_buffer)
            for ref in sorted(set(self.server.refs.values())):
                self.network.tap_interface(ref, self.pcap.write)

    # --- engine -------------------------------------------------------------------------

    def client_done(self, now: float) -> None:
        """Once every client is done, run on only long enough for CONNECTION_CLOSE to land."""
        if all(c.done_at is not None for c in self.clients):
            self._end = min(self._end, now + LINGER)

    def mark(self, node: SimClient | SimServer) -> None:
        """`node` received something: let it send at this instant."""
        self._dirty[id(node)] = node

    def service(self, node: SimClient | SimServer, handled: bool = False) -> None:
        node.service(self.scheduler.now)
        self.scheduler.arm(node, handled)
        if self._by_progress and node is self.clients[0]:
            self._progress_due(node)

    def _progress_due(self, client: SimClient) -> None:
        """Schedule, at this instant, the events whose share of the bytes has arrived."""
        total = expected_bytes(self.scenario.workload) or 0
        delivered = client.endpoint.workload.delivery.total
        while self._by_progress and delivered >= (self._by_progress[0].progress or 0) * total:
            event = self._by_progress.pop(0)
            self.scheduler.call_at(self.scheduler.now, functools.partial(self._apply, event))

    async def run(self, plan: Sequence[TimelineEvent]) -> Observation:
        started = time.perf_counter()
        sched = self.scheduler
        for client in self.clients:
            sched.call_at(0.0, functools.partial(self._connect, client))
        for event in plan:
            if event.progress is None:
                sched.call_at(event.at, functools.partial(self._apply, event))
            else:
                self._by_progress.append(event)
        duration = self.scenario.duration
        progress = self.options.progress
        next_progress = 0.0
        while True:
            item = sched.step(self._end)
            if item is None:
                break
            now = sched.now
            if isinstance(item, Pipe):
                self.network.pipe_output(item, now)
                sched.arm(item)
            elif isinstance(item, SimClient | SimServer):
                item.handle_timer(now)
                self.service(item, handled=True)
            else:
                assert callable(item)
                outcome = item()
                if inspect.isawaitable(outcome):  # a timeline event: the driver's apply()
                    await outcome
            while self._dirty:
                _, node = self._dirty.popitem()
                self.service(node)
            if progress is not None and now >= next_progress:
                progress(now, duration)
                next_progress = now + duration / 100
        run_end = min(sched.now, self._end)
        return self._observation(run_end, time.perf_counter() - started)

    def _connect(self, client: SimClient) -> None:
        client.endpoint.connect(self.scheduler.now)
        self.service(client)

    async def _apply(self, event: TimelineEvent) -> None:
        self.changes.append(await self.driver.apply(event, self.scheduler.now))

    def client_on(self, host: str) -> SimClient:
        for client in self.clients:
            if client.host == host:
                return client
        raise InputError(f"host {host!r} runs no client")

    def failover(self, client: SimClient, now: float) -> None:
        """The client heard nothing for too long: move to another interface that is up."""
        host = self.scenario.topology.host(client.host)
        for iface in host.interfaces:
            ref = f"{client.host}.{iface.name}"
            if iface.name != client.iface and self.network.interface(ref).up:
                refused = self.driver.refusal(client, now)
                if refused is not None:
                    self.changes.append(refused)
                    return
                self.changes.append(
                    NetworkChange(
                        now,
                        EventKind.FAILOVER,
                        f"{client.host}: {client.iface} -> {iface.name}",
                        True,
                        self.driver.public_ip(ref),
                    )
                )
                client.unbind(client.ref, client.local)
                client.bind(iface.name)
                client.endpoint.migrate(now, new_cid=True)
                self.service(client)
                return

    # --- what was observed --------------------------------------------------------------

    def _server_conn_for(self, client: SimClient) -> ServerConnection | None:
        odcid = client.endpoint.conn.original_destination_connection_id
        for server_conn in self.server.endpoint.connections:
            if server_conn.conn.original_destination_connection_id == odcid:
                return server_conn
        return None

    def _observation(self, run_end: float, wall: float) -> Observation:
        clients = []
        for client in self.clients:
            workload = client.endpoint.workload
            server_conn = self._server_conn_for(client)
            digest = None
            if server_conn is not None:
                digest = next(iter(server_conn.app.sent_digests.values()), None)
            clients.append(
                ClientObservation(
                    transfer=transfer_result(workload, digest, run_end),
                    delivery_times=workload.delivery.times,
                    delivery_totals=workload.delivery.totals,
                    connection=server_conn.tracker if server_conn is not None else None,
                )
            )
        datagrams = sum(p.stats.delivered for p in self.network.pipes)
        stats: dict[str, object] = {
            "clock": "virtual",
            "quic_extensions": list(self.scenario.quic.enabled),  # empty: stock aioquic
            "datagrams_delivered": datagrams,
            "links": {
                p.name: {
                    "sent": p.stats.sent,
                    "delivered": p.stats.delivered,
                    "lost": p.stats.lost,
                    "queue_drops": p.stats.queue_drops,
                }
                for p in self.network.pipes
            },
            "nat_inbound_drops": {n: box.inbound_drops for n, box in self.network.nats.items()},
            "unroutable": self.network.stats.unroutable,
            "interface_drops": self.network.stats.interface_drops,
        }
        if self.attackers:
            stats["attacks"] = [
                {
                    "kind": sim_attacker.attacker.kind,
                    "source": format_address(sim_attacker.attacker.source),
                    "copies": sim_attacker.copies,
                    "bytes_from": self.wire.received.get(sim_attacker.attacker.source, 0),
                    "bytes_to": self.wire.sent.get(sim_attacker.attacker.source, 0),
                }
                for sim_attacker in self.attackers
            ]
        return Observation(
            backend="sim",
            seed=self.seed,
            run_end=run_end,
            clients=clients,
            changes=list(self.changes),
            wire=WireCounts(dict(self.wire.received), dict(self.wire.sent)),
            stats=stats,
            wall={
                "seconds": wall,
                "datagrams_per_second": datagrams / wall if wall > 0 else 0.0,
                "speedup": run_end / wall if wall > 0 else 0.0,
            },
            files=self._write_files(),
        )

    def _write_files(self) -> dict[str, str]:
        files: dict[str, str] = {}
        opts = self.options
        if opts.pcap is not None and self._pcap_buffer is not None:
            opts.pcap.write_bytes(self._pcap_buffer.getvalue())
            files["pcap"] = str(opts.pcap)
        if opts.keylog is not None and self.keylog is not None:
            write_atomically(opts.keylog, self.keylog.getvalue())
            files["keylog"] = str(opts.keylog)
        if opts.qlog_dir is not None:
            prefix = f"{self.scenario.name}-seed{self.seed}"
            paths = self.server_logger.write_qlogs(opts.qlog_dir, f"{prefix}-server")
            if self.client_logger is not None:
                paths += self.client_logger.write_qlogs(opts.qlog_dir, f"{prefix}-client")
            files["qlog"] = ",".join(str(p) for p in paths)
        return files


class SimBackend:
    """The simulator in the run pipeline: virtual time, every event supported.

    `on_built(simulation)` is called once the network and endpoints exist, before anything
    runs: a way to watch more of it (the demo's packet recorder) without changing it."""

    def __init__(self, on_built: Callable[[Simulation], None] | None = None) -> None:
        self.driver = SimDriver()
        self.on_built = on_built

    def unsupported_settings(self, scenario: Scenario) -> Sequence[Check]:
        return ()

    async def run(
        self, scenario: Scenario, plan: Sequence[TimelineEvent], options: RunOptions
    ) -> Observation:
        simulation = Simulation(scenario, options, self.driver)
        if self.on_built is not None:
            self.on_built(simulation)
        return await simulation.run(plan)


def run_scenario(scenario: Scenario, options: RunOptions | None = None) -> Result:
    """Run `scenario` in the simulator and return its result (files written if asked)."""
    return run(scenario, SimBackend(), options)
