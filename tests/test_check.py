"""`quicmig check` on captures with a known outcome, made by the simulator in the test.

Each capture's findings are compared with the simulator's own Result for the same run: the
same client addresses, the same detection time (pcap timestamps are virtual time), the same
PATH_CHALLENGE findings.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import BuiltinRuns, Run

from quicmig.capture.tshark import read_datagrams
from quicmig.cli import main
from quicmig.core.results import Result
from quicmig.model.verdicts import CheckState

pytestmark = [
    pytest.mark.tshark,
    pytest.mark.skipif(
        shutil.which("tshark") is None, reason="tshark is not installed (apt-get install tshark)"
    ),
]
PASSED, FAILED = CheckState.PASSED.value, CheckState.FAILED.value
UNSUPPORTED, NOT_APPLICABLE = CheckState.UNSUPPORTED.value, CheckState.NOT_APPLICABLE.value


@dataclass(frozen=True, slots=True)
class SimCapture:
    pcap: Path
    keylog: Path
    result: Result


Captures = Callable[[str], SimCapture]


@pytest.fixture(scope="module")
def sim_capture(builtin_run: BuiltinRuns) -> Captures:
    def capture(name: str) -> SimCapture:
        run: Run = builtin_run(name, capture=True)
        files = run.result.files
        return SimCapture(Path(files["pcap"]), Path(files["keylog"]), run.result)

    return capture


def check(
    capture: SimCapture | Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    *extra: str,
    keylog: Path | None = None,
) -> tuple[int, dict[str, Any], str]:
    pcap = capture.pcap if isinstance(capture, SimCapture) else capture
    keys = capture.keylog if isinstance(capture, SimCapture) else keylog
    out = tmp_path / "check.json"
    argv = ["check", str(pcap), "--json", str(out), *extra]
    if keys is not None:
        argv += ["--keylog", str(keys)]
    code = main(argv)
    text = capsys.readouterr().out
    return code, json.loads(out.read_text()), text


def states(report: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["state"] for c in report["checks"]}


def connections(report: dict[str, Any]) -> list[dict[str, Any]]:
    return list(report["stats"]["connections"])


def assert_same_migrations(report: dict[str, Any], result: Result) -> None:
    """The capture's migrations are the simulator tracker's, one for one: the same tracker
    fed by decrypted capture packets instead of by the tap."""
    seen = Result.from_dict(report)
    assert seen.backend == "capture"
    assert len(seen.migrations) == len(result.migrations) >= 1
    start = report["stats"]["start_epoch"]
    for found, sim in zip(seen.migrations, result.migrations, strict=True):
        assert (found.observed, found.old_peer, found.new_peer) == (
            sim.observed,
            sim.old_peer,
            sim.new_peer,
        )
        assert start + found.detected_at == pytest.approx(sim.detected_at, abs=1e-5)
        assert found.first_packet_had_challenge == sim.first_packet_had_challenge
        assert (found.validated_at is not None) == (sim.validated_at is not None)
        if sim.validation_rtt is not None:
            assert found.validation_rtt == pytest.approx(sim.validation_rtt, abs=1e-5)
        assert found.cid_changed == sim.cid_changed
    assert seen.paths_seen == result.paths_seen


def test_nat_rebinding_capture_passes(
    sim_capture: Captures, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capture = sim_capture("nat-rebinding")
    assert capture.result.verdict.value == "passed"
    code, report, text = check(capture, tmp_path, capsys)
    assert code == 0
    assert report["verdict"] == "passed" and report["migrations"]
    found = states(report)
    for name in ("multiple-paths", "first-packet-challenge", "challenges-answered"):
        assert found[name] == PASSED
    # What a capture cannot show is not applicable, never passed.
    assert found["transfer-intact"] == NOT_APPLICABLE
    assert_same_migrations(report, capture.result)
    assert "Verdict: PASSED" in text


def test_check_and_run_judge_alike(
    sim_capture: Captures, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Held to the scenario's expectations, a capture gets the run's checks, with the same
    outcome for each, but for what a capture does not hold: the application's bytes, and
    the network changes (where the network put the client)."""
    capture = sim_capture("nat-rebinding")
    code, report, _ = check(capture, tmp_path, capsys, "--scenario", "nat-rebinding")
    assert code == 0
    run = {c.name: c.state.value for c in capture.result.checks}
    found = states(report)
    assert list(found) == list(run)
    for unseen in ("transfer-intact", "migration-target"):
        assert found.pop(unseen) == NOT_APPLICABLE
        run.pop(unseen)
    assert found == run


