"""`quicmig run SCENARIO --backend proxy`: the simulator's scenario, over real UDP, same JSON."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from quicmig.cli import main
from quicmig.core.app import content


def test_nat_rebinding_through_the_proxy_gives_the_simulators_schema(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim_json, proxy_json = tmp_path / "sim.json", tmp_path / "proxy.json"
    small = ["--set", "workload.bytes=2000000", "-q"]
    assert main(["run", "nat-rebinding", *small, "--json", str(sim_json)]) == 0
    assert (
        main(["run", "nat-rebinding", "--backend", "proxy", *small, "--json", str(proxy_json)]) == 0
    )
    capsys.readouterr()
    sim, live = json.loads(sim_json.read_text()), json.loads(proxy_json.read_text())
    assert set(live) == set(sim)
    assert live["backend"] == "proxy" and live["verdict"] == "passed"
    assert live["transfer"]["intact"] and live["transfer"]["bytes"] == 2_000_000
    assert live["transfer"]["sha256"] == hashlib.sha256(content(2_000_000, 1)).hexdigest()
    (mig,) = live["migrations"]
    assert set(mig) == set(sim["migrations"][0])
    assert mig["observed"] == "port_change" and mig["validated_at"] is not None
    assert mig["network_change"] == "nat-rebind"
    assert 0.5 <= mig["network_change_at"] < 0.7  # scheduled at 0.5 s on the run's clock
    assert mig["new_peer"] in live["paths_seen"] and len(live["paths_seen"]) == 2
    assert live["stats"]["proxy"]["to_upstream"] > 0


def test_unsupported_events_are_reported_not_ignored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "switch.json"
    argv = ["run", "network-switch", "--backend", "proxy", "--set", "workload.bytes=300000"]
    assert main([*argv, "--json", str(out), "-q"]) == 1
    capsys.readouterr()
    result = json.loads(out.read_text())
    unsupported = [c for c in result["checks"] if c["passed"] is None]
    assert unsupported and "Switch needs a second client interface" in unsupported[0]["detail"]
    assert result["verdict"] in ("unsupported", "failed")
