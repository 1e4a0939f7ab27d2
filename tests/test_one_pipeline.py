"""One scenario through every backend and through `quicmig check`: one pipeline, one judge.

The same scenario and seed give the same checks (by name), the same workload bytes (by
SHA-256) and the same migration kinds in the simulator, through the proxy over loopback and
in the namespace lab (where root), and `quicmig check` on the run's capture, held to the
scenario, gives the same checks again.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import run_bounded

from quicmig.cli import main
from quicmig.core.results import Result
from quicmig.live.backend import LiveBackend
from quicmig.model.loader import load_scenario
from quicmig.model.scenario import Scenario
from quicmig.model.verdicts import MigrationKind, Verdict
from quicmig.proxy.driver import ProxyDriver
from quicmig.runner import RunOptions, execute
from quicmig.sim.runner import run_scenario

NAME = "nat-rebinding"
OVERRIDES = ("workload.bytes=3000000", "timeline.0.at_s=0.3")
SEED = 4


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return load_scenario(NAME, OVERRIDES)


@pytest.fixture(scope="module")
def sim(scenario: Scenario, tmp_path_factory: pytest.TempPathFactory) -> Result:
    folder = tmp_path_factory.mktemp("sim")
    options = RunOptions(seed=SEED, pcap=folder / "run.pcap", keylog=folder / "run.keys")
    return run_scenario(scenario, options)


def proxy_run(scenario: Scenario) -> Result:
    driver = ProxyDriver.for_scenario(scenario, SEED)
    return run_bounded(execute(scenario, LiveBackend(driver), RunOptions(seed=SEED)))


def lab_run(scenario: Scenario) -> Result:
    from quicmig.lab.driver import LabDriver

    driver = LabDriver(scenario, SEED)
    return run_bounded(execute(scenario, LiveBackend(driver), RunOptions(seed=SEED)))


def runs(scenario: Scenario, sim: Result) -> list[Result]:
    done = [sim, proxy_run(scenario)]
    lab_ready = os.geteuid() == 0 and all(shutil.which(t) for t in ("ip", "nft", "conntrack"))
    if lab_ready and Path("/dev/net/tun").exists():
        done.append(lab_run(scenario))
    return done


def test_every_backend_is_judged_alike(scenario: Scenario, sim: Result) -> None:
    results = runs(scenario, sim)
    names = [[c.name for c in r.checks] for r in results]
    assert all(n == names[0] for n in names), names
    digests = {r.transfer.sha256 for r in results}
    assert len(digests) == 1 and None not in digests  # the same bytes, by the same seed
    for result in results:
        assert result.transfer.intact, (result.backend, result.reasons)
        assert [m.observed for m in result.migrations] == [MigrationKind.PORT_CHANGE]
        (mig,) = result.migrations
        assert mig.validated_at is not None
        assert result.verdict is Verdict.PASSED, (result.backend, result.reasons)
    assert [r.backend for r in results][:2] == ["sim", "proxy"]


@pytest.mark.tshark
@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_check_on_the_capture_agrees(
    sim: Result, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "check.json"
    pcap, keys = sim.files["pcap"], sim.files["keylog"]
    code = main(["check", pcap, "--keylog", keys, "--scenario", NAME, "--json", str(out)])
    capsys.readouterr()
    assert code == 0
    report = json.loads(out.read_text())
    assert [c["name"] for c in report["checks"]] == [c.name for c in sim.checks]
    assert [m["observed"] for m in report["migrations"]] == ["port_change"]
