"""`quicmig compare`: the same scenario from the simulator and the proxy, side by side."""

from __future__ import annotations

import json
from collections.abc import Callable
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
        ('{"schema": "quicmig.results/2", "runs": [{}, {}]}', "holds 2 runs"),
        ('{"schema": "quicmig.result/2", "scenario": "x"}', "without backend, seed"),
        ('{"schema": "quicmig.result/1", "scenario": "x"}', "from an earlier quicmig"),
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


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("checks", [1], "field `checks[0]` must be an object, not 1"),
        ("seed", [1], "field `seed` must be an integer, not [1]"),
        ("seed", True, "field `seed` must be an integer, not true"),
        ("scenario", {"a": 1}, "field `scenario` must be a string"),
        ("transfer", [], "field `transfer` must be an object, not []"),
        ("migrations", {}, "field `migrations` must be a list"),
        ("stats", {"quic_extensions": 3}, "field `stats.quic_extensions` must be a list or null"),
    ],
)
def test_fields_of_the_wrong_type_are_one_line_errors(
    results: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    field: str,
    value: Any,
    message: str,
) -> None:
    """The schema is right, a field is not: named with its file, exit 2, no traceback."""
    data = _load(results["proxy"])
    data[field] = value
    bad = tmp_path / "typed.json"
    bad.write_text(json.dumps(data))
    capsys.readouterr()
    assert main(["compare", str(results["sim"]), str(bad)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"quicmig: error: {bad}: {message}")
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["checks"].__setitem__(0, {"name": 3, "state": "passed"}), "`checks[0].name`"),
        (lambda d: d["checks"][0].pop("state"), "`checks[0].state` is missing"),
        (lambda d: d["migrations"][0].__setitem__("observed", None), "`migrations[0].observed`"),
        (lambda d: d["migrations"][0].__setitem__("interruption", "long"), "a number or null"),
        (lambda d: d["transfer"].__setitem__("bytes", 1.5), "`transfer.bytes` must be an int"),
    ],
)
def test_nested_fields_are_checked_too(
    results: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    edit: Callable[[dict[str, Any]], object],
    message: str,
) -> None:
    data = _load(results["proxy"])
    edit(data)
    bad = tmp_path / "nested.json"
    bad.write_text(json.dumps(data))
    capsys.readouterr()
    assert main(["compare", str(bad), str(results["sim"])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"quicmig: error: {bad}: field ")
    assert message in err, err
