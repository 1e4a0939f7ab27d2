"""What a newcomer reads when something is off: one line, naming the problem and the fix."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from quicmig.cli import main
from quicmig.core.results import Result
from quicmig.demo import menu
from quicmig.demo.content import TOPICS
from quicmig.lab import system
from quicmig.live.certs import CertPaths
from quicmig.model.loader import builtin_names

ROOT = Path(__file__).resolve().parent.parent


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("quicmig: error: "), err
    return err


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("timeline.5.at_s=1", "timeline has 1 entry; use index 0 (not 5)"),
        ("timeline.x.at_s=1", "timeline has 1 entry; use index 0 (not x)"),
    ],
)
def test_a_list_index_out_of_range_says_how_many_entries(
    key: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "network-switch", "--set", key]) == 2
    assert message in one_line_error(capsys)


def test_a_longer_list_gives_its_range(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "cid-rotation", "--set", "timeline.3.at_s=1"]) == 2
    assert "timeline has 2 entries; use an index from 0 to 1 (not 3)" in one_line_error(capsys)


def test_scenarios_show_takes_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scenarios", "--show", "nat-rebinding"]) == 0
    text = capsys.readouterr().out
    mine = tmp_path / "mine.toml"
    mine.write_text(text.replace('name = "nat-rebinding"', 'name = "mine"'))
    assert main(["scenarios", "--show", str(mine)]) == 0
    assert capsys.readouterr().out == mine.read_text()
    broken = tmp_path / "broken.toml"
    broken.write_text("name = \n")
    assert main(["scenarios", "--show", str(broken)]) == 2
    assert "malformed TOML" in one_line_error(capsys)


def test_a_missing_dependency_is_one_line_naming_what_to_install() -> None:
    # A fresh interpreter without rich: what the seed scripts meet in a bare clone.
    code = (
        "import sys; sys.modules['rich'] = None; "
        f"sys.argv = ['quic_client.py', '--help']; sys.path.insert(0, {str(ROOT)!r}); "
        f"exec(open({str(ROOT / 'quic_client.py')!r}).read())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert "the Python package rich is missing" in done.stderr
    assert "pip install -r requirements.txt" in done.stderr


@pytest.mark.parametrize(
    ("argv", "typed"),
    [
        (["lab", "clean"], "sudo $(which quicmig) lab clean"),
        (["run", "network-switch", "--backend", "lab"], "run network-switch --backend lab"),
        (["lab", "run", "--migrate", "nat-rebinding"], "lab run --migrate nat-rebinding"),
    ],
)
def test_the_lab_without_root_names_the_command_typed(
    argv: list[str],
    typed: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(system, "missing_capabilities", lambda: ["CAP_NET_ADMIN"])
    assert main(argv) == 2
    err = one_line_error(capsys)
    assert f"`sudo $(which quicmig) {typed.removeprefix('sudo $(which quicmig) ')}`" in err


def test_the_demo_menu_fits_a_24_line_terminal() -> None:
    console = Console(width=80, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    demo = menu.Demo(console, interactive=False)
    demo.intro()
    console.print(menu._menu_table(menu.scenario_order(), console.width))
    lines = console.export_text().splitlines()
    assert len(lines) + 1 <= 24  # and the prompt
    assert all(len(line) <= 80 for line in lines)
    console.file.close()


def test_the_amplification_topic_says_three_times() -> None:
    (topic,) = [t for t in TOPICS if t.key == "amplification"]
    text = " ".join(topic.body.split())
    assert "at most three times what the attacker sent" in text


def test_client_with_a_name_the_certificate_lacks_says_which_names_it_has(
    certs: CertPaths, capsys: pytest.CaptureFixture[str]
) -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "quicmig", "server", "--port", "0", "--cert", str(certs.cert),
         "--key", str(certs.key)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        banner = [server.stdout.readline() for _ in range(5)]
        port = int(re.findall(r"Starting QUIC server on 127\.0\.0\.1:(\d+)", banner[0])[0])
        # The banner's URL is the address itself: Chromium takes `localhost` to ::1.
        assert any(f"https://127.0.0.1:{port}/" in line for line in banner)
        argv = ["client", "--port", str(port), "--ca", str(certs.ca), "--messages", "1"]
        assert main([*argv, "--server-name", "example.com", "--timeout", "5"]) == 1
    finally:
        server.terminate()
        server.wait(timeout=10)
        if server.stdout is not None:
            server.stdout.close()
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "not for 'example.com'; it names localhost, 127.0.0.1" in err
    assert "--server-name" in err and "Pattern" not in err and "CA" not in err


def test_interrupted_run_all_leaves_whole_scenarios_and_says_how_many(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from quicmig.report import plot

    drawn: list[str] = []
    real = plot.plot_timeline

    def draw(result: Result, path: Path) -> None:
        drawn.append(result.scenario)
        if len(drawn) == 3:  # Ctrl-C while the third scenario's files are being written
            raise KeyboardInterrupt
        real(result, path)

    monkeypatch.setattr(plot, "plot_timeline", draw)
    out = tmp_path / "out"
    assert main(["run", "all", "--out", str(out), "--workers", "1", "-q"]) == 130
    names = builtin_names()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["INCOMPLETE"] + [f"{n}.{x}" for n in names[:2] for x in ("json", "png")]
    )
    note = (out / "INCOMPLETE").read_text()
    assert note == f"interrupted after 2 of {len(names)} scenarios: {names[0]}, {names[1]}\n"
    assert f"interrupted after 2 of {len(names)} scenarios" in capsys.readouterr().err
