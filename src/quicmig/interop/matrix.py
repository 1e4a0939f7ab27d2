"""The interop matrix: every test case for every server x client pair of stacks.

A test case is a scenario of the one pipeline (`TESTS`: quic-interop-runner's rebind-port
and rebind-addr as quicmig ships them, the others in quicmig/interop/cases/). A cell is one
run of it on `StackBackend` through the proxy or the lab, judged by quicmig.core.judge;
what cannot run (a program not installed, a capability the stack lacks, per
`StackBackend.unsupported_settings()` and the driver's `unsupported()`) is an unsupported
cell with the reason, never run. Cells run in parallel on one event loop (`jobs` at a time:
each has its own ports, or its own namespaces), each with a timeout; a cell that is
interrupted leaves nothing behind, one that finished keeps its folder of evidence:

    cells/TEST/SERVER--CLIENT[-REPEAT]/  result.json, server.log, client.log, keys.log,
        proxy.pcap (both legs) or server-link.pcap + client-link.pcap (lab),
        server-side.pcap (what tshark read), preferred.pcap, server/qlog, client/qlog
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from quicmig.capture.analysis import DECRYPTION_CHECKS
from quicmig.core.results import Result, write_atomically
from quicmig.errors import InputError, QuicmigError
from quicmig.interop.backend import CellSetup, StackBackend
from quicmig.interop.network import LabNetwork, ProxyNetwork, StackNetwork
from quicmig.interop.stacks import Stack, missing, read_version
from quicmig.live.certs import CertPaths
from quicmig.model.loader import load_scenario
from quicmig.model.scenario import Scenario
from quicmig.model.verdicts import CheckState, Rules, Verdict
from quicmig.runner import RunOptions, execute, plan

SCHEMA = "quicmig.interop/1"
# test -> its scenario: a built-in scenario's name, or a file of quicmig/interop/cases
TESTS: dict[str, str] = {
    "transfer": "transfer",
    "rebind-port": "rebind-port",
    "rebind-addr": "rebind-addr",
    "connectionmigration": "connectionmigration",
    "active-migration": "active-migration",
    "rebind-idle": "rebind-idle",
    "disable-migration": "disable-migration",
}
# The checks that tell each test's story, first among a cell's reasons.
# (client-exit says how a client failed or that it stalled: before transfer-intact.)
REBIND = ("first-packet-challenge", "paths-validated", "challenges-answered", "client-exit")
HEADLINES: dict[str, tuple[str, ...]] = {
    "transfer": ("server-start", "client-exit", "transfer-intact", "handshake"),
    "rebind-port": REBIND,
    "rebind-addr": REBIND,
    "connectionmigration": ("preferred-address-used", "connectionmigration", "client-exit"),
    "active-migration": ("migrations-observed", "paths-validated", "first-packet-challenge"),
    "rebind-idle": ("client-exit", "migrations-observed", "transfer-intact", "paths-validated"),
    "disable-migration": ("disable-active-migration-honoured", "client-exit", "transfer-intact"),
}
# seconds with nothing reaching the client before a cell is stopped (else the backend's
# STALL): after an idle rebinding a client may recover on its own keep-alive only
# (Chromium PINGs after about 15 s of silence on a connection with an open stream).
STALL_LIMITS: dict[str, float] = {"rebind-idle": 20.0}
BACKENDS = ("proxy", "lab")
CELL_MARGIN = 60.0  # seconds beyond a scenario's duration before a cell is given up
INCOMPLETE = "INCOMPLETE"

# One letter per cell (readable at 80 columns; the legend says what each means).
PASSED, RFC9000_ONLY, STRICT_ONLY, FAILED = "P", "R", "S", "F"
UNSUPPORTED, ERROR, NO_PAIR = "U", "E", "-"
LEGEND = {
    PASSED: "passed (strict and RFC 9000 rules)",
    RFC9000_ONLY: "passed under RFC 9000 only (the strict first-packet PATH_CHALLENGE rule failed)",
    STRICT_ONLY: "passed under the strict rules only (an RFC 9000 rule failed)",
    FAILED: "failed",
    UNSUPPORTED: "unsupported (could not be run or judged here)",
    ERROR: "error (the cell could not be run to the end)",
    NO_PAIR: "not a pair (the client speaks another protocol)",
}


def case_file(test: str) -> Path | None:
    path = Path(str(resources.files("quicmig") / "interop" / "cases" / f"{TESTS[test]}.toml"))
    return path if path.is_file() else None


def load_case(test: str) -> Scenario:
    """The scenario of test `test` (InputError for a name not in TESTS)."""
    if test not in TESTS:
        raise InputError(f"unknown test {test!r}; known: {', '.join(TESTS)}")
    path = case_file(test)
    return load_scenario(str(path) if path is not None else TESTS[test])


@dataclass(frozen=True, slots=True)
class Cell:
    """One cell of the matrix, as the report and the matrix JSON show it."""

    test: str
    server: str
    client: str
    repeat: int  # 1-based
    letter: str  # a key of LEGEND
    verdicts: dict[str, str] | None  # rules -> verdict (None: not run)
    reasons: tuple[str, ...]  # one line each: why not passed
    seconds: float
    folder: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "test": self.test,
            "server": self.server,
            "client": self.client,
            "repeat": self.repeat,
            "letter": self.letter,
            "state": LEGEND[self.letter].split(" (")[0],
            "verdicts": self.verdicts,
            "reasons": list(self.reasons),
            "seconds": round(self.seconds, 3),
            "folder": self.folder,
            "result": f"{self.folder}/result.json" if self.folder and self.verdicts else None,
            "summary": self.summary,
        }


def letter_of(result: Result) -> str:
    """The cell's letter from its two verdicts (see LEGEND)."""
    strict, rfc = result.verdicts[Rules.STRICT], result.verdicts[Rules.RFC9000]
    if strict is Verdict.PASSED and rfc is Verdict.PASSED:
        return PASSED
    if Verdict.FAILED not in (strict, rfc):
        return UNSUPPORTED
    if rfc is Verdict.PASSED:
        return RFC9000_ONLY
    if strict is Verdict.PASSED:
        return STRICT_ONLY
    return FAILED


