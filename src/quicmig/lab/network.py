"""The namespace network: a phone with WiFi and cellular, a NAT router, a server.

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

import contextlib
import os
import re
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO

from quicmig.errors import QuicmigError
from quicmig.lab.system import Capabilities, in_ns, run, signals_held
from quicmig.live.stop import STOP_SIGNALS

NAME = re.compile(r"^qm[0-9a-f]{6}[-_]")  # every name a lab run creates starts like this
PREFIX = re.compile(r"qm[0-9a-f]{6}")  # and this is its run's prefix
SERVER_IP = "10.199.0.2"
ROUTER_SERVER_IP = "10.199.0.1"
SERVER_PORT = 4433
HOSTS = range(2, 10)  # client host numbers an IP change cycles through
PORT_BASE = 40000  # the NAT's first port range is PORT_BASE .. PORT_BASE + PORT_SPAN - 1
PORT_SPAN = 1000
PORT_RANGES = 20  # rebinding cycles through this many ranges
STOP_TIMEOUT = 3.0  # seconds to wait for a process to exit after SIGTERM
CAPTURE_START_TIMEOUT = 10.0  # seconds for dumpcap to say it is capturing
OWNER_DIR = Path("/run/quicmig")  # <prefix>.pid: the run that owns the prefix (tmpfs: no reboot)


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


def new_prefix() -> str:
    """A fresh per-run prefix: `qm` + six random hex digits."""
    return f"qm{secrets.token_hex(3)}"


# --- owners: which prefixes belong to a run that is still going -----------------------------


def owner_file(prefix: str) -> Path:
    return OWNER_DIR / f"{prefix}.pid"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # the name (field 2) may hold spaces
    return fields[19] if len(fields) > 19 else None


def claim(prefix: str) -> None:
    """Write the owner file of `prefix`: this process's PID and start time.

    The start time guards against PID reuse: a dead run whose PID now belongs to another
    process must not look alive to `clean()`.
    """
    pid = os.getpid()
    try:
        OWNER_DIR.mkdir(parents=True, exist_ok=True)
        path = owner_file(prefix)
        part = path.with_name(f"{path.name}.{pid}.part")
        part.write_text(f"{pid} {_start_time(pid) or '-'}\n")
        part.replace(path)  # atomic: `clean()` never reads half a file
    except OSError as exc:
        raise QuicmigError(f"cannot write the lab's owner file in {OWNER_DIR}: {exc}") from None


def release(prefix: str) -> None:
    with contextlib.suppress(OSError):
        owner_file(prefix).unlink(missing_ok=True)


@contextlib.contextmanager
def owned(prefix: str) -> Iterator[None]:
    """The run's owner file exists for the whole block; `clean()` leaves the prefix alone."""
    claim(prefix)
    try:
        yield
    finally:
        release(prefix)


def owner(prefix: str) -> int | None:
    """The PID of the live run that owns `prefix`, or None (no owner file, or its run is gone)."""
    try:
        pid_text, _, start = owner_file(prefix).read_text().strip().partition(" ")
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # it exists, as another user's process
    if start not in ("", "-") and _start_time(pid) not in (None, start):
        return None  # the PID was reused: the run that wrote the file is gone
    return pid


def owner_prefixes() -> list[str]:
    """Prefixes that have an owner file, of live runs or dead ones."""
    try:
        names = [path.name for path in OWNER_DIR.iterdir()]
    except OSError:
        return []
    return sorted(
        name.removesuffix(".pid")
        for name in names
        if name.endswith(".pid") and NAME.match(name.removesuffix(".pid") + "-")
    )


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


