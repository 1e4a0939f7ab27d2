"""The judge on TCP and MPTCP observations, the continuity figures of every transport, the
race's HTTP Range exchange, `quicmig compare` on a race's file and the demo's Unlike-TCP
topic: hand-made records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from quicmig.cli import main
from quicmig.core.connections import MPTCP, TCP, Accepted, Attempt, StreamRecord, Subflow
from quicmig.core.continuity import around, longest_gap
from quicmig.core.judge import judge
from quicmig.core.observation import ClientObservation, Expectations, Observation
from quicmig.core.results import NetworkChange, Result, Transfer
from quicmig.demo import menu
from quicmig.demo.content import TOPICS, UNLIKE_TCP
from quicmig.model.events import EventKind
from quicmig.model.scenario import Download, Expectation
from quicmig.model.verdicts import CheckState
from quicmig.race import http
from quicmig.race.command import write_race
from quicmig.race.run import RaceSettings

SIZE = 1000  # bytes
HOME, CARRIER = ("198.51.100.10", 20001), ("198.51.100.20", 20002)
MOVE = NetworkChange(1.0, EventKind.INTERFACE_SWITCH, "wifi down", False, CARRIER[0])


def _result(record: StreamRecord, times: list[float], totals: list[int], done: float) -> Result:
    transfer = Transfer("download", SIZE, SIZE, True, 0.1, done, "ab")
    observation = Observation(
        backend="lab",
        seed=1,
        run_end=done + 0.2,
        clients=[ClientObservation(transfer, times, totals, None, stream=record)],
        changes=[MOVE],
        transport=record.transport,
    )
    return judge(Expectations("race", "stock", Expectation(), Download(SIZE)), observation)


def tcp_reconnected(range_start: int = 400, status: int = 206) -> Result:
    """A TCP download broken by the move at 1 s, resumed on a second connection at 3.2 s."""
    attempts = (
        Attempt(0.0, 0, connected_at=0.05, secured_at=0.1, status=200, received=400),
        Attempt(
            3.1,
            range_start,
            connected_at=3.15,
            secured_at=3.2,
            status=status,
            received=SIZE - range_start + (400 - range_start),
            refetched=400 - range_start,
            end="complete",
        ),
    )
    accepted = (
        Accepted(HOME, 0.06, secured_at=0.1, samples=((0.5, 300), (0.9, 401), (1.2, 450))),
        Accepted(CARRIER, 3.16, range_start=range_start, samples=((3.5, 300), (3.9, 601))),
    )
    record = StreamRecord(TCP, attempts, accepted)
    return _result(record, [0.3, 0.8, 3.3, 3.9], [200, 400, 700, SIZE], 3.9)


def _states(result: Result) -> dict[str, CheckState]:
    return {c.name: c.state for c in result.checks}


def test_a_broken_tcp_connection_resumed_with_range() -> None:
    result = tcp_reconnected()
    assert result.transport == TCP and result.migrations == []
    states = _states(result)
    assert states["connection-survived"] is CheckState.FAILED
    assert states["resumed-with-range"] is CheckState.PASSED
    assert states["path-after-move"] is CheckState.PASSED  # the second connection's address
    assert "migrations-observed" not in states  # no QUIC checks for TCP
    figures = result.stats["continuity"]
    assert figures["survived"] is False and figures["handshakes"] == 2
    assert figures["interruption_s"] == pytest.approx(2.5)  # 0.8 s to 3.3 s
    assert figures["resume_s"] == pytest.approx(2.3)  # the move at 1 s to 3.3 s
    assert figures["refetched_bytes"] == 0
    assert result.paths_seen == [HOME, CARRIER]
    assert result.series.delivered[-1] == (3.9, SIZE)


def test_a_resume_that_fetched_bytes_again_fails() -> None:
    early = tcp_reconnected(range_start=300)  # asked for 100 bytes it held
    assert _states(early)["resumed-with-range"] is CheckState.FAILED
    whole = tcp_reconnected(range_start=400, status=200)
    (check,) = [c for c in whole.checks if c.name == "resumed-with-range"]
    assert check.state is CheckState.FAILED and "got 200" in check.detail


def test_mptcp_survives_on_the_subflow_of_the_new_path() -> None:
    wifi = Subflow(("192.0.2.10", 1), ("203.0.113.10", 443), 0.0, 1.0, ((0.5, 500), (1.0, 600)))
    cell = Subflow(("192.0.2.20", 2), ("203.0.113.10", 443), 0.1, 2.5, ((1.0, 1), (2.5, 401)))
    server_wifi = Subflow(("203.0.113.10", 443), HOME, 0.0, 1.0, ((0.5, 500), (1.0, 600)))
    server_cell = Subflow(("203.0.113.10", 443), CARRIER, 0.1, 2.5, ((1.0, 1), (2.5, 401)))
    attempt = Attempt(0.0, 0, secured_at=0.1, received=SIZE, end="complete", mptcp=True)
    served = Accepted(HOME, 0.05, mptcp=True, subflows=(server_wifi, server_cell))
    record = StreamRecord(MPTCP, (replace_subflows(attempt, (wifi, cell)),), (served,))
    result = _result(record, [0.5, 0.9, 2.0, 2.5], [300, 600, 800, SIZE], 2.5)
    states = _states(result)
    assert result.transport == MPTCP
    assert states["connection-survived"] is CheckState.PASSED
    assert states["resumed-with-range"] is CheckState.NOT_APPLICABLE
    assert states["mptcp-negotiated"] is CheckState.PASSED
    assert states["path-after-move"] is CheckState.PASSED
    assert result.stats["continuity"]["survived"] is True
    assert result.stats["continuity"]["resume_s"] == pytest.approx(1.0)
    # Fallen back at the server: the kernel's own flag, a failed check.
    fallen = StreamRecord(MPTCP, record.attempts, (Accepted(HOME, 0.05, mptcp=False),))
    failed = _result(fallen, [0.5, 2.5], [300, SIZE], 2.5)
    assert _states(failed)["mptcp-negotiated"] is CheckState.FAILED


def replace_subflows(attempt: Attempt, subflows: tuple[Subflow, ...]) -> Attempt:
    from dataclasses import replace

    return replace(attempt, subflows=subflows)


def test_continuity_of_a_change_and_of_one_that_never_resumed() -> None:
    times = [0.1, 0.2, 0.3, 0.35, 1.4, 1.5]
    # The trickle after the change at 0.3 (0.35), then the gap to 1.4: that gap is the move's.
    assert around(times, 0.3, 1.5, 2.0) == pytest.approx((1.05, 1.1))
    assert around(times, 0.3, None, 2.0)[1] == pytest.approx(1.1)
    gap, resume = around(times[:4], 0.3, None, 5.0)  # nothing came after the trickle
    assert gap == pytest.approx(4.65) and resume is None
    assert around(times, 1.6, 1.5, 2.0) == (None, None)  # the download was over
    assert longest_gap(times, 1.5, 2.0) == pytest.approx(1.05)
    assert longest_gap(times[:4], None, 5.0) == pytest.approx(4.65)


def test_http_range_round_trip_and_refusals() -> None:
    request = http.parse_request(http.request("localhost", 400))
    assert request.range_start == 400
    assert http.parse_request(http.request("localhost", 0)).range_start is None
    status, head = http.response_head(SIZE, 400)
    assert status == 206 and b"Content-Range: bytes 400-999/1000" in head
    assert http.parse_response(head, SIZE) == http.Response(206, 400, 600)
    assert http.parse_response(http.response_head(SIZE, None)[1], SIZE).start == 0
    assert http.response_head(SIZE, SIZE)[0] == 416
    for bad in (
        b"POST /download HTTP/1.1\r\n\r\n",
        b"GET /download HTTP/1.1\r\nRange: bytes=1-2\r\n\r\n",
    ):
        with pytest.raises(http.HttpError):
            http.parse_request(bad)
    with pytest.raises(http.HttpError, match="does not fit"):
        http.parse_response(http.response_head(SIZE + 1, 400)[1], SIZE)


def test_compare_reads_a_race_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "race.json"
    write_race([tcp_reconnected(), tcp_reconnected()], path, RaceSettings())
    data = json.loads(path.read_text())
    assert data["race"]["transports"] == [TCP, TCP] and len(data["runs"]) == 2
    assert main(["compare", str(path)]) == 0
    out = capsys.readouterr().out
    survived = next(line for line in out.splitlines() if "connection survived" in line)
    assert survived.count("no") == 2
    assert next(line for line in out.splitlines() if "handshakes" in line).count("2") == 2


def _unlike_tcp(demo: menu.Demo) -> str:
    (topic,) = [t for t in TOPICS if t.key == UNLIKE_TCP]
    demo.topic(topic)
    return demo.console.export_text()


def test_the_unlike_tcp_topic_says_how_to_measure_where_the_lab_is_not() -> None:
    console = Console(width=menu.WIDTH, record=True)
    out = _unlike_tcp(menu.Demo(console, interactive=False, lab=lambda: "not root"))
    assert "4-tuple" in out and "sudo quicmig lab race" in out and "Here: not root." in out
    assert all(len(line) <= menu.WIDTH for line in out.splitlines())


def test_the_unlike_tcp_topic_shows_the_race_it_ran() -> None:
    raced: list[int] = []

    def race(seed: int) -> list[Result]:
        raced.append(seed)
        return [tcp_reconnected()]

    console = Console(width=menu.WIDTH, record=True)
    demo = menu.Demo(console, interactive=False, seed=7, measure=True, lab=lambda: None, race=race)
    out = _unlike_tcp(demo)
    assert raced == [7]
    (row,) = [line for line in out.splitlines() if line.startswith("│ TCP + TLS")]
    assert "│ no " in row and "2.30 s" in row  # not survived; resumed 2.3 s after the move
    words = " ".join(out.split())  # the notes wrap at the console's width
    assert "resumed-with-range: 1 reconnection resumed with Range at byte 400" in words


def test_a_change_after_the_last_delivery_has_no_interruption() -> None:
    assert around([0.4, 0.9, 1.3], 1.5, 2.0, 3.0) == (None, None)
