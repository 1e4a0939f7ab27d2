"""The reduced interop matrix, for real: every shipped stack at least once as server or
client, `transfer`, `rebind-port` (a server that follows the client, and one that never
does) and one preferred-address cell, judged from their captures by the shared judge. The
assertions are on what the judged observation holds (paths, challenges, SHA-256), never
on a stored table. Then what a crashing endpoint, an endpoint that exits at once and a
Ctrl-C leave behind. Each test skips with the program to install where one is missing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import run_bounded
from labnet import needs_lab

from quicmig.core.results import Result
from quicmig.interop.matrix import Cell, Job, MatrixRun, Selection, load_case
from quicmig.interop.stacks import load_stacks, missing
from quicmig.live.certs import CertPaths
from quicmig.model.verdicts import CheckState, Rules, Verdict

STACKS = load_stacks()
REDUCED = (
    ("transfer", "caddy", "chromium"),
    ("transfer", "qh3", "qh3"),
    ("transfer", "quicmig-ext", "quicmig"),
    ("rebind-port", "ngtcp2", "ngtcp2"),
    ("rebind-port", "caddy", "qh3"),
    ("connectionmigration", "ngtcp2", "ngtcp2"),
)
LIMIT = 170.0  # seconds for the reduced matrix (2 cells at a time)
CAN_CAPTURE_LO = os.geteuid() == 0 and shutil.which("dumpcap") is not None


def absent(server: str, client: str) -> list[str]:
    return [
        line
        for line in (missing(STACKS[server], "server"), missing(STACKS[client], "client"))
        if line
    ]


@pytest.fixture(scope="module")
def reduced(tmp_path_factory: pytest.TempPathFactory, certs: CertPaths) -> dict[Any, Any]:
    """The reduced matrix, run once: (test, server, client) -> (cell, Result | None)."""
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed (apt-get install tshark)")
    out = tmp_path_factory.mktemp("matrix")
    runnable = [t for t in REDUCED if not absent(t[1], t[2])]
    if not CAN_CAPTURE_LO:  # the preferred address is captured on lo with dumpcap
        runnable = [t for t in runnable if t[0] != "connectionmigration"]
    selection = Selection((), (), tuple(dict.fromkeys(t[0] for t in REDUCED)))
    matrix = MatrixRun(selection, "proxy", out, certs, jobs=2)
    jobs = [Job(test, STACKS[s], STACKS[c], 1, load_case(test)) for test, s, c in runnable]
    started = time.monotonic()
    cells = run_bounded(matrix.run_jobs(jobs), LIMIT)
    found: dict[Any, Any] = {"seconds": time.monotonic() - started}
    for cell in cells:
        result = None
        if cell.folder is not None and (Path(cell.folder) / "result.json").is_file():
            result = Result.from_dict(json.loads((Path(cell.folder) / "result.json").read_text()))
        found[(cell.test, cell.server, cell.client)] = (cell, result)
    return found


def cell_of(reduced: dict[Any, Any], test: str, server: str, client: str) -> tuple[Cell, Result]:
    lines = absent(server, client)
    if lines:
        pytest.skip("; ".join(lines))
    if test == "connectionmigration" and not CAN_CAPTURE_LO:
        pytest.skip("capturing the preferred address on lo needs root and dumpcap")
    cell, result = reduced[(test, server, client)]
    assert result is not None, f"{cell.letter}: {cell.reasons}"
    return cell, result


def checks(result: Result) -> dict[str, tuple[CheckState, str]]:
    return {c.name: (c.state, c.detail) for c in result.checks}


@pytest.mark.parametrize(
    ("server", "client"), [("caddy", "chromium"), ("qh3", "qh3"), ("quicmig-ext", "quicmig")]
)
def test_a_transfer_arrives_intact_on_one_path(
    reduced: dict[Any, Any], server: str, client: str
) -> None:
    cell, result = cell_of(reduced, "transfer", server, client)
    transfer = result.transfer
    assert transfer.intact and transfer.bytes == 1_000_000
    assert transfer.sha256 == transfer.detail["expected_sha256"]
    assert len(result.paths_seen) == 1 and result.migrations == []
    assert result.verdicts == {Rules.STRICT: Verdict.PASSED, Rules.RFC9000: Verdict.PASSED}
    assert cell.letter == "P"
    assert Path(result.files["pcap"]).stat().st_size > 1_000_000  # both legs of the proxy


def test_ngtcp2_follows_each_rebinding_and_validates_every_new_port(
    reduced: dict[Any, Any],
) -> None:
    _, result = cell_of(reduced, "rebind-port", "ngtcp2", "ngtcp2")
    assert result.transfer.intact and result.transfer.bytes == 10_000_000
    rebinds = [c for c in result.network_changes if c.kind.value == "nat-rebinding"]
    assert len(result.migrations) >= 2 and len(rebinds) >= 2
    assert len(result.paths_seen) == len(result.migrations) + 1
    for mig, change in zip(result.migrations, rebinds, strict=False):
        assert mig.validated_at is not None and mig.challenges >= 1
        assert mig.new_peer[1] == change.expect_port  # where the proxy put the client
    found = checks(result)
    assert found["paths-validated"][0] is CheckState.PASSED
    assert found["challenges-answered"][0] in (CheckState.PASSED, CheckState.NOT_APPLICABLE)
    # The strict verdict follows the server's first packets on the new paths.
    first = [m.first_packet_had_challenge for m in result.migrations]
    strict = Verdict.PASSED if all(first) else Verdict.FAILED
    assert result.verdicts[Rules.STRICT] is strict
    assert result.verdicts[Rules.RFC9000] is Verdict.PASSED


def test_caddy_keeps_sending_to_the_old_address_and_fails(reduced: dict[Any, Any]) -> None:
    """quic-go 0.29 never follows a rebinding: said from the capture, a failure."""
    cell, result = cell_of(reduced, "rebind-port", "caddy", "qh3")
    assert cell.letter == "F"
    first = result.migrations[0]
    assert first.sent_to_old_after > 0 and first.first_packet_had_challenge is None
    assert first.validated_at is None
    state, detail = checks(result)["first-packet-challenge"]
    assert state is CheckState.FAILED
    assert f"the server sent {first.sent_to_old_after} packets to the old address" in detail
    assert detail.endswith("none to the new one")
    assert not result.transfer.intact
    assert result.verdicts[Rules.RFC9000] is Verdict.FAILED


def test_the_client_moves_to_ngtcp2s_preferred_address_with_a_new_dcid(
    reduced: dict[Any, Any],
) -> None:
    cell, result = cell_of(reduced, "connectionmigration", "ngtcp2", "ngtcp2")
    found = checks(result)
    assert found["preferred-address-used"][0] is CheckState.PASSED
    assert found["connectionmigration"][0] is CheckState.PASSED
    use = result.stats["preferred_address"]
    assert use["first_dcid_new"] and use["moved_at"] is not None
    assert result.transfer.intact and cell.letter == "P"


def test_the_reduced_matrix_fits_its_budget(reduced: dict[Any, Any]) -> None:
    assert reduced["seconds"] < LIMIT


@needs_lab
def test_in_the_lab_the_kernel_nat_moves_ngtcp2s_client_to_the_next_address(
    tmp_path: Path, certs: CertPaths
) -> None:
    """The same case table through the namespace lab: the programs run in namespaces, the
    kernel NAT rebinds, the capture is the router's side of the server's link."""
    lines = absent("ngtcp2", "ngtcp2")
    if lines:
        pytest.skip("; ".join(lines))
    matrix = MatrixRun(Selection((), (), ("rebind-addr",)), "lab", tmp_path, certs)
    job = Job("rebind-addr", STACKS["ngtcp2"], STACKS["ngtcp2"], 1, load_case("rebind-addr"))
    (cell,) = run_bounded(matrix.run_jobs([job]), 60.0)
    assert cell.folder is not None, cell.reasons
    result = Result.from_dict(json.loads((Path(cell.folder) / "result.json").read_text()))
    pool = load_case("rebind-addr").topology.nat("nat").external
    assert result.transfer.intact and result.transfer.bytes == 10_000_000
    assert len(result.migrations) >= 2
    for mig in result.migrations:
        assert mig.observed.value == "address_change"
        assert mig.new_peer[0] in pool and mig.validated_at is not None
    assert result.verdicts[Rules.RFC9000] is Verdict.PASSED
    prefix = result.stats["lab"]["prefix"]  # this run's namespaces: all gone
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert prefix.startswith("qm") and prefix not in namespaces


# --- endpoints that fail, and Ctrl-C -------------------------------------------------------

BROKEN = """
name = "broken"
summary = "a server that exits at once, and a client that crashes"

