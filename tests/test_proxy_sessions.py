"""The proxy's mappings behave like a NAT's: they expire, the table is bounded, a full table
refuses or replaces, and a low open-file limit never stops the proxy.

Observed at a plain UDP socket standing in for the upstream: which source port each client's
datagrams arrive from, and which never arrive.
"""

from __future__ import annotations

import asyncio
import re
import resource
import socket
import sys
from collections.abc import Iterator

import pytest
from conftest import run_bounded

from quicmig.cli import main
from quicmig.core.datagram import Address
from quicmig.proxy.control import send_request
from quicmig.proxy.core import EVICT_IDLE, Proxy, ProxyConfig

LOOPBACK = "127.0.0.1"


class Upstream(asyncio.DatagramProtocol):
    """Records (payload, source) of every datagram, and echoes it."""

    def __init__(self) -> None:
        self.seen: list[tuple[bytes, Address]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.DatagramTransport)
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.seen.append((data, (addr[0], addr[1])))
        assert self.transport is not None
        self.transport.sendto(data, addr)

    def source_of(self, payload: bytes) -> Address | None:
        return next((src for data, src in self.seen if data == payload), None)


def client_sockets(count: int) -> Iterator[socket.socket]:
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((LOOPBACK, 0))
        yield sock


async def settle() -> None:
    await asyncio.sleep(0.05)


def test_idle_mapping_expires_and_the_next_datagram_gets_a_new_one() -> None:
    async def scenario() -> tuple[Address | None, Address | None, int]:
        loop = asyncio.get_running_loop()
        transport, upstream = await loop.create_datagram_endpoint(
            Upstream, local_addr=(LOOPBACK, 0)
        )
        where = transport.get_extra_info("sockname")
        config = ProxyConfig(listen=(LOOPBACK, 0), upstream=where, session_timeout=0.3)
        try:
            async with Proxy(config, log=lambda line: None) as proxy:
                (sock,) = client_sockets(1)
                with sock:
                    sock.sendto(b"first", proxy.local)
                    await settle()
                    sock.sendto(b"still", proxy.local)  # within the timeout: same mapping
                    await asyncio.sleep(0.5)  # idle: the mapping expires
                    sock.sendto(b"after", proxy.local)
                    await settle()
                expired = proxy.stats.sessions_expired
        finally:
            transport.close()
        assert upstream.source_of(b"first") == upstream.source_of(b"still")
        return upstream.source_of(b"first"), upstream.source_of(b"after"), expired

    first, after, expired = run_bounded(scenario())
    assert first is not None and after is not None
    assert after != first  # a new source port upstream: what a NAT does after its timeout
    assert expired == 1


def test_full_table_refuses_active_mappings_and_replaces_idle_ones() -> None:
    async def scenario() -> tuple[list[Address | None], int, int, int]:
        loop = asyncio.get_running_loop()
        transport, upstream = await loop.create_datagram_endpoint(
            Upstream, local_addr=(LOOPBACK, 0)
        )
        where = transport.get_extra_info("sockname")
        config = ProxyConfig(listen=(LOOPBACK, 0), upstream=where, max_sessions=2)
        try:
            async with Proxy(config, log=lambda line: None) as proxy:
                a, b, c, d = client_sockets(4)
                with a, b, c, d:
                    for sock, payload in ((a, b"a"), (b, b"b"), (c, b"c")):
                        sock.sendto(payload, proxy.local)
                        await settle()
                    sizes = [len(proxy.sessions)]
                    await asyncio.sleep(EVICT_IDLE + 0.1)
                    b.sendto(b"b again", proxy.local)  # b is active, a is idle longest
                    await settle()
                    d.sendto(b"d", proxy.local)  # takes a's place
                    await settle()
                    a.sendto(b"a again", proxy.local)  # a new source now; b, d are active
                    await settle()
                    sizes.append(len(proxy.sessions))
                    stats = proxy.stats
        finally:
            transport.close()
        sources = [upstream.source_of(p) for p in (b"c", b"d", b"a again", b"b again")]
        return sources, max(sizes), stats.refused, stats.sessions_evicted

    (c, d, a_again, b_again), largest, refused, evicted = run_bounded(scenario())
    assert largest <= 2
    assert c is None and a_again is None  # refused: never reached the upstream
    assert d is not None and b_again is not None
    assert (refused, evicted) == (2, 1)


def test_a_low_open_file_limit_refuses_sources_and_keeps_serving() -> None:
    """`quicmig proxy` with 64 open files and 60 sources: it refuses some, counts them, keeps
    running and still forwards for a source it already maps."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    async def scenario() -> tuple[int | None, str, Address | None]:
        loop = asyncio.get_running_loop()
        transport, upstream = await loop.create_datagram_endpoint(
            Upstream, local_addr=(LOOPBACK, 0)
        )
        up = transport.get_extra_info("sockname")
        probe = socket.socket()
        probe.bind((LOOPBACK, 0))
        control = probe.getsockname()
        probe.close()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "quicmig",
            "proxy",
            "--listen",
            f"{LOOPBACK}:0",
            "--upstream",
            f"{up[0]}:{up[1]}",
            "--control",
            f"{control[0]}:{control[1]}",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            preexec_fn=limit,
        )
        try:
            assert process.stdout is not None
            first = (await asyncio.wait_for(process.stdout.readline(), 15)).decode()
            match = re.search(r"quicmig proxy: 127\.0\.0\.1:(\d+)", first)
            assert match, first
            listen = (LOOPBACK, int(match.group(1)))
            legit, *flood = client_sockets(61)
            with legit:
                legit.sendto(b"legit 1", listen)
                await asyncio.sleep(0.1)
                for sock in flood:
                    with sock:
                        sock.sendto(b"junk", listen)
                await asyncio.sleep(0.2)
                legit.sendto(b"legit 2", listen)
                await asyncio.sleep(0.2)
            status = await loop.run_in_executor(None, send_request, control, "status")
            return process.returncode, status, upstream.source_of(b"legit 2")
        finally:
            process.terminate()
            await process.wait()
            transport.close()

    returncode, status, legit_source = run_bounded(scenario())
    assert returncode is None  # still running
    match = re.search(r"sessions (\d+)/(\d+) .*refused (\d+)", status)
    assert match, status
    size, capacity, refused = (int(g) for g in match.groups())
    assert size <= capacity < 61 and refused >= 61 - capacity
    assert legit_source is not None


@pytest.mark.parametrize("value", ["0", "-3"])
def test_max_sessions_must_be_positive(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["proxy", "--max-sessions", value, "--duration", "1"]) == 2
    assert "--max-sessions" in capsys.readouterr().err
