"""Endpoint processes: a stack's server or client, each in a process group of its own.

`Endpoint(name, argv, env, cwd, log)` starts the program with `start_new_session=True`, its
output (stdout and stderr) appended to `log`. `stop()` sends SIGTERM to the whole group, then
SIGKILL after a grace period, and waits until no process of the group is left (Chromium's
renderers, caddy's children). Use it as `async with Endpoint(...) as endpoint:` so that an
exception, a cancelled task (Ctrl-C or SIGTERM through quicmig.live.stop.run_stoppable) or a
timeout stops the group too.

A server is ready when a process of its group has bound its UDP port (read from
/proc/net/udp{,6} and the group's open sockets); one that exits first, or a port already in
use before the start, is one line naming the endpoint, its exit status and its last log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from quicmig.core.pcap import capture_started
from quicmig.errors import InputError, QuicmigError
from quicmig.live.udp import bind_error, family_of

STOP_GRACE = 3.0  # seconds between SIGTERM and SIGKILL
GONE_WAIT = 3.0  # seconds to wait for the group's last process after SIGKILL
POLL = 0.05  # seconds between looks at /proc while waiting
WATCH = 0.25  # seconds between looks at a running endpoint's children
TAIL_LINES = 8  # lines of the log kept with an exit
PROC = Path("/proc")
CAPTURE_START = 10.0  # seconds for dumpcap to open its interface on a loaded machine


class EndpointError(QuicmigError):
    """An endpoint that could not start, exited at once or failed: one line, with its log."""


@dataclass(frozen=True, slots=True)
class EndpointExit:
    """How an endpoint ended."""

    name: str
    returncode: int | None  # negative: killed by that signal (as subprocess reports it)
    stopped: bool  # we stopped it (SIGTERM/SIGKILL) rather than it exiting by itself
    timed_out: bool  # ... because it outlived its timeout
    seconds: float  # it ran this long
    log: Path
    tail: tuple[str, ...]  # its last log lines

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def status(self) -> str:
        if self.timed_out:
            return f"still running after {self.seconds:.1f} s (timeout), stopped"
        if self.returncode is None:
            return "never started"
        if self.returncode < 0:
            name = signal.Signals(-self.returncode).name
            return f"killed by {name}" + (" (stopped by us)" if self.stopped else "")
        return f"exit status {self.returncode}"

    def describe(self) -> str:
        """One line: the endpoint, how it ended and its last log line."""
        last = self.tail[-1] if self.tail else "(empty log)"
        return f"{self.name}: {self.status()}; last log line: {last} (log: {self.log})"


def log_tail(path: Path, lines: int = TAIL_LINES) -> tuple[str, ...]:
    """The last non-empty lines of a log file (at most 64 KiB read)."""
    try:
        with path.open("rb") as stream:
            stream.seek(0, os.SEEK_END)
            size = stream.tell()
            stream.seek(max(0, size - 65536))
            text = stream.read().decode(errors="replace")
    except OSError:
        return ()
    # Not the "$ command" lines Endpoint.start() writes: a quiet program's log says nothing
    # else, and its command line is no last word.
    kept = [
        line.rstrip() for line in text.splitlines() if line.strip() and not line.startswith("$ ")
    ]
    return tuple(kept[-lines:])


class Endpoint:
    """One endpoint program in its own process group; `async with` it."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        log: Path,
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.log = log
        self.process: asyncio.subprocess.Process | None = None
        self._started = 0.0
        self._exit: EndpointExit | None = None
        self._descendants: set[int] = set()  # seen while it ran, in whatever session

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    async def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            out.write(f"$ {' '.join(self.argv)}\n".encode())
            out.flush()
            try:
                self.process = await asyncio.create_subprocess_exec(
                    *self.argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    env=self.env,
                    cwd=self.cwd,
                    start_new_session=True,  # its own group: stop() reaches every child
                )
            except OSError as exc:
                raise EndpointError(
                    f"{self.name}: cannot start {self.argv[0]}: {exc.strerror or exc}"
                ) from None
        self._started = time.monotonic()

    async def __aenter__(self) -> Endpoint:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def exited(self) -> bool:
        return self.process is not None and self.process.returncode is not None

    async def wait_ready(self, host: str, port: int, timeout: float) -> None:
        """Return once a process of the group has bound UDP `port`; EndpointError if it exits
        first or takes longer than `timeout` seconds."""
        assert self.process is not None, "start() first"
        deadline = time.monotonic() + timeout
        while True:
            if self.exited():
                end = await self._finish(stopped=False, timed_out=False)
                raise EndpointError(f"exited at once: {end.describe()}")
            if port in bound_udp_ports(group_pids(self.process.pid)):
                return
            if time.monotonic() > deadline:
                await self.stop()
                raise EndpointError(
                    f"{self.name} did not bind UDP {host}:{port} within {timeout:g} s; "
                    f"last log line: {(log_tail(self.log) or ('(empty log)',))[-1]} "
                    f"(log: {self.log})"
                )
            await asyncio.sleep(POLL)

    async def wait_capturing(self, path: Path, timeout: float) -> None:
        """Return once this dumpcap has begun `path` (see `capture_started`); EndpointError if
        it exits first or takes longer than `timeout`."""
        assert self.process is not None, "start() first"
        deadline = time.monotonic() + timeout
        while not capture_started(path):
            if self.exited():
                end = await self._finish(stopped=False, timed_out=False)
                raise EndpointError(f"exited at once: {end.describe()}")
            if time.monotonic() > deadline:
                await self.stop()
                raise EndpointError(
                    f"{self.name} wrote no {path.name} within {timeout:g} s (log: {self.log})"
                )
            await asyncio.sleep(POLL)

    async def wait(self, timeout: float) -> EndpointExit:
        """Wait for the program to exit by itself; after `timeout` seconds stop it."""
        assert self.process is not None, "start() first"
        deadline = time.monotonic() + timeout
        while True:
            # Children are re-parented when their parent exits: note them while it runs.
            self._descendants |= descendants(self.process.pid)
            left = deadline - time.monotonic()
            if left <= 0:
                await self._terminate()
                return await self._finish(stopped=True, timed_out=True)
            try:
                await asyncio.wait_for(asyncio.shield(self.process.wait()), min(left, WATCH))
                break
            except TimeoutError:
                continue
        # Its children may outlive it (a group leader's exit does not end the group).
        await self._kill_group()
        return await self._finish(stopped=False, timed_out=False)

    async def stop(self) -> EndpointExit:
        """SIGTERM the group, SIGKILL it after STOP_GRACE, wait until it is gone."""
        if self._exit is not None:
            return self._exit
        if self.process is None:
            return self._record(None, stopped=False, timed_out=False)
        stopped = not self.exited()
        if stopped:
            await self._terminate()
        else:
            self._descendants |= descendants(self.process.pid)
            await self._kill_group()
        return await self._finish(stopped=stopped, timed_out=False)

    async def _terminate(self) -> None:
        assert self.process is not None
        self._descendants |= descendants(self.process.pid)
        _signal_group(self.process.pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.process.wait()), STOP_GRACE)
        await self._kill_group()

    async def _kill_group(self) -> None:
        assert self.process is not None
        pgid = self.process.pid  # start_new_session: the leader's pid is the group id
        # Its group, and descendants that moved to sessions of their own (Chromium's).
        left = set(group_pids(pgid)) | self._descendants
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.process.wait()), GONE_WAIT)
        deadline = time.monotonic() + GONE_WAIT
        while alive(left | set(group_pids(pgid))) and time.monotonic() < deadline:
            await asyncio.sleep(POLL)

    async def _finish(self, stopped: bool, timed_out: bool) -> EndpointExit:
        assert self.process is not None
        await self.process.wait()
        return self._record(self.process.returncode, stopped=stopped, timed_out=timed_out)

    def _record(self, returncode: int | None, stopped: bool, timed_out: bool) -> EndpointExit:
        if self._exit is None:
            seconds = time.monotonic() - self._started if self._started else 0.0
            self._exit = EndpointExit(
                self.name, returncode, stopped, timed_out, seconds, self.log, log_tail(self.log)
            )
        return self._exit


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