def summary_of(result: Result) -> dict[str, Any]:
    """The cell's key figures, from the judged observation."""
    migrations = result.migrations
    transfer = result.transfer
    return {
        "paths_seen": len(result.paths_seen),
        "migrations": len(migrations),
        "validated": sum(m.validated_at is not None for m in migrations),
        "challenges": sum(m.challenges for m in migrations),
        "first_packet_challenge": [m.first_packet_had_challenge for m in migrations],
        "sent_to_old_after": [m.sent_to_old_after for m in migrations],
        "validation_rtt_ms": [
            round(m.validation_rtt * 1e3, 1) if m.validation_rtt is not None else None
            for m in migrations
        ],
        "interruption_s": [
            round(m.interruption, 3) if m.interruption is not None else None for m in migrations
        ],
        "bytes": transfer.bytes,
        "intact": transfer.intact,
        "sha256": transfer.sha256,
        "completed_at_s": transfer.completed_at,
        "preferred_address": result.stats.get("preferred_address"),
        "run_seconds": result.stats.get("run_seconds"),
    }


def headlines_first(test: str, reasons: Sequence[str], unsupported: bool = False) -> list[str]:
    """`reasons` ("check: detail") with the test's headline checks first, in their order;
    for an unsupported cell what could not be decrypted first: every other unsupported
    check follows from it."""
    heads = (
        (*DECRYPTION_CHECKS, *HEADLINES.get(test, ())) if unsupported else HEADLINES.get(test, ())
    )

    def rank(reason: str) -> int:
        name = reason.partition(":")[0]
        return heads.index(name) if name in heads else len(heads)

    return sorted(reasons, key=rank)


@dataclass(frozen=True, slots=True)
class Job:
    test: str
    server: Stack
    client: Stack
    repeat: int
    scenario: Scenario

    @property
    def label(self) -> str:
        return f"{self.test} {self.server.name} → {self.client.name}"

    def folder(self, out: Path, repeats: int) -> Path:
        suffix = f"-{self.repeat}" if repeats > 1 else ""
        return out / "cells" / self.test / f"{self.server.name}--{self.client.name}{suffix}"


@dataclass(frozen=True, slots=True)
class Selection:
    servers: tuple[Stack, ...]
    clients: tuple[Stack, ...]
    tests: tuple[str, ...]
    repeat: int = 1


