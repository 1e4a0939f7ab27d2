"""The command line: exit statuses, one-line errors, output files and the results schema."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from quicmig.cli import main
from quicmig.model.loader import builtin_names, load_scenario, scenario_from_tree

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PCAP_MAGIC = b"\xd4\xc3\xb2\xa1"  # little-endian classic pcap


def test_scenarios_lists_every_builtin(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scenarios"]) == 0
    out = capsys.readouterr().out
    for name in builtin_names():
        assert name in out


def test_show_prints_toml_that_loads_to_the_same_scenario(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["scenarios", "--show", "network-switch"]) == 0
    shown = scenario_from_tree(tomllib.loads(capsys.readouterr().out))
    assert shown.timeline == load_scenario("network-switch").timeline


def test_run_writes_every_requested_file(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    args = ["run", "nat-rebinding", "--seed", "3", "--json", str(out), "--with-series"]
    args += ["--plot", str(tmp_path / "t.png"), "--pcap", str(tmp_path / "w.pcap")]
    args += ["--keylog", str(tmp_path / "k.log"), "--qlog-dir", str(tmp_path / "qlog"), "-q"]
    assert main(args) == 0
    data = json.loads(out.read_text())
    assert data["schema"] == "quicmig.result/2"
    assert (data["scenario"], data["seed"], data["verdict"]) == ("nat-rebinding", 3, "passed")
    assert {c["name"] for c in data["checks"]} >= {"transfer-intact", "first-packet-challenge"}
    assert all(set(c) == {"name", "state", "detail", "rules"} for c in data["checks"])
    assert data["transfer"]["bytes"] == 5_000_000 and data["transfer"]["intact"] is True
    assert data["transfer"]["completed_at"] > 0
    (mig,) = data["migrations"]
    assert mig["observed"] == "port_change"
    assert mig["old_peer"].rsplit(":", 1)[0] == mig["new_peer"].rsplit(":", 1)[0]
    assert mig["network_change_at"] <= mig["detected_at"] < mig["validated_at"]
    assert mig["validation_rtt"] == pytest.approx(mig["validated_at"] - mig["challenge_sent_at"])
    assert mig["cid_changed"] is False and mig["interruption"] >= 0
    assert data["series"]["delivered"][-1][1] == 5_000_000
    assert (tmp_path / "t.png").read_bytes().startswith(PNG_MAGIC)
    assert (tmp_path / "w.pcap").read_bytes().startswith(PCAP_MAGIC)
    assert "CLIENT_TRAFFIC_SECRET_0" in (tmp_path / "k.log").read_text()
    qlogs = sorted(p.name for p in (tmp_path / "qlog").glob("*.qlog"))
    assert qlogs == ["nat-rebinding-seed3-client-0.qlog", "nat-rebinding-seed3-server-0.qlog"]
    assert not list(tmp_path.rglob("*.part*"))


def test_failed_verdict_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "nat-rebinding-idle"]) == 1
    assert "FAILED" in capsys.readouterr().out


BAD_INPUTS = [
    (["run", "no-such-scenario"], "unknown scenario 'no-such-scenario'"),
    (["run", "nat-rebinding", "--set", "links.wifi.delay_ms=-5"], "delay_ms"),
    (["run", "nat-rebinding", "--set", "links.wifi.loss_pct=150"], "loss_pct"),
    (["run", "nat-rebinding", "--set", "timeline.0.at_s=99"], "after the end"),
    (["run", "network-switch", "--set", "timeline.0.to=bluetooth"], "no interface 'bluetooth'"),
    (["run", "nat-rebinding", "--set", "workload.kind=video"], "workload.kind"),
    (["run", "nat-rebinding", "--set", "nonsense"], "expected key=value"),
    (["run", "nat-rebinding", "--set", "duration_s=nan"], "duration_s: nan is not a finite"),
    (["run", "nat-rebinding", "--set", "timeline.0.at_s=inf"], "at_s: inf is not a finite"),
    (["run", "nat-rebinding", "--set", "workload.bytes=300000000"], "workload.bytes"),
    (["run", "ip-change", "--set", "timeline.0.address=notanip"], ".address: 'notanip' is not"),
    (["run", "ip-change", "--set", "timeline.0.address=2001:db8::5"], "not of the family"),
    (["run", "network-switch", "--set", "timeline.0.host=server"], "'server' runs no client"),
    (["run", "network-switch", "--set", "client.interface=eth9"], "client.interface: host"),
    (["run", "nat-rebinding", "--set", "links.nolink.delay_ms=3"], "links.nolink: no such link"),
    (["run", "spoofed-address", "--set", "attackers.0.watch=client.eth5"], "attackers[0].watch"),
    (["run", "all", "--backend", "lab"], "--backend lab runs one scenario at a time"),
    (["run", "all", "--pcap", "x.pcap"], "with `all` use --out DIR"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_INPUTS)
def test_bad_input_is_one_line_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and err.startswith("quicmig: error: ")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "nat-rebinding", "--seed", "x"], "argument --seed: invalid int value"),
        (["run"], "the following arguments are required"),
        (["teleport"], "invalid choice: 'teleport'"),
    ],
)
def test_usage_errors_are_one_line_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "--help" in err
    assert err.count("\n") == 1


def test_bad_file_and_paths_leave_nothing_behind(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("name = 'x'\n[workload\n")
    out = tmp_path / "out.json"
    assert main(["run", str(broken), "--json", str(out)]) == 2
    assert main(["run", "nat-rebinding", "--json", str(tmp_path / "missing" / "r.json")]) == 2
    assert main(["run", "nat-rebinding", "--plot", str(tmp_path / "fig.bmp")]) == 2
    folder = tmp_path / "folder"
    folder.mkdir()
    pcap = tmp_path / "p.pcap"
    assert main(["run", "nat-rebinding", "--pcap", str(pcap), "--keylog", str(folder)]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.toml", "folder"]
    assert not any(folder.iterdir())


def test_no_traceback_from_the_real_process() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "quicmig", "run", "nope.toml"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("quicmig: error: cannot read scenario file nope.toml")


def test_run_all_reports_every_scenario_as_expected(tmp_path: Path) -> None:
    summary = tmp_path / "all.json"
    assert main(["run", "all", "--out", str(tmp_path / "out"), "--json", str(summary), "-q"]) == 0
    runs = json.loads(summary.read_text())["runs"]
    assert [r["scenario"] for r in runs] == builtin_names()
    assert all(r["verdict"] == r["expected_verdict"] for r in runs)
    for name in builtin_names():
        assert json.loads((tmp_path / "out" / f"{name}.json").read_text())["scenario"] == name
        assert (tmp_path / "out" / f"{name}.png").read_bytes().startswith(PNG_MAGIC)


def test_a_reader_that_goes_away_does_not_cost_the_json(tmp_path: Path) -> None:
    """`quicmig run NAME --json F | head -1`: once head has gone, printing fails with EPIPE;
    the run must still write F, whole, and say nothing on stderr."""
    out = tmp_path / "run.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "quicmig", "run", "cid-rotation", "--json", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()  # the reader is gone before the table is printed
    with proc.stderr:
        err = proc.stderr.read().decode()
    assert proc.wait(60) == 0, err
    assert err == ""
    assert json.loads(out.read_text())["scenario"] == "cid-rotation"
