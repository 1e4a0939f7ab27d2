"""The namespace lab's builder: a scenario's topology in network namespaces, torn down whole.

```
 P-client (one per host)          element process             P-router: internet core, NATs
 ┌───────────────────┐  TUN pair ┌──────────────────┐ TUN     ┌────────────────────────────┐
 │ P-wifi 192.0.2.10 ├───────────┤ Pipe up / down   ├─────────┤ P-rwifi   nftables SNAT    │
 │ P-cellul 192.0.2.20├──────────┤ Pipe up / down   ├─────────┤ P-rcellul  + conntrack     │
 └───────────────────┘           │ (sim.link model) │         │            per NAT         │
 P-server                        │                  │         │                            │
 ┌───────────────────┐           │                  │         │                            │
 │ P-eth0 203.0.113.10├──────────┤ Pipe up / down   ├─────────┤ P-rserver                  │
 └───────────────────┘           └──────────────────┘         └────────────────────────────┘
```

`with NamespaceLab(topology, start={"client": "wifi"}) as net:` builds (quicmig.lab.plan
says what), then `net.spawn(...)`, `net.start_capture(...)`, the movers (quicmig.lab.moves),
`net.stats()`. Bad input raises InputError before anything exists: the plan is checked first,
then root and the tools (`system.require()`), and only then is the owner file written
(quicmig.lab.owners) and the first namespace made. `__exit__` stops the processes it started,
then the element (its TUN devices go with it), and deletes every namespace and table with the
run's prefix, whatever happened, with SIGINT and SIGTERM held until it is done. SIGTERM
during the `with` block raises KeyboardInterrupt, so the cleanup runs for it too.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from quicmig.core.pcap import capture_started
from quicmig.errors import QuicmigError
from quicmig.lab.element import MTU, LinkSpec
from quicmig.lab.moves import Movers
from quicmig.lab.owners import NAME, claim, delete_namespace, leftovers, new_prefix, release, remove
from quicmig.lab.plan import LabPlan
from quicmig.lab.process import Process, wait_for
from quicmig.lab.shaper import IMPAIRMENT, Shaper, ceiling_warning
from quicmig.lab.system import in_ns, require, run, signals_held
from quicmig.live.stop import STOP_SIGNALS
from quicmig.model.topology import LinkProfile, Topology

CAPTURE_START_TIMEOUT = 10.0  # seconds for dumpcap to begin its file
# A host may receive on an interface its default route does not use (make-before-break);
# IPv6 is off so that no router solicitation or MLD report crosses an IPv4 lab's links.
SYSCTLS = (
    "net.ipv4.conf.all.rp_filter=0",
    "net.ipv4.conf.default.rp_filter=0",
    "net.ipv6.conf.all.disable_ipv6=1",
    "net.ipv6.conf.default.disable_ipv6=1",
)
ROUTER_SYSCTLS = (*SYSCTLS, "net.ipv4.ip_forward=1")


class NamespaceLab(Movers):
    """One lab run of `topology`: its namespaces, TUN links, element, routes and NATs."""

    def __init__(
        self,
        topology: Topology,
        *,
        start: Mapping[str, str] | None = None,
        prefix: str | None = None,
        seed: int = 0,
        workdir: Path | None = None,
        command: str = "run --backend lab",
        log: Callable[[str], None] | None = None,
    ) -> None:
        """`start`: host -> the interface its default route uses at first (else its first).
        `command`: how the user started us, for the not-root message. `log` gets each
        warning (a rate the element cannot sustain) once."""
        self.prefix = prefix or new_prefix()
        if not NAME.match(self.prefix + "-"):
            raise ValueError(f"prefix {self.prefix!r} is not qm + six hex digits")
        self.plan = LabPlan(topology, self.prefix, start or {})  # InputError: nothing exists
        self.seed = seed
        self.workdir = workdir or Path.cwd()
        self.command = command
        self.log = log
        self.current = dict(self.plan.start)
        self.addresses = {
            f"{h.name}.{i.name}": list(i.addresses) for h in topology.hosts for i in h.interfaces
        }
        self.down = set()
        self.nat_pool = dict.fromkeys(self.plan.nats, 0)
        self.nat_window = dict.fromkeys(self.plan.nats, 0)
        self.moves = []
        self.warnings = [
            warning
            for link in self.plan.links.values()
            if (warning := ceiling_warning(link.name, self._loaded(link.host, link.profile)))
            is not None
        ]
        self.created: list[str] = []  # namespaces, in creation order
        self.processes: list[Process] = []
        self.captures: list[Path] = []
        self.shaper: Shaper | None = None
        self._t0 = time.monotonic()
        self._previous_handlers: dict[int, signal._HANDLER] = {}
        self._stopping = False  # a signal has interrupted the run: ignore the next ones

    def _loaded(self, host: str, profile: LinkProfile) -> LinkProfile:
        """A server link carries at most what the client links bring it: a 1 Gbit/s LAN
        behind 50 Mbit/s of WiFi is no load the element cannot carry."""
        if host != self.plan.server or profile.rate is None:
            return profile
        rates = [link.profile.rate for link in self.plan.links.values() if link.host != host]
        if any(rate is None for rate in rates):
            return profile
        return replace(profile, rate=min(profile.rate, sum(r for r in rates if r is not None)))

    # --- names -----------------------------------------------------------------------------

    def namespace_of(self, host: str) -> str:
        return self.plan.namespace_of(host)

    @property
    def server_namespace(self) -> str:
        return self.plan.namespaces[self.plan.server]

    def client_namespace(self, host: str) -> str:
        if host == self.plan.server:
            raise QuicmigError(f"host {host!r} is the server, not a client")
        return self.plan.namespace_of(host)

    @property
    def router_namespace(self) -> str:
        return self.plan.router_ns

    def now(self) -> float:
        """Seconds since the network was built (its movers' `at` are on this clock)."""
        return time.monotonic() - self._t0

    # --- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> NamespaceLab:
        require(self.command)  # before the owner file: without root it cannot be written
        try:
            claim(self.prefix)  # before anything exists: `clean()` must skip this run
            if threading.current_thread() is threading.main_thread():
                for sig in STOP_SIGNALS:
                    # Only where nobody handles it yet: asyncio.run()'s SIGINT handler and
                    # run_stoppable() cancel the main task, whose cleanup tears down.
                    if signal.getsignal(sig) in (signal.SIG_DFL, signal.default_int_handler):
                        self._previous_handlers[sig] = signal.signal(sig, self._interrupt)
            self._build()
        except BaseException:
            self.teardown()
            raise
        for warning in self.warnings:
            self._log(warning)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        remaining = self.teardown()
        if remaining and exc_type is None:  # else the run's own failure is the news
            raise QuicmigError(
                f"could not remove {', '.join(remaining)}; `quicmig lab clean` retries"
            )

    def _build(self) -> None:
        plan = self.plan
        for namespace in [plan.router_ns, *plan.namespaces.values()]:
            self.created.append(namespace)  # before: an interrupted add may still have made it
            run(["ip", "netns", "add", namespace])
            run(in_ns(namespace, "sysctl", "-qw", *SYSCTLS))
        run(in_ns(plan.router_ns, "sysctl", "-qw", *ROUTER_SYSCTLS))
        specs = [
            LinkSpec(
                link.name,
                (plan.namespaces[link.host], link.host_tun),
                (plan.router_ns, link.router_tun),
                link.profile,
                self.seed,
            )
            for link in plan.links.values()
        ]
        self.shaper = Shaper(specs, self.workdir)  # every TUN device exists once it is ready
        for host, namespace in plan.namespaces.items():
            lines = ["link set lo up"]
            for link in plan.links.values():
                if link.host == host:
                    lines.append(f"link set {link.host_tun} mtu {MTU} up")
                    lines += [
                        f"addr add {a}/32 dev {link.host_tun}" for a in self.addresses[link.ref]
                    ]
            start = plan.link_of(f"{host}.{self.current[host]}")
            lines.append(f"route add default dev {start.host_tun}")
            self._batch(namespace, lines)
        lines = ["link set lo up"]
        for link in plan.links.values():
            lines.append(f"link set {link.router_tun} mtu {MTU} up")
            lines += [f"route add {a}/32 dev {link.router_tun}" for a in self.addresses[link.ref]]
        # A NAT drops what matches no mapping (after conntrack has translated the replies).
        lines += [f"route add blackhole {a}/32" for n in plan.nats.values() for a in n.external]
        self._batch(plan.router_ns, lines)
        run(in_ns(plan.router_ns, "nft", "-f", "-"), input=plan.ruleset(self.nat_state()))
        self._t0 = time.monotonic()

    def teardown(self) -> list[str]:
        """Stop and delete everything of this run; idempotent; SIGINT/SIGTERM held meanwhile.

        Removing by prefix, not only what was recorded, also gets what an interrupted
        command made before it could be recorded. Returns what is left (nothing, unless the
        kernel refused a delete).
        """
        try:
            with signals_held():
                for process in reversed(self.processes):
                    process.stop()
                self.processes.clear()
                if self.shaper is not None:
                    self.shaper.stop()  # its TUN devices go with it
                    self.shaper = None
                if self.plan.router_ns in self.created:
                    run(
                        in_ns(self.plan.router_ns, "nft", "delete", "table", "ip", self.plan.table),
                        check=False,
                    )
                for namespace in reversed(self.created):
                    delete_namespace(namespace)
                self.created.clear()
                remove(leftovers(self.prefix))
                remaining = leftovers(self.prefix)
                release(self.prefix)
        finally:
            for sig, handler in self._previous_handlers.items():
                signal.signal(sig, handler)
            self._previous_handlers.clear()
        return remaining

    def _interrupt(self, signum: int, frame: FrameType | None) -> None:
        # The first SIGINT or SIGTERM stops the run; the next ones are dropped: raised while
        # the first unwinds they can land inside threading's lock code or before teardown.
        if self._stopping:
            return
        self._stopping = True
        raise KeyboardInterrupt(f"signal {signum}")

    # --- processes and captures --------------------------------------------------------------

    def spawn(self, namespace: str, args: Sequence[str], *, stdin: bool = False) -> Process:
        """Start `args` inside `namespace`; it is stopped on exit if still running."""
        process = Process(namespace, in_ns(namespace, *args), self.workdir, stdin)
        self.processes.append(process)
        return process

    def start_capture(self, interface: str, path: Path) -> None:
        """dumpcap on lab interface `interface` (a TUN: raw IP packets) into `path` (pcap);
        returns once it is capturing."""
        namespace = self.plan.tun_namespaces().get(interface)
        if namespace is None:
            known = ", ".join(sorted(self.plan.tun_namespaces()))
            raise QuicmigError(f"no lab interface {interface!r}; there are: {known}")
        path.unlink(missing_ok=True)
        process = Process(
            "dumpcap",
            in_ns(namespace, "dumpcap", "-q", "-P", "-i", interface, "-w", str(path)),
            self.workdir,
            stdin=False,
        )
        self.processes.insert(0, process)  # stopped last: it sees the whole run
        wait_for(
            lambda: capture_started(path) or process.popen.poll() is not None,
            CAPTURE_START_TIMEOUT,
        )
        if process.popen.poll() is not None:
            raise QuicmigError(f"dumpcap could not capture on {interface}: {process.tail()}")
        self.captures.append(path)

    # --- results -----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The element's counters per link, what shapes the links, the NATs' state."""
        counters = self.shaper.stats() if self.shaper is not None else {}
        return {
            "impairment": IMPAIRMENT,
            "prefix": self.prefix,
            "namespaces": {**self.plan.namespaces, "router": self.plan.router_ns},
            "links": {
                name: {
                    "interface": link.ref,
                    "host_tun": link.host_tun,
                    "router_tun": link.router_tun,
                    **counters.get(name, {}),
                }
                for name, link in self.plan.links.items()
            },
            "nats": {
                name: {
                    "external": self.nat_address(name),
                    "pool": list(nat.external),
                    "port_range": list(nat.port_range),
                    "port_window": list(nat.window(self.nat_window[name])),
                    "idle_timeout_s": nat.idle_timeout,
                }
                for name, nat in self.plan.nats.items()
            },
            "warnings": list(self.warnings),
        }

    def _shaper(self) -> Shaper:
        if self.shaper is None:
            raise QuicmigError("the lab is not built (use it inside its `with` block)")
        return self.shaper

    def _log(self, line: str) -> None:
        if self.log is not None:
            self.log(line)