def select(
    stacks: dict[str, Stack],
    servers: Sequence[str] | None,
    clients: Sequence[str] | None,
    tests: Sequence[str] | None,
    repeat: int = 1,
) -> Selection:
    """The stacks and tests named (all by default); InputError naming the known ones."""

    def pick(names: Sequence[str] | None, role: str) -> tuple[Stack, ...]:
        able = [s for s in stacks.values() if role in s.roles]
        if names is None:
            return tuple(able)
        out = []
        for name in names:
            if name not in stacks:
                known = ", ".join(s.name for s in able)
                raise InputError(f"unknown stack {name!r} in --{role}s; known {role}s: {known}")
            if role not in stacks[name].roles:
                known = ", ".join(s.name for s in able)
                raise InputError(
                    f"stack {name} has no {role} (roles: {', '.join(stacks[name].roles)}); "
                    f"{role}s: {known}"
                )
            out.append(stacks[name])
        return tuple(dict.fromkeys(out))

    chosen = tuple(tests) if tests is not None else tuple(TESTS)
    for test in chosen:
        if test not in TESTS:
            raise InputError(f"unknown test {test!r} in --tests; known: {', '.join(TESTS)}")
    if repeat < 1:
        raise InputError(f"--repeat {repeat}: give 1 or more")
    return Selection(pick(servers, "server"), pick(clients, "client"), chosen, repeat)


def not_run(job: Job) -> Cell | None:
    """The cell of a job that cannot run at all (not a pair, a program missing), else None."""
    server, client = job.server, job.client
    assert server.server is not None and client.client is not None
    if client.client.protocol not in server.server.protocols:
        return Cell(job.test, server.name, client.name, job.repeat, NO_PAIR, None, (), 0.0)
    lines = [line for line in (missing(server, "server"), missing(client, "client")) if line]
    if lines:
        return Cell(
            job.test, server.name, client.name, job.repeat, UNSUPPORTED, None, tuple(lines), 0.0
        )
    return None


Progress = Callable[[Job, str], None]


