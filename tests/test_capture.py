"""Captures of a run: the pcap, the TLS key log and the qlog files tell the same story."""

from __future__ import annotations

import ipaddress
import json
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from quicmig.core.results import MigrationResult, Result
from quicmig.model.loader import load_scenario
from quicmig.model.scenario import SERVER_PORT
from quicmig.model.verdicts import MigrationKind
from quicmig.runner import RunOptions
from quicmig.sim.runner import run_scenario

SCENARIO = "nat-rebinding"
LINKTYPE_RAW = 101
PATH_CHALLENGE = 0x1A  # RFC 9000 section 19.17
PATH_RESPONSE = 0x1B  # RFC 9000 section 19.18


@dataclass(frozen=True, slots=True)
class Record:
    at: float  # seconds
    src: tuple[str, int]
    dst: tuple[str, int]
    payload: bytes


@dataclass(frozen=True, slots=True)
class Capture:
    folder: Path
    pcap: Path
    keylog: Path
    result: Result


def ones_complement_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return total


def read_pcap(path: Path) -> list[Record]:
    """A tiny reader for classic little-endian pcap with LINKTYPE_RAW IPv4/UDP packets."""
    data = path.read_bytes()
    magic, major, minor, _, _, snaplen, linktype = struct.unpack_from("<IHHiIII", data, 0)
    assert (magic, major, minor, linktype) == (0xA1B2C3D4, 2, 4, LINKTYPE_RAW)
    records = []
    offset = 24
    while offset < len(data):
        sec, usec, incl, orig = struct.unpack_from("<IIII", data, offset)
        offset += 16
        packet = data[offset : offset + incl]
        offset += incl
        assert len(packet) == incl == orig <= snaplen
        assert packet[0] >> 4 == 4 and (packet[0] & 0xF) == 5  # IPv4, no options
        total, proto = struct.unpack_from("!H", packet, 2)[0], packet[9]
        assert total == incl and proto == 17
        assert ones_complement_sum(packet[:20]) == 0xFFFF  # header checksum valid
        src_ip, dst_ip = packet[12:16], packet[16:20]
        sport, dport, length, _ = struct.unpack_from("!HHHH", packet, 20)
        assert length == total - 20
        pseudo = src_ip + dst_ip + struct.pack("!BBH", 0, 17, length)
        assert ones_complement_sum(pseudo + packet[20:]) == 0xFFFF  # UDP checksum valid
        records.append(
            Record(
                at=sec + usec / 1e6,
                src=(str(ipaddress.IPv4Address(src_ip)), sport),
                dst=(str(ipaddress.IPv4Address(dst_ip)), dport),
                payload=packet[28:],
            )
        )
    assert offset == len(data)
    return records


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Capture:
    folder = tmp_path_factory.mktemp("capture")
    pcap, keylog = folder / "x.pcap", folder / "x.keylog"
    options = RunOptions(seed=1, pcap=pcap, keylog=keylog, qlog_dir=folder)
    return Capture(folder, pcap, keylog, run_scenario(load_scenario(SCENARIO), options))


def migration(capture: Capture) -> MigrationResult:
    (mig,) = capture.result.migrations
    assert mig.observed is MigrationKind.PORT_CHANGE
    return mig


def server_address(capture: Capture) -> tuple[str, int]:
    scenario = load_scenario(SCENARIO)
    server = scenario.topology.host(scenario.topology.server)
    return server.interfaces[0].addresses[0], SERVER_PORT


