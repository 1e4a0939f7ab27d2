"""The demo: every scenario runs without a keyboard, and its diagrams show observed packets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import simulate
from rich.console import Console
from rich.prompt import Prompt

from quicmig.cli import main
from quicmig.core.datagram import format_address
from quicmig.core.results import Result
from quicmig.core.tracker import MigrationTracker
from quicmig.demo import menu
from quicmig.demo.content import TOPICS
from quicmig.demo.observe import observe
from quicmig.model.loader import builtin_names, load_scenario
from quicmig.runner import RunOptions

ROOT = Path(__file__).resolve().parent.parent


def _reference(name: str) -> tuple[Result, MigrationTracker]:
    """A plain simulator run, without the demo's recorder: what the server's tracker saw."""
    run = simulate(load_scenario(name), RunOptions(seed=1))
    return run.result, run.sim.server.endpoint.connections[0].tracker


def _demo_output(name: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["demo", "--scenario", name, "--no-input"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return captured.out


@pytest.mark.parametrize("name", builtin_names())
def test_every_builtin_scenario_runs_without_input(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _demo_output(name, capsys)
    assert name in out and "Verdict:" in out
    assert all(len(line) <= menu.WIDTH for line in out.splitlines())


@pytest.mark.parametrize("name", ["nat-rebinding", "ip-change"])
def test_diagram_shows_the_challenge_and_response_on_the_new_path(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    result, tracker = _reference(name)
    (migration,) = tracker.migrations
    new_peer = format_address(migration.new_peer)
    assert migration.new_peer == result.migrations[0].new_peer
    challenge = migration.challenges[0]
    assert challenge.answered_at is not None
    out = _demo_output(name, capsys).splitlines()
    # Challenge data and connection IDs are random (aioquic uses os.urandom); virtual times
    # and addresses are the same in every run with the same seed.
    (sent,) = [line for line in out if "PATH_CHALLENGE(" in line]
    (answered,) = [line for line in out if "PATH_RESPONSE(" in line]
    assert sent.startswith(f"{challenge.sent_at:.4f} ") and "◀──" in sent and new_peer in sent
    assert answered.startswith(f"{challenge.answered_at:.4f} ") and "──▶" in answered
    assert new_peer in answered
    data = sent.split("PATH_CHALLENGE(")[1][:8]
    assert f"PATH_RESPONSE({data})" in answered
    # A diagram, not a dump: a few dozen lines around the migration.
    start = next(i for i, line in enumerate(out) if line.startswith("Migration 1"))
    end = next(i for i, line in enumerate(out) if "declared lost" in line and i > start)
    assert end - start < 30


def test_recording_does_not_change_the_run() -> None:
    reference, _ = _reference("nat-rebinding")
    observed = observe(load_scenario("nat-rebinding")).result
    ours, theirs = observed.to_dict(series=True), reference.to_dict(series=True)
    del ours["wall"], theirs["wall"], ours["packets"]
    assert ours == theirs


def test_unknown_scenario_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--scenario", "no-such-thing", "--no-input"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert "no-such-thing" in line and "nat-rebinding" in line and "network-switch" in line


def test_without_a_terminal_it_never_waits_for_input() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "migration_demo.py"), "--scenario", "cid-rotation"],
        stdin=subprocess.PIPE,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "cid-rotation" in proc.stdout and "NEW_CONNECTION_ID" in proc.stdout


def test_topics_render(capsys: pytest.CaptureFixture[str]) -> None:
    demo = menu.Demo(Console(width=menu.WIDTH), interactive=False)
    demo.intro()
    for topic in TOPICS:
        demo.topic(topic)
    out = capsys.readouterr().out
    for words in ("4-tuple", "PATH_CHALLENGE", "three times", "§9.1", "§9.5", "§9.6", "IoT"):
        assert words in out


def test_menu_picks_a_topic_then_quits(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    answers = iter(["1", "", "42", "q"])
    monkeypatch.setattr(Prompt, "ask", lambda *args, **kwargs: next(answers))
    menu.Demo(Console(width=menu.WIDTH), interactive=True).menu()
    out = capsys.readouterr().out
    assert TOPICS[0].title in out and "No such choice: '42'" in out


def test_ctrl_c_exits_cleanly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupt(self: menu.Demo, name: str) -> Result:
        raise KeyboardInterrupt

    monkeypatch.setattr(menu.Demo, "scenario", interrupt)
    assert main(["demo", "--scenario", "nat-rebinding", "--no-input"]) == 130
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
