"""`quicmig lab`: a run's moves made by the kernel and judged from the server's tracker, the
Result it writes, and that a lab leaves nothing behind (failures, signals, `lab clean`).

The tests that build namespaces need root (or CAP_NET_ADMIN + CAP_SYS_ADMIN), ip, nft,
conntrack and /dev/net/tun; elsewhere they skip saying which is missing (tests/labnet.py).
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
from labnet import needs_lab, two_hosts

from quicmig.cli import main
from quicmig.core.judge import judge
from quicmig.core.observation import ClientObservation, Expectations, Observation
from quicmig.core.results import NO_TRANSFER, NetworkChange, Result
from quicmig.core.tracker import MigrationTracker
from quicmig.errors import QuicmigError
from quicmig.lab import build, moves, owners, process, system
from quicmig.lab.build import NamespaceLab
from quicmig.lab.owners import leftovers, new_prefix, owner_file
from quicmig.model.events import EventKind
from quicmig.model.scenario import Expectation
from quicmig.model.verdicts import CheckState, MigrationKind, Rules, Verdict

HOME, CARRIER = "198.51.100.10", "198.51.100.20"  # the phone topology's NATs' first addresses
PORT, ADDRESS = MigrationKind.PORT_CHANGE, MigrationKind.ADDRESS_CHANGE


@pytest.fixture
def only_these(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Limit what the global `clean()` sees to the prefixes a test appends to the list.

    Other lab runs on this machine (other tests, other pytest processes) may be going or
    keeping leftovers on purpose: the global clean of a test must not touch them. Everything
    else about it (listing, owner files, deleting, listing again) is the real thing.
    """
    mine: list[str] = []
    pattern = owners.NAME

    class Mine:
        def match(self, name: str) -> re.Match[str] | None:
            return pattern.match(name) if name[:8] in mine else None

    monkeypatch.setattr(owners, "NAME", Mine())
    yield mine


def _dead_pid() -> int:
    """A PID no process can have."""
    return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1


def _orphan(prefix: str) -> list[str]:
    """What a lab run killed with SIGKILL leaves: its namespaces (the element, and with it
    every TUN device, died with it; the NAT's table lives in the router's namespace)."""
    names = [f"{prefix}-{role}" for role in ("router", "client", "server")]
    for name in names:
        subprocess.run(["ip", "netns", "add", name], check=True)
    return names


def _lab_run(argv: list[str], out: Path) -> tuple[int, Result]:
    code = main(["lab", "run", *argv, "--json", str(out)])
    return code, Result.from_dict(json.loads(out.read_text()))


def _nothing_left(result: Result) -> None:
    prefix = result.stats["lab"]["prefix"]
    assert leftovers(prefix) == []
    assert not owner_file(prefix).exists()


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Result, Path]:
    """`quicmig lab run` with its default moves (a NAT rebinding, a network switch, an IP
    change) during a 3 MB download, with the server side captured. --stack quicmig
    (challenge_first): stock aioquic's first packet on a new path carries PATH_CHALLENGE only
    if the congestion window has room then, a race over real sockets that the strict
    checks (rightly) fail."""
    folder = tmp_path_factory.mktemp("lab-run")
    code, result = _lab_run(
        ["--download", "3M", "--pcap", str(folder / "pcap"), "--stack", "quicmig"],
        folder / "lab.json",
    )
    return code, result, folder


@needs_lab
def test_full_run_rebinding_switch_ip_change(full_run: tuple[int, Result, Path]) -> None:
    """Each kernel-made move is seen by the server's tracker where the network put the
    client, and validated; the client never knew, so it kept its connection ID."""
    code, result, _ = full_run
    assert code == 0 and result.verdict is Verdict.PASSED, result.reasons
    assert result.backend == "lab" and result.stack == "quicmig"
    changes = result.network_changes
    kinds = [EventKind.NAT_REBINDING, EventKind.INTERFACE_SWITCH, EventKind.ADDRESS_CHANGE]
    assert [c.kind for c in changes] == kinds
    assert not any(c.active for c in changes)  # passive: the kernel moved the client
    # Behind the carrier NAT a new private address leaves from the NAT's address again.
    assert [m.observed for m in result.migrations] == [PORT, ADDRESS, PORT]
    assert [m.network_change_at for m in result.migrations] == [c.at for c in changes]
    for mig, change in zip(result.migrations, changes, strict=True):
        assert mig.new_peer[0] == change.expect_ip
        assert mig.validated_at is not None and mig.challenges >= 1
        assert mig.first_packet_had_challenge is True
        assert mig.cid_changed is False
    rebinding, switch, renumbering = result.migrations
    # The scenario's own addresses: the home NAT's first port window, then its next one.
    assert rebinding.old_peer[0] == rebinding.new_peer[0] == HOME
    assert 20000 <= rebinding.old_peer[1] <= 20999 and 21000 <= rebinding.new_peer[1] <= 21999
    assert switch.old_peer == rebinding.new_peer and switch.new_peer[0] == CARRIER
    assert renumbering.old_peer == switch.new_peer and renumbering.new_peer[0] == CARRIER
    assert renumbering.new_peer[1] != switch.new_peer[1]
    assert result.paths_seen == [rebinding.old_peer, *(m.new_peer for m in result.migrations)]
    assert result.transfer.intact and result.transfer.bytes == 3_000_000
    assert {c.state for c in result.checks} <= {CheckState.PASSED, CheckState.NOT_APPLICABLE}
    _nothing_left(result)