def test_pcap_holds_the_server_side_of_both_paths(capture: Capture) -> None:
    records = read_pcap(capture.pcap)
    server = server_address(capture)
    mig = migration(capture)
    old, new = mig.old_peer, mig.new_peer
    assert records
    assert all(server in (r.src, r.dst) for r in records)
    times = [r.at for r in records]
    assert times == sorted(times)
    assert times[-1] <= capture.result.stats["run_seconds"] + 1e-6
    to_server = {r.src for r in records if r.dst == server}
    from_server = {r.dst for r in records if r.src == server}
    assert to_server == {old, new}
    assert from_server == {old, new}
    # The first datagram from the new port reached the server when the tracker saw it.
    first_new = min(r.at for r in records if r.src == new)
    assert first_new == pytest.approx(mig.detected_at, abs=1e-6)
    # Nothing left the old port after the rebinding, so the last datagram from it arrived
    # at most one server-link crossing (delay, plus a full queue) after the rebinding.
    scenario = load_scenario(SCENARIO)
    (server_link,) = [lk for lk in scenario.topology.links if lk.a.startswith("server.")]
    profile = server_link.profile
    assert profile.rate is not None and mig.network_change_at is not None
    crossing = profile.delay + (profile.queue + 1) * 1500 * 8 / profile.rate
    assert max(r.at for r in records if r.src == old) <= mig.network_change_at + crossing
    assert min(r.at for r in records if r.dst == new) >= first_new
    # Every datagram carries QUIC: long header (handshake) or short header with fixed bit.
    assert all(r.payload and r.payload[0] & 0x40 for r in records)


def test_keylog_has_traffic_secrets(capture: Capture) -> None:
    labels = {line.split()[0] for line in capture.keylog.read_text().splitlines() if line}
    assert {"CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0"} <= labels


def load_qlogs(capture: Capture) -> dict[str, dict[str, Any]]:
    paths = capture.result.files["qlog"].split(",")
    assert sorted(Path(p).parent for p in paths) == [capture.folder] * len(paths)
    docs = {}
    for path in paths:
        docs[Path(path).name] = json.loads(Path(path).read_text())
    return docs


def test_qlog_times_are_virtual(capture: Capture) -> None:
    docs = load_qlogs(capture)
    names = sorted(docs)
    assert any("server" in n for n in names) and any("client" in n for n in names)
    end_ms = capture.result.stats["run_seconds"] * 1e3
    for name, doc in docs.items():
        (trace,) = doc["traces"]
        times = [event["time"] for event in trace["events"]]
        assert times, name
        assert all(0.0 <= t <= end_ms + 1e-6 for t in times), name
        assert times == sorted(times), name
        assert times[-1] > 0.0  # time did pass in the run


def test_qlog_shows_the_path_validation(capture: Capture) -> None:
    (server_doc,) = [doc for name, doc in load_qlogs(capture).items() if "server" in name]
    (trace,) = server_doc["traces"]
    mig = migration(capture)

    def frame_times(event_name: str, frame_type: str) -> list[float]:
        return [
            event["time"] / 1e3
            for event in trace["events"]
            if event["name"] == f"transport:{event_name}"
            and any(f["frame_type"] == frame_type for f in event["data"]["frames"])
        ]

    challenges = frame_times("packet_sent", "path_challenge")
    responses = frame_times("packet_received", "path_response")
    assert mig.challenge_sent_at is not None and mig.validated_at is not None
    assert challenges and min(challenges) == pytest.approx(mig.challenge_sent_at, abs=1e-9)
    assert responses and min(responses) == pytest.approx(mig.validated_at, abs=1e-9)


@pytest.mark.tshark
def test_tshark_decrypts_challenge_and_response_on_new_port(capture: Capture) -> None:
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed (apt-get install tshark)")
    command = [
        "tshark",
        "-r",
        str(capture.pcap),
        "-o",
        f"tls.keylog_file:{capture.keylog}",
        "-d",
        f"udp.port=={SERVER_PORT},quic",
        "-Y",
        "quic",
        "-T",
        "fields",
        "-e",
        "quic.frame_type",
        "-e",
        "udp.srcport",
        "-e",
        "udp.dstport",
    ]
    proc = subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = []
    for line in proc.stdout.splitlines():
        types, src, dst = line.split("\t")
        frames = {int(t, 0) for t in types.split(",") if t}
        rows.append((frames, int(src), int(dst)))
    assert rows
    new_port = migration(capture).new_peer[1]
    old_port = migration(capture).old_peer[1]
    challenged = [d for frames, s, d in rows if PATH_CHALLENGE in frames and s == SERVER_PORT]
    answered = [s for frames, s, d in rows if PATH_RESPONSE in frames and d == SERVER_PORT]
    assert new_port in challenged
    assert new_port in answered
    assert old_port not in answered
    # The key log really decrypted 1-RTT packets on both paths (frames were readable).
    assert {s for frames, s, d in rows if frames and d == SERVER_PORT} >= {old_port, new_port}
