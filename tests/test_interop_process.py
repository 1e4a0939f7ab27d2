"""Endpoint processes: stopping one leaves no process of its group (nor of a session a child
started), one that exits at once or outlives its timeout says so in one line, a port in use is
refused before the start."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path

import pytest
from conftest import run_bounded

from quicmig.errors import InputError
from quicmig.interop.process import (
    Endpoint,
    EndpointError,
    alive,
    check_port_free,
    descendants,
    free_port,
    group_pids,
)

# A parent with two children in its group and a grandchild in a session of its own (as
# Chromium does), all sleeping; the parent ignores SIGTERM, so only SIGKILL ends it.
FAMILY = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
subprocess.Popen(["sleep", "60"]); subprocess.Popen(["sleep", "60"])
subprocess.Popen(["sleep", "60"], start_new_session=True)
print("ready", flush=True)
time.sleep(60)
"""


def test_stop_kills_the_group_and_children_in_other_sessions(tmp_path: Path) -> None:
    async def scenario() -> tuple[set[int], set[int], int | None, bool]:
        endpoint = Endpoint("family", [sys.executable, "-c", FAMILY], log=tmp_path / "f.log")
        async with endpoint:
            assert endpoint.pid is not None
            while "ready" not in (tmp_path / "f.log").read_text().splitlines():
                await asyncio.sleep(0.05)
            family = descendants(endpoint.pid) | {endpoint.pid}
            in_group = set(group_pids(endpoint.pid))
        end = await endpoint.stop()
        assert len(family) == 4 and len(in_group) == 3  # the grandchild left the group
        return alive(family), set(group_pids(endpoint.pid)), end.returncode, end.stopped

    left, group, returncode, stopped = run_bounded(scenario())
    assert left == set() and group == set()
    assert returncode == -signal.SIGKILL and stopped  # SIGTERM was ignored


def test_an_endpoint_that_exits_at_once_is_one_line_with_its_status_and_log(
    tmp_path: Path,
) -> None:
    script = "import sys; print('cannot open the certificate'); sys.exit(3)"
    endpoint = Endpoint("broken server", [sys.executable, "-c", script], log=tmp_path / "b.log")

    async def scenario() -> str:
        async with endpoint:
            with pytest.raises(EndpointError) as raised:
                await endpoint.wait_ready("127.0.0.1", free_port("127.0.0.1"), 10.0)
        return str(raised.value)

    message = run_bounded(scenario())
    assert message.startswith("exited at once: broken server: exit status 3; last log line: ")
    assert "cannot open the certificate" in message and "\n" not in message


def test_a_server_is_ready_once_its_group_binds_the_port(tmp_path: Path) -> None:
    port = free_port("127.0.0.1")
    script = (
        "import socket, time; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        f"time.sleep(0.3); s.bind(('127.0.0.1', {port})); time.sleep(30)"
    )
    endpoint = Endpoint("udp server", [sys.executable, "-c", script], log=tmp_path / "u.log")

    async def scenario() -> bool:
        async with endpoint:
            await endpoint.wait_ready("127.0.0.1", port, 10.0)
            return endpoint.exited()

    assert run_bounded(scenario()) is False
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", port))  # released: the stopped server held it


def test_a_client_that_outlives_its_timeout_is_stopped_and_says_so(tmp_path: Path) -> None:
    endpoint = Endpoint("slow client", ["sleep", "30"], log=tmp_path / "s.log")

    async def scenario() -> tuple[bool, str]:
        async with endpoint:
            end = await endpoint.wait(0.3)
        return end.timed_out, end.describe()

    timed_out, line = run_bounded(scenario())
    assert timed_out and "still running after" in line and "(timeout)" in line


def test_a_port_in_use_is_refused_in_one_line() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        check_port_free("127.0.0.1", port, tcp=False, who="caddy server")  # UDP is free
        with pytest.raises(InputError) as raised:
            check_port_free("127.0.0.1", port, tcp=True, who="caddy server")
    message = str(raised.value)
    assert message.startswith(f"TCP port {port} on 127.0.0.1 is already in use (caddy server)")
    assert "\n" not in message
