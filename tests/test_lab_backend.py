"""`quicmig run SCENARIO --backend lab`: the scenario's own topology and addresses in
namespaces, its network moves made by the kernel under the live endpoints of this process;
the same Result JSON, the same checks and the same workload bytes as the simulator's.

Needs root (or CAP_NET_ADMIN + CAP_SYS_ADMIN), ip, nft, conntrack and /dev/net/tun;
elsewhere these tests skip, saying which is missing (tests/labnet.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from labnet import needs_lab

from quicmig.cli import main
from quicmig.core.results import NetworkChange
from quicmig.errors import QuicmigError
from quicmig.lab.driver import LabDriver
from quicmig.lab.owners import leftovers, namespaces, new_prefix, owner_file
from quicmig.live.backend import LiveBackend
from quicmig.live.stop import run_stoppable
from quicmig.model.events import TimelineEvent
from quicmig.model.loader import load_scenario
from quicmig.runner import RunOptions, execute

BOUNDED = ["--set", "duration_s=15"]  # every wait of the run ends by then
HOME, CARRIER = "198.51.100.10", "198.51.100.20"  # the phone topology's NATs' first addresses
NO_LOSS = "links.cellular.loss_pct=0"


def _run(
    folder: Path, scenario: str, *settings: str, extra: tuple[str, ...] = ()
) -> tuple[int, dict[str, Any]]:
    out = folder / f"{scenario}.json"
    overrides = [arg for setting in settings for arg in ("--set", setting)]
    argv = ["run", scenario, "--backend", "lab", *BOUNDED, *overrides, "--json", str(out), "-q"]
    code = main([*argv, *extra])
    data: dict[str, Any] = json.loads(out.read_text())
    return code, data


def _nothing_left(result: dict[str, Any]) -> None:
    prefix = result["stats"]["lab"]["prefix"]
    assert leftovers(prefix) == []
    assert not [name for name in namespaces() if name.startswith(prefix)]
    assert not owner_file(prefix).exists()


def _host(address: str) -> str:
    return address.rpartition(":")[0]


def _port(address: str) -> int:
    return int(address.rpartition(":")[2])


@pytest.fixture(scope="module")
def rebinding(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict[str, Any], Path]:
    """nat-rebinding in the lab, captured. quic.challenge_first: stock aioquic's first packet
    on the new path carries PATH_CHALLENGE only if the congestion window has room at that
    instant, a race over real sockets."""
    folder = tmp_path_factory.mktemp("lab-nat")
    code, result = _run(
        folder,
        "nat-rebinding",
        "workload.bytes=3000000",
        "quic.challenge_first=true",
        extra=("--pcap", str(folder / "lab.pcap"), "--keylog", str(folder / "lab.keys")),
    )
    return code, result, folder


@needs_lab
def test_nat_rebinding_in_the_lab(
    rebinding: tuple[int, dict[str, Any], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, result, folder = rebinding
    assert result["backend"] == "lab"
    assert code == 0 and result["verdict"] == "passed", result["reasons"]
    assert result["transfer"]["intact"] and result["transfer"]["bytes"] == 3_000_000
    # The simulator's run of the same scenario and seed: one schema, the same checks, the
    # same bytes.
    sim_out = folder / "sim.json"
    argv = ["run", "nat-rebinding", "--set", "workload.bytes=3000000"]
    main([*argv, "--set", "quic.challenge_first=true", "-q", "--json", str(sim_out)])
    capsys.readouterr()
    sim = json.loads(sim_out.read_text())
    assert set(result) == set(sim) and result["schema"] == sim["schema"]
    assert [c["name"] for c in result["checks"]] == [c["name"] for c in sim["checks"]]
    assert result["transfer"]["sha256"] == sim["transfer"]["sha256"] is not None
    (change,) = result["network_changes"]
    (mig,) = result["migrations"]
    assert change["kind"] == mig["network_change"] == "nat-rebinding" and not change["active"]
    assert mig["observed"] == "port_change" and mig["network_change_at"] == change["at"]
    # What the server saw is the kernel NAT's doing: the scenario's home NAT address, a port
    # of its first window, then one of the next.
    assert _host(mig["old_peer"]) == _host(mig["new_peer"]) == change["expect_ip"] == HOME
    nat = result["stats"]["lab"]["nats"]["home"]
    assert nat["external"] == HOME and nat["port_window"] == [21000, 21999]
    assert 20000 <= _port(mig["old_peer"]) <= 20999
    assert 21000 <= _port(mig["new_peer"]) <= 21999
    assert mig["validated_at"] is not None and mig["validation_rtt"] > 0
    assert mig["first_packet_had_challenge"] is True and mig["cid_changed"] is False
    assert 0 <= mig["detection_delay"] < 1.0
    assert result["paths_seen"] == [mig["old_peer"], mig["new_peer"]]
    # Every byte crossed the element's link model, on the scenario's WiFi link.
    wifi = result["stats"]["lab"]["links"]["wifi"]
    assert wifi["down"]["bytes_delivered"] > 3_000_000 and wifi["profile"]["delay"] == 0.02
    assert result["stats"]["lab"]["impairment"] == "quicmig-tun"
    _nothing_left(result)


@needs_lab
def test_the_lab_capture_tells_the_same_story(
    rebinding: tuple[int, dict[str, Any], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """--pcap: the router's server-side interface, which `quicmig check` reads as the
    server saw it."""
    _, result, folder = rebinding
    pcap, keys = folder / "lab.pcap", folder / "lab.keys"
    assert result["files"]["pcap"] == str(pcap)
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed: the capture check is skipped")
    report_path = folder / "check.json"
    assert main(["check", str(pcap), "--keylog", str(keys), "--json", str(report_path)]) == 0
    capsys.readouterr()
    report = json.loads(report_path.read_text())
    (seen,) = report["migrations"]
    (mig,) = result["migrations"]
    assert (seen["old_peer"], seen["new_peer"]) == (mig["old_peer"], mig["new_peer"])
    assert seen["first_packet_had_challenge"] and seen["validated_at"] is not None


@needs_lab
def test_network_switch_in_the_lab(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Cellular without its 1 % random loss: a lost PATH_CHALLENGE or PATH_RESPONSE would
    # decide the checks (the element's draws depend on the packets' real timing).
    code, result = _run(
        tmp_path, "network-switch", "workload.bytes=1000000", "timeline.0.at_s=0.3", NO_LOSS
    )
    capsys.readouterr()
    assert result["backend"] == "lab" and code == (0 if result["verdict"] == "passed" else 1)
    assert result["transfer"]["intact"] and result["transfer"]["bytes"] == 1_000_000
    (change,) = result["network_changes"]
    assert change["kind"] == "interface-switch" and not change["active"]  # the kernel moved it
    assert "client.wifi down" in change["detail"] and change["expect_ip"] == CARRIER
    (mig,) = result["migrations"]
    assert mig["observed"] == "address_change" and mig["network_change"] == "interface-switch"
    # The home NAT's public address, then the carrier NAT's.
    assert _host(mig["old_peer"]) == HOME and _host(mig["new_peer"]) == CARRIER
    assert mig["validated_at"] is not None and mig["challenges"] >= 1
    assert not mig["cid_changed"]  # passive: the client did not know, it kept its CID
    checks = {c["name"]: c["state"] for c in result["checks"]}
    for name in ("paths-validated", "migrations-observed", "migration-target"):
        assert checks[name] == "passed", name
    # Stock aioquic's PATH_CHALLENGE may miss its first packet on the new path (a race with
    # the congestion window): then there is no first-packet challenge to answer.
    assert checks["challenges-answered"] in ("passed", "not_applicable")
    # Once WiFi was down, the rest went over the cellular link.
    links = result["stats"]["lab"]["links"]
    assert links["cellular"]["down"]["bytes_delivered"] > 0
    assert links["wifi"]["down"]["bytes_delivered"] < 1_000_000
    _nothing_left(result)


@needs_lab
def test_address_rebinding_in_the_lab(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The carrier NAT re-maps the client onto the next address of its pool."""
    code, result = _run(tmp_path, "nat-rebinding-addr", "workload.bytes=1000000", NO_LOSS)
    capsys.readouterr()
    assert code == 0 and result["verdict"] == "passed", result["reasons"]
    (change,) = result["network_changes"]
    (mig,) = result["migrations"]
    assert change["kind"] == mig["network_change"] == "address-rebinding"
    assert mig["observed"] == "address_change" and mig["validated_at"] is not None
    assert _host(mig["old_peer"]) == CARRIER
    assert _host(mig["new_peer"]) == change["expect_ip"] == "198.51.100.21"
    assert result["stats"]["lab"]["nats"]["cgn"]["external"] == "198.51.100.21"
    _nothing_left(result)