[server]
program = "{python}"
package = "python3"
version = ["{python}", "--version"]
command = ["{python}", "-c", "import sys; print('cannot open {cert}: no such file'); sys.exit(3)"]
protocols = ["h3"]
path = "/{file}"

[client]
program = "{python}"
package = "python3"
version = ["{python}", "--version"]
command = ["{python}", "-c", "import os, sys; print('segfault, say', flush=True); os.abort()"]
protocol = "h3"
body = "download_dir"
"""


def run_cells(tmp_path: Path, certs: CertPaths, pairs: list[tuple[str, str]]) -> list[Cell]:
    (tmp_path / "stacks").mkdir(exist_ok=True)
    (tmp_path / "stacks" / "broken.toml").write_text(BROKEN)
    stacks = load_stacks(tmp_path / "stacks")
    matrix = MatrixRun(Selection((), (), ("transfer",)), "proxy", tmp_path / "out", certs)
    jobs = [Job("transfer", stacks[s], stacks[c], 1, load_case("transfer")) for s, c in pairs]
    return run_bounded(matrix.run_jobs(jobs), 60.0)


def test_a_server_that_exits_at_once_and_a_crashing_client_fail_their_cells(
    tmp_path: Path, certs: CertPaths
) -> None:
    pairs = [("broken", "qh3"), ("qh3", "broken")]
    if absent("qh3", "qh3"):
        pytest.skip("; ".join(absent("qh3", "qh3")))
    by_pair = {(c.server, c.client): c for c in run_cells(tmp_path, certs, pairs)}
    server_cell = by_pair[("broken", "qh3")]
    assert server_cell.letter == "F"
    reason = next(r for r in server_cell.reasons if r.startswith("server-start"))
    assert "exit status 3" in reason and "cannot open" in reason  # its status and log line
    client_cell = by_pair[("qh3", "broken")]
    assert client_cell.letter == "F"
    reason = next(r for r in client_cell.reasons if r.startswith("client-exit"))
    assert "killed by SIGABRT" in reason and "segfault, say" in reason


def test_ctrl_c_stops_every_endpoint_and_keeps_no_half_cell(tmp_path: Path) -> None:
    lines = absent("qh3", "qh3")
    if lines:
        pytest.skip("; ".join(lines))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "quicmig", "interop", "--servers", "qh3", "--clients"]
    command += ["qh3", "--tests", "transfer,rebind-port", "--out", str(out)]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        try:
            assert process.stdout is not None
            for line in process.stdout:  # the transfer cell finished: the rebinding one runs
                if line.startswith(("P transfer", "F transfer", "U transfer")):
                    break
            time.sleep(2.0)
            process.send_signal(signal.SIGINT)
            _, err = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 130, err
    assert "interrupted after 1 of 2 cells" in err
    assert (out / "INCOMPLETE").is_file()
    matrix = json.loads((out / "matrix.json").read_text())
    assert matrix["complete"] is False
    assert [c["test"] for c in matrix["cells"]] == ["transfer"]
    assert not (out / "cells" / "rebind-port").exists() or not any(
        (out / "cells" / "rebind-port").iterdir()
    )
    assert (out / "cells" / "transfer" / "qh3--qh3" / "result.json").is_file()
    leftovers = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(out) not in leftovers  # no endpoint of the run is left
