"""`quicmig compare`: the same scenario from the simulator and the proxy, side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from quicmig.cli import main

SMALL = ["--set", "workload.bytes=2000000", "-q"]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """nat-rebinding (2 MB) in the simulator and through the proxy, as result files."""
    folder = tmp_path_factory.mktemp("compare")
    paths = {"sim": folder / "sim.json", "proxy": folder / "proxy.json"}
    assert main(["run", "nat-rebinding", *SMALL, "--json", str(paths["sim"])]) == 0
    # --stack quicmig: stock aioquic's first packet on the new path carries PATH_CHALLENGE only
    # if the congestion window has room at that instant, a race over real sockets.
    argv = ["run", "nat-rebinding", "--backend", "proxy", "--stack", "quicmig", *SMALL]
    assert main([*argv, "--json", str(paths["proxy"])]) == 0
    return paths


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def test_table_shows_both_backends_observed_values(
    results: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["compare", str(results["sim"]), str(results["proxy"])]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 100
    header = next(line for line in lines if "sim" in line and "proxy" in line)
    assert header.index("sim") < header.index("proxy")  # columns in the order given

    def row(name: str) -> str:
        return next(line for line in lines if line.startswith(f"│ {name} "))

    sim, proxy = _load(results["sim"]), _load(results["proxy"])
    (sim_mig,) = sim["migrations"]
    (proxy_mig,) = proxy["migrations"]
    assert sim["backend"] == "sim" and proxy["backend"] == "proxy"
    assert row("migration 1").count("port change") == 2
    # Each backend's own measurements, in its own column (sim first).
    for name, key in (
        ("validation RTT", "validation_rtt"),
        ("detection delay", "detection_delay"),
        ("interruption", "interruption"),
    ):
        line = row(f"  {name}")
        left, right = _ms(sim_mig[key]), _ms(proxy_mig[key])
        assert left in line and right in line, (name, line)
        assert line.index(left) < line.rindex(right)
    ports = row("  client address")
    for mig in (sim_mig, proxy_mig):
        assert f":{mig['new_peer'].rpartition(':')[2]}" in ports
    lost = row("  lost / retx")
    for mig in (sim_mig, proxy_mig):
        assert f"{mig['lost_packets']} / " in lost
    assert row("verdict").count("passed") == 2
    assert row("transfer").count("2,000,000 B intact") == 2
    assert row("first-packet-challenge").count("✓") == 2


def test_different_scenarios_warn_in_one_line(
    results: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = _load(results["sim"])
    other["scenario"] = "rebind-port"
    path = tmp_path / "other.json"
    path.write_text(json.dumps(other))
    capsys.readouterr()
    assert main(["compare", str(results["sim"]), str(path)]) == 0
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "different scenarios (nat-rebinding, rebind-port)" in err
    assert "rebind-port" in out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "not JSON"),
        ('{"schema": "quicmig.lab/1"}', "not a quicmig result (schema 'quicmig.lab/1'"),
        ("[1, 2]", "not a quicmig result (no quicmig schema"),
        ('{"schema": "quicmig.results/1", "runs": [{}, {}]}', "holds 2 runs"),
        ('{"schema": "quicmig.result/1", "scenario": "x"}', "without backend, seed"),
        (None, "no such file"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    results: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: str | None,
    message: str,
) -> None:
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content)
    capsys.readouterr()
    assert main(["compare", str(results["sim"]), str(bad)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith(f"quicmig: error: {bad}: ")
    assert message in err


def test_one_file_is_not_a_comparison(
    results: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["compare", str(results["sim"])]) == 2
    assert "at least two result files" in capsys.readouterr().err