def test_every_network_event_is_built_in_the_lab() -> None:
    """The lab applies every event of the vocabulary that the network makes; none of the
    built-in scenarios' events is reported unsupported there."""
    for name in ("nat-rebinding-addr", "make-before-break", "blackhole", "ip-change"):
        scenario = load_scenario(name)
        backend = LiveBackend(LabDriver(scenario, 1))
        assert scenario.timeline
        assert [backend.driver.unsupported(e) for e in scenario.timeline] == [None] * len(
            scenario.timeline
        ), name


class _FailingDriver(LabDriver):
    async def apply(self, event: TimelineEvent, now: float) -> NetworkChange:
        await super().apply(event, now)
        raise QuicmigError("injected failure after the move")


@needs_lab
def test_a_failed_run_leaves_nothing_behind() -> None:
    scenario = load_scenario("nat-rebinding", ["workload.bytes=3000000", "duration_s=10"])
    driver = _FailingDriver(scenario, 1, prefix=new_prefix())
    prefix = driver.prefix
    assert prefix is not None
    built: list[str] = []
    original = driver.place

    async def place(scenario: Any) -> Any:
        placement = await original(scenario)
        built.extend(name for name in namespaces() if name.startswith(prefix))
        return placement

    driver.place = place  # type: ignore[method-assign]
    with pytest.raises(QuicmigError, match="injected failure"):
        asyncio.run(execute(scenario, LiveBackend(driver), RunOptions()))
    assert len(built) == 3  # client, router, server existed during the run
    assert leftovers(prefix) == []
    assert not owner_file(prefix).exists()


