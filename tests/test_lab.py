"""`quicmig lab`: the namespace network, its migrations, and that it leaves nothing behind.

The tests that build namespaces need root (or CAP_NET_ADMIN + CAP_SYS_ADMIN), a working
`ip netns add`, nft and conntrack; elsewhere they skip saying which is missing. CI runs them as
root after `apt-get install -y nftables conntrack iproute2`.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quicmig.cli import main
from quicmig.errors import QuicmigError
from quicmig.lab import network, system
from quicmig.lab.network import LabNetwork, NetworkMove, Process, Shaping, leftovers, new_prefix
from quicmig.lab.run import LabOptions, pair, run_lab


def _lab_unavailable() -> str | None:
    """Why the namespace tests cannot run here, or None."""
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if not system.privileged():
        return "needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN) to create network namespaces"
    for tool in ("ip", "nft", "conntrack", "tc"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install -y iproute2 nftables conntrack)"
    probe = f"{new_prefix()}-probe"
    added = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if added.returncode != 0:
        return f"`ip netns add` is not permitted here: {added.stderr.strip()}"
    try:
        nft = subprocess.run(
            ["ip", "netns", "exec", probe, "nft", "list", "tables"], capture_output=True, text=True
        )
        if nft.returncode != 0:
            return f"nftables does not work in a namespace here: {nft.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
    return None


UNAVAILABLE = _lab_unavailable()
needs_lab = pytest.mark.skipif(UNAVAILABLE is not None, reason=UNAVAILABLE or "")


@pytest.fixture(scope="module")
def caps() -> system.Capabilities:
    return system.detect(f"{new_prefix()}-probe")


@needs_lab
def test_full_run_rebinding_switch_ip_change(caps: system.Capabilities, tmp_path: Path) -> None:
    """Each kernel-made move is seen by the server's tracker as it should be, and validated."""
    prefix = new_prefix()
    lines: list[str] = []
    result = run_lab(
        LabOptions(download=3_000_000, rate_mbit=20, pcap_dir=tmp_path / "pcap"),
        log=lines.append,
        capabilities=caps,
        prefix=prefix,
    )
    assert [m.move.kind for m in result.moves] == ["nat-rebinding", "network-switch", "ip-change"]
    assert [m.observed["observed"] if m.observed else None for m in result.moves] == [
        "port_change",
        "address_change",
        "address_change",
    ]
    for item in result.moves:
        assert item.confirmed, item.why
        assert item.observed is not None and item.observed["validated_at"] is not None
        assert item.observed["challenges"] >= 1
        # The client never knew: it kept its connection ID (a passive migration).
        assert item.observed["cid_changed"] is False
    rebinding, switch, change = (m.observed for m in result.moves)
    assert rebinding is not None and switch is not None and change is not None
    assert rebinding["old_peer"].startswith("10.199.101.2:40")  # first port range
    assert rebinding["new_peer"].startswith("10.199.101.2:41")  # the NAT's next range
    assert switch["new_peer"].startswith("10.199.102.2:")  # cellular, via the carrier side
    assert change["new_peer"].startswith("10.199.102.3:")  # the replaced address
    assert result.download is not None and result.download["received"] == 3_000_000
    assert result.download_intact is True
    assert result.passed
    assert result.to_json()["verdict"] == "passed"
    for name in ("router-wifi.pcap", "router-cellular.pcap", "router-server.pcap", "keys.log"):
        assert (tmp_path / "pcap" / name).stat().st_size > 0
    assert leftovers(prefix) == []


@needs_lab
def test_messages_mode_and_switch_back(caps: system.Capabilities) -> None:
    """Between messages; the switch back to WiFi lands on a mapping validated before."""
    prefix = new_prefix()
    result = run_lab(
        LabOptions(
            migrate=("network-switch", "network-switch"), download=None, messages=1, gap=0.05
        ),
        log=lambda line: None,
        capabilities=caps,
        prefix=prefix,
    )
    assert result.messages is not None and result.messages["count"] == 3
    assert [m.observed["observed"] if m.observed else None for m in result.moves] == [
        "address_change",
        "address_change",
    ]
    assert all(m.confirmed for m in result.moves), [m.why for m in result.moves]
    assert leftovers(prefix) == []


@needs_lab
def test_cleanup_after_server_killed_mid_run(caps: system.Capabilities) -> None:
    prefix = new_prefix()
    seen: list[str] = []

    def kill_server(net: LabNetwork, move: NetworkMove, processes: dict[str, Process]) -> None:
        seen.extend(n for n in network.namespaces() if n.startswith(prefix))
        processes["server"].popen.kill()

    with pytest.raises(QuicmigError, match=r"server exited|client"):
        run_lab(
            LabOptions(download=3_000_000, timeout=2.0),
            log=lambda line: None,
            on_move=kill_server,
            capabilities=caps,
            prefix=prefix,
        )
    assert len(seen) == 3  # the failure came mid-run, with the network up
    assert leftovers(prefix) == []


@needs_lab
def test_cleanup_after_exception_inside_the_run(caps: system.Capabilities) -> None:
    prefix = new_prefix()

    class Boom(Exception):
        pass

    pids: list[int] = []

    def boom(net: LabNetwork, move: NetworkMove, processes: dict[str, Process]) -> None:
        pids.extend(p.popen.pid for p in processes.values())
        assert all(p.popen.poll() is None for p in processes.values())
        raise Boom

    with pytest.raises(Boom):
        run_lab(
            LabOptions(download=3_000_000),
            log=lambda line: None,
            on_move=boom,
            capabilities=caps,
            prefix=prefix,
        )
    assert leftovers(prefix) == []
    assert len(pids) == 2
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


