"""`quicmig lab`: the namespace network, its migrations, and that it leaves nothing behind.

The tests that build namespaces need root (or CAP_NET_ADMIN + CAP_SYS_ADMIN), a working
`ip netns add`, nft and conntrack; elsewhere they skip saying which is missing. CI runs them as
root after `apt-get install -y nftables conntrack iproute2`.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from quicmig.cli import main
from quicmig.errors import QuicmigError
from quicmig.lab import network, system
from quicmig.lab.network import (
    LabNetwork,
    NetworkMove,
    Process,
    Shaping,
    leftovers,
    new_prefix,
    owner_file,
)
from quicmig.lab.run import (
    EXPECTED,
    LabOptions,
    LabResult,
    MoveResult,
    interop_checks,
    pair,
    run_lab,
)


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


NO_CAPS = system.Capabilities(netem=False, dumpcap=False, missing=())


@pytest.fixture(scope="module")
def caps() -> system.Capabilities:
    return system.detect(f"{new_prefix()}-probe")


@pytest.fixture
def only_these(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Limit what the global `clean()` sees to the prefixes a test appends to the list.

    Other lab runs on this machine (other tests, other pytest processes) may be going or
    keeping leftovers on purpose: the global clean of a test must not touch them. Everything
    else about it (listing, owner files, deleting, listing again) is the real thing.
    """
    mine: list[str] = []
    pattern = network.NAME

    class Mine:
        def match(self, name: str) -> re.Match[str] | None:
            return pattern.match(name) if name[:8] in mine else None

    monkeypatch.setattr(network, "NAME", Mine())
    yield mine


def _dead_pid() -> int:
    """A PID no process can have."""
    return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1