def test_blackhole_capture_fails_first_packet_challenge_like_the_simulator(
    sim_capture: Captures, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capture = sim_capture("blackhole")
    sim_checks = {c.name: c.state.value for c in capture.result.checks}
    assert sim_checks["first-packet-challenge"] == FAILED
    code, report, _ = check(capture, tmp_path, capsys)
    assert code == 1
    checks = states(report)
    assert checks["first-packet-challenge"] == FAILED
    assert checks["challenges-answered"] == NOT_APPLICABLE  # its first packet had none
    assert checks["new-dcid-after-active-migration"] == NOT_APPLICABLE
    assert report["verdict"] == "failed"
    assert report["verdicts"]["rfc9000"] == "passed"  # validated before use beyond 3x
    assert_same_migrations(report, capture.result)
    # --active: the client moved on purpose, and it did take a new DCID.
    code, report, _ = check(capture, tmp_path, capsys, "--active")
    assert states(report)["new-dcid-after-active-migration"] == PASSED


def test_no_migration_is_said_clearly(
    sim_capture: Captures, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capture = sim_capture("cid-rotation")
    assert capture.result.migrations == [] and len(capture.result.cid_rotations) == 2
    code, report, text = check(capture, tmp_path, capsys)
    assert code == 1
    assert report["migrations"] == [] and report["verdict"] == "failed"
    assert report["reasons"] == [
        "migrations-observed: server saw 0 migrations, expected at least 1"
    ]
    assert len(report["cid_rotations"]) == 2  # what it did see: new DCIDs on one path
    assert "no migration in this capture" in text
    (conn,) = connections(report)
    assert len(conn["paths"]) == 1


def drop_records(source: Path, target: Path, numbers: set[int]) -> int:
    """Copy a classic pcap without the records whose 1-based frame numbers are in `numbers`."""
    data = source.read_bytes()
    out = bytearray(data[:24])
    offset, number, dropped = 24, 0, 0
    while offset < len(data):
        length = struct.unpack_from("<I", data, offset + 8)[0]
        number += 1
        record = data[offset : offset + 16 + length]
        offset += 16 + length
        if number in numbers:
            dropped += 1
        else:
            out += record
    target.write_bytes(bytes(out))
    return dropped


def test_unanswered_challenge_fails(
    sim_capture: Captures, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capture = sim_capture("nat-rebinding")
    datagrams = read_datagrams(capture.pcap, capture.keylog)
    with_response = {d.number for d in datagrams if d.responses}
    assert with_response, "the simulated capture holds a PATH_RESPONSE"
    filtered = tmp_path / "no-response.pcap"
    assert drop_records(capture.pcap, filtered, with_response) == len(with_response)
    code, report, _ = check(filtered, tmp_path, capsys, keylog=capture.keylog)
    assert code == 1
    checks = {c["name"]: (c["state"], c["detail"]) for c in report["checks"]}
    assert checks["challenges-answered"] == (
        FAILED,
        "0 of 1 PATH_CHALLENGE frames in the server's first packet on a new path answered",
    )
    assert checks["paths-validated"][0] == FAILED
    assert checks["first-packet-challenge"][0] == PASSED
    (mig,) = report["migrations"]
    assert mig["validated_at"] is None


def test_pcapng_gives_the_same_findings(
    sim_capture: Captures, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capture = sim_capture("nat-rebinding")
    ng = tmp_path / "x.pcapng"
    subprocess.run(
        ["tshark", "-r", str(capture.pcap), "-F", "pcapng", "-w", str(ng)],
        capture_output=True,
        check=True,
        timeout=60,
    )
    assert ng.read_bytes()[:4] == b"\x0a\x0d\x0d\x0a"
    code, report, _ = check(ng, tmp_path, capsys, keylog=capture.keylog)
    assert code == 0
    assert_same_migrations(report, capture.result)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


def test_bad_input_is_one_line_exit_2(
    sim_capture: Captures, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capture = sim_capture("nat-rebinding")
    other = sim_capture("cid-rotation")
    cases = {
        "not a pcap or pcapng file": ["check", str(capture.keylog)],
        "decrypts none of the": ["check", str(capture.pcap), "--keylog", str(other.keylog)],
        "are encrypted; pass the TLS key log": ["check", str(capture.pcap)],
        "no such file": ["check", str(tmp_path / "missing.pcap")],
    }
    for expected, argv in cases.items():
        code, err = run_cli(argv, capsys)
        assert code == 2, argv
        assert err.count("\n") == 1 and expected in err, err


def test_tshark_missing_or_too_old(
    sim_capture: Captures,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    capture = sim_capture("cid-rotation")
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    code, err = run_cli(["check", str(capture.pcap), "--keylog", str(capture.keylog)], capsys)
    assert code == 1 and "tshark is not installed" in err and "apt-get install tshark" in err
    fake = empty / "tshark"
    fake.write_text("#!/bin/sh\necho 'TShark (Wireshark) 3.2.3 (Git v3.2.3)'\n")
    fake.chmod(0o755)
    code, err = run_cli(["check", str(capture.pcap), "--keylog", str(capture.keylog)], capsys)
    assert code == 1 and "tshark 3.2.3 is too old" in err and err.count("\n") == 1
    assert os.environ["PATH"] == str(empty)


def merge(tmp_path: Path, name: str, *captures: SimCapture) -> Path:
    """One capture holding several runs' packets, as mergecap (Wireshark's) makes it."""
    merged = tmp_path / name
    if shutil.which("mergecap") is None:
        pytest.skip("mergecap is not installed (it comes with tshark)")
    command = ["mergecap", "-F", "pcap", "-w", str(merged), *(str(c.pcap) for c in captures)]
    subprocess.run(command, capture_output=True, check=True, timeout=60)
    return merged


def test_a_connection_the_key_log_cannot_decrypt_is_named_and_not_passed(
    sim_capture: Captures, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two runs in one capture, the key log of one: the other's port changes are hidden."""
    rebinding, other = sim_capture("nat-rebinding"), sim_capture("rebind-port")
    merged = merge(tmp_path, "two.pcap", rebinding, other)
    code, report, text = check(merged, tmp_path, capsys, keylog=rebinding.keylog)
    assert code == 1
    assert report["verdict"] == "unsupported"
    hidden = [c for c in connections(report) if c["undecrypted"]]
    (conn,) = hidden
    assert conn["datagrams_1rtt"] > 0 and conn["decrypted"] == 0
    assert len(conn["paths"]) > 1, "its client moved, but only the UDP header shows it"
    checks = {c["name"]: (c["state"], c["detail"]) for c in report["checks"]}
    state, detail = checks["all-connections-decrypted"]
    assert state == UNSUPPORTED
    # Named by what is in the clear: the client's address, the Initial DCID, and the
    # ClientHello's random, which is how the missing key log is keyed.
    (random,) = {
        line.split()[1]
        for line in other.keylog.read_text().splitlines()
        if line.startswith("CLIENT_TRAFFIC_SECRET_0")
    }
    assert conn["client_random"] == random
    assert conn["paths"][0]["peer"] in detail and conn["initial_dcid"] in detail
    assert random[:16] in detail and "key log missing for 1 of 2 connections" in detail
    # The decrypted connection's checks still ran, and passed.
    assert checks["first-packet-challenge"][0] == PASSED
    assert f"⚠ {detail}" in text.splitlines()  # said in one line, not wrapped
    # With both key logs (concatenated, as the message says) every connection is checked.
    both = tmp_path / "both.keys"
    both.write_text(rebinding.keylog.read_text() + other.keylog.read_text())
    code, report, _ = check(merged, tmp_path, capsys, keylog=both)
    assert code == 0 and report["verdict"] == "passed"
    assert not any(c["undecrypted"] for c in connections(report))
    assert len(report["migrations"]) == len(rebinding.result.migrations) + len(
        other.result.migrations
    )


def test_no_migration_is_not_claimed_when_a_connection_is_hidden(
    sim_capture: Captures, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    still, moved = sim_capture("cid-rotation"), sim_capture("nat-rebinding")
    merged = merge(tmp_path, "hidden.pcap", still, moved)
    code, report, _ = check(merged, tmp_path, capsys, "-q", keylog=still.keylog)
    assert code == 1 and report["verdict"] == "unsupported"
    checks = states(report)
    assert checks["all-connections-decrypted"] == UNSUPPORTED
    # "No migration" cannot be claimed: the verdict rests on the hidden connection.
    assert report["reasons"][0].startswith("all-connections-decrypted:")


def test_capture_cut_short_is_analysed_up_to_the_cut(
    sim_capture: Captures, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A writer killed mid-packet: the whole packets before the cut are checked, with a
    one-line warning (the migration is early in the capture, the cut late)."""
    capture = sim_capture("nat-rebinding")
    data = capture.pcap.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) * 9 // 10 - 7])
    out = tmp_path / "cut.json"
    code = main(["check", str(cut), "--keylog", str(capture.keylog), "--json", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    report = json.loads(out.read_text())
    assert report["verdict"] == "passed"
    assert_same_migrations(report, capture.result)
    (warning,) = report["stats"]["warnings"]
    assert "cut short in the middle of a packet" in warning
    assert err == f"quicmig: warning: {warning}\n"
    # Cut before the first whole packet: nothing to analyse, an error.
    empty = tmp_path / "header-only.pcap"
    empty.write_bytes(data[:30])
    code, err = run_cli(["check", str(empty), "--keylog", str(capture.keylog)], capsys)
    assert code == 2 and err.count("\n") == 1 and "cut short" in err


def test_output_paths_are_checked_before_running(
    sim_capture: Captures, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capture = sim_capture("nat-rebinding")
    folder = tmp_path / "out"
    folder.mkdir()
    base = ["check", str(capture.pcap), "--keylog", str(capture.keylog), "--json"]
    for target, expected in (
        (folder, "is a directory"),
        (Path("/proc/x.json"), "cannot create files in /proc"),
        (tmp_path / "missing" / "x.json", "does not exist"),
    ):
        code, err = run_cli([*base, str(target)], capsys)
        assert code == 2 and err.count("\n") == 1 and expected in err, err
    assert list(folder.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
