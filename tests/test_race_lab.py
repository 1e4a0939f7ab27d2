"""`quicmig lab race`: QUIC, TCP and MPTCP through the same WiFi -> cellular switch in the
namespace lab, judged from the wire (the server side's capture, TLS decrypted with the
client's key log) and from both ends' sockets; and its refusals of bad input.

The race itself needs root, ip, nft, conntrack, /dev/net/tun and MPTCP; the wire checks
tshark. Elsewhere those tests skip, saying which is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from labnet import UNAVAILABLE, needs_lab

from quicmig.cli import main
from quicmig.core.app import content
from quicmig.core.seeds import workload_seed
from quicmig.lab import system
from quicmig.lab.owners import leftovers, namespaces, new_prefix, owner_file
from quicmig.race import mptcp

HOME, CARRIER = "198.51.100.10", "198.51.100.20"  # the phone topology's NATs
WIFI_IP, CELLULAR_IP = "192.0.2.10", "192.0.2.20"
SIZE = 1_000_000  # bytes
NO_MPTCP = mptcp.unavailable() if UNAVAILABLE is None else UNAVAILABLE
needs_mptcp = pytest.mark.skipif(NO_MPTCP is not None, reason=NO_MPTCP or "")


def _nothing_left(run: dict[str, Any]) -> None:
    prefix = run["stats"]["lab"]["prefix"]
    assert leftovers(prefix) == []
    assert not [name for name in namespaces() if name.startswith(prefix)]
    assert not owner_file(prefix).exists()


@pytest.fixture(scope="module")
def race(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict[str, Any], Path]:
    """The break-before-make race, 1 MB (the move once 250 kB have arrived), cellular
    without its random loss (a lost SYN or PATH_CHALLENGE would decide the checks), TCP's
    read timeout 2 s."""
    folder = tmp_path_factory.mktemp("race")
    argv = ["lab", "race", "network-switch", "--download", str(SIZE), "--stall-timeout", "2"]
    argv += ["--set", "links.cellular.loss_pct=0"]
    argv += ["--json", str(folder / "race.json"), "--pcap", str(folder)]
    code = main(argv)
    data: dict[str, Any] = json.loads((folder / "race.json").read_text())
    return code, data, folder


def _runs(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {run["transport"]: run for run in data["runs"]}


def _tshark(pcap: Path, keys: Path, fields: list[str], where: str) -> list[list[str]]:
    args = ["tshark", "-r", str(pcap), "-o", f"tls.keylog_file:{keys}", "-Y", where, "-T"]
    args += ["fields", *(x for f in fields for x in ("-e", f))]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=60).stdout
    return [line.split("\t") for line in out.splitlines() if line.strip()]


@needs_lab
@needs_mptcp
def test_every_body_has_the_servers_digest(race: tuple[int, dict[str, Any], Path]) -> None:
    code, data, _ = race
    assert code == 0
    runs = _runs(data)
    assert list(runs) == ["quic", "tcp", "mptcp"]
    prefixes = {run["stats"]["lab"]["prefix"] for run in runs.values()}
    assert len(prefixes) == 3  # a lab of its own for each, and each one gone
    for run in runs.values():
        _nothing_left(run)
    digest = hashlib.sha256(content(SIZE, workload_seed(1))).hexdigest()
    for transport, run in runs.items():
        transfer = run["transfer"]
        assert transfer["intact"] and transfer["bytes"] == SIZE, transport
        assert transfer["sha256"] == digest, transport
        (change,) = run["network_changes"]
        assert change["kind"] == "interface-switch" and change["expect_ip"] == CARRIER


@needs_lab
@needs_mptcp
def test_quic_kept_one_connection_and_migrated(race: tuple[int, dict[str, Any], Path]) -> None:
    quic = _runs(race[1])["quic"]
    (mig,) = quic["migrations"]  # the server's tracker, from the packets it received
    assert mig["observed"] == "address_change" and mig["validated_at"] is not None
    assert mig["old_peer"].startswith(HOME) and mig["new_peer"].startswith(CARRIER)
    assert quic["stats"]["continuity"]["connections"] == 1
    assert quic["stats"]["continuity"]["survived"] is True


@needs_lab
@needs_mptcp
def test_tcp_broke_and_resumed_with_a_new_handshake_and_range(
    race: tuple[int, dict[str, Any], Path],
) -> None:
    _, data, folder = race
    tcp = _runs(data)["tcp"]
    first, second = tcp["stats"]["tcp"]["attempts"]  # the client's sockets
    assert first["local"].startswith(WIFI_IP) and second["local"].startswith(CELLULAR_IP)
    assert first["end"] == "stalled 2 s" and first["ended_at"] > tcp["network_changes"][0]["at"]
    assert second["range_start"] == first["received"] > 0 and second["status"] == 206
    old, new = tcp["stats"]["tcp"]["accepted"]  # the server's sockets
    assert old["peer"].startswith(HOME) and new["peer"].startswith(CARRIER)
    assert old["range_start"] is None and new["range_start"] == second["range_start"]
    assert tcp["stats"]["continuity"]["survived"] is False
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed: the wire checks are skipped")
    pcap, keys = folder / "tcp.pcap", folder / "tcp.keys"
    syns = _tshark(pcap, keys, ["ip.src"], "tcp.flags.syn == 1 && tcp.flags.ack == 0")
    assert syns == [[HOME], [CARRIER]]  # two TCP handshakes, from the old and the new path
    hellos = _tshark(pcap, keys, ["ip.src"], "tls.handshake.type == 1")
    assert hellos == [[HOME], [CARRIER]]  # two TLS handshakes
    requests = _tshark(pcap, keys, ["ip.src", "http.request.line"], "http.request")
    assert [r[0] for r in requests] == [HOME, CARRIER]
    assert "Range" not in requests[0][1]
    assert f"Range: bytes={second['range_start']}-" in requests[1][1]


@needs_lab
@needs_mptcp
def test_mptcp_kept_one_connection_with_a_subflow_on_cellular(
    race: tuple[int, dict[str, Any], Path],
) -> None:
    _, data, folder = race
    run = _runs(data)["mptcp"]
    (attempt,) = run["stats"]["tcp"]["attempts"]
    (served,) = run["stats"]["tcp"]["accepted"]
    assert attempt["mptcp"] is True and served["mptcp"] is True  # MPTCP_INFO, both ends
    # The client's socket lists a subflow from its cellular address, the server's one from
    # the carrier NAT, and it carried the bytes after WiFi went down.
    locals_ = {s["local"].rpartition(":")[0]: s["bytes"] for s in attempt["subflows"]}
    remotes = {s["remote"].rpartition(":")[0]: s["bytes"] for s in served["subflows"]}
    assert set(locals_) == {WIFI_IP, CELLULAR_IP} and set(remotes) == {HOME, CARRIER}
    assert locals_[CELLULAR_IP] > SIZE // 2 and remotes[CARRIER] > SIZE // 2
    assert run["stats"]["continuity"]["survived"] is True
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed: the wire checks are skipped")
    pcap, keys = folder / "mptcp.pcap", folder / "mptcp.keys"
    where = "tcp.flags.syn == 1 && tcp.flags.ack == 0"
    syns = _tshark(pcap, keys, ["ip.src", "tcp.options.mptcp.subtype"], where)
    assert syns == [[HOME, "0"], [CARRIER, "1"]]  # MP_CAPABLE on WiFi, MP_JOIN on cellular
    later = _tshark(pcap, keys, ["frame.time_relative"], f"ip.dst == {CARRIER} && tcp.len > 0")
    assert len(later) > 100  # the server's data went on over the cellular subflow


def _refused(
    argv: list[str], capsys: pytest.CaptureFixture[str], words: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exit 2 with one line, and no lab was begun: every prefix the run would have used is
    recorded, and none of them left a namespace, an owner file or anything else."""
    from quicmig.lab import build

    made: list[str] = []

    def recorded() -> str:
        made.append(new_prefix())
        return made[-1]

    monkeypatch.setattr(build, "new_prefix", recorded)
    assert main(["lab", "race", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err
    assert "Traceback" not in err
    for prefix in made:
        assert leftovers(prefix) == [] and not owner_file(prefix).exists()
        assert not [name for name in namespaces() if name.startswith(prefix)]


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--transports", "quic,sctp"], "unknown sctp"),
        (["--stall-timeout", "0"], "--stall-timeout 0"),
        (["--set", "links.wifi.delay_ms=20000"], "above the lab's 10000 ms"),
        (["--set", "links.cellular.loss_pct=150"], "loss_pct: 150 is outside 0-100"),
        (["--plot", "race.txt"], "use a .png, .svg or .pdf"),
        (["messages"], "unknown scenario 'messages'"),
    ],
)
def test_bad_input_is_one_line_and_builds_nothing(
    argv: list[str],
    words: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.chdir(tmp_path)
    _refused(argv, capsys, words, monkeypatch)
    assert list(tmp_path.iterdir()) == []


def test_not_root_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(system, "_capabilities", lambda: 0)
    _refused([], capsys, "sudo $(which quicmig) lab race", monkeypatch)


def test_mptcp_disabled_is_refused_when_asked_for(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    switch = tmp_path / "enabled"
    switch.write_text("0\n")
    monkeypatch.setattr(mptcp, "MPTCP_SYSCTL", switch)
    monkeypatch.setattr(system, "require", lambda command: None)  # root or not
    _refused(["--transports", "tcp,mptcp"], capsys, "net.mptcp.enabled = 0", monkeypatch)


def test_missing_ip_mptcp_is_refused_when_asked_for(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """An iproute2 without `ip mptcp` (before 5.8) answers as this stand-in does."""
    if (off := mptcp.unavailable()) is not None:
        pytest.skip(f"MPTCP is unavailable here, which the refusal names first: {off}")
    fake = tmp_path / "ip"
    real = shutil.which("ip") or "/usr/sbin/ip"
    fake.write_text(
        '#!/bin/sh\nif [ "$1" = mptcp ]; then\n'
        '  echo \'Object "mptcp" is unknown, try "ip help".\' >&2; exit 255\nfi\n'
        f'exec {real} "$@"\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(system, "require", lambda command: None)
    _refused(["--transports", "mptcp"], capsys, "`ip mptcp` is missing", monkeypatch)


@needs_lab
def test_a_rate_the_element_cannot_carry_is_warned_about_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["lab", "race", "no-move", "--transports", "tcp", "--download", "200k"]
    assert main([*argv, "--set", "links.wifi.rate_mbit=1000"]) == 0
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if "link wifi" in line]
    assert "45,000" in line and "1000 Mbit/s" in line