@needs_lab
def test_full_run_capture_tells_the_same_story(
    full_run: tuple[int, Result, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """--pcap DIR: the router's side of the server's link and the key log; `quicmig check`
    reads the same migrations from it as the server's tracker saw."""
    _, result, folder = full_run
    pcap, keys = folder / "pcap" / "server-side.pcap", folder / "pcap" / "keys.log"
    assert pcap.stat().st_size > 0 and keys.stat().st_size > 0
    assert result.files["pcap"] == str(pcap)
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed: the capture check is skipped")
    report = folder / "check.json"
    assert main(["check", str(pcap), "--keylog", str(keys), "--json", str(report), "-q"]) == 0
    capsys.readouterr()
    check = Result.from_dict(json.loads(report.read_text()))
    assert [(m.old_peer, m.new_peer) for m in check.migrations] == [
        (m.old_peer, m.new_peer) for m in result.migrations
    ]
    assert all(m.first_packet_had_challenge for m in check.migrations)


@needs_lab
def test_messages_mode_and_switch_back(tmp_path: Path) -> None:
    """Between messages; the switch back to WiFi lands on the mapping of the handshake."""
    argv = ["--migrate", "network-switch,network-switch", "--messages", "1", "--gap", "0.05"]
    code, result = _lab_run([*argv, "--stack", "quicmig"], tmp_path / "lab.json")
    assert result.transfer.workload == "messages" and result.transfer.intact
    assert result.transfer.detail["answered"] == 3
    away, back = result.migrations
    assert (away.observed, back.observed) == (ADDRESS, ADDRESS)
    assert away.new_peer[0] == CARRIER and away.validated_at is not None
    assert back.new_peer == away.old_peer  # the home NAT kept the mapping: the same port
    if back.validated_at is None:
        # Back on the address of the handshake, validated before: aioquic does not challenge
        # it again (RFC 9000 section 9.3 allows that), and the strict (interop) checks, like
        # `quicmig check`, ask for PATH_CHALLENGE in the first packet on every new address.
        assert back.challenges == 0 and back.first_packet_had_challenge is False
        checks = {c.name: c for c in result.checks}
        assert checks["first-packet-challenge"].state is CheckState.FAILED
        assert f"{back.new_peer[0]}:{back.new_peer[1]}" in checks["first-packet-challenge"].detail
        assert result.verdicts[Rules.STRICT] is Verdict.FAILED and code == 1
    _nothing_left(result)


def _judged(
    record: dict[str, Any], changes: list[NetworkChange], kinds: list[MigrationKind]
) -> Result:
    """The judge on a server record as a lab run fetches it (`MigrationTracker.to_dict()`)."""
    tracker = MigrationTracker.from_dict(record)
    expect = Expectations("lab", "stock", Expectation(migrations=tuple(kinds)), workload=None)
    client = ClientObservation(NO_TRANSFER, (), (), tracker)
    return judge(expect, Observation("lab", 1, 5.0, [client], changes))


def _migration(
    at: float, old: str, new: str, challenges: list[int], first: bool | None
) -> dict[str, Any]:
    return {
        "detected_at": at, "old_peer": old, "new_peer": new, "old_dcid": "aa", "new_dcid": "aa",
        "first_packet_to_peer_at": at + 0.01, "first_packet_had_challenge": first,
        "challenges": challenges, "a_field_of_a_newer_server": 1,
    }  # fmt: skip


def _challenge(at: float, peer: str, first: bool, answered: float | None) -> dict[str, Any]:
    return {
        "sent_at": at, "peer": peer, "data": secrets.token_hex(8), "in_first_packet": first,
        "answered_at": answered,
    }  # fmt: skip


def test_migrations_are_judged_against_where_the_network_put_the_client() -> None:
    """A lab change says where the server should see the client next (the NAT's address);
    a migration elsewhere fails migration-target, one never validated fails paths-validated."""
    record = {
        "peer": f"{CARRIER}:20002",
        "peers_seen": [f"{HOME}:20001", f"{HOME}:21001", "198.51.100.99:20002"],
        "challenges": [
            _challenge(1.01, f"{HOME}:21001", True, 1.05),
            _challenge(2.01, "198.51.100.99:20002", True, None),
        ],
        "migrations": [
            _migration(1.0, f"{HOME}:20001", f"{HOME}:21001", [0], True),
            _migration(2.0, f"{HOME}:21001", "198.51.100.99:20002", [1], True),
        ],
    }
    changes = [
        NetworkChange(0.9, EventKind.NAT_REBINDING, "home", False, HOME),
        NetworkChange(1.9, EventKind.INTERFACE_SWITCH, "to cellular", False, CARRIER),
    ]
    result = _judged(record, changes, [PORT, ADDRESS])
    checks = {c.name: c for c in result.checks}
    assert checks["migrations-observed"].state is CheckState.PASSED
    assert checks["migration-target"].state is CheckState.FAILED
    assert "198.51.100.99:20002" in checks["migration-target"].detail
    assert f"put the client at {CARRIER}" in checks["migration-target"].detail
    assert checks["paths-validated"].state is CheckState.FAILED
    assert checks["challenges-answered"].detail.startswith("1 of 2")
    assert result.verdict is Verdict.FAILED
    assert [m.new_peer for m in result.migrations] == [(HOME, 21001), ("198.51.100.99", 20002)]


def test_strict_and_rfc9000_verdicts_differ_on_a_late_challenge() -> None:
    """Every move followed and validated, and still failed under the strict rules: the
    server's first packet on the new path had no PATH_CHALLENGE (stock aioquic's race), as
    `quicmig check` says; RFC 9000 does not ask for it. A probe of the old path (RFC 9000
    section 9.3.3) that nobody answers is not a first-packet challenge."""
    old, mid, new = f"{HOME}:20001", f"{HOME}:21001", f"{CARRIER}:20002"
    record = {
        "peer": new,
        "peers_seen": [old, mid, new],
        "challenges": [
            _challenge(1.01, mid, True, 1.05),
            _challenge(2.1, new, False, 2.2),  # sent after the first packet to the new path
            _challenge(2.1, mid, False, None),  # the probe of the old path
        ],
        "migrations": [
            _migration(1.0, old, mid, [0], True),
            _migration(2.0, mid, new, [1], False),
        ],
    }
    changes = [
        NetworkChange(0.9, EventKind.NAT_REBINDING, "home", False, HOME),
        NetworkChange(1.9, EventKind.INTERFACE_SWITCH, "to cellular", False, CARRIER),
    ]
    result = _judged(record, changes, [PORT, ADDRESS])
    checks = {c.name: c for c in result.checks}
    assert checks["first-packet-challenge"].state is CheckState.FAILED
    assert new in checks["first-packet-challenge"].detail
    assert checks["first-packet-challenge"].rules == (Rules.STRICT,)
    assert checks["challenges-answered"].state is CheckState.PASSED  # 1 of 1 in a first packet
    assert all(
        checks[n].state is CheckState.PASSED for n in ("paths-validated", "migration-target")
    )
    assert result.verdicts == {Rules.STRICT: Verdict.FAILED, Rules.RFC9000: Verdict.PASSED}
    assert result.verdict is Verdict.FAILED


class _Boom(Exception):
    pass


@needs_lab
@pytest.mark.parametrize("fail", [_Boom(), KeyboardInterrupt()])
def test_failure_inside_the_run_leaves_nothing(fail: BaseException) -> None:
    """An exception, or Ctrl-C, with the network up and the element running: the teardown
    stops the element (its TUN devices go with it) and deletes every namespace."""
    prefix = new_prefix()
    seen: list[str] = []
    element: list[int] = []
    with pytest.raises(type(fail)), NamespaceLab(two_hosts(), prefix=prefix) as net:
        seen.extend(leftovers(prefix))
        assert net.shaper is not None
        element.append(net.shaper.process.popen.pid)
        raise fail
    assert len([s for s in seen if s.startswith("namespace")]) == 3
    assert leftovers(prefix) == [] and not owner_file(prefix).exists()
    assert not Path(f"/proc/{element[0]}").exists() or _zombie(element[0])


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def _running_lab(pid: int, timeout: float) -> str | None:
    """The prefix of the lab run by process `pid` once its namespaces exist (else None)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for prefix in owners.owner_prefixes():
            if owners.owner(prefix) == pid and len(leftovers(prefix)) >= 3:
                return prefix
        time.sleep(0.05)
    return None


@needs_lab
def test_sigterm_runs_the_cleanup(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "quicmig", "lab", "run", "--download", "50M", "--rate-mbit", "10"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    try:
        prefix = _running_lab(process.pid, 30.0)
        assert prefix is not None, "the lab never came up"
        time.sleep(0.5)  # mid-download
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, output
    assert "interrupted" in output and "Traceback" not in output
    assert leftovers(prefix) == []
    assert not owner_file(prefix).exists()


@needs_lab
def test_lab_clean_removes_leftovers_and_only_them(
    only_these: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = new_prefix()
    only_these.append(prefix)
    client_ns, router_ns, _ = (f"{prefix}-{r}" for r in ("client", "router", "server"))
    _orphan(prefix)
    orphan = subprocess.Popen(
        ["ip", "netns", "exec", client_ns, "sleep", "60"], start_new_session=True
    )
    other = f"quicmigtest-{secrets.token_hex(3)}"  # not a lab name: must survive
    subprocess.run(["ip", "netns", "add", other], check=True)
    try:
        assert f"namespace {client_ns}" in leftovers(prefix)
        assert main(["lab", "clean"]) == 0
        out = capsys.readouterr().out
        assert f"removed namespace {router_ns}" in out
        assert leftovers(prefix) == []
        assert other in owners.namespaces()
        assert orphan.wait(timeout=10) != 0  # killed
    finally:
        subprocess.run(["ip", "netns", "delete", other], capture_output=True)
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()
        owners.clean(prefix)


def test_bad_input_is_one_line_exit_2_and_builds_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commands: list[Sequence[str]] = []

    def no_run(args: Sequence[str], **kwargs: Any) -> str:
        commands.append(args)
        raise AssertionError(f"ran {args} for bad input")

    for module in (system, build, moves, owners):
        monkeypatch.setattr(module, "run", no_run)
    monkeypatch.setattr(process.Process, "__init__", no_run)
    monkeypatch.setattr(system, "_capabilities", lambda: -1)  # every capability, anywhere
    monkeypatch.setattr(owners, "OWNER_DIR", tmp_path / "owners")
    a_file = tmp_path / "file"
    a_file.write_text("")
    for argv, field in (
        (["--migrate", "nat-rebinding,teleport"], "--migrate"),
        (["--migrate", "cid-rotation"], "--migrate"),  # the client's own, not the network's
        (["--migrate", ","], "--migrate"),
        (["--download", "lots"], "--download"),
        (["--messages", "0"], "--messages"),
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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # no probe file, no owner


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
    tmp_path: Path,
    capeff: int,
    missing: list[str],
) -> None:
    """CapEff decides, not the euid (these tests run as root); exit 2, nothing written."""
    monkeypatch.setattr(system, "_capabilities", lambda: capeff)
    monkeypatch.setattr(owners, "OWNER_DIR", tmp_path / "owners")
    assert not system.privileged()
    for argv, command in ((["lab", "run"], "lab run"), (["lab", "clean"], "lab clean")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0
        named = re.findall(r"CAP_\w+_ADMIN", err.partition("quicmig lab needs")[0])
        assert named == missing, err
        assert "needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN)" in err
        assert f"`sudo $(which quicmig) {command}`" in err, err
    assert not (tmp_path / "owners").exists()


def test_a_prefix_must_be_the_labs_shape() -> None:
    """Every name a run creates starts with its prefix; `clean()` relies on the shape."""
    assert re.fullmatch(r"qm[0-9a-f]{6}", new_prefix())
    with pytest.raises(ValueError):
        NamespaceLab(two_hosts(), prefix="quicmig")


def test_owner_file_names_a_live_run_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(owners, "OWNER_DIR", tmp_path)
    prefix = new_prefix()
    assert owners.owner(prefix) is None  # no file
    with owners.owned(prefix):
        assert owners.owner(prefix) == os.getpid()
        assert owners.owner_prefixes() == [prefix]
    assert not owner_file(prefix).exists()
    for text in (f"{_dead_pid()} -", f"{os.getpid()} 1", "garbage", "", "-5 -"):
        # a PID no process has; ours, but started at another time (reused); unreadable
        owner_file(prefix).write_text(text)
        assert owners.owner(prefix) is None, text
    owner_file(prefix).write_text(f"{os.getpid()} -")  # no start time known: the PID decides
    assert owners.owner(prefix) == os.getpid()


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
    """Ctrl-C (or an error) after `ip netns add` made the namespace, before its sysctls."""
    prefix = new_prefix()
    net = NamespaceLab(two_hosts(), prefix=prefix)
    _ip_counting_adds(monkeypatch, build, net.router_namespace, fail)
    try:
        with pytest.raises(type(fail)), net:
            pass
        assert leftovers(prefix) == []
        assert not owner_file(prefix).exists()
    finally:
        monkeypatch.undo()
        owners.clean(prefix)


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
        owners.clean(prefix)


@needs_lab
def test_teardown_removes_everything_with_the_prefix() -> None:
    """Also what it never recorded: what `leftovers(prefix)` finds."""
    prefix = new_prefix()
    extra = f"{prefix}-extra"
    try:
        with NamespaceLab(two_hosts(), prefix=prefix) as net:
            subprocess.run(["ip", "netns", "add", extra], check=True)
            net.created.remove(net.server_namespace)  # as if its add had been cut short
            assert f"namespace {extra}" in leftovers(prefix)
        assert leftovers(prefix) == []
    finally:
        owners.clean(prefix)


@needs_lab
def test_ctrl_c_during_teardown_waits_until_it_is_done(monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGINT and SIGTERM are held from the start of the teardown to its end, then delivered.

    With another thread about, as in a run (output readers): the kernel hands a signal the
    main thread blocks to that one, and CPython runs the Python handler all the same.
    """
    prefix = new_prefix()
    real = owners.delete_namespace  # what the builder calls (it imports it from there)
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

    monkeypatch.setattr(build, "delete_namespace", delete)
    try:
        with pytest.raises(KeyboardInterrupt), NamespaceLab(two_hosts(), prefix=prefix):
            pass
        assert len(deleted) == 3  # all of them, then the KeyboardInterrupt
        for sig in (signal.SIGINT, signal.SIGTERM):
            assert blocked_in_child[0] >> (sig - 1) & 1, hex(blocked_in_child[0])
        assert leftovers(prefix) == []
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        stop.set()
        owners.clean(prefix)


def test_only_the_first_signal_interrupts_a_run() -> None:
    """A second Ctrl-C while the first unwinds would land anywhere (threading's lock code:
    "release unlocked lock"); the cleanup is on its way, so it is dropped."""
    net = NamespaceLab(two_hosts())
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
    try:
        with NamespaceLab(two_hosts(), prefix=live) as running:
            orphaned = _orphan(dead)
            owner_file(dead).write_text(f"{_dead_pid()} -\n")
            assert main(["lab", "clean"]) == 0
            out = capsys.readouterr().out
            assert all(f"removed namespace {name}" in out for name in orphaned)
            assert f"removed owner file {owner_file(dead)}" in out
            assert f"skipped {live}: its run (PID {os.getpid()}) is still going" in out
            assert live not in out.replace(f"skipped {live}", "")
            assert leftovers(dead) == [] and not owner_file(dead).exists()
            names = set(owners.namespaces())
            assert {running.server_namespace, running.router_namespace} <= names
            assert running.client_namespace("client") in names
            assert owner_file(live).read_text().split()[0] == str(os.getpid())
        assert leftovers(live) == [] and not owner_file(live).exists()
    finally:
        owners.clean(live)
        owners.clean(dead)


@needs_lab
def test_clean_reports_what_it_could_not_remove(
    only_these: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = new_prefix()
    only_these.append(prefix)
    router_ns = f"{prefix}-router"
    real = owners.delete_namespace
    try:
        _orphan(prefix)
        monkeypatch.setattr(
            owners,
            "delete_namespace",
            lambda name: None if name == router_ns else real(name),  # the kernel says no
        )
        assert main(["lab", "clean"]) == 1
        captured = capsys.readouterr()
        assert f"could not remove namespace {router_ns}" in captured.out
        assert f"removed namespace {router_ns}" not in captured.out
        assert f"removed namespace {prefix}-client" in captured.out
        err = captured.err.strip()
        assert err.count("\n") == 0 and f"namespace {router_ns}" in err, err
        assert leftovers(prefix) == [f"namespace {router_ns}"]
    finally:
        monkeypatch.undo()
        owners.clean(prefix)
    assert leftovers(prefix) == []