# --- /proc: process groups and their sockets ------------------------------------------------


def _processes() -> dict[int, tuple[str, int, int]]:
    """pid -> (state, ppid, pgrp) of every process, from /proc/PID/stat."""
    table = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 2:
            table[int(entry.name)] = (fields[0], int(fields[1]), int(fields[2]))
    return table


def group_pids(pgid: int) -> list[int]:
    """Live (not zombie) processes whose process group is `pgid`."""
    return sorted(
        pid for pid, (state, _, pgrp) in _processes().items() if pgrp == pgid and state != "Z"
    )


def descendants(pid: int) -> set[int]:
    """Live children, grandchildren, ... of `pid`, in any process group or session."""
    table = _processes()
    children: dict[int, list[int]] = {}
    for child, (_, ppid, _) in table.items():
        children.setdefault(ppid, []).append(child)
    found: set[int] = set()
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        if child not in found and table[child][0] != "Z":
            found.add(child)
            todo.extend(children.get(child, []))
    return found


def alive(pids: set[int]) -> set[int]:
    """Those of `pids` still running (not gone, not zombies)."""
    table = _processes()
    return {pid for pid in pids if pid in table and table[pid][0] != "Z"}


def _socket_inodes(pids: list[int]) -> set[int]:
    inodes = set()
    for pid in pids:
        fd_dir = PROC / str(pid) / "fd"
        try:
            entries = list(fd_dir.iterdir())
        except OSError:
            continue
        for fd in entries:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def _namespaces(pids: list[int]) -> dict[str, int]:
    """One pid per network namespace among `pids` (a process run with `ip netns exec`
    sees its namespace's sockets in /proc/PID/net, not in this process's /proc/net)."""
    seen: dict[str, int] = {}
    for pid in pids:
        try:
            seen.setdefault(os.readlink(PROC / str(pid) / "ns" / "net"), pid)
        except OSError:
            continue
    return seen


