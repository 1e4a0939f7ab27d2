"""`quicmig run SCENARIO --backend lab`: the scenario's network moves made by the kernel, in
namespaces, under the live endpoints of this process; the same Result JSON as every backend.

Needs root (or CAP_NET_ADMIN + CAP_SYS_ADMIN), `ip netns add`, nft, conntrack and tc; elsewhere
these tests skip, saying which is missing.
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

from quicmig.cli import main
from quicmig.core.results import NetworkChange
from quicmig.errors import QuicmigError
from quicmig.lab.driver import LabDriver, lab_interfaces, not_emulated
from quicmig.lab.network import leftovers, namespaces, new_prefix, owner_file
from quicmig.lab.system import unavailable
from quicmig.live.runner import LiveOptions, run_live
from quicmig.live.stop import run_stoppable
from quicmig.model.loader import load_scenario
from quicmig.model.scenario import NatRebind, Switch, SwitchMode, TimelineEvent
from quicmig.model.topology import LinkProfile

UNAVAILABLE = unavailable(f"{new_prefix()}-probe")
needs_lab = pytest.mark.skipif(UNAVAILABLE is not None, reason=UNAVAILABLE or "")
BOUNDED = ["--set", "duration_s=15"]  # every wait of the run ends by then


def _run(
    tmp_path: Path, scenario: str, *settings: str, extra: tuple[str, ...] = ()
) -> tuple[int, dict[str, Any]]:
    out = tmp_path / f"{scenario}.json"
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


@needs_lab
def test_nat_rebinding_in_the_lab(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pcap, keys = tmp_path / "lab.pcap", tmp_path / "lab.keys"
    # quic.challenge_first: stock aioquic's first packet on the new path carries PATH_CHALLENGE
    # only if the congestion window has room at that instant, a race over real sockets.
    code, result = _run(
        tmp_path,
        "nat-rebinding",
        "workload.bytes=3000000",
        "quic.challenge_first=true",
        extra=("--pcap", str(pcap), "--keylog", str(keys)),
    )
    err = capsys.readouterr().err
    # What the lab leaves out is said once, one line each, even with -q (on stderr).
    lines = result["stats"]["lab"]["not_emulated"]
    assert lines  # the phone's links have delays; without netem, and with it (cellular)
    for line in lines:
        assert err.count(f"⚠️  lab: {line}\n") == 1, err
    sim_out = tmp_path / "sim.json"
    assert main(["run", "nat-rebinding", "--set", "workload.bytes=2000000", "-q", "--json",
                 str(sim_out)]) == 0  # fmt: skip
    capsys.readouterr()
    assert set(result) == set(json.loads(sim_out.read_text()))  # one schema
    assert result["backend"] == "lab"
    assert code == 0 and result["verdict"] == "passed", result["reasons"]
    assert result["transfer"]["intact"] and result["transfer"]["bytes"] == 3_000_000
    (move,) = result["stats"]["lab"]["moves"]
    (mig,) = result["migrations"]
    assert mig["observed"] == "port_change" and mig["network_change"] == "nat-rebind"
    old_host, _, old_port = mig["old_peer"].rpartition(":")
    new_host, _, new_port = mig["new_peer"].rpartition(":")
    # What the server saw is the kernel NAT's doing: its public address, a port of the new range.
    assert old_host == new_host == move["new_public"] == "10.199.101.2"
    assert 40000 <= int(old_port) <= 40999
    low, high = move["port_range"]
    assert (low, high) == (41000, 41999) and low <= int(new_port) <= high
    assert mig["validated_at"] is not None and mig["validation_rtt"] > 0
    assert mig["first_packet_had_challenge"] is True
    assert 0 <= mig["detection_delay"] < 1.0
    assert result["paths_seen"] == [mig["old_peer"], mig["new_peer"]]
    _nothing_left(result)
    # --pcap: the router's server-side interface, which `quicmig check` reads as the server saw it.
    if shutil.which("tshark") is not None:
        report_path = tmp_path / "check.json"
        assert main(["check", str(pcap), "--keylog", str(keys), "--json", str(report_path)]) == 0
        capsys.readouterr()
        (conn,) = json.loads(report_path.read_text())["connections"]
        (switch,) = conn["migrations"]
        assert (switch["old_peer"], switch["new_peer"]) == (mig["old_peer"], mig["new_peer"])
        assert switch["first_packet_had_challenge"] and switch["validated_at"] is not None


@needs_lab
def test_network_switch_in_the_lab(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, result = _run(tmp_path, "network-switch", "workload.bytes=4000000", "timeline.0.at_s=0.4")
    capsys.readouterr()
    assert result["backend"] == "lab" and code == (0 if result["verdict"] == "passed" else 1)
    assert result["transfer"]["intact"] and result["transfer"]["bytes"] == 4_000_000
    (change,) = result["network_changes"]
    assert change["event"] == "switch" and not change["active"]  # the kernel moved it
    assert "wifi link down" in change["detail"]
    (mig,) = result["migrations"]
    assert mig["observed"] == "address_change" and mig["network_change"] == "switch"
    # WiFi's public address, then cellular's (the NAT pairs each private address with one).
    assert mig["old_peer"].startswith("10.199.101.2:")
    assert mig["new_peer"].startswith("10.199.102.2:")
    assert mig["validated_at"] is not None and mig["challenges"] >= 1
    assert not mig["cid_changed"]  # passive: the client did not know, it kept its CID
    checks = {c["name"]: c["passed"] for c in result["checks"]}
    assert checks["paths-validated"] and checks["migrations-observed"]
    assert checks["challenges-answered"]
    _nothing_left(result)


def test_events_the_lab_cannot_do_are_named() -> None:
    scenario = load_scenario("nat-rebinding-addr")
    driver = LabDriver(scenario, 1)
    (event,) = scenario.timeline
    reason = driver.unsupported(event)
    assert reason is not None and "new public address" in reason
    switch = load_scenario("make-before-break").timeline[0]
    assert "make-before-break" in (LabDriver(scenario, 1).unsupported(switch) or "")
    blackhole = load_scenario("blackhole").timeline[0]
    assert "not built in the lab" in (driver.unsupported(blackhole) or "")
    assert driver.unsupported(load_scenario("nat-rebinding").timeline[0]) is None


def test_client_interfaces_run_on_the_labs_by_name_or_in_order() -> None:
    assert {k: v.name for k, v in lab_interfaces(["cellular", "wifi"]).items()} == {
        "cellular": "cellular",
        "wifi": "wifi",
    }
    assert {k: v.name for k, v in lab_interfaces(["eth0"]).items()} == {"eth0": "wifi"}
    three = lab_interfaces(["a", "b", "c"])
    assert [v.name for v in three.values()] == ["wifi", "cellular"] and "c" not in three
    # The interop topology's single eth0: a rebinding runs; a switch elsewhere is named.
    driver = LabDriver(load_scenario("rebind-port"), 1)
    assert driver.unsupported(load_scenario("rebind-port").timeline[0]) is None
    away = Switch(1.0, "client", "eth1", SwitchMode.BREAK_BEFORE_MAKE, True, 0.0, 1.0)
    assert "no room for interface 'eth1'" in (driver.unsupported(away) or "")


class _FailingDriver(LabDriver):
    async def apply(self, event: TimelineEvent, now: float) -> NetworkChange:
        await super().apply(event, now)
        raise QuicmigError("injected failure after the move")


@needs_lab
def test_a_failed_run_leaves_nothing_behind() -> None:
    scenario = load_scenario("nat-rebinding", ["workload.bytes=3000000", "duration_s=10"])
    assert isinstance(scenario.timeline[0], NatRebind)
    driver = _FailingDriver(scenario, 1)
    built: list[str] = []
    original = driver.place

    async def place() -> Any:
        placement = await original()
        built.extend(name for name in namespaces() if name.startswith(driver.prefix))
        return placement

    driver.place = place  # type: ignore[method-assign]
    with pytest.raises(QuicmigError, match="injected failure"):
        asyncio.run(run_live(scenario, driver, LiveOptions()))
    assert len(built) == 3  # client, router, server existed during the run
    assert leftovers(driver.prefix) == []
    assert not owner_file(driver.prefix).exists()


def test_what_the_lab_does_not_emulate_is_named_per_link_and_impairment() -> None:
    wifi = LinkProfile(delay=0.020, rate=50e6)
    cell = LinkProfile(delay=0.060, loss=0.01, jitter=0.005, burst_len=3.0, rate=10e6)
    profiles = {"wifi": wifi, "cellular": cell}
    assert not_emulated(profiles, "wifi", netem=False) == [
        "wifi link: delay 20 ms not emulated (no netem)",
        "cellular link: delay 60 ms not emulated (no netem)",
        "cellular link: jitter 5 ms not emulated (no netem)",
        "cellular link: loss 1 % not emulated (no netem)",
    ]
    # With netem both links are shaped like the first: say so for the other one.
    assert not_emulated(profiles, "wifi", netem=True) == [
        "cellular link: jitter 5 ms not emulated",
        "cellular link: loss bursts not emulated (independent loss)",
        "cellular link: delay 60 ms not emulated, it gets wifi's 20 ms",
        "cellular link: loss 1 % not emulated, it gets wifi's 0 %",
        "cellular link: rate 10 Mbit/s not emulated, it gets wifi's 50 Mbit/s",
    ]
    same = LinkProfile(delay=0.0)
    assert not_emulated({"wifi": same, "cellular": same}, "wifi", netem=False) == []


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