@needs_lab
def test_full_run_rebinding_switch_ip_change(
    caps: system.Capabilities, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each kernel-made move is seen by the server's tracker as it should be, and validated;
    the interop checks on the server's record agree with `quicmig check` on the capture."""
    prefix = new_prefix()
    lines: list[str] = []
    # --stack quicmig (challenge_first): stock aioquic's first packet on a new path carries
    # PATH_CHALLENGE only if the congestion window has room then, a race over real sockets
    # that the interop checks (rightly) fail.
    result = run_lab(
        LabOptions(download=3_000_000, rate_mbit=20, pcap_dir=tmp_path / "pcap", stack="quicmig"),
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
    checks = {c.name: c.passed for c in result.checks}
    assert checks == {
        "migrations-observed": True,
        "paths-validated": True,
        "multiple-paths": True,
        "first-packet-challenge": True,
        "challenges-answered": True,
    }, result.checks
    assert result.passed
    data = result.to_json()
    assert data["verdict"] == "passed" and data["options"]["stack"] == "quicmig"
    assert {c["name"] for c in data["checks"]} == set(checks)
    for name in ("router-wifi.pcap", "router-cellular.pcap", "router-server.pcap", "keys.log"):
        assert (tmp_path / "pcap" / name).stat().st_size > 0
    assert leftovers(prefix) == []
    assert not owner_file(prefix).exists()
    if shutil.which("tshark") is not None:  # the capture tells the same story
        report = tmp_path / "check.json"
        pcap = tmp_path / "pcap"
        argv = ["check", str(pcap / "router-server.pcap"), "--keylog", str(pcap / "keys.log")]
        assert main([*argv, "--json", str(report)]) == 0
        capsys.readouterr()
        (conn,) = json.loads(report.read_text())["connections"]
        seen = [(m["old_peer"], m["new_peer"]) for m in conn["migrations"]]
        observed = [m.observed for m in result.moves]
        assert seen == [(m["old_peer"], m["new_peer"]) for m in observed if m is not None]
        assert all(m["first_packet_had_challenge"] for m in conn["migrations"])


@needs_lab
def test_messages_mode_and_switch_back(caps: system.Capabilities) -> None:
    """Between messages; the switch back to WiFi lands on a mapping validated before."""
    prefix = new_prefix()
    result = run_lab(
        LabOptions(
            migrate=("network-switch", "network-switch"),
            download=None,
            messages=1,
            gap=0.05,
            stack="quicmig",
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
    back = result.moves[1].observed
    assert back is not None
    if back["validated_at"] is None:
        # Back on the WiFi mapping, validated before: aioquic does not challenge it again
        # (RFC 9000 section 9.3 allows that), and the interop checks, like `quicmig check`,
        # ask for PATH_CHALLENGE in the first packet on every new address all the same.
        checks = {c.name: c for c in result.checks}
        assert checks["first-packet-challenge"].passed is False
        assert back["new_peer"] in checks["first-packet-challenge"].detail
        assert not result.passed
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
    assert not owner_file(prefix).exists()


@needs_lab
def test_lab_clean_removes_leftovers_and_only_them(
    only_these: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = new_prefix()
    only_these.append(prefix)
    net = LabNetwork(prefix, Shaping(0, 0, 0), NO_CAPS, Path("/tmp"))
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
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commands: list[Sequence[str]] = []

    def no_run(args: Sequence[str], **kwargs: Any) -> str:
        commands.append(args)
        raise AssertionError(f"ran {args} for bad input")

    monkeypatch.setattr(system, "run", no_run)
    monkeypatch.setattr(network, "run", no_run)
    monkeypatch.setattr(system, "_capabilities", lambda: -1)  # every capability, anywhere
    a_file = tmp_path / "file"
    a_file.write_text("")
    for argv, field in (
        (["--migrate", "nat-rebinding,teleport"], "--migrate"),
        (["--migrate", ""], "--migrate"),
        (["--download", "lots"], "--download"),
        (["--loss-pct", "100"], "--loss-pct"),
        (["--rate-mbit", "-1"], "--rate-mbit"),
        (["--gap", "-0.5"], "--gap"),
        (["--json", str(tmp_path)], "--json"),
        (["--json", str(tmp_path / "missing" / "x.json")], "--json"),
        (["--json", "/proc/quicmig-test.json"], "--json"),  # root may write "anywhere"
        (["--pcap", "/proc/quicmig-test"], "--pcap"),
        (["--pcap", str(a_file)], "--pcap"),
        (["--pcap", str(a_file / "sub")], "--pcap"),
    ):
        extra = [] if field == "--json" else ["--json", str(tmp_path / "out.json")]
        assert main(["lab", "run", *argv, *extra]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("quicmig: error: ") and field in err, err
    assert not (tmp_path / "out.json").exists()
    assert commands == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # no probe file left


@pytest.mark.parametrize(
    ("capeff", "missing"),
    [
        (0, ["CAP_NET_ADMIN", "CAP_SYS_ADMIN"]),
        (1 << system.CAP_SYS_ADMIN, ["CAP_NET_ADMIN"]),  # root in a container, say
        (1 << system.CAP_NET_ADMIN, ["CAP_SYS_ADMIN"]),
    ],
)
def test_without_capabilities_says_which_are_missing(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    capeff: int,
    missing: list[str],
) -> None:
    """CapEff decides, not the euid (these tests run as root)."""
    monkeypatch.setattr(system, "_capabilities", lambda: capeff)
    assert not system.privileged()
    for argv in (["lab", "run"], ["lab", "clean"]):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0
        named = re.findall(r"CAP_\w+_ADMIN", err.partition("quicmig lab needs")[0])
        assert named == missing, err
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


def test_interop_checks_decide_the_verdict() -> None:
    """Every move confirmed, the download intact, and still failed: the server's first packet
    on the new path had no PATH_CHALLENGE (stock aioquic's race), as `quicmig check` says."""

    def migration(old: str, new: str, observed: str, first: bool) -> dict[str, Any]:
        return {
            "observed": observed, "old_peer": old, "new_peer": new, "network_change_at": None,
            "network_change": None, "detected_at": 1.0, "detection_delay": None,
            "first_packet_had_challenge": first, "challenge_sent_at": 1.1, "validated_at": 1.2,
            "validation_rtt": 0.1, "challenges": 1, "cid_changed": False,
            "server_cid_changed": False, "interruption": None, "lost_packets": 0,
            "retransmitted_bytes": 0, "a_field_of_a_newer_server": 1,
        }  # fmt: skip

    record: dict[str, Any] = {
        "paths_seen": ["10.199.101.2:40001", "10.199.101.2:41001", "10.199.102.2:41002"],
        "cid_rotations": [],
        "challenges_sent": 5,  # probes of the old path too: not the interop checks' business
        "challenges_answered": 2,
        "first_packet_challenges_sent": 1,  # the switch's first packet carried none
        "first_packet_challenges_answered": 1,
        "migrations": [
            migration("10.199.101.2:40001", "10.199.101.2:41001", "port_change", True),
            migration("10.199.101.2:41001", "10.199.102.2:41002", "address_change", False),
        ],
    }
    kinds = ("nat-rebinding", "network-switch")
    checks = {c.name: c for c in interop_checks(kinds, record)}
    assert checks["first-packet-challenge"].passed is False
    assert "10.199.102.2:41002" in checks["first-packet-challenge"].detail
    assert checks["challenges-answered"].passed is True  # 1 of 1 in a first packet
    assert all(checks[n].passed for n in ("migrations-observed", "paths-validated"))
    moves = [
        NetworkMove(kind, 1.0, "", "", record["migrations"][i]["new_peer"].split(":")[0], (0, 0))
        for i, kind in enumerate(kinds)
    ]
    result = LabResult("qm000000", NO_CAPS, LabOptions(migrate=kinds, download=None))
    result.moves = [MoveResult(m, EXPECTED[m.kind], None, True, "") for m in moves]
    result.checks = list(checks.values())
    assert not result.passed and result.to_json()["verdict"] == "failed"
    result.checks = [c for c in result.checks if c.name != "first-packet-challenge"]
    assert result.passed
    # The record's own count of first-packet challenges decides challenges-answered.
    exact = {**record, "first_packet_challenges_sent": 2, "first_packet_challenges_answered": 1}
    (answered,) = [c for c in interop_checks(kinds, exact) if c.name == "challenges-answered"]
    assert answered.passed is False and "1 of 2" in answered.detail


def test_owner_file_names_a_live_run_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(network, "OWNER_DIR", tmp_path)
    prefix = new_prefix()
    assert network.owner(prefix) is None  # no file
    with network.owned(prefix):
        assert network.owner(prefix) == os.getpid()
        assert network.owner_prefixes() == [prefix]
    assert not owner_file(prefix).exists()
    for text in (f"{_dead_pid()} -", f"{os.getpid()} 1", "garbage", "", "-5 -"):
        # a PID no process has; ours, but started at another time (reused); unreadable
        owner_file(prefix).write_text(text)
        assert network.owner(prefix) is None, text
    owner_file(prefix).write_text(f"{os.getpid()} -")  # no start time known: the PID decides
    assert network.owner(prefix) == os.getpid()


def _ip_counting_adds(
    monkeypatch: pytest.MonkeyPatch, module: Any, after: str, fail: BaseException
) -> None:
    """Make `module.run` raise `fail` right after `ip netns add <after>` succeeded."""
    real = module.run

    def run(args: Sequence[str], **kwargs: Any) -> str:
        out: str = real(args, **kwargs)
        if list(args[:3]) == ["ip", "netns", "add"] and args[3] == after:
            raise fail
        return out

    monkeypatch.setattr(module, "run", run)


@needs_lab
@pytest.mark.parametrize("fail", [KeyboardInterrupt(), QuicmigError("injected")])
def test_failure_right_after_a_namespace_is_added_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch, fail: BaseException
) -> None:
    """Ctrl-C (or an error) after `ip netns add` made the namespace, before it was recorded."""
    prefix = new_prefix()
    net = LabNetwork(prefix, Shaping(0, 0, 0), NO_CAPS, Path("/tmp"))
    _ip_counting_adds(monkeypatch, network, net.router_ns, fail)
    try:
        with pytest.raises(type(fail)), net:
            pass
        assert leftovers(prefix) == []
        assert not owner_file(prefix).exists()
    finally:
        monkeypatch.undo()
        network.clean(prefix)


@needs_lab
def test_probe_interrupted_right_after_its_add_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    prefix = new_prefix()
    _ip_counting_adds(monkeypatch, system, f"{prefix}-probe", KeyboardInterrupt())
    try:
        with pytest.raises(KeyboardInterrupt):
            system.detect(f"{prefix}-probe")
        assert leftovers(prefix) == []
    finally:
        monkeypatch.undo()
        network.clean(prefix)


@needs_lab
def test_teardown_removes_everything_with_the_prefix() -> None:
    """Also what it never recorded: what `leftovers(prefix)` finds."""
    prefix = new_prefix()
    extra = f"{prefix}-extra"
    try:
        with LabNetwork(prefix, Shaping(0, 0, 0), NO_CAPS, Path("/tmp")) as net:
            subprocess.run(["ip", "netns", "add", extra], check=True)
            net.created.remove(net.server_ns)  # as if its add had been cut short
            assert f"namespace {extra}" in leftovers(prefix)
        assert leftovers(prefix) == []
    finally:
        network.clean(prefix)


@needs_lab
def test_ctrl_c_during_teardown_waits_until_it_is_done(monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGINT and SIGTERM are held from the start of the teardown to its end, then delivered.

    With another thread about, as in a run (output readers): the kernel hands a signal the
    main thread blocks to that one, and CPython runs the Python handler all the same.
    """
    prefix = new_prefix()
    real = network._delete_namespace
    deleted: list[str] = []
    stop = threading.Event()
    bystander = threading.Thread(target=stop.wait, daemon=True)
    bystander.start()

    blocked_in_child: list[int] = []

    def delete(namespace: str) -> None:
        if not deleted:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, with the teardown under way
            time.sleep(0.05)  # time enough to be delivered, were it not held
            # The commands the teardown runs inherit the mask: the terminal's Ctrl-C reaches
            # the whole foreground process group, `ip` included.
            status = subprocess.run(["cat", "/proc/self/status"], capture_output=True, text=True)
            (line,) = [x for x in status.stdout.splitlines() if x.startswith("SigBlk:")]
            blocked_in_child.append(int(line.split()[1], 16))
        real(namespace)
        deleted.append(namespace)

    monkeypatch.setattr(network, "_delete_namespace", delete)
    try:
        with (
            pytest.raises(KeyboardInterrupt),
            LabNetwork(prefix, Shaping(0, 0, 0), NO_CAPS, Path("/tmp")),
        ):
            pass
        assert len(deleted) == 3  # all of them, then the KeyboardInterrupt
        for sig in (signal.SIGINT, signal.SIGTERM):
            assert blocked_in_child[0] >> (sig - 1) & 1, hex(blocked_in_child[0])
        assert leftovers(prefix) == []
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        stop.set()
        network.clean(prefix)


def test_only_the_first_signal_interrupts_a_run() -> None:
    """A second Ctrl-C while the first unwinds would land anywhere (threading's lock code:
    "release unlocked lock"); the cleanup is on its way, so it is dropped."""
    net = LabNetwork(new_prefix(), Shaping(0, 0, 0), NO_CAPS, Path("/tmp"))
    with pytest.raises(KeyboardInterrupt):
        net._interrupt(signal.SIGINT, None)
    try:
        net._interrupt(signal.SIGINT, None)
        net._interrupt(signal.SIGTERM, None)
    except KeyboardInterrupt:
        pytest.fail("a second signal interrupted the run again")


@needs_lab
def test_clean_skips_running_labs_and_removes_dead_ones(
    only_these: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    live, dead = new_prefix(), new_prefix()
    only_these += [live, dead]
    orphan = LabNetwork(dead, Shaping(0, 0, 0), NO_CAPS, Path("/tmp"))
    try:
        with LabNetwork(live, Shaping(0, 0, 0), NO_CAPS, Path("/tmp")) as running:
            orphan.build()  # and never torn down: what a run killed with SIGKILL leaves
            owner_file(dead).write_text(f"{_dead_pid()} -\n")
            assert main(["lab", "clean"]) == 0
            out = capsys.readouterr().out
            assert f"removed namespace {orphan.router_ns}" in out
            assert f"removed owner file {owner_file(dead)}" in out
            assert f"skipped {live}: its run (PID {os.getpid()}) is still going" in out
            assert live not in out.replace(f"skipped {live}", "")
            assert leftovers(dead) == [] and not owner_file(dead).exists()
            names = network.namespaces()
            assert {running.client_ns, running.router_ns, running.server_ns} <= set(names)
            assert owner_file(live).read_text().split()[0] == str(os.getpid())
        assert leftovers(live) == [] and not owner_file(live).exists()
    finally:
        network.clean(live)
        network.clean(dead)


@needs_lab
def test_clean_reports_what_it_could_not_remove(
    only_these: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = new_prefix()
    only_these.append(prefix)
    net = LabNetwork(prefix, Shaping(0, 0, 0), NO_CAPS, Path("/tmp"))
    real = network._delete_namespace
    try:
        net.build()
        monkeypatch.setattr(
            network,
            "_delete_namespace",
            lambda name: None if name == net.router_ns else real(name),  # the kernel says no
        )
        assert main(["lab", "clean"]) == 1
        captured = capsys.readouterr()
        assert f"could not remove namespace {net.router_ns}" in captured.out
        assert f"removed namespace {net.router_ns}" not in captured.out
        assert f"removed namespace {net.client_ns}" in captured.out
        err = captured.err.strip()
        assert err.count("\n") == 0 and f"namespace {net.router_ns}" in err, err
        assert leftovers(prefix) == [f"namespace {net.router_ns}"]
    finally:
        monkeypatch.undo()
        network.clean(prefix)
    assert leftovers(prefix) == []
