"""The demo's runs: a simulator run that keeps the packets around each migration.

`observe()` runs a scenario exactly as `quicmig run` does, with the recorder of
`quicmig.report.recording` in front of the server's tracker; the Result it returns carries
the packet log the diagrams draw (the same one `quicmig run --html` writes).
"""

from __future__ import annotations

from dataclasses import dataclass

from quicmig.core.packetlog import PacketLog
from quicmig.core.results import Result
from quicmig.model.scenario import Scenario
from quicmig.report.recording import record, recorded_result
from quicmig.runner import RunOptions

WINDOWS = 3  # diagrams per scenario in the demo


@dataclass(frozen=True, slots=True)
class Observation:
    """A finished run: its Result and the packet log of the server's first connection."""

    scenario: Scenario
    result: Result
    log: PacketLog


def observe(scenario: Scenario, seed: int = 1) -> Observation:
    recording = record(scenario, RunOptions(seed=seed))
    result = recorded_result(recording, limit=WINDOWS)
    assert result.packets is not None
    return Observation(scenario=recording.scenario, result=result, log=result.packets)