@dataclass
class MatrixRun:
    """Runs the jobs of a selection; `cells` fills as they finish."""

    selection: Selection
    backend: str
    out: Path
    certs: CertPaths
    jobs: int = 2
    seed: int = 1
    stall: float | None = None  # seconds; None: the backend's default
    base_port: int | None = None  # the proxy's servers listen from this port up (None: any)
    progress: Progress = lambda job, status: None
    finished: Callable[[Cell], None] = lambda cell: None
    cells: list[Cell] = field(default_factory=list)
    versions: dict[tuple[str, str], str] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    def all_jobs(self) -> list[Job]:
        scenarios = {test: load_case(test) for test in self.selection.tests}
        return [
            Job(test, server, client, repeat, scenarios[test])
            for test in self.selection.tests
            for server in self.selection.servers
            for client in self.selection.clients
            for repeat in range(1, self.selection.repeat + 1)
        ]

    async def read_versions(self) -> None:
        stacks = {(s.name, "server"): s for s in self.selection.servers}
        stacks |= {(s.name, "client"): s for s in self.selection.clients}

        async def one(key: tuple[str, str], stack: Stack) -> None:
            self.versions[key] = await asyncio.to_thread(read_version, stack.spec(key[1]).launch)

        await asyncio.gather(*(one(key, stack) for key, stack in stacks.items()))

    async def run(self) -> list[Cell]:
        return await self.run_jobs(self.all_jobs())

    async def run_jobs(self, jobs: Sequence[Job]) -> list[Cell]:
        """Run `jobs` (`jobs` at a time); their cells, as they finished."""
        await self.read_versions()
        limit = asyncio.Semaphore(self.jobs)

        async def bounded(job: Job) -> None:
            quick = not_run(job)
            if quick is not None:
                self._done(quick)
                return
            async with limit:
                self._done(await self.cell(job))

        await asyncio.gather(*(bounded(job) for job in jobs))
        return self.cells

    def _done(self, cell: Cell) -> None:
        self.cells.append(cell)
        self.finished(cell)

    def network(self, job: Job, folder: Path) -> StackNetwork:
        if self.backend == "lab":
            return LabNetwork(job.scenario, self.seed, folder)
        return ProxyNetwork(job.scenario, self.seed, folder, self.base_port)

    async def cell(self, job: Job) -> Cell:
        """Run one cell; its folder holds the evidence (removed when interrupted)."""
        folder = job.folder(self.out, self.selection.repeat)
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        started = time.monotonic()
        versions = {
            "server": self.versions.get((job.server.name, "server"), "?"),
            "client": self.versions.get((job.client.name, "client"), "?"),
        }
        setup = CellSetup(folder, self.certs, versions)
        stall = self.stall if self.stall is not None else STALL_LIMITS.get(job.test)
        if stall is not None:
            setup = replace(setup, stall=stall)
        backend = StackBackend(
            job.server,
            job.client,
            self.network(job, folder),
            setup,
            progress=lambda status: self.progress(job, status),
        )
        try:
            scenario = backend.prepare(job.scenario)
            _, skipped = plan(scenario, backend.driver)
            reasons = [c.detail for c in [*backend.unsupported_settings(scenario), *skipped]]
            if reasons:
                await backend.network.aclose()
                shutil.rmtree(folder)
                return Cell(
                    job.test, job.server.name, job.client.name, job.repeat, UNSUPPORTED,
                    None, tuple(reasons), 0.0,
                )  # fmt: skip
            self.progress(job, "starting")
            timeout = scenario.duration + CELL_MARGIN
            try:
                result = await asyncio.wait_for(
                    execute(scenario, backend, RunOptions(seed=self.seed)), timeout
                )
            except TimeoutError:
                raise QuicmigError(f"the cell took more than {timeout:g} s") from None
        except asyncio.CancelledError:
            shutil.rmtree(folder, ignore_errors=True)  # an interrupted cell leaves nothing
            with contextlib.suppress(OSError):
                folder.parent.rmdir()  # nor its test's folder, if it was the only one
            raise
        except QuicmigError as exc:
            return Cell(
                job.test, job.server.name, job.client.name, job.repeat, ERROR, None,
                (str(exc),), time.monotonic() - started, str(folder),
            )  # fmt: skip
        result = replace(result, stack=f"{job.server.name} server, {job.client.name} client")
        write_atomically(folder / "result.json", json.dumps(result.to_dict(), indent=2) + "\n")
        letter = letter_of(result)
        # The strict verdict's reasons (the interop runner's rules), then what fails only
        # under RFC 9000's (new-path-amplification).
        rfc_only = [
            f"{c.name}: {c.detail}"
            for c in result.checks
            if c.rules == (Rules.RFC9000,) and c.state is CheckState.FAILED
        ]
        reasons = rfc_only if letter == STRICT_ONLY else [*result.reasons, *rfc_only]
        reasons = headlines_first(job.test, reasons, letter == UNSUPPORTED)
        return Cell(
            job.test,
            job.server.name,
            job.client.name,
            job.repeat,
            letter,
            {rules.value: verdict.value for rules, verdict in result.verdicts.items()},
            tuple(reasons),
            time.monotonic() - started,
            str(folder),
            summary_of(result),
        )

    def to_dict(self, complete: bool) -> dict[str, Any]:
        stacks = {s.name: s for s in (*self.selection.servers, *self.selection.clients)}
        return {
            "schema": SCHEMA,
            "backend": self.backend,
            "complete": complete,
            "started_epoch": self.started,
            "wall_seconds": round(time.time() - self.started, 3),
            "tests": list(self.selection.tests),
            "servers": [s.name for s in self.selection.servers],
            "clients": [s.name for s in self.selection.clients],
            "repeat": self.selection.repeat,
            "jobs": self.jobs,
            "stacks": {
                name: {
                    "summary": stack.summary,
                    "roles": list(stack.roles),
                    "source": str(stack.source),
                    "versions": {role: self.versions.get((name, role)) for role in stack.roles},
                }
                for name, stack in stacks.items()
            },
            "legend": LEGEND,
            "cells": [c.to_dict() for c in sorted(self.cells, key=self.order)],
        }

    def order(self, cell: Cell) -> tuple[int, int, int, int]:
        servers = [s.name for s in self.selection.servers]
        clients = [s.name for s in self.selection.clients]
        return (
            self.selection.tests.index(cell.test),
            servers.index(cell.server),
            clients.index(cell.client),
            cell.repeat,
        )
