"""Shared fixtures and helpers: built-in scenario runs (once per session, seed 1), live-lab
certificates, a time-bounded runner for coroutines, loss-run lengths."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import pytest

from quicmig.core.results import Result
from quicmig.live.certs import CertPaths, write
from quicmig.model.loader import load_scenario
from quicmig.model.scenario import Scenario
from quicmig.runner import RunOptions, run
from quicmig.sim.runner import SimBackend, Simulation

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


def simulate(
    scenario: Scenario,
    options: RunOptions | None = None,
    watch: Callable[[Simulation], None] | None = None,
) -> Run:
    """Run `scenario` through the pipeline exactly as `run_scenario()` does, keeping the
    Simulation so that tests can look at what the endpoints and the NATs observed;
    `watch(simulation)` runs before anything else does (to tap an interface, say)."""
    kept: list[Simulation] = []

    def built(sim: Simulation) -> None:
        kept.append(sim)
        if watch is not None:
            watch(sim)

    result = run(scenario, SimBackend(on_built=built), options or RunOptions(seed=SEED))
    return Run(scenario, kept[0], result)


class BuiltinRuns:
    """Runs a built-in scenario (with overrides, and with a capture when asked) on first
    use, then hands out the cached run: the one cache of simulator runs of the suite."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._cache: dict[tuple[str, tuple[str, ...], str | None, bool], Run] = {}

    def __call__(
        self, name: str, *overrides: str, stack: str | None = None, capture: bool = False
    ) -> Run:
        key = (name, overrides, stack, capture)
        if key not in self._cache:
            options = RunOptions(seed=SEED)
            if capture:
                stem = self.folder / f"{name}-{len(self._cache)}"
                options = replace(
                    options, pcap=stem.with_suffix(".pcap"), keylog=stem.with_suffix(".keys")
                )
            scenario = load_scenario(name, overrides)
            if stack is not None:
                scenario = scenario.with_stack(stack)
            self._cache[key] = simulate(scenario, options)
        return self._cache[key]


@pytest.fixture(scope="session")
def builtin_run(tmp_path_factory: pytest.TempPathFactory) -> BuiltinRuns:
    return BuiltinRuns(tmp_path_factory.mktemp("runs"))
