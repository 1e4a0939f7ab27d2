"""Shared fixtures and helpers: built-in scenario runs (once per session, seed 1), live-lab
certificates, a time-bounded runner for coroutines, loss-run lengths."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import pytest

from quicmig.core.results import Result
from quicmig.live.certs import CertPaths, write
from quicmig.model.loader import load_scenario
from quicmig.model.scenario import Scenario
from quicmig.sim.runner import RunOptions, Simulation

SEED = 1
LIVE_LIMIT = 20.0  # seconds: no live test may take longer
T = TypeVar("T")


def run_bounded(coro: Awaitable[T], limit: float = LIVE_LIMIT) -> T:
    """Run `coro` on a fresh event loop, failing after `limit` seconds."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, limit)

    return asyncio.run(bounded())


STARTUP = 15.0  # seconds for a `python -m quicmig` program to say it is up


async def start_quicmig(
    args: list[str], ready: re.Pattern[str]
) -> tuple[asyncio.subprocess.Process, str]:
    """Start `python -m quicmig ARGS`; return it and the first stdout line matching `ready`."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "quicmig",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    seen: list[str] = []

    async def wait() -> str:
        assert process.stdout is not None
        while line := (await process.stdout.readline()).decode():
            seen.append(line.rstrip())
            if ready.search(line):
                return line
        raise AssertionError(f"quicmig {args[0]} exited: {' | '.join(seen[-5:])}")

    try:
        return process, await asyncio.wait_for(wait(), STARTUP)
    except BaseException:
        await stop_process(process)
        raise


async def stop_process(process: asyncio.subprocess.Process) -> None:
    """SIGTERM, then SIGKILL after 5 s."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 5)
        except TimeoutError:
            process.kill()
            await process.wait()


def loss_runs(lost: Sequence[bool]) -> list[int]:
    """Lengths of the runs of consecutive losses in `lost`."""
    runs, current = [], 0
    for flag in lost:
        if flag:
            current += 1
        elif current:
            runs.append(current)
            current = 0
    if current:
        runs.append(current)
    return runs


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    """The live lab's CA and server certificate, written once (tests that change them make
    their own)."""
    paths = CertPaths.in_dir(tmp_path_factory.mktemp("certs"))
    write(paths)
    return paths


@dataclass(frozen=True, slots=True)
class Run:
    """A finished simulation kept for inspection, with the result it returned."""

    scenario: Scenario
    sim: Simulation
    result: Result


class BuiltinRuns:
    """Runs a built-in scenario on first use, then hands out the cached run.

    `Simulation(scenario, options).run()` is exactly what `run_scenario()` does; keeping the
    Simulation lets tests look at what the endpoints and the NATs observed.
    """

    def __init__(self) -> None:
        self._cache: dict[str, Run] = {}

    def __call__(self, name: str) -> Run:
        if name not in self._cache:
            scenario = load_scenario(name)
            sim = Simulation(scenario, RunOptions(seed=SEED))
            self._cache[name] = Run(scenario, sim, sim.run())
        return self._cache[name]


@pytest.fixture(scope="session")
def builtin_run() -> BuiltinRuns:
    return BuiltinRuns()
