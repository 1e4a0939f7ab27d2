"""The interop rebind checks hold on every seed tried, not just seed 1 (quicmig's extensions).

Stock aioquic passes rebind-port/rebind-addr too; with quicmig's extensions, the scenarios
where stock sends its challenge late (network-switch, blackhole) pass as well.
"""

from __future__ import annotations

import pytest

from quicmig.model.loader import load_scenario
from quicmig.model.verdicts import CheckState, Verdict
from quicmig.runner import RunOptions
from quicmig.sim.runner import run_scenario

SEEDS = (2, 3, 4, 5)
REBIND_CHECKS = {"multiple-paths", "first-packet-challenge", "challenges-answered"}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    ("name", "stack"),
    [
        ("rebind-port", "stock"),
        ("rebind-addr", "quicmig"),
        ("network-switch", "quicmig"),
        ("blackhole", "quicmig"),
    ],
)
def test_rebind_checks_pass_on_every_seed(name: str, stack: str, seed: int) -> None:
    scenario = load_scenario(name).with_stack(stack)
    result = run_scenario(scenario, RunOptions(seed=seed))
    checks = {c.name: c for c in result.checks}
    assert set(checks) >= REBIND_CHECKS
    for check in REBIND_CHECKS:
        assert checks[check].state is CheckState.PASSED, checks[check].detail
    assert result.transfer.intact
    assert result.verdict is Verdict.PASSED, result.reasons
    assert all(m.validated_at is not None for m in result.migrations)
