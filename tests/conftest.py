"""Shared fixtures: each built-in scenario runs once per test session (seed 1)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from quicmig.core.results import Result
from quicmig.model.loader import load_scenario
from quicmig.model.scenario import Scenario
from quicmig.sim.runner import RunOptions, Simulation

SEED = 1


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
