"""The by-hand transfer tool through quicmig's proxy (`python -m quicmig.interop.transfer`):
the received body's SHA-256 equal to the served one's, the capture decrypted by tshark with
the run's key logs, and a rebinding it makes seen in the capture. The matrix's own cells
(every stack, judged) are tests/test_interop_cells.py. Each test skips with the package."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import run_bounded

from quicmig.capture.tshark import read_datagrams
from quicmig.core.datagram import Address
from quicmig.interop.stacks import Stack, load_stacks, missing
from quicmig.interop.transfer import Outcome, Plan, run_transfer
from quicmig.interop.wire import path_counts, rebind_view, server_leg
from quicmig.live.certs import CertPaths

SIZE = 300_000  # bytes: tshark reads a capture of it in about 2 s
LIMIT = 40.0  # seconds for one transfer, Chromium's start included
STACKS = load_stacks()

pytestmark = pytest.mark.skipif(
    shutil.which("tshark") is None, reason="tshark is not installed (apt-get install tshark)"
)


def stacks_for(server: str, client: str) -> tuple[Stack, Stack]:
    lines = [
        line
        for line in (missing(STACKS[server], "server"), missing(STACKS[client], "client"))
        if line is not None
    ]
    if lines:
        pytest.skip("; ".join(lines))
    return STACKS[server], STACKS[client]


def transfer(
    server: str,
    client: str,
    folder: Path,
    certs: CertPaths,
    rebind_after: float | None = None,
    delay: float = 0.0,
) -> Outcome:
    server_stack, client_stack = stacks_for(server, client)
    plan = Plan(
        server_stack,
        client_stack,
        SIZE,
        folder,
        certs,
        rebind_after=rebind_after,
        delay=delay,
        timeout=30.0,
    )
    return run_bounded(run_transfer(plan), LIMIT)


def decrypted(outcome: Outcome) -> tuple[int, int, list[Address]]:
    """1-RTT datagrams on the server's leg: (decrypted, all), and the client addresses seen."""
    leg = server_leg(read_datagrams(outcome.pcap, outcome.keylog), outcome.server_address)
    peers = [p.peer for p in path_counts(leg, outcome.server_address)]
    hosts = [(peer.rpartition(":")[0], int(peer.rpartition(":")[2])) for peer in peers]
    return sum(1 for d in leg if d.decrypted), sum(1 for d in leg if d.only_short), hosts


def test_a_transfer_by_hand_arrives_intact_and_decrypts(certs: CertPaths, tmp_path: Path) -> None:
    """`python -m quicmig.interop.transfer`, the tool for trying a pair by hand (the matrix's
    cells, judged, are tests/test_interop_cells.py)."""
    outcome = transfer("ngtcp2", "ngtcp2", tmp_path, certs)
    assert outcome.client_exit.ok, outcome.client_exit.describe()
    assert outcome.intact, outcome.describe()
    assert outcome.received_sha256 == outcome.expected_sha256
    assert outcome.received_bytes == SIZE
    good, short, peers = decrypted(outcome)
    assert short > SIZE // 1500 and good == short, f"{good} of {short} decrypted"
    assert len(peers) == 1  # no path change in a plain transfer


def test_the_tool_rebinds_and_the_capture_shows_the_server_following(
    certs: CertPaths, tmp_path: Path
) -> None:
    outcome = transfer("ngtcp2", "ngtcp2", tmp_path, certs, rebind_after=0.3, delay=0.01)
    assert outcome.intact, outcome.describe()
    (event,) = [e for e in outcome.proxy_events if e.kind == "rebind"]
    assert event.old is not None and event.new is not None
    leg = server_leg(read_datagrams(outcome.pcap, outcome.keylog), outcome.server_address)
    view = rebind_view(leg, outcome.server_address, event.old, event.new)
    assert view.client_first_new is not None and view.server_to_new > 0, view.describe()
    assert view.challenges_to_new >= 1 and view.responses_from_new >= 1, view.describe()
    assert view.undecrypted_on_new == 0, view.describe()
