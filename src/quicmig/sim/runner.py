"""Run a scenario in virtual time: real aioquic endpoints on the simulated network."""

from __future__ import annotations

import functools
import io
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from quicmig.aioquic_ext import connection_class
from quicmig.core import checks as check_mod
from quicmig.core.certs import simulation_certificates
from quicmig.core.datagram import Address, Datagram, format_address
from quicmig.core.endpoint import (
    SERVER_PORT,
    ClientEndpoint,
    Closed,
    FailoverNeeded,
    ServerConnection,
    ServerEndpoint,
    WorkloadDone,
    client_configuration,
    server_configuration,
)
from quicmig.core.measure import migration_results, series_of, transfer_result
from quicmig.core.pcap import PcapWriter
from quicmig.core.results import (
    Check,
    NetworkChange,
    Result,
    Series,
    Transfer,
    write_atomically,
)
from quicmig.core.tap import TapLogger
from quicmig.errors import InputError
from quicmig.model.scenario import (
    AddressChange,
    Attacker,
    CidRotate,
    InterfaceDown,
    InterfaceUp,
    LinkChange,
    NatRebind,
    Scenario,
    Switch,
    SwitchMode,
    TimelineEvent,
)
from quicmig.model.settings import apply_link_settings
from quicmig.sim.link import Pipe
from quicmig.sim.network import Network, derive_rng
from quicmig.sim.scheduler import Scheduler

LINGER = 0.5  # seconds simulated after the last workload ends, for CONNECTION_CLOSE to land
EPHEMERAL_PORTS = (49152, 65535)