class Process:
    """A child process inside a namespace, its output read line by line by threads."""

    def __init__(self, name: str, args: Sequence[str], cwd: Path, stdin: bool) -> None:
        self.name = name
        self.popen = subprocess.Popen(
            list(args),
            cwd=cwd,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            start_new_session=True,  # Ctrl-C reaches only quicmig lab, which stops us
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._on_line: Callable[[str], None] | None = None
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._read, args=(self.popen.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._read, args=(self.popen.stderr, self.stderr), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def on_line(self, callback: Callable[[str], None]) -> None:
        """Call `callback(line)` for every stdout line, including those already read."""
        with self._lock:
            self._on_line = callback
            lines = list(self.stdout)
        for line in lines:
            callback(line)

    def _read(self, stream: IO[str] | None, into: list[str]) -> None:
        if stream is None:
            return
        for raw in stream:
            line = raw.rstrip("\n")
            with self._lock:
                into.append(line)
                callback = self._on_line if into is self.stdout else None
            if callback is not None:
                callback(line)

    def write(self, line: str) -> None:
        if self.popen.stdin is not None and self.popen.poll() is None:
            with contextlib.suppress(BrokenPipeError, OSError):
                self.popen.stdin.write(line + "\n")
                self.popen.stdin.flush()

    def tail(self, lines: int = 3) -> str:
        text = [line for line in self.stderr + self.stdout if line.strip()]
        return " | ".join(text[-lines:])

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT; closes the pipes."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()
                self.popen.wait()
        for thread in self._threads:
            thread.join(1.0)
        for stream in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


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
        _wait_for(
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


def _wait_for(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)


def _delete_namespace(namespace: str) -> None:
    """Kill whatever still runs inside, then delete the namespace (its veths go with it)."""
    pids = run(["ip", "netns", "pids", namespace], check=False).split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError, PermissionError):
            os.kill(int(pid), signal.SIGKILL)
    deadline = time.monotonic() + STOP_TIMEOUT
    while pids and time.monotonic() < deadline:
        pids = run(["ip", "netns", "pids", namespace], check=False).split()
        if pids:
            time.sleep(0.02)
    run(["ip", "netns", "delete", namespace], check=False)


def namespaces() -> list[str]:
    return [line.split()[0] for line in run(["ip", "netns", "list"]).splitlines() if line.strip()]


def leftovers(prefix: str | None = None) -> list[str]:
    """Namespaces, links and nftables tables of lab runs (of `prefix`, or of any run) that exist.

    Links and tables are looked for in the caller's namespace; those inside a lab namespace go
    with it.
    """
    match: Callable[[str], bool] = (
        (lambda name: name.startswith(prefix + "-") or name.startswith(prefix + "_"))
        if prefix is not None
        else (lambda name: NAME.match(name) is not None)
    )
    found = [f"namespace {name}" for name in namespaces() if match(name)]
    for line in run(["ip", "-o", "link", "show"]).splitlines():
        parts = line.split(":")
        if len(parts) > 1:
            name = parts[1].strip().split("@")[0]
            if match(name):
                found.append(f"link {name}")
    for line in run(["nft", "list", "tables"], check=False).splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "table" and match(parts[2]):
            found.append(f"table {parts[1]} {parts[2]}")
    return found


def remove(items: Sequence[str]) -> None:
    """Delete items as `leftovers()` names them; failures are found by listing again."""
    for item in items:
        kind, _, name = item.partition(" ")
        if kind == "namespace":
            _delete_namespace(name)
        elif kind == "link":
            run(["ip", "link", "delete", name], check=False)
        else:
            family, _, table = name.partition(" ")
            run(["nft", "delete", "table", family, table], check=False)


def prefix_of(item: str) -> str:
    """`namespace qm12ab34-client` -> `qm12ab34`."""
    name = item.partition(" ")[2].split(" ")[-1]
    return name[:8]


@dataclass(slots=True)
class Cleanup:
    """What `clean()` did: removed, left alone (their run is going), and could not remove."""

    removed: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # prefix -> PID of its live run
    failed: list[str] = field(default_factory=list)


def clean(prefix: str | None = None) -> Cleanup:
    """Remove the leftovers of runs that are gone (or all of `prefix`'s, whoever owns it).

    Without `prefix`, every lab name is considered, and a prefix whose owner file names a
    live process is skipped. Afterwards the names are listed again: `failed` is what is still
    there (the deletes report nothing themselves). Owner files of dead runs go too.
    """
    result = Cleanup()
    found = leftovers(prefix)
    if prefix is not None:
        targets = found
        stale = [prefix] if owner_file(prefix).exists() else []
    else:
        prefixes = {prefix_of(item) for item in found} | set(owner_prefixes())
        live = {p: pid for p in sorted(prefixes) if (pid := owner(p)) is not None}
        in_use = {prefix_of(item) for item in found}
        result.skipped = {p: pid for p, pid in live.items() if p in in_use}
        targets = [item for item in found if prefix_of(item) not in live]
        stale = [p for p in owner_prefixes() if p not in live]
    # Never anything else, whatever the listing matched (the last guard before `ip link del`).
    targets = [item for item in targets if PREFIX.fullmatch(prefix_of(item))]
    remove(targets)
    still = set(leftovers(prefix))
    result.failed = [item for item in targets if item in still]
    result.removed = [item for item in targets if item not in still]
    for dead in stale:
        if not any(prefix_of(item) == dead for item in result.failed):
            release(dead)
            if not owner_file(dead).exists():
                result.removed.append(f"owner file {owner_file(dead)}")
    return result
