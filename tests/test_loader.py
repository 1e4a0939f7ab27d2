"""Scenarios from TOML: built-ins load, --set overrides apply, bad input names its field."""

from __future__ import annotations

from pathlib import Path

import pytest

from quicmig.errors import InputError
from quicmig.model.events import NatRebind, Switch
from quicmig.model.loader import (
    apply_overrides,
    builtin_names,
    load_scenario,
    read_tree,
    scenario_from_tree,
)
from quicmig.model.scenario import Download
from quicmig.model.topology import PROFILES
from quicmig.model.verdicts import Verdict


def test_there_are_builtin_scenarios() -> None:
    names = builtin_names()
    assert names == sorted(names)
    assert {"nat-rebinding", "network-switch", "blackhole"} <= set(names)


@pytest.mark.parametrize("name", builtin_names())
def test_every_builtin_scenario_loads(name: str) -> None:
    scenario = load_scenario(name)
    assert scenario.name == name
    assert scenario.duration > 0
    assert all(0 <= event.at < scenario.duration for event in scenario.timeline)
    assert scenario.topology.clients
    assert isinstance(scenario.expect.verdict, Verdict)


def test_override_link_shortcut_changes_delay() -> None:
    before = load_scenario("network-switch").topology.link("wifi").profile
    scenario = load_scenario("network-switch", ["links.wifi.delay_ms=30"])
    after = scenario.topology.link("wifi").profile
    assert after.delay == pytest.approx(0.030)
    assert before.delay == pytest.approx(PROFILES["wifi"].delay)
    # Only the delay moved; the rest of the named profile is kept.
    assert (after.rate, after.queue, after.loss) == (before.rate, before.queue, before.loss)
    assert scenario.topology.link("cellular").profile == PROFILES["cellular"]


def test_override_workload_bytes() -> None:
    scenario = load_scenario("nat-rebinding", ["workload.bytes=12345"])
    assert scenario.workload == Download(size=12345)
    # A whole number written as a TOML float is accepted; a fraction is not.
    assert load_scenario("nat-rebinding", ["workload.bytes=2e6"]).workload == Download(2_000_000)
    assert "whole number" in str(input_error("nat-rebinding", ["workload.bytes=2.5"]))


def test_override_timeline_entry() -> None:
    scenario = load_scenario("network-switch", ["timeline.0.at_s=2.5", "duration_s=30"])
    (event,) = scenario.timeline
    assert isinstance(event, Switch)
    assert event.at == 2.5
    assert scenario.duration == 30.0


def test_override_with_string_and_bool_values() -> None:
    scenario = load_scenario(
        "nat-rebinding", ["timeline.0.new_address=true", "client.interface=cellular"]
    )
    (event,) = scenario.timeline
    assert isinstance(event, NatRebind) and event.new_address
    assert scenario.client.interface == "cellular"


def test_apply_overrides_edits_tree_in_place() -> None:
    tree = read_tree("nat-rebinding")
    result = apply_overrides(tree, ["workload.bytes=777", 'name="renamed"', "timeline.0.at_s=1.5"])
    assert result is tree
    assert tree["workload"]["bytes"] == 777
    scenario = scenario_from_tree(tree)
    assert scenario.name == "renamed"
    assert scenario.workload == Download(size=777)
    assert [event.at for event in scenario.timeline] == [1.5]


def test_apply_overrides_link_shortcut_on_a_topology_table() -> None:
    tree = read_tree("nat-rebinding")
    tree["topology"] = {
        "hosts": {
            "c": {"interfaces": {"eth0": "192.0.2.1"}},
            "server": {"interfaces": {"eth0": "203.0.113.1"}},
        },
        "nats": {"home": {"external": ["198.51.100.1"]}},
        "links": {
            "wifi": {"a": "c.eth0", "b": "home", "profile": "wifi"},
            "server": {"a": "server.eth0", "b": "internet"},
        },
    }
    tree["client"] = {}
    apply_overrides(tree, ["links.wifi.delay_ms=30", "nats.home.idle_timeout_s=5"])
    scenario = scenario_from_tree(tree)
    assert scenario.topology.link("wifi").profile.delay == pytest.approx(0.030)
    assert scenario.topology.link("wifi").profile.rate == PROFILES["wifi"].rate
    assert scenario.topology.nat("home").idle_timeout == 5.0