@needs_lab
def test_sigterm_runs_the_cleanup(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "quicmig", "lab", "run", "--download", "50M", "--rate-mbit", "10"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    assert process.stdout is not None
    prefix = None
    deadline = time.monotonic() + 30
    for line in process.stdout:
        match = re.search(r"Lab (qm[0-9a-f]{6}):", line)
        if match:
            prefix = match.group(1)
        if "Client connected" in line or time.monotonic() > deadline:
            break
    assert prefix is not None and leftovers(prefix)  # up and running
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=30)[0]
    assert process.returncode == 130, output
    assert "interrupted" in output
    assert leftovers(prefix) == []


@needs_lab
def test_lab_clean_removes_leftovers_and_only_them(capsys: pytest.CaptureFixture[str]) -> None:
    prefix = new_prefix()
    caps = system.Capabilities(netem=False, dumpcap=False, missing=())
    net = LabNetwork(prefix, Shaping(0, 0, 0), caps, Path("/tmp"))
    net.build()  # and never torn down: what a run killed with SIGKILL leaves
    orphan = subprocess.Popen(
        ["ip", "netns", "exec", net.server_ns, "sleep", "60"], start_new_session=True
    )
    other = f"quicmigtest-{secrets.token_hex(3)}"  # not a lab name: must survive
    subprocess.run(["ip", "netns", "add", other], check=True)
    try:
        found = leftovers(prefix)
        assert f"namespace {net.client_ns}" in found and f"namespace {net.server_ns}" in found
        assert main(["lab", "clean"]) == 0
        out = capsys.readouterr().out
        assert f"removed namespace {net.router_ns}" in out
        assert leftovers(prefix) == []
        assert other in network.namespaces()
        assert orphan.wait(timeout=10) != 0  # killed
    finally:
        subprocess.run(["ip", "netns", "delete", other], capture_output=True)
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()
        network.clean(prefix)


def test_bad_input_is_one_line_exit_2_and_builds_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    before = _lab_names()
    for argv, field in (
        (["--migrate", "nat-rebinding,teleport"], "--migrate"),
        (["--migrate", ""], "--migrate"),
        (["--download", "lots"], "--download"),
        (["--loss-pct", "100"], "--loss-pct"),
        (["--rate-mbit", "-1"], "--rate-mbit"),
        (["--gap", "-0.5"], "--gap"),
        (["--json", str(tmp_path)], "--json"),
    ):
        extra = [] if field == "--json" else ["--json", str(tmp_path / "out.json")]
        assert main(["lab", "run", *argv, *extra]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("quicmig: error: ") and field in err, err
    assert not (tmp_path / "out.json").exists()
    assert _lab_names() == before


def _lab_names() -> list[str]:
    if UNAVAILABLE is not None:
        return []
    return leftovers()


def test_without_privileges_says_what_is_needed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(system, "privileged", lambda: False)
    for argv in (["lab", "run"], ["lab", "clean"]):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0
        assert "needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN)" in err and "sudo" in err


def test_pairing_rules() -> None:
    """Classification, public address, rebinding port range and validation are all checked."""

    def move(kind: str, public: str) -> NetworkMove:
        return NetworkMove(kind, 1.0, "", "10.199.101.2", public, (41000, 41999))

    def seen(old: str, new: str, observed: str, validated: float | None) -> dict[str, object]:
        return {"old_peer": old, "new_peer": new, "observed": observed, "validated_at": validated}

    record = {
        "migrations": [
            seen("10.199.101.2:40001", "10.199.101.2:41001", "port_change", 1.0),
            seen("10.199.101.2:41001", "10.199.102.2:41002", "address_change", 2.0),
            seen("10.199.102.2:41002", "10.199.101.2:41001", "address_change", None),
            seen("10.199.101.2:41001", "10.199.101.2:40005", "port_change", 3.0),
            seen("10.199.101.2:40005", "10.199.102.9:41003", "address_change", None),
        ]
    }
    results = pair(
        [
            move("nat-rebinding", "10.199.101.2"),
            move("network-switch", "10.199.102.2"),
            move("network-switch", "10.199.101.2"),  # back: validated before
            move("nat-rebinding", "10.199.101.2"),  # port outside the new range
            move("ip-change", "10.199.102.3"),  # wrong host, never validated
            move("ip-change", "10.199.102.4"),  # nothing seen
        ],
        record,
    )
    assert [r.confirmed for r in results] == [True, True, True, False, False, False]
    assert "validated earlier" in results[2].why
    assert "outside the NAT's new range" in results[3].why
    assert "10.199.102.9" in results[4].why and "never validated" in results[4].why
    assert results[5].why == "the server saw no migration"


def test_names_carry_the_run_prefix() -> None:
    prefix = new_prefix()
    assert re.fullmatch(r"qm[0-9a-f]{6}", prefix)
    caps = system.Capabilities(netem=False, dumpcap=False, missing=())
    net = LabNetwork(prefix, Shaping(0, 0, 0), caps, Path("/tmp"))
    names = [
        net.client_ns,
        net.router_ns,
        net.server_ns,
        net.table,
        net.router_server_if,
        net.server_if,
        *(net.client_if(i) for i in network.INTERFACES),
        *(net.router_if(i) for i in network.INTERFACES),
    ]
    for name in names:
        assert network.NAME.match(name), name
        assert name.startswith(prefix)
    assert all(len(name) <= 15 for name in names[4:])  # IFNAMSIZ - 1
    with pytest.raises(ValueError):
        LabNetwork("quicmig", Shaping(0, 0, 0), caps, Path("/tmp"))
    assert os.sep not in prefix
