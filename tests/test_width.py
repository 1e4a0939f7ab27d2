"""Every table readable at 80 and at 132 columns: nothing wider than the terminal, no
trailing spaces, and no address or number cut (each one appears whole on a line)."""

from __future__ import annotations

import io
import itertools
import json
import shutil
from pathlib import Path

import pytest
from conftest import BuiltinRuns
from rich.console import Console

from quicmig.cli import COMMANDS, main
from quicmig.core.datagram import format_address
from quicmig.core.results import Result
from quicmig.demo.diagram import diagram
from quicmig.demo.observe import Observation, observe
from quicmig.model.loader import load_scenario
from quicmig.report.table import PIPE_WIDTH, print_result, summary_table

WIDTHS = (80, 132)
SCENARIOS = ("network-switch", "rebind-addr", "disable-migration", "spoofed-address")


def printed(width: int, *renderables: object) -> list[str]:
    buffer = io.StringIO()
    console = Console(file=buffer, width=width)
    for renderable in renderables:
        console.print(renderable)
    return buffer.getvalue().splitlines()


def assert_fits(lines: list[str], width: int) -> None:
    for line in lines:
        assert len(line) <= width, f"{len(line)} > {width}: {line!r}"


def whole(lines: list[str], *words: str) -> None:
    """Each of `words` on one line, not cut across two."""
    for word in words:
        assert any(word in line for line in lines), f"{word!r} cut or missing"


def numbers_of(result: Result) -> list[str]:
    words = []
    for mig in result.migrations:
        words += [format_address(mig.old_peer), f":{mig.new_peer[1]}"]
        if mig.validation_rtt is not None:
            words.append(f"{mig.validation_rtt * 1e3:.1f} ms")
        if mig.interruption is not None:
            words.append(f"{mig.interruption * 1e3:.1f} ms")
        words.append(str(mig.lost_packets))
    return words


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", SCENARIOS)
def test_run_report_fits(name: str, width: int, builtin_run: BuiltinRuns) -> None:
    result = builtin_run(name).result
    buffer = io.StringIO()
    print_result(Console(file=buffer, width=width), result)
    lines = buffer.getvalue().splitlines()
    assert_fits(lines, width)
    whole(lines, *numbers_of(result), *(c.name for c in result.checks))
    if width == 132 and result.migrations:  # wide enough for the whole table
        assert any("challenge RTT" in line and "lost / retx" in line for line in lines)


@pytest.mark.parametrize("width", (80, 100, 132))
def test_summary_fits_and_drops_columns_in_order(width: int, builtin_run: BuiltinRuns) -> None:
    results = [builtin_run(name).result for name in (*SCENARIOS, "nat-rebinding-idle")]
    lines = printed(width, summary_table(results, width))
    assert_fits(lines, width)
    whole(lines, *(r.scenario for r in results))
    header = next(line for line in lines if "scenario" in line)
    assert ("wall" in header) == (width == 132)
    if width == 80:  # the transfer column went; the incomplete one is named under it
        assert "transfer" not in header
        assert any("transfer incomplete: nat-rebinding-idle" in line for line in lines)


@pytest.fixture(scope="module")
def recorded() -> Observation:
    return observe(load_scenario("nat-rebinding"))


@pytest.mark.parametrize("width", WIDTHS)
def test_demo_diagram_fits(width: int, recorded: Observation) -> None:
    obs = recorded
    result = obs.result
    (window,) = obs.log.windows
    lines = printed(
        width, diagram(obs.log, window, result.migrations, result.network_changes, width)
    )
    assert_fits(lines, width)
    assert all(line == line.rstrip() for line in lines)
    (mig,) = result.migrations
    whole(lines, format_address(mig.old_peer), format_address(mig.new_peer), "PATH_CHALLENGE(")
    assert any(line.startswith(f"{mig.validated_at:.4f} ") for line in lines)


@pytest.mark.parametrize("columns", ["80", "132", None])
def test_piped_output_follows_columns_without_trailing_spaces(
    columns: str | None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    assert main(["run", "ip-change"]) == 0
    lines = capsys.readouterr().out.splitlines()
    width = int(columns) if columns else PIPE_WIDTH
    assert_fits(lines, width)
    assert all(line == line.rstrip() for line in lines)
    if width > PIPE_WIDTH:  # the width is used, not 80 or 100 everywhere
        assert max(len(line) for line in lines) > PIPE_WIDTH


def test_compare_of_many_runs_at_80_columns_splits_by_runs(
    tmp_path: Path,
    builtin_run: BuiltinRuns,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    files = []
    for index, name in enumerate(("network-switch", "rebind-addr", "ip-change")):
        path = tmp_path / f"{index}.json"
        path.write_text(json.dumps(builtin_run(name).result.to_dict()))
        files.append(str(path))
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["compare", *files]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert_fits(lines, 80)
    for name in ("network-switch", "rebind-addr", "ip-change"):
        whole(lines, *numbers_of(builtin_run(name).result))


@pytest.mark.tshark
@pytest.mark.parametrize("width", WIDTHS)
def test_check_report_fits(
    width: int,
    builtin_run: BuiltinRuns,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed (apt-get install tshark)")
    run = builtin_run("network-switch", capture=True)
    options = run.sim.options
    assert options.pcap is not None and options.keylog is not None
    monkeypatch.setenv("COLUMNS", str(width))
    main(
        [
            "check",
            str(options.pcap),
            "--keylog",
            str(options.keylog),
            "--scenario",
            "network-switch",
        ]
    )
    lines = capsys.readouterr().out.splitlines()
    assert_fits(lines, width)
    (mig,) = run.result.migrations
    whole(lines, format_address(mig.old_peer), format_address(mig.new_peer), "1 connection,")
    assert any("Δ" in line for line in lines)  # relative to the scenario's network change


HELP_COMMANDS = [
    [],
    *([name] for name in COMMANDS),
    ["lab", "run"],
    ["lab", "race"],
    ["lab", "clean"],
]


@pytest.mark.parametrize("command", HELP_COMMANDS, ids=lambda words: " ".join(words) or "quicmig")
def test_help_fits_80_columns_and_keeps_its_examples(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "80")  # what argparse reads for the terminal's width
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert_fits(lines, 80)
    assert not [line for line in lines if line != line.rstrip()], "trailing spaces"
    # An example is a command line as written: one per line, or continued with a backslash.
    examples = lines[next((i for i, line in enumerate(lines) if line.startswith("example")), -1) :]
    for before, line in itertools.pairwise(examples):
        if line.startswith("      "):
            assert before.endswith(" \\"), f"an example cut without a backslash: {line!r}"
