"""`quicmig run SCENARIO --backend proxy`: the simulator's scenario, over real UDP, same JSON."""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
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


def test_proxy_run_writes_capture_qlog_and_figure_from_what_was_observed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, pcap, keys = tmp_path / "r.json", tmp_path / "p.pcap", tmp_path / "p.keys"
    argv = ["run", "nat-rebinding", "--backend", "proxy", "--set", "workload.bytes=1000000"]
    argv += ["--json", str(out), "--with-series", "--pcap", str(pcap), "--keylog", str(keys)]
    argv += ["--qlog-dir", str(tmp_path / "qlog"), "--plot", str(tmp_path / "f.png"), "-q"]
    assert main(argv) == 0
    capsys.readouterr()
    result = json.loads(out.read_text())
    series = result["series"]
    # Delivered bytes come from the client's application, RTT and cwnd from the server's aioquic.
    assert series["delivered"][-1][1] == 1_000_000
    totals = [total for _, total in series["delivered"]]
    assert all(b > a for a, b in itertools.pairwise(totals))
    assert series["rtt"] and all(0 < rtt < 1 for _, rtt in series["rtt"])
    assert series["cwnd"]
    (qlog,) = (tmp_path / "qlog").glob("*.qlog")
    events = json.loads(qlog.read_text())["traces"][0]["events"]
    frames = {f["frame_type"] for e in events for f in e["data"].get("frames", [])}
    assert {"path_challenge", "path_response"} <= frames
    assert (tmp_path / "f.png").read_bytes().startswith(b"\x89PNG")
    assert pcap.read_bytes()[:4] == b"\xd4\xc3\xb2\xa1"
    assert result["files"]["pcap"] == str(pcap)
    if shutil.which("tshark") is not None:  # the capture tells the same story
        assert main(["check", str(pcap), "--keylog", str(keys), "-q"]) == 0
