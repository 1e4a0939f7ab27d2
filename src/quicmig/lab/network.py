"""The old phone lab of `quicmig lab run` (quicmig.lab.run) and the old LabDriver: kept only
until they move onto the topology builder, quicmig.lab.build (with its TUN links and the
impairment element, quicmig.lab.element). New code uses that, not this.

The namespace network: a phone with WiFi and cellular, a NAT router, a server.

```
 client namespace                 router namespace                          server namespace
 ┌──────────────────┐             ┌──────────────────────────────┐          ┌───────────────┐
 │ P-wifi 10.199.1.2├─── veth ────┤P-rw 10.199.1.1               │          │               │
 │                  │             │   nftables SNAT (conntrack)  ├P-rs ─────┤P-srv          │
 │ P-cell 10.199.2.2├─── veth ────┤P-rc 10.199.2.1   10.199.0.1  │  veth    │ 10.199.0.2    │
 └──────────────────┘             └──────────────────────────────┘          └───────────────┘
```

`P` is the per-run prefix `qm` + six hex digits: namespaces are `P-client`, `P-router` and
`P-server`, every veth end is `P-...`, the nftables table is `P_nat`. Everything is created
inside those namespaces (no interface ever sits in the caller's namespace), and `LabNetwork`'s
`__exit__` kills the processes it started and deletes everything whose name carries `P`,
whatever happened, with SIGINT and SIGTERM held until it is done.

A run owns its prefix through an owner file, `/run/quicmig/P.pid` (its PID and start time),
written before anything is created and removed last (`owned()`). `clean()` removes what runs
left behind (killed with SIGKILL, say): only names that match `qm` + six hex digits + `-` or
`_`, and only of prefixes whose owner is gone; a run still going is skipped.

Addresses are our own, in 10.199.0.0/16, and exist only inside these namespaces: nothing is
routed anywhere else (the namespaces have no route out of 10.199.0.0/16).

- WiFi 10.199.1.0/24 and cellular 10.199.2.0/24: router .1, the client .2 (an IP change moves
  it to the next of .2-.9).
- Server link 10.199.0.0/24: router .1, server .2.
- Public side of the NAT: a client address 10.199.1.H leaves as 10.199.101.H, 10.199.2.H as
  10.199.102.H (a NAT with paired address pooling, RFC 4787 section 4.1), the UDP source port
  from the current port range (40000-40999 at first). The server routes 10.199.101.0/24 and
  10.199.102.0/24 to the router.

The migrations are done by the kernel, not by the client program (which sends from one socket
bound to 0.0.0.0 and never moves it):

- NAT rebinding: the router's port range moves on (41000-41999, ...) and the client's conntrack
  entries are deleted; the client's next datagram gets a new mapping, a new source port.
- Network switch: the client's WiFi link goes down, and after a gap the default route points at
  cellular; the kernel picks the cellular source address.
- IP change: the address on the current interface is replaced by the next one (`ip addr add`
  the new, `ip addr del` the old, with promote_secondaries), like a DHCP renumbering.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType

from quicmig.errors import QuicmigError
from quicmig.lab.owners import (
    NAME,
    OWNER_DIR,
    PREFIX,
    Cleanup,
    claim,
    clean,
    delete_namespace,
    leftovers,
    namespaces,
    new_prefix,
    owned,
    owner,
    owner_file,
    owner_prefixes,
    prefix_of,
    release,
    remove,
)
from quicmig.lab.process import Process, wait_for
from quicmig.lab.system import Capabilities, in_ns, run, signals_held
from quicmig.live.stop import STOP_SIGNALS

__all__ = [  # the owners' names, for the old callers that import them from here
    "NAME",
    "OWNER_DIR",
    "PREFIX",
    "Cleanup",
    "Process",
    "clean",
    "leftovers",
    "namespaces",
    "new_prefix",
    "owned",
    "owner",
    "owner_file",
    "owner_prefixes",
    "prefix_of",
]

_delete_namespace = delete_namespace  # the old tests replace it to fail a delete
SERVER_IP = "10.199.0.2"
ROUTER_SERVER_IP = "10.199.0.1"
SERVER_PORT = 4433
HOSTS = range(2, 10)  # client host numbers an IP change cycles through
PORT_BASE = 40000  # the NAT's first port range is PORT_BASE .. PORT_BASE + PORT_SPAN - 1
PORT_SPAN = 1000
PORT_RANGES = 20  # rebinding cycles through this many ranges
CAPTURE_START_TIMEOUT = 10.0  # seconds for dumpcap to say it is capturing


@dataclass(frozen=True, slots=True)
class Interface:
    """One of the client's two networks."""

    name: str  # wifi | cellular
    short: str  # in interface names: wifi | cell
    subnet: int  # 10.199.<subnet>.0/24 on the client side

    def address(self, host: int) -> str:
        return f"10.199.{self.subnet}.{host}"

    @property
    def gateway(self) -> str:
        return self.address(1)

    def public(self, host: int) -> str:
        """The address the NAT maps `address(host)` to."""
        return f"10.199.{100 + self.subnet}.{host}"


