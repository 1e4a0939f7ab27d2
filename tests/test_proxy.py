"""`quicmig proxy` on loopback: impairments measured, rebindings seen by real servers.

Impairments are measured with a plain UDP echo behind the proxy (what arrived, when); the
rebindings with the project's live server (its MigrationTracker) and with an aioquic client
and server built only from aioquic's public API (`aioquic.asyncio.serve` / `connect`), whose
capture `quicmig check` then judges. Ports are ephemeral; every test is bounded in time.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import socket
import statistics
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aioquic.asyncio.client import connect
from aioquic.asyncio.server import serve
from aioquic.quic.configuration import QuicConfiguration
from conftest import loss_runs
from conftest import run_bounded as run

from quicmig.cli import main
from quicmig.core.app import content
from quicmig.core.datagram import Address, format_address
from quicmig.errors import QuicmigError
from quicmig.live.certs import CertPaths
from quicmig.live.client import LiveClient
from quicmig.live.server import LiveServer
from quicmig.live.udp import UdpSocket, open_socket
from quicmig.model.scenario import QuicExtensions
from quicmig.model.topology import LinkProfile
from quicmig.proxy.control import ControlServer, send_request
from quicmig.proxy.core import Proxy, ProxyConfig

T = TypeVar("T")
LOOPBACK = "127.0.0.1"


class Echo:
    """A UDP echo server that records (arrival time, sequence number) of what reached it."""

    def __init__(self) -> None:
        self.socket: UdpSocket | None = None
        self.arrivals: list[tuple[float, int]] = []
        self.sources: list[Address] = []

    async def open(self) -> Address:
        self.socket = await open_socket((LOOPBACK, 0), self._on, "echo")
        return self.socket.local

    def _on(self, data: bytes, addr: Address) -> None:
        self.arrivals.append((asyncio.get_running_loop().time(), struct.unpack("!I", data[:4])[0]))
        if addr not in self.sources:
            self.sources.append(addr)
        assert self.socket is not None
        self.socket.sendto(data, addr)

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close()


class Pinger:
    """The client side: numbered datagrams out, answers (with their times) back."""

    def __init__(self) -> None:
        self.socket: UdpSocket | None = None
        self.answers: dict[int, float] = {}
        self.sent: dict[int, float] = {}

    async def open(self) -> None:
        self.socket = await open_socket((LOOPBACK, 0), self._on, "pinger")

    def _on(self, data: bytes, addr: Address) -> None:
        self.answers[struct.unpack("!I", data[:4])[0]] = asyncio.get_running_loop().time()

    def send(self, number: int, to: Address, size: int = 64) -> None:
        assert self.socket is not None
        self.sent[number] = asyncio.get_running_loop().time()
        self.socket.sendto(struct.pack("!I", number) + bytes(size - 4), to)

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close()


async def with_echo(profile: LinkProfile, body: Callable[[Proxy, Pinger, Echo], Awaitable[T]]) -> T:
    echo, pinger = Echo(), Pinger()
    try:
        upstream = await echo.open()
        await pinger.open()
        config = ProxyConfig(listen=(LOOPBACK, 0), upstream=upstream, profile=profile, seed=3)
        async with Proxy(config, log=lambda line: None) as proxy:
            return await body(proxy, pinger, echo)
    finally:
        echo.close()
        pinger.close()


def test_delay_and_jitter_are_measured_round_trips() -> None:
    profile = LinkProfile(delay=0.040, jitter=0.010)  # one way, each direction

    async def body(proxy: Proxy, pinger: Pinger, echo: Echo) -> list[float]:
        rtts = []
        for number in range(15):
            pinger.send(number, proxy.local)
            while number not in pinger.answers:
                await asyncio.sleep(0.002)
            rtts.append(pinger.answers[number] - pinger.sent[number])
        return rtts

    rtts = run(with_echo(profile, body))
    # Two one-way delays of 40 ms, each within +-10 ms; loaded machines add a little.
    assert min(rtts) >= 0.060 - 0.001, rtts
    assert max(rtts) <= 0.100 + 0.040, rtts
    assert 0.070 <= statistics.median(rtts) <= 0.110, rtts
    assert max(rtts) - min(rtts) > 0.004, "jitter: the round trips must vary"


def test_random_and_bursty_loss_rates() -> None:
    async def measure(profile: LinkProfile) -> tuple[float, float, float]:
        async def body(proxy: Proxy, pinger: Pinger, echo: Echo) -> tuple[float, float, float]:
            count = 1000
            for number in range(count):
                pinger.send(number, proxy.local)
                if number % 10 == 9:
                    # Stay well within socket buffers: on a loaded machine the kernel drops
                    # datagrams too, which would add to the loss being measured.
                    await asyncio.sleep(0.002)
            await asyncio.sleep(0.2)
            arrived = {n for _, n in echo.arrivals}
            missing = [n not in arrived for n in range(count)]
            bursts = [
                length
                for length in loss_runs(missing)  # lengths of consecutive losses
            ]
            return (
                1 - len(arrived) / count,
                len(pinger.answers) / count,
                statistics.mean(bursts) if bursts else 0.0,
            )

        return await with_echo(profile, body)

    uplink_loss, echoed, burst = run(measure(LinkProfile(delay=0.001, loss=0.20)))
    # Binomial, 1000 draws: sd 1.26 points; the bounds are 4.7 sd either side.
    assert 0.14 <= uplink_loss <= 0.26
    assert 0.56 <= echoed <= 0.72  # both directions: 0.8 * 0.8, sd 1.5 points
    assert burst < 1.6  # independent losses: mean run 1 / 0.8 = 1.25
    uplink_loss, _, burst = run(measure(LinkProfile(delay=0.001, loss=0.20, burst_len=4.0)))
    assert 0.12 <= uplink_loss <= 0.28  # bursts make the estimate noisier
    assert 2.5 <= burst <= 6.0  # Gilbert-Elliott: mean burst 4 packets


def test_rate_limit_and_queue() -> None:
    size = 1000  # bytes of UDP payload; 1028 on the wire with IPv4 + UDP headers

    async def rate(profile: LinkProfile, count: int) -> tuple[int, float | None, float]:
        """(datagrams echoed, measured rate, seconds the sender took to send them all)."""

        async def body(proxy: Proxy, pinger: Pinger, echo: Echo) -> tuple[int, float | None, float]:
            loop = asyncio.get_running_loop()
            started = loop.time()
            for number in range(count):
                pinger.send(number, proxy.local, size)
                if number % 20 == 19:
                    await asyncio.sleep(0.001)  # within socket buffers, still far above 8 Mbit/s
            sending = loop.time() - started
            await asyncio.sleep(count * (size + 28) * 8 / 8e6 + 0.15)
            times = [t for t, _ in echo.arrivals]
            if len(times) < 2:
                return len(times), None, sending
            return len(times), (len(times) - 1) * (size + 28) * 8 / (times[-1] - times[0]), sending

        return await with_echo(profile, body)

    got, measured, _ = run(rate(LinkProfile(delay=0.001, rate=8e6, queue=1000), 150))
    assert got == 150
    assert measured is not None and 0.85 * 8e6 <= measured <= 1.15 * 8e6, measured
    got, _, sending = run(rate(LinkProfile(delay=0.001, rate=8e6, queue=10), 100))
    # 10 datagrams fit the queue, one is on the wire, and the link drains one every 1.028 ms
    # while the sender is still sending (more of them when a loaded machine sends slowly).
    drained = sending / ((size + 28) * 8 / 8e6)
    assert 10 <= got <= 11 + drained + 2, (got, sending)


async def download_through(
    client: LiveClient, proxy: Proxy, size: int, rebinds: int, via_control: Address | None
) -> tuple[bool, list[str]]:
    """Download `size` bytes, rebinding the proxy `rebinds` times spread over the transfer."""
    thresholds = [size * (k + 1) // (rebinds + 1) for k in range(rebinds)]
    done: list[str] = []
    pending: set[asyncio.Task[Any]] = set()
    loop = asyncio.get_running_loop()

    async def rebind() -> None:
        if via_control is not None:
            answer = await loop.run_in_executor(None, send_request, via_control, "rebind")
            done.append(answer)
        else:
            events = await proxy.rebind()
            done.extend(e.detail for e in events)

    def progress(received: int) -> None:
        while thresholds and received >= thresholds[0]:
            thresholds.pop(0)
            task = asyncio.ensure_future(rebind())
            pending.add(task)

    download = await client.download(size, on_progress=progress, timeout=15.0)
    await asyncio.gather(*pending)
    await client.send_message(b"after the rebindings")  # the client speaks from the new port
    return download.intact, done


@pytest.mark.parametrize("with_addr", [False, True], ids=["port", "addr+ctl"])
def test_each_rebinding_is_seen_and_validated_by_the_live_server(
    certs: CertPaths, tmp_path: Path, with_addr: bool
) -> None:
    pcap, keys = tmp_path / "proxy.pcap", tmp_path / "server.keys"

    async def scenario() -> tuple[bool, list[Any], list[dict[str, Any]], list[str]]:
        server_log: list[str] = []
        # challenge_first: stock aioquic 1.7.2 puts PATH_CHALLENGE in its first packet on the
        # new path only when the congestion window has room at that instant, a race over real
        # sockets (seen in 4 of 244 loaded runs); the capture check below must not depend on it.
        async with LiveServer(
            certs,
            [(LOOPBACK, 0)],
            secrets_log=keys,
            log=server_log.append,
            extensions=QuicExtensions(challenge_first=True),
        ) as server:
            sources = (LOOPBACK, "127.0.0.2") if with_addr else (LOOPBACK,)
            config = ProxyConfig(
                listen=(LOOPBACK, 0),
                upstream=server.addresses[0],
                profile=LinkProfile(delay=0.002),
                source_addresses=sources,
                pcap=pcap,
            )
            async with Proxy(config, log=lambda line: None) as proxy:
                control = ControlServer(proxy)
                try:
                    where = await control.open((LOOPBACK, 0)) if with_addr else None
                    async with LiveClient(proxy.local, ca=certs.ca, server_name="localhost") as c:
                        intact, answers = await download_through(c, proxy, 3_000_000, 2, where)
                        record = await c.confirmed_record()
                finally:
                    await control.aclose()
                events = [e for e in proxy.events if e.kind == "rebind"]
            tracker = server.connections[0].server_conn.tracker
            migrations = [
                {
                    "kind": m.kind,
                    "new": format_address(m.new_peer),
                    "validated": m.validated_at is not None,
                }
                for m in tracker.migrations
            ]
            assert record["migrations"] and len(record["migrations"]) == len(migrations)
        return intact, events, migrations, answers

    intact, events, migrations, answers = run(scenario())
    assert intact, "SHA-256 of the download matches what the server sent"
    assert len(events) == 2
    assert [m["new"] for m in migrations] == [e.new for e in events]
    assert all(m["validated"] for m in migrations), migrations
    expected = ["address_change", "address_change"] if with_addr else ["port_change"] * 2
    assert [m["kind"] for m in migrations] == expected
    if with_addr:
        assert [e.new.split(":")[0] for e in events if e.new] == ["127.0.0.2", LOOPBACK]
        assert len(answers) == 2 and all("rebind" in a for a in answers)
    if shutil.which("tshark") is not None:
        out = tmp_path / "check.json"
        assert main(["check", str(pcap), "--keylog", str(keys), "--json", str(out), "-q"]) == 0
        report = json.loads(out.read_text())
        upstream_leg = [c for c in report["connections"] if c["migrations"]]
        assert len(upstream_leg) == 1
        assert [m["new_peer"] for m in upstream_leg[0]["migrations"]] == [e.new for e in events]


def test_stock_aioquic_client_and_server_through_the_proxy(
    certs: CertPaths, tmp_path: Path
) -> None:
    """aioquic's public API only: serve() and connect(), a stream download, two rebindings."""
    size = 2_000_000
    body = content(size, 7)
    pcap, keys = tmp_path / "stock.pcap", tmp_path / "stock.keys"

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.read(100)
        assert request == b"GET"
        writer.write(body)
        writer.write_eof()

    tasks: set[asyncio.Task[None]] = set()

    def start_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks.add(asyncio.ensure_future(handler(reader, writer)))

    async def scenario() -> tuple[str, list[Any]]:
        with keys.open("w") as secrets:
            server_config = QuicConfiguration(
                is_client=False, alpn_protocols=["stock"], secrets_log_file=secrets
            )
            server_config.load_cert_chain(certs.cert, certs.key)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.bind((LOOPBACK, 0))  # a free port: serve() does not report the one it got
                port = probe.getsockname()[1]
            server = await serve(
                LOOPBACK,
                port,
                configuration=server_config,
                stream_handler=start_handler,
            )
            try:
                config = ProxyConfig(
                    listen=(LOOPBACK, 0),
                    upstream=(LOOPBACK, port),
                    profile=LinkProfile(delay=0.002),
                    pcap=pcap,
                )
                async with Proxy(config, log=lambda line: None) as proxy:
                    client_config = QuicConfiguration(
                        is_client=True, alpn_protocols=["stock"], server_name="localhost"
                    )
                    client_config.load_verify_locations(cafile=str(certs.ca))
                    async with connect(
                        LOOPBACK, proxy.local[1], configuration=client_config
                    ) as client:
                        reader, writer = await client.create_stream()
                        writer.write(b"GET")
                        writer.write_eof()
                        digest = hashlib.sha256()
                        received = 0
                        marks = [size // 3, 2 * size // 3]
                        while chunk := await reader.read(65536):
                            digest.update(chunk)
                            received += len(chunk)
                            if marks and received >= marks[0]:
                                marks.pop(0)
                                await proxy.rebind()
                        await client.ping()  # the client speaks again from the last port
                    return digest.hexdigest(), [e for e in proxy.events if e.kind == "rebind"]
            finally:
                server.close()

    digest, events = run(scenario())
    assert digest == hashlib.sha256(body).hexdigest()
    assert len(events) == 2 and all(e.new != e.old for e in events)
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed: the capture check is skipped")
    out = tmp_path / "check.json"
    code = main(["check", str(pcap), "--keylog", str(keys), "--json", str(out), "-q"])
    report = json.loads(out.read_text())
    (leg,) = [c for c in report["connections"] if c["migrations"]]
    assert [m["new_peer"] for m in leg["migrations"]] == [e.new for e in events]
    assert all(m["validated_at"] is not None for m in leg["migrations"])
    # Stock aioquic 1.7.2 carries PATH_CHALLENGE in its first packet on a new path only when
    # the congestion window has room at that instant: over real sockets a race it sometimes
    # loses (README, "What stock aioquic does not do"). Every other check must pass.
    failed = {c["name"] for c in report["checks"] if c["passed"] is not True}
    assert failed <= {"first-packet-challenge"}
    assert code == (1 if failed else 0)


def test_upstream_that_does_not_answer_fails_fast() -> None:
    async def scenario() -> str:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((LOOPBACK, 0))
            closed_port = probe.getsockname()[1]
        pinger = Pinger()
        await pinger.open()
        try:
            config = ProxyConfig(listen=(LOOPBACK, 0), upstream=(LOOPBACK, closed_port))
            async with Proxy(config, log=lambda line: None) as proxy:
                pinger.send(1, proxy.local)
                pinger.send(2, proxy.local)
                with pytest.raises(QuicmigError) as info:
                    await asyncio.wait_for(proxy.wait(), 3.0)
                return str(info.value)
        finally:
            pinger.close()

    message = run(scenario())
    assert "does not answer" in message


def test_bad_input_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind((LOOPBACK, 0))
        port = taken.getsockname()[1]
        cases: list[tuple[list[str], int, str]] = [
            (["proxy", "--listen", "nonsense:99"], 2, "is not an IP address"),
            (["proxy", "--upstream", "127.0.0.1:99999"], 2, "is not a UDP port"),
            (["proxy", "--profile", "dialup"], 2, "unknown link profile 'dialup'"),
            (["proxy", "--loss-pct", "150"], 2, "outside 0-100"),
            (["proxy", "--rebind-addr", "10.0.0.1"], 2, "use a loopback address"),
            (["proxy", "--switch", "soon:wifi"], 2, "use AT:PROFILE"),
            (["proxy", "--listen", f"127.0.0.1:{port}", "--control", "off"], 1, "already in use"),
            (["proxy", "ctl", "rebind", "--control", f"127.0.0.1:{port}"], 1, "no proxy answers"),
            (["proxy", "nonsense"], 2, "quicmig proxy ctl ACTION"),
        ]
        for argv, code, text in cases:
            assert main(argv) == code, argv
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and text in err, (argv, err)


def test_control_channel_switch_and_blackhole() -> None:
    """`switch` changes the measured delay; `blackhole` drops everything for its length."""

    async def body(proxy: Proxy, pinger: Pinger, echo: Echo) -> tuple[float, float, int, str]:
        control = ControlServer(proxy)
        loop = asyncio.get_running_loop()
        try:
            where = await control.open((LOOPBACK, 0))

            async def ping(number: int) -> float:
                pinger.send(number, proxy.local)
                for _ in range(300):
                    if number in pinger.answers:
                        return pinger.answers[number] - pinger.sent[number]
                    await asyncio.sleep(0.002)
                return float("inf")

            before = await ping(1)
            answer = await loop.run_in_executor(None, send_request, where, "switch lan")
            after = await ping(2)
            await loop.run_in_executor(None, send_request, where, "blackhole 0.3")
            for number in range(10, 20):
                pinger.send(number, proxy.local)
            await asyncio.sleep(0.35)
            lost = sum(n in pinger.answers for n in range(10, 20))
            back = await ping(3)
            status = await loop.run_in_executor(None, send_request, where, "status")
            assert back < 0.2 and "blackholed 10" in status, status
            with pytest.raises(QuicmigError, match="unknown link profile"):
                await loop.run_in_executor(None, send_request, where, "switch dialup")
            return before, after, lost, answer
        finally:
            await control.aclose()

    before, after, answered, answer = run(with_echo(LinkProfile(delay=0.050), body))
    assert before >= 0.099 and after < 0.05, (before, after)
    assert "→ lan" in answer
    assert answered == 0


def test_profile_switch_schedule_changes_the_link() -> None:
    async def scenario() -> list[str]:
        echo = Echo()
        try:
            upstream = await echo.open()
            config = ProxyConfig(
                listen=(LOOPBACK, 0),
                upstream=upstream,
                switches=((0.05, "cellular"),),
                blackholes=((0.1, 0.05),),
            )
            log: list[str] = []
            async with Proxy(config, log=log.append) as proxy:
                await asyncio.sleep(0.2)
                assert proxy.up.profile.delay == proxy.down.profile.delay == 0.060
                assert proxy.up.profile.loss == 0.01 and proxy.up.profile.rate == 10e6
            return log
        finally:
            echo.close()

    log = run(scenario())
    assert any("switch: ideal → cellular" in line for line in log), log
    assert any("blackhole for 0.05 s" in line for line in log), log
    assert any("blackhole over" in line for line in log), log