def test_custom_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(
        'topology = "direct"\nduration_s = 5\n[workload]\nkind = "messages"\ncount = 3\n'
    )
    scenario = load_scenario(str(path))
    assert scenario.name == "mine"
    assert scenario.duration == 5.0
    assert scenario.topology.link("wifi").profile == PROFILES["wifi"]


def input_error(name_or_path: str, overrides: list[str] | None = None) -> InputError:
    with pytest.raises(InputError) as info:
        load_scenario(name_or_path, overrides or [])
    assert info.value.exit_code == 2
    return info.value


def test_unknown_scenario_name() -> None:
    message = str(input_error("no-such-scenario"))
    assert "no-such-scenario" in message
    assert "nat-rebinding" in message  # lists what exists


def test_missing_file(tmp_path: Path) -> None:
    message = str(input_error(str(tmp_path / "absent.toml")))
    assert "absent.toml" in message


def test_malformed_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('name = "x"\n[workload\nkind = "download"\n')
    message = str(input_error(str(path)))
    assert "broken.toml" in message
    assert "malformed TOML" in message


def test_set_without_equals() -> None:
    message = str(input_error("nat-rebinding", ["workload.bytes"]))
    assert "workload.bytes" in message


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("links.wifi.delay_ms=-5", "delay_ms"),
        ("links.wifi.loss_pct=150", "loss_pct"),
        ("links.wifi.burst_len=0.5", "burst_len"),
        ("links.wifi.queue_packets=0", "queue_packets"),
        ("links.wifi.queue_packets=2.7", "queue_packets: 2.7 is not a whole number"),
        ("links.wifi.rate_mbit=-1", "rate_mbit"),
        ('links.wifi.delay_ms="slow"', "delay_ms"),
        ("links.wifi.dleay_ms=5", "dleay_ms"),
        ('links.wifi.profile="fibre"', "profile"),
        ("workload.bytes=-1", "workload.bytes"),
        ("workload.byts=100", "workload.byts"),
        ('workload.kind="upload"', "workload.kind"),
        ("duration_s=0", "duration_s"),
        ("durations=10", "durations"),
        ("client.keepalive_s=0", "client.keepalive_s"),
        ('client.interface="bluetooth"', "bluetooth"),
        ('expect.verdict="maybe"', "expect.verdict"),
        ('timeline.0.event="teleport"', "timeline[0].event"),
        ('timeline.0.nat="nowhere"', "timeline[0] (nat-rebinding): unknown NAT 'nowhere'"),
        ("timeline.0.every_s=-1", "timeline[0] (nat-rebinding).every_s"),
        ("timeline.0.at_s=-1", "timeline[0]"),
        ("timeline.0.at_s=20", "timeline[0]"),
        ("timeline.0.at_s=25", "timeline[0]"),
        ('timeline.0.nta="home"', "timeline[0].nta"),
        ("timeline.5.at_s=1", "timeline.5"),
    ],
)
def test_bad_values_name_their_field(override: str, field: str) -> None:
    message = str(input_error("nat-rebinding", [override]))  # duration_s = 20
    assert field in message, message


def test_event_at_end_of_run_mentions_duration() -> None:
    message = str(input_error("nat-rebinding", ["timeline.0.at_s=20"]))
    assert "duration_s" in message


def test_unknown_interface_in_switch() -> None:
    message = str(input_error("network-switch", ['timeline.0.to="bluetooth"']))
    assert "bluetooth" in message
    assert "cellular" in message  # says which interfaces exist


def test_unknown_switch_mode() -> None:
    message = str(input_error("network-switch", ['timeline.0.mode="sideways"']))
    assert "timeline[0].mode" in message


def test_link_change_with_bad_setting(tmp_path: Path) -> None:
    message = str(input_error("blackhole", ["timeline.0.loss_pct=101"]))
    assert "loss_pct" in message


def test_bad_address_in_topology() -> None:
    message = str(input_error("nat-rebinding", ['hosts.client.interfaces.wifi="300.1.2.3"']))
    assert "300.1.2.3" in message
    assert "client.wifi" in message
