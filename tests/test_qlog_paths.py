"""quicmig's qlog carries the qlog draft's path events, from what the server's tracker saw,
and the HTML report's paths are read from the same events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import simulate

from quicmig.core.datagram import format_address
from quicmig.model.loader import load_scenario
from quicmig.report.charts import paths
from quicmig.report.recording import record, recorded_result
from quicmig.runner import RunOptions


def _events(path: Path, name: str) -> list[dict[str, Any]]:
    (trace,) = json.loads(path.read_text())["traces"]
    return [e for e in trace["events"] if e["name"] == name]


def test_server_qlog_has_the_tuple_cid_and_migration_events(tmp_path: Path) -> None:
    run = simulate(load_scenario("ip-change"), RunOptions(seed=1, qlog_dir=tmp_path))
    tracker = run.sim.server.endpoint.connections[0].tracker
    (mig,) = tracker.migrations
    server_qlog = tmp_path / "ip-change-seed1-server-0.qlog"
    tuples = _events(server_qlog, "quic:tuple_assigned")
    assert [t["data"]["tuple_id"] for t in tuples] == ["", "1"]
    remote = tuples[1]["data"]["tuple_remote"]
    assert (remote["ip_v4"], remote["port_v4"]) == mig.new_peer
    assert tuples[1]["time"] == mig.detected_at * 1e3
    assert tuples[1]["data"]["tuple_local"]["connection_ids"] == [mig.new_dcid]
    states = _events(server_qlog, "quic:migration_state_updated")
    challenge = mig.challenges[0]
    assert challenge.answered_at is not None
    assert [(s["data"]["new"], s["time"]) for s in states] == [
        ("migration_started", mig.detected_at * 1e3),
        ("probing_started", challenge.sent_at * 1e3),
        ("probing_successful", challenge.answered_at * 1e3),
        ("migration_complete", challenge.answered_at * 1e3),
    ]
    (updated, *_) = _events(server_qlog, "quic:connection_id_updated")
    assert updated["data"] == {"initiator": "local", "old": mig.old_dcid, "new": mig.new_dcid}
    # aioquic's own events are all still there, in time order with ours.
    (trace,) = json.loads(server_qlog.read_text())["traces"]
    times = [e["time"] for e in trace["events"]]
    assert times == sorted(times)
    assert any(e["name"] == "transport:packet_sent" for e in trace["events"])
    client_qlog = tmp_path / "ip-change-seed1-client-0.qlog"
    assert _events(client_qlog, "quic:tuple_assigned") == []  # the client's side has no tracker


def test_report_paths_come_from_the_packet_logs_path_events() -> None:
    recording = record(load_scenario("network-switch"), RunOptions(seed=1))
    result = recorded_result(recording)
    assert result.packets is not None
    (mig,) = result.migrations
    spans = paths(result)
    assert [s.address for s in spans] == [
        format_address(mig.old_peer),
        format_address(mig.new_peer),
    ]
    assert spans[1].start * 1e3 == pytest.approx(
        next(e["time"] for e in result.packets.path_events if e["data"].get("tuple_id") == "1")
    )
    assert [s.label for s in spans] == [
        f"{format_address(mig.old_peer)} (wifi)",
        f"{format_address(mig.new_peer)} (cellular)",
    ]