WIFI = Interface("wifi", "wifi", 1)
CELLULAR = Interface("cellular", "cell", 2)
INTERFACES = (WIFI, CELLULAR)


@dataclass(frozen=True, slots=True)
class Shaping:
    """Link impairments applied on the router, toward the client (rate) and both ways (delay)."""

    rate_mbit: float  # 0 = unlimited
    delay_ms: float  # one way, each direction; needs netem
    loss_pct: float  # each direction; needs netem


@dataclass(frozen=True, slots=True)
class NetworkMove:
    """One change made to the network: what the server should see afterwards."""

    kind: str  # nat-rebinding | network-switch | ip-change
    at: float  # seconds since the network was built, when it took effect (see each move)
    detail: str
    old_public: str  # the client's public address before
    new_public: str  # and after (the server must see this host)
    port_range: tuple[int, int]  # the NAT's port range after the move


class LabNetwork:
    """Builds the namespaces, veths, addresses, routes, NAT and shaping; removes them on exit.

    Use as `with LabNetwork(prefix, shaping, caps) as net:` then `net.spawn(...)`,
    `net.start_captures(dir)`, `net.rebind()`, `net.switch(gap)`, `net.ip_change()`.
    SIGTERM during the `with` block raises KeyboardInterrupt, so the cleanup runs for it too.
    """

    def __init__(
        self,
        prefix: str,
        shaping: Shaping,
        capabilities: Capabilities,
        workdir: Path,
    ) -> None:
        if not NAME.match(prefix + "-"):
            raise ValueError(f"prefix {prefix!r} is not qm + six hex digits")
        self.prefix = prefix
        self.client_ns = f"{prefix}-client"
        self.router_ns = f"{prefix}-router"
        self.server_ns = f"{prefix}-server"
        self.table = f"{prefix}_nat"
        self.shaping = shaping
        self.capabilities = capabilities
        self.workdir = workdir
        self.created: list[str] = []  # namespaces, in creation order
        self.processes: list[Process] = []
        self.captures: list[Path] = []
        self.current = WIFI
        self.hosts = {WIFI.name: HOSTS[0], CELLULAR.name: HOSTS[0]}
        self.generation = 0  # index of the NAT's port range
        self.moves: list[NetworkMove] = []
        self._t0 = time.monotonic()
        self._previous_handlers: dict[int, signal._HANDLER] = {}
        self._stopping = False  # a signal has interrupted the run: ignore the next ones

    # --- names ---------------------------------------------------------------------------

    def client_if(self, interface: Interface) -> str:
        return f"{self.prefix}-{interface.short}"

    def router_if(self, interface: Interface) -> str:
        return f"{self.prefix}-r{interface.short[0]}"

    @property
    def router_server_if(self) -> str:
        return f"{self.prefix}-rs"

    @property
    def server_if(self) -> str:
        return f"{self.prefix}-srv"

    def now(self) -> float:
        return time.monotonic() - self._t0

    @property
    def public(self) -> str:
        """The client's current address as the server sees it (without the port)."""
        return self.current.public(self.hosts[self.current.name])

    @property
    def port_range(self) -> tuple[int, int]:
        low = PORT_BASE + PORT_SPAN * (self.generation % PORT_RANGES)
        return low, low + PORT_SPAN - 1

    # --- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> LabNetwork:
        try:
            claim(self.prefix)  # before anything exists: `clean()` must skip this run
            if threading.current_thread() is threading.main_thread():
                for sig in STOP_SIGNALS:
                    # Only where nobody handles it yet: asyncio.run()'s SIGINT handler and
                    # driver.run_stoppable() cancel the main task, whose cleanup tears down.
                    if signal.getsignal(sig) in (signal.SIG_DFL, signal.default_int_handler):
                        self._previous_handlers[sig] = signal.signal(sig, self._interrupt)
            self.build()
        except BaseException:
            self.teardown()
            raise
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

    def build(self) -> None:
        for namespace in (self.client_ns, self.router_ns, self.server_ns):
            self.created.append(namespace)  # before: an interrupted add may still have made it
            run(["ip", "netns", "add", namespace])
            self._ip(namespace, "link", "set", "lo", "up")
            # IPv4 only: no IPv6 router solicitations and the like in the captures.
            for scope in ("all", "default"):
                run(in_ns(namespace, "sysctl", "-qw", f"net.ipv6.conf.{scope}.disable_ipv6=1"))
        for interface in INTERFACES:
            self._veth(
                self.client_ns, self.client_if(interface), self.router_ns, self.router_if(interface)
            )
            self._ip(
                self.client_ns,
                "addr",
                "add",
                f"{interface.address(HOSTS[0])}/24",
                "dev",
                self.client_if(interface),
            )
            self._ip(
                self.router_ns,
                "addr",
                "add",
                f"{interface.gateway}/24",
                "dev",
                self.router_if(interface),
            )
        self._veth(self.router_ns, self.router_server_if, self.server_ns, self.server_if)
        self._ip(
            self.router_ns, "addr", "add", f"{ROUTER_SERVER_IP}/24", "dev", self.router_server_if
        )
        self._ip(self.server_ns, "addr", "add", f"{SERVER_IP}/24", "dev", self.server_if)
        for namespace, name in (
            *((self.client_ns, self.client_if(i)) for i in INTERFACES),
            *((self.router_ns, self.router_if(i)) for i in INTERFACES),
            (self.router_ns, self.router_server_if),
            (self.server_ns, self.server_if),
        ):
            self._ip(namespace, "link", "set", name, "up")
        run(in_ns(self.router_ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"))
        # An IP change deletes the primary address: promote the new one instead of losing it.
        run(in_ns(self.client_ns, "sysctl", "-qw", "net.ipv4.conf.all.promote_secondaries=1"))
        self._ip(
            self.client_ns,
            "route",
            "add",
            "default",
            "via",
            WIFI.gateway,
            "dev",
            self.client_if(WIFI),
        )
        for interface in INTERFACES:
            self._ip(
                self.server_ns,
                "route",
                "add",
                f"10.199.{100 + interface.subnet}.0/24",
                "via",
                ROUTER_SERVER_IP,
            )
        run(in_ns(self.router_ns, "nft", "-f", "-"), input=self._ruleset(create=True))
        self._shape()

    def teardown(self) -> list[str]:
        """Stop every process, delete the nftables table and the namespaces (and so the veths),
        then whatever else carries the prefix, then the owner file.

        SIGINT and SIGTERM are held from start to end (`signals_held()`), so a second Ctrl-C
        cannot cut it short; one that came is delivered afterwards, and ignored if a signal
        already stopped the run. Removing by prefix, not only what was recorded, also gets
        what an interrupted command made before it could be recorded. Returns what is left
        (nothing, unless the kernel refused a delete).
        """
        try:
            with signals_held():
                for process in reversed(self.processes):
                    process.stop()
                self.processes.clear()
                if self.router_ns in self.created:
                    run(
                        in_ns(self.router_ns, "nft", "delete", "table", "ip", self.table),
                        check=False,
                    )
                for namespace in reversed(self.created):
                    _delete_namespace(namespace)
                self.created.clear()
                remove(leftovers(self.prefix))
                remaining = leftovers(self.prefix)
                release(self.prefix)
        finally:
            for sig, handler in self._previous_handlers.items():
                signal.signal(sig, handler)
            self._previous_handlers.clear()
        return remaining

    # --- processes and captures --------------------------------------------------------------

    def spawn(self, namespace: str, args: Sequence[str], *, stdin: bool = False) -> Process:
        """Start `args` inside `namespace`; it is stopped on exit if still running."""
        process = Process(namespace, in_ns(namespace, *args), self.workdir, stdin)
        self.processes.append(process)
        return process

    def start_captures(self, directory: Path) -> list[Path]:
        """dumpcap on the router's three interfaces, one pcap file each; waits until capturing."""
        directory.mkdir(parents=True, exist_ok=True)
        self.start_capture(self.router_if(WIFI), directory / "router-wifi.pcap")
        self.start_capture(self.router_if(CELLULAR), directory / "router-cellular.pcap")
        self.start_capture(self.router_server_if, directory / "router-server.pcap")
        return self.captures

    def start_capture(self, interface: str, path: Path) -> None:
        """dumpcap on one of the router's interfaces into `path` (pcap); waits until capturing."""
        path.unlink(missing_ok=True)
        process = Process(
            "dumpcap",
            in_ns(self.router_ns, "dumpcap", "-q", "-P", "-i", interface, "-w", str(path)),
            self.workdir,
            stdin=False,
        )
        self.processes.insert(0, process)  # stopped last: it sees the whole run
        wait_for(
            lambda: (
                any("Capturing on" in line for line in process.stderr)
                or process.popen.poll() is not None
            ),
            CAPTURE_START_TIMEOUT,
        )
        if process.popen.poll() is not None:
            raise QuicmigError(f"dumpcap could not capture on {interface}: {process.tail()}")
        self.captures.append(path)

    # --- migrations --------------------------------------------------------------------------

    def rebind(self) -> NetworkMove:
        """NAT rebinding: a new port range and the client's conntrack entries deleted."""
        old = self.public
        self.generation += 1
        run(in_ns(self.router_ns, "nft", "-f", "-"), input=self._ruleset(create=False))
        private = self.current.address(self.hosts[self.current.name])
        at = self.now()  # from here on the client's next datagram gets a new mapping
        output = run(
            in_ns(self.router_ns, "conntrack", "-D", "-p", "udp", "--orig-src", private),
            check=False,
        )
        low, high = self.port_range
        flows = len([line for line in output.splitlines() if line.strip()])
        return self._record(
            "nat-rebinding",
            f"NAT port range now {low}-{high}, {flows} conntrack "
            f"entr{'y' if flows == 1 else 'ies'} of {private} deleted",
            old,
            at,
        )

    def switch(self, gap: float) -> NetworkMove:
        """Interface switch: the current link goes down, after `gap` s the route moves."""
        old_public = self.public
        old, new = self.current, (CELLULAR if self.current is WIFI else WIFI)
        self._ip(self.client_ns, "link", "set", self.client_if(new), "up")
        at = self.now()  # the old link goes down
        self._ip(self.client_ns, "link", "set", self.client_if(old), "down")
        time.sleep(gap)
        self._ip(
            self.client_ns,
            "route",
            "replace",
            "default",
            "via",
            new.gateway,
            "dev",
            self.client_if(new),
        )
        self.current = new
        return self._record(
            "network-switch",
            f"{old.name} link down, {gap * 1e3:.0f} ms later default route via {new.name} "
            f"({self.client_if(new)})",
            old_public,
            at,
        )

    def ip_change(self) -> NetworkMove:
        """The address on the current interface is replaced by the next one."""
        old_public = self.public
        interface = self.current
        host = self.hosts[interface.name]
        new_host = HOSTS[(HOSTS.index(host) + 1) % len(HOSTS)]
        name = self.client_if(interface)
        self._ip(self.client_ns, "addr", "add", f"{interface.address(new_host)}/24", "dev", name)
        at = self.now()  # the old address goes: the new one becomes the source
        self._ip(self.client_ns, "addr", "del", f"{interface.address(host)}/24", "dev", name)
        self._ip(
            self.client_ns, "route", "replace", "default", "via", interface.gateway, "dev", name
        )
        self.hosts[interface.name] = new_host
        return self._record(
            "ip-change",
            f"{interface.name} address {interface.address(host)} replaced by "
            f"{interface.address(new_host)}",
            old_public,
            at,
        )

    def move(self, kind: str, gap: float) -> NetworkMove:
        if kind == "nat-rebinding":
            return self.rebind()
        if kind == "network-switch":
            return self.switch(gap)
        if kind == "ip-change":
            return self.ip_change()
        raise ValueError(f"unknown network move {kind!r}")

    # --- helpers ---------------------------------------------------------------------------

    def _interrupt(self, signum: int, frame: FrameType | None) -> None:
        # The first SIGINT or SIGTERM stops the run; the next ones are dropped: raised while
        # the first unwinds they can land inside threading's lock code ("release unlocked
        # lock") or before the teardown has begun.
        if self._stopping:
            return
        self._stopping = True
        raise KeyboardInterrupt(f"signal {signum}")

    def _record(self, kind: str, detail: str, old_public: str, at: float) -> NetworkMove:
        move = NetworkMove(kind, at, detail, old_public, self.public, self.port_range)
        self.moves.append(move)
        return move

    def _ip(self, namespace: str, *args: str) -> None:
        run(["ip", "-n", namespace, *args])

    def _veth(self, ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
        # Both ends are created directly inside their namespaces, never in ours.
        run(
            [
                "ip",
                "link",
                "add",
                name_a,
                "netns",
                ns_a,
                "type",
                "veth",
                "peer",
                "name",
                name_b,
                "netns",
                ns_b,
            ]
        )

    def _ruleset(self, *, create: bool) -> str:
        """The NAT: per client address a public address, UDP ports from the current range."""
        low, high = self.port_range
        out = self.router_server_if
        lines = [f"table ip {self.table} {{", "  chain postrouting {"]
        lines.append("    type nat hook postrouting priority srcnat; policy accept;")
        for interface in INTERFACES:
            for host in HOSTS:
                private, public = interface.address(host), interface.public(host)
                lines.append(
                    f'    oifname "{out}" ip saddr {private} meta l4proto udp '
                    f"snat to {public}:{low}-{high}"
                )
                lines.append(f'    oifname "{out}" ip saddr {private} snat to {public}')
        lines += ["  }", "}"]
        text = "\n".join(lines) + "\n"
        if create:
            return text
        # Replace the chain's rules atomically (one nft transaction).
        return f"flush chain ip {self.table} postrouting\n" + text

    def _shape(self) -> None:
        shaping = self.shaping
        netem = self.capabilities.netem and (shaping.delay_ms > 0 or shaping.loss_pct > 0)
        for interface in INTERFACES:
            name = self.router_if(interface)
            if netem:
                self._netem(name, shaping.rate_mbit)
            elif shaping.rate_mbit > 0:
                rate = shaping.rate_mbit * 1e6  # bits per second
                burst = max(16_000, int(rate / 8 / 100))  # bytes: at least 10 ms at the rate
                run(
                    in_ns(
                        self.router_ns,
                        "tc",
                        "qdisc",
                        "replace",
                        "dev",
                        name,
                        "root",
                        "tbf",
                        "rate",
                        f"{rate:.0f}bit",
                        "burst",
                        str(burst),
                        "latency",
                        "100ms",
                    )
                )
        if netem:
            self._netem(self.router_server_if, 0)

    def _netem(self, name: str, rate_mbit: float) -> None:
        args = ["tc", "qdisc", "replace", "dev", name, "root", "netem", "limit", "1000"]
        if self.shaping.delay_ms > 0:
            args += ["delay", f"{self.shaping.delay_ms:g}ms"]
        if self.shaping.loss_pct > 0:
            args += ["loss", f"{self.shaping.loss_pct:g}%"]
        if rate_mbit > 0:
            args += ["rate", f"{rate_mbit * 1e6:.0f}bit"]
        run(in_ns(self.router_ns, *args))