@dataclass(frozen=True, slots=True)
class RunOptions:
    seed: int = 1
    qlog_dir: Path | None = None
    pcap: Path | None = None
    keylog: Path | None = None
    progress: Callable[[float, float], None] | None = None  # (virtual now, duration)


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
        self.datagrams_received: dict[Address, int] = {}

    def __call__(self, datagram: Datagram, now: float) -> None:
        if datagram.src in self.servers:
            self.sent[datagram.dst] = self.sent.get(datagram.dst, 0) + len(datagram.data)
        elif datagram.dst in self.servers:
            src = datagram.src
            self.received[src] = self.received.get(src, 0) + len(datagram.data)
            self.datagrams_received[src] = self.datagrams_received.get(src, 0) + 1


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
    def __init__(self, scenario: Scenario, options: RunOptions) -> None:
        self.scenario = scenario.validated()
        self.options = options
        self.seed = options.seed
        self.rng = derive_rng(self.seed, "sockets")
        self.scheduler = Scheduler()
        self.network = Network(scenario.topology, self.seed, self.scheduler.arm)
        self.changes: list[NetworkChange] = []
        self._dirty: dict[int, SimClient | SimServer] = {}
        self._end = scenario.duration  # seconds: shortened once every client is done
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
                client_configuration(certs, self.client_logger, self.keylog),
                self.server.local,
                scenario.workload,
                seed=self.seed * 1000 + index,
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

    def _service(self, node: SimClient | SimServer, handled: bool = False) -> None:
        node.service(self.scheduler.now)
        self.scheduler.arm(node, handled)

    def run(self) -> Result:
        started = time.perf_counter()
        sched = self.scheduler
        for client in self.clients:
            sched.call_at(0.0, functools.partial(self._connect, client))
        for event in self.scenario.timeline:
            sched.call_at(event.at, functools.partial(self._apply, event))
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
                self._service(item, handled=True)
            else:
                assert callable(item)
                item()
            while self._dirty:
                _, node = self._dirty.popitem()
                self._service(node)
            if progress is not None and now >= next_progress:
                progress(now, duration)
                next_progress = now + duration / 100
        run_end = min(sched.now, self._end)
        wall = time.perf_counter() - started
        return self._result(run_end, wall)

    def _connect(self, client: SimClient) -> None:
        client.endpoint.connect(self.scheduler.now)
        self._service(client)

    # --- timeline -----------------------------------------------------------------------

    def _record(self, event: str, detail: str, active: bool = False) -> None:
        self.changes.append(NetworkChange(self.scheduler.now, event, detail, active))

    def _client_on(self, host: str) -> SimClient:
        for client in self.clients:
            if client.host == host:
                return client
        raise InputError(f"host {host!r} runs no client")

    def _apply(self, event: TimelineEvent) -> None:
        now = self.scheduler.now
        match event:
            case NatRebind(nat=name, new_address=new_address, every=every):
                nat = self.network.nats[name]
                nat.rebind(new_address, now)
                self._record(
                    "nat-rebind",
                    f"{name}: mappings dropped"
                    + (f", external address now {nat.external_address}" if new_address else ""),
                )
                if every is not None and now + every < self.scenario.duration:
                    self.scheduler.call_at(now + every, lambda: self._apply(event))
            case InterfaceDown(iface=ref):
                self.network.interface(ref).up = False
                self._record("interface-down", ref)
            case InterfaceUp(iface=ref):
                self.network.interface(ref).up = True
                self._record("interface-up", ref)
            case AddressChange(iface=ref, address=address):
                old = self.network.interface(ref).addresses[0]
                self.network.set_address(ref, address)
                self._record("address-change", f"{ref}: {old} -> {address}", active=True)
                for client in self.clients:
                    if client.ref == ref:
                        # The socket is bound to the port on all addresses: only the source
                        # address changes, and the client knows it (an active migration).
                        client.unbind(ref, client.local)
                        client.bind(client.iface, port=client.local[1])
                        client.endpoint.migrate(now, new_cid=True)
                        self._service(client)
            case Switch(host=host):
                self._switch(self._client_on(host), event)
            case CidRotate(host=host):
                client = self._client_on(host)
                client.endpoint.rotate_cid(now)
                self._record("cid-rotate", host)
                self._service(client)
            case LinkChange(link=link, settings=settings):
                lk = self.scenario.topology.link(link)
                profile = apply_link_settings(
                    self.network.up[link].profile, settings, f"link {lk.name}"
                )
                self.network.set_link_profile(link, profile)
                self._record(
                    "link-change", f"{link}: " + ", ".join(f"{k}={v:g}" for k, v in settings)
                )

    def _refused(self, client: SimClient) -> bool:
        """The client refuses to migrate actively (RFC 9000 section 18.2): say so, stay."""
        reason = client.endpoint.active_migration_refusal()
        if reason is not None:
            self._record("migration-refused", f"{client.host}: {reason}")
        return reason is not None

    def _switch(self, client: SimClient, event: Switch) -> None:
        now = self.scheduler.now
        if self._refused(client):
            return
        old_ref, old_local = client.ref, client.local
        self._record(
            "switch",
            f"{client.host}: {client.iface} -> {event.to} ({event.mode.value}"
            + (", new CID" if event.new_cid else ", same CID")
            + ")",
            # The client chose to move, whatever it does with its CID: with new_cid = false
            # the new-DCID check runs and fails (RFC 9000 section 9.5).
            active=True,
        )

        def move() -> None:
            client.bind(event.to)
            client.endpoint.migrate(self.scheduler.now, new_cid=event.new_cid)
            self._service(client)

        def retire_old() -> None:
            client.unbind(old_ref, old_local)
            self.network.interface(old_ref).up = False

        if event.mode is SwitchMode.BREAK_BEFORE_MAKE:
            retire_old()
            self.scheduler.call_at(now + event.gap, move)
        else:
            move()
            self.scheduler.call_at(now + event.overlap, retire_old)

    def failover(self, client: SimClient, now: float) -> None:
        """The client heard nothing for too long: move to another interface that is up."""
        host = self.scenario.topology.host(client.host)
        for iface in host.interfaces:
            ref = f"{client.host}.{iface.name}"
            if iface.name != client.iface and self.network.interface(ref).up:
                if self._refused(client):
                    return
                self._record(
                    "failover", f"{client.host}: {client.iface} -> {iface.name}", active=True
                )
                client.unbind(client.ref, client.local)
                client.bind(iface.name)
                client.endpoint.migrate(now, new_cid=True)
                self._service(client)
                return

    # --- results ------------------------------------------------------------------------

    def _server_conn_for(self, client: SimClient) -> ServerConnection | None:
        odcid = client.endpoint.conn.original_destination_connection_id
        for server_conn in self.server.endpoint.connections:
            if server_conn.conn.original_destination_connection_id == odcid:
                return server_conn
        return None

    def _result(self, run_end: float, wall: float) -> Result:
        scenario = self.scenario
        migrations = []
        transfers: list[Transfer] = []
        checks: list[Check] = []
        rotations: list[float] = []
        paths: list[str] = []
        sent = answered = 0
        series = Series([], [], [])
        for index, client in enumerate(self.clients):
            workload = client.endpoint.workload
            server_conn = self._server_conn_for(client)
            digest = None
            if server_conn is not None:
                digest = next(iter(server_conn.app.sent_digests.values()), None)
            transfers.append(transfer_result(workload, digest, run_end))
            if server_conn is None:
                checks.append(
                    Check("handshake", False, f"client {index}: no connection reached the server")
                )
                continue
            tracker = server_conn.tracker
            migrations += migration_results(
                tracker, self.changes, workload.delivery.times, workload.completed_at, run_end
            )
            rotations += [r.at for r in tracker.cid_rotations]
            paths += [format_address(p) for p in tracker.peers_seen]
            challenges = tracker.first_packet_challenges
            sent += len(challenges)
            answered += sum(c.answered_at is not None for c in challenges)
            if index == 0:
                series = series_of(workload.delivery, tracker)
        transfer = transfers[0] if len(transfers) == 1 else _combine(transfers)
        checks += check_mod.workload_checks(transfer, scenario.workload)
        attack_sources = [a.source for a in scenario.attackers]
        if attack_sources:
            # Moves to and from an attacker's address are judged by the attack checks.
            forged = {format_address(a) for a in attack_sources}
            migrations = [
                m for m in migrations if m.old_peer not in forged and m.new_peer not in forged
            ]
        checks += check_mod.migration_checks(
            scenario.expect, migrations, self.changes, len(paths), sent, answered, len(rotations)
        )
        first = self._server_conn_for(self.clients[0])
        tracker0 = first.tracker if first is not None else None
        extra: dict[str, object] = {}
        if scenario.server.disable_active_migration:
            checks.append(check_mod.disable_migration_check(migrations, self.changes))
        preferred = scenario.server.preferred_address
        if preferred is not None:
            use = tracker0.server_addresses.get(preferred) if tracker0 is not None else None
            used = scenario.expect.preferred_address_used
            checks += check_mod.preferred_address_checks(
                preferred, True if used is None else used, use
            )
            extra["preferred_address"] = {
                "address": format_address(preferred),
                "first_packet_at": use.first_packet_at if use else None,
                "first_dcid_new": use.first_dcid_new if use else None,
                "moved_at": use.moved_at if use else None,
            }
        if attack_sources:
            observed = tracker0.migrations if tracker0 is not None else []
            checks += check_mod.attack_checks(
                attack_sources,
                self.wire.received,
                self.wire.sent,
                observed,
                tracker0.peer if tracker0 is not None else None,
            )
            extra["attacks"] = [
                {
                    "kind": sim_attacker.attacker.kind,
                    "source": format_address(sim_attacker.attacker.source),
                    "copies": sim_attacker.copies,
                    "bytes_from": self.wire.received.get(sim_attacker.attacker.source, 0),
                    "bytes_to": self.wire.sent.get(sim_attacker.attacker.source, 0),
                    "server_moves_there": sum(
                        m.new_peer == sim_attacker.attacker.source for m in observed
                    ),
                }
                for sim_attacker in self.attackers
            ]
        verdict, reasons = check_mod.verdict(checks)
        datagrams = sum(p.stats.delivered for p in self.network.pipes)
        stats = {
            "simulated_seconds": run_end,
            "quic_extensions": list(scenario.quic.enabled),  # empty: stock aioquic
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
            **extra,
        }
        result = Result(
            scenario=scenario.name,
            backend="sim",
            seed=self.seed,
            verdict=verdict,
            expected_verdict=scenario.expect.verdict,
            reasons=reasons,
            checks=checks,
            transfer=transfer,
            migrations=migrations,
            cid_rotations=rotations,
            network_changes=self.changes,
            paths_seen=paths,
            stats=stats,
            wall={
                "seconds": wall,
                "datagrams_per_second": datagrams / wall if wall > 0 else 0.0,
                "speedup": run_end / wall if wall > 0 else 0.0,
            },
            series=series,
        )
        return replace(result, files=self._write_files())

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


def _combine(transfers: list[Transfer]) -> Transfer:
    done = [t.completed_at for t in transfers]
    return Transfer(
        workload=transfers[0].workload,
        bytes=sum(t.bytes for t in transfers),
        expected_bytes=sum(t.expected_bytes or 0 for t in transfers),
        intact=all(t.intact for t in transfers),
        started_at=min((t.started_at for t in transfers if t.started_at is not None), default=None),
        completed_at=None if None in done else max(d for d in done if d is not None),
        sha256=None,
        detail={"clients": [t.bytes for t in transfers]},
    )


def run_scenario(scenario: Scenario, options: RunOptions | None = None) -> Result:
    """Run `scenario` in the simulator and return its result (files written if asked)."""
    return Simulation(scenario, options or RunOptions()).run()