def bound_udp_ports(pids: list[int]) -> set[int]:
    """UDP ports (IPv4 and IPv6) bound by sockets that one of `pids` holds open, in
    whichever network namespace it runs."""
    inodes = _socket_inodes(pids)
    ports = set()
    for pid in _namespaces(pids).values():
        for table in ("udp", "udp6"):
            try:
                lines = (PROC / str(pid) / "net" / table).read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                cols = line.split()
                if len(cols) > 9 and int(cols[9]) in inodes:
                    ports.add(int(cols[1].rpartition(":")[2], 16))
    return ports


# --- ports ---------------------------------------------------------------------------------


def check_port_free(host: str, port: int, tcp: bool, who: str) -> None:
    """InputError (one line) when UDP `port` (and TCP with `tcp`) on `host` is taken."""
    kinds = [(socket.SOCK_DGRAM, "UDP")] + ([(socket.SOCK_STREAM, "TCP")] if tcp else [])
    for kind, label in kinds:
        with socket.socket(family_of(host), kind) as probe:
            try:
                probe.bind((host, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    message = bind_error((host, port), exc, who, "choose another port")
                    raise InputError(message.replace("UDP port", f"{label} port", 1)) from None
                raise InputError(bind_error((host, port), exc, who)) from None


def free_port(host: str, tcp: bool = False) -> int:
    """A port free for UDP (and TCP with `tcp`) on `host` right now."""
    for _ in range(50):
        with socket.socket(family_of(host), socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
            if not tcp:
                return port
            with socket.socket(family_of(host), socket.SOCK_STREAM) as stream:
                try:
                    stream.bind((host, port))
                except OSError:
                    continue
                return port
    raise QuicmigError(f"no port free for both UDP and TCP on {host} after 50 tries")