def test_first_signal_cancels_the_run_and_the_second_waits_for_its_cleanup() -> None:
    """asyncio.run's own second Ctrl-C raises KeyboardInterrupt in the middle of the
    cleanup (and can lose a wakeup, so that asyncio.run waits forever)."""
    cleaned: list[str] = []

    async def run() -> None:
        asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGINT)
        try:
            await asyncio.sleep(10)
        finally:
            os.kill(os.getpid(), signal.SIGINT)  # impatient: again, while the lab goes
            await asyncio.sleep(0.1)
            cleaned.append("lab removed")

    with pytest.raises(KeyboardInterrupt):
        run_stoppable(run())
    assert cleaned == ["lab removed"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_the_third_signal_stops_waiting_for_a_cleanup_that_hangs() -> None:
    async def run() -> None:
        asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)
        try:
            await asyncio.sleep(10)
        finally:
            for _ in range(2):
                os.kill(os.getpid(), signal.SIGINT)
                await asyncio.sleep(0.05)
            await asyncio.sleep(30)  # never done

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_stoppable(run())
    assert time.monotonic() - started < 5


def test_a_run_that_finishes_is_returned() -> None:
    async def run() -> int:
        await asyncio.sleep(0)
        return 7

    assert run_stoppable(run()) == 7
