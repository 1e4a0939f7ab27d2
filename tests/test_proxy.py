"""`quicmig proxy` on loopback: impairments measured, rebindings seen by real servers.

Impairments are measured with a plain UDP echo behind the proxy (what arrived, when), and
delay and rate again over a real aioquic connection (the live server's own RTT estimates, a
download's goodput); the rebindings with the project's live server (its MigrationTracker)
and with an aioquic client and server built only from aioquic's public API
(`aioquic.asyncio.serve` / `connect`), whose capture `quicmig check` then judges. Ports are
ephemeral; every test is bounded in time.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import shutil
import signal
import socket
import statistics
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aioquic.asyncio.client import connect
from aioquic.asyncio.server import serve
from aioquic.quic.configuration import QuicConfiguration
from conftest import loss_runs, start_quicmig, stop_process
from conftest import run_bounded as run

from quicmig.cli import build_parser, main
from quicmig.commands.proxy import config_from_args, timeline_from_args
from quicmig.core.app import content
from quicmig.core.datagram import Address, format_address
from quicmig.core.results import NetworkChange
from quicmig.core.tracker import MigrationTracker, ObservedMigration
from quicmig.errors import QuicmigError
from quicmig.live.backend import apply_on_time
from quicmig.live.certs import CertPaths
from quicmig.live.client import LiveClient
from quicmig.live.server import LiveServer
from quicmig.live.udp import UdpSocket, open_socket
from quicmig.model.events import EventKind, kind_of, timed_events
from quicmig.model.scenario import QuicExtensions
from quicmig.model.topology import LinkProfile
from quicmig.model.verdicts import MigrationKind
from quicmig.proxy.control import ControlServer, send_request
from quicmig.proxy.core import Proxy, ProxyConfig, ProxyEvent
from quicmig.proxy.driver import ProxyDriver

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


@dataclass(frozen=True, slots=True)
class Pings:
    """What a run of pings saw, times on the proxy's clock (seconds)."""

    sent: dict[int, float]  # number -> sent at
    rtt: dict[int, float]  # number -> round trip, for those answered
    arrived: set[int]  # numbers that reached the echo
    changes: list[NetworkChange]
    blackholed: int  # datagrams the proxy dropped in a blackhole


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


async def through_proxy(
    certs: CertPaths, profile: LinkProfile, size: int
) -> tuple[list[float], list[float], float, int, list[tuple[float, int]]]:
    """Download `size` bytes from the live server through a proxy with `profile`.

    Returns what aioquic's own recovery measured on the server's side (every RTT sample and
    the smoothed RTT after each, seconds; via the tracker's qlog tap), the client's download
    time (request sent to last byte, seconds), the bytes received, and (time, bytes) as
    they arrived.
    """
    async with LiveServer(certs, [(LOOPBACK, 0)], log=lambda line: None) as server:
        config = ProxyConfig(listen=(LOOPBACK, 0), upstream=server.addresses[0], profile=profile)
        async with Proxy(config, log=lambda line: None) as proxy:
            loop = asyncio.get_running_loop()
            arrivals: list[tuple[float, int]] = []
            async with LiveClient(proxy.local, ca=certs.ca, server_name="localhost") as client:
                download = await client.download(
                    size, on_progress=lambda n: arrivals.append((loop.time(), n)), timeout=15.0
                )
        assert download.intact
        recovery = server.connections[0].server_conn.tracker.recovery
    latest = [r.latest_rtt for r in recovery if r.latest_rtt is not None]
    smoothed = [r.smoothed_rtt for r in recovery if r.smoothed_rtt is not None]
    return latest, smoothed, download.seconds, download.received, arrivals


def test_delay_is_what_aioquic_measures_as_round_trip_time(certs: CertPaths) -> None:
    """A one-way delay D each way: the server's aioquic sees a minimum RTT of 2D (plus the
    loopback and the loop's scheduling: at most a few ms) and a smoothed RTT that gets close."""
    delay = 0.020  # seconds, each direction
    latest, smoothed, _, _, _ = run(through_proxy(certs, LinkProfile(delay=delay), 300_000))
    assert len(latest) >= 20, "RTT samples from the download's ACKs"
    # Lower bound: the proxy never delivers early (its timer fires at the due time, not
    # before; 0.5 ms slack for the clock). Upper: measured 0.8-1.9 ms above on a loaded
    # 2-core machine; 10 ms is far below a second round trip, so a wrong delay still fails.
    assert 2 * delay - 0.0005 <= min(latest) <= 2 * delay + 0.010, min(latest)
    # The smoothed estimate is never below 2D and comes close to it; its last value is not
    # asserted: with other processes on both cores (as in the full suite) the endpoints'
    # late ACK processing lifted it to 2D + 46 ms.
    assert 2 * delay - 0.0005 <= min(smoothed) <= 2 * delay + 0.010, min(smoothed)


def test_rate_limit_bounds_the_goodput_of_a_real_download(certs: CertPaths) -> None:
    """A rate limit R (on IP bytes, each direction): a download's goodput is below R, since
    QUIC, UDP and IP headers share the link, and near it, since aioquic's congestion
    control keeps a queue of 30 packets busy (measured 0.93 R, loaded or not)."""
    rate, size = 5e6, 1_000_000  # bits per second, bytes: about 1.7 s
    profile = LinkProfile(delay=0.010, rate=rate, queue=30)
    _, _, seconds, received, arrivals = run(through_proxy(certs, profile, size))
    goodput = received * 8 / seconds
    assert 0.75 * rate <= goodput < rate, goodput / rate
    # Past slow start the link is the bottleneck: the last three quarters arrive at R too.
    start = next(at for at, count in arrivals if count >= size // 4)
    steady = (size - size // 4) * 8 / (arrivals[-1][0] - start)
    assert 0.8 * rate <= steady <= 1.02 * rate, steady / rate


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

    async def scenario() -> tuple[bool, list[ProxyEvent], list[ObservedMigration], list[str]]:
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
                control = ControlServer(ProxyDriver("client", config.profile, proxy=proxy))
                try:
                    where = await control.open((LOOPBACK, 0)) if with_addr else None
                    async with LiveClient(proxy.local, ca=certs.ca, server_name="localhost") as c:
                        intact, answers = await download_through(c, proxy, 3_000_000, 2, where)
                        record = await c.confirmed_record()
                finally:
                    await control.aclose()
                events = [e for e in proxy.events if e.kind == "rebind"]
            tracker = server.connections[0].server_conn.tracker
            migrations = list(tracker.migrations)
            # The record fetched over the connection holds the same migrations, and the
            # server's first packet on each new path carried its PATH_CHALLENGE.
            fetched = MigrationTracker.from_dict(record["tracker"])
            assert [m.new_peer for m in fetched.migrations] == [m.new_peer for m in migrations]
            assert len(fetched.first_packet_challenges) == len(migrations)
        return intact, events, migrations, answers

    intact, events, migrations, answers = run(scenario())
    assert intact, "SHA-256 of the download matches what the server sent"
    assert len(events) == 2
    assert [m.new_peer for m in migrations] == [e.new for e in events]
    assert [m.old_peer for m in migrations] == [e.old for e in events]
    assert all(m.validated_at is not None for m in migrations), migrations
    kind = MigrationKind.ADDRESS_CHANGE if with_addr else MigrationKind.PORT_CHANGE
    assert [m.kind for m in migrations] == [kind, kind]
    if with_addr:
        assert [e.new[0] for e in events if e.new] == ["127.0.0.2", LOOPBACK]
        # Each control answer names the mapping the proxy moved the client to.
        assert len(answers) == 2
        assert all(
            format_address(e.new) in a for e, a in zip(events, answers, strict=True) if e.new
        )
    if shutil.which("tshark") is not None:
        out = tmp_path / "check.json"
        assert main(["check", str(pcap), "--keylog", str(keys), "--json", str(out), "-q"]) == 0
        report = json.loads(out.read_text())
        # Only the upstream leg (proxy -> server) migrated; the client's leg never moved.
        assert [m["new_peer"] for m in report["migrations"]] == [
            format_address(e.new) for e in events if e.new
        ]
        legs = report["stats"]["connections"]
        assert len(legs) == 2 and sorted(len(leg["paths"]) for leg in legs) == [1, 3]


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
    assert [m["new_peer"] for m in report["migrations"]] == [
        format_address(e.new) for e in events if e.new
    ]
    assert all(m["validated_at"] is not None for m in report["migrations"])
    # Stock aioquic 1.7.2 carries PATH_CHALLENGE in its first packet on a new path only when
    # the congestion window has room at that instant: over real sockets a race it sometimes
    # loses (README, "What stock aioquic does not do"). Every other check must pass.
    failed = {c["name"] for c in report["checks"] if c["state"] == "failed"}
    assert {c["state"] for c in report["checks"]} <= {"passed", "failed", "not_applicable"}
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
            (["proxy", "--listen", "nonsense:99"], 2, "is not an IPv4 or IPv6 address"),
            (["proxy", "--upstream", "127.0.0.1:99999"], 2, "is not IP:PORT"),
            (["proxy", "--profile", "dialup"], 2, "unknown link profile 'dialup'"),
            (["proxy", "--loss-pct", "150"], 2, "outside 0-100"),
            (["proxy", "--rebind-addr", "10.0.0.1"], 2, "use a loopback address"),
            (["proxy", "--switch", "soon:wifi"], 2, "use AT:PROFILE"),
            (["proxy", "--listen", f"127.0.0.1:{port}", "--control", "off"], 1, "already in use"),
            (["proxy", "ctl", "rebind", "--control", f"127.0.0.1:{port}"], 1, "no proxy answers"),
            (["proxy", "nonsense"], 2, "quicmig proxy ctl ACTION"),
            (["proxy", "--duration", "-1"], 2, "--duration -1: must be > 0 seconds"),
            (["proxy", "--duration", "nan"], 2, "--duration nan: give a finite number"),
            (["proxy", "--first-rebind", "inf"], 2, "--first-rebind inf: give a finite"),
            (["proxy", "--queue-packets", "2.7"], 2, "--queue-packets 2.7: give a whole number"),
            (["proxy", "--control", "10.0.0.1:4439"], 2, "--control 10.0.0.1:4439: use a loop"),
            (["proxy", "--control", "0.0.0.0:4439"], 2, "use a loopback address"),
            (["proxy", "ctl", "status", "--control", "192.0.2.1:4439"], 2, "use a loopback"),
            (["proxy", "ctl", "status", "--control", "off"], 2, "give the running proxy's"),
            (["proxy", "ctl", "rebind", "--control", "127.0.0.1:0"], 2, "is not IP:PORT"),
            (["proxy", "--blackhole", "1:0"], 2, "--blackhole 1:0: the length must be"),
            (["proxy", "--link", "1:dialup"], 2, "unknown link profile 'dialup'"),
        ]
        for argv, code, text in cases:
            assert main(argv) == code, argv
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and text in err, (argv, err)


def test_control_channel_rebind_link_change_and_blackhole() -> None:
    """Requests are events: `rebind` gives the client a new mapping (the echo sees a new
    source port), `switch` (the old name) and `link-change` change the measured delay,
    `blackhole` drops every datagram for its length, counted by the proxy."""

    async def body(proxy: Proxy, pinger: Pinger, echo: Echo) -> dict[str, Any]:
        control = ControlServer(ProxyDriver("client", proxy.config.profile, proxy=proxy))
        loop = asyncio.get_running_loop()

        async def ask(line: str) -> str:
            return await loop.run_in_executor(None, send_request, where, line)

        async def ping(number: int) -> float:
            pinger.send(number, proxy.local)
            for _ in range(300):
                if number in pinger.answers:
                    return pinger.answers[number] - pinger.sent[number]
                await asyncio.sleep(0.002)
            return float("inf")

        try:
            where = await control.open((LOOPBACK, 0))
            out: dict[str, Any] = {"before": await ping(1)}
            out["rebound"] = await ask("rebind")
            out["lan"] = await ask("switch lan")
            out["after"] = await ping(2)
            await ask("link-change wifi")
            out["wifi"] = await ping(3)
            await ask("blackhole 0.3")
            for number in range(10, 20):
                pinger.send(number, proxy.local)
            await asyncio.sleep(0.35)
            out["answered"] = sum(n in pinger.answers for n in range(10, 20))
            out["arrived"] = sum(n in {a for _, a in echo.arrivals} for n in range(10, 20))
            out["back"] = await ping(4)
            out["status"] = await ask("status")
            out["blackholed"] = proxy.stats.blackholed
            out["sources"] = list(echo.sources)
            out["mapping"] = [s.socket.local for s in proxy.sessions.values() if s.socket]
            with pytest.raises(QuicmigError, match="unknown link profile"):
                await ask("switch dialup")
            return out
        finally:
            await control.aclose()

    out = run(with_echo(LinkProfile(delay=0.050), body))
    assert out["before"] >= 0.099 and out["after"] < 0.05, out
    assert 0.040 - 0.001 <= out["wifi"] < 0.09, out  # wifi: 20 ms each way
    assert out["lan"].startswith("client: 1 ms"), out["lan"]
    # The rebinding: the echo saw the client's datagrams from a second source, the new
    # mapping the control answer named.
    (old, new) = out["sources"]
    assert out["mapping"] == [new] and old != new
    assert out["rebound"] == f"proxy: {format_address(old)} -> {format_address(new)}"
    # Nothing sent during the blackhole got through, and the proxy counted each datagram.
    assert out["arrived"] == out["answered"] == 0
    assert out["blackholed"] == 10 and "blackholed 10" in out["status"]
    assert out["back"] < 0.2


def test_schedule_flags_become_a_timeline_the_proxy_applies() -> None:
    """`quicmig proxy --link AT:PROFILE --blackhole AT:SECONDS` compiles to timeline events
    that the driver applies on time: the measured round trip changes at the link change,
    and every datagram that did not get through was one the blackhole dropped."""
    flags = ["proxy", "--delay-ms", "20", "--link", "0.2:lan", "--blackhole", "0.4:0.15"]
    args = build_parser("proxy").parse_args(flags)
    timeline = timeline_from_args(args)
    assert [kind_of(e) for e in timeline] == [EventKind.LINK_CHANGE, EventKind.BLACKHOLE]
    until = 0.7  # seconds of pings, one every 5 ms

    async def body(proxy: Proxy, pinger: Pinger, echo: Echo) -> Pings:
        driver = ProxyDriver("client", proxy.config.profile, proxy=proxy)
        changes: list[NetworkChange] = []
        events = timed_events(timeline, until)
        schedule = asyncio.ensure_future(apply_on_time(events, driver, proxy.now, changes.append))
        loop = asyncio.get_running_loop()
        offset = loop.time() - proxy.now()  # the pinger's clock minus the proxy's
        number = 0
        while proxy.now() < until:
            pinger.send(number, proxy.local)
            number += 1
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.1)
        await schedule
        return Pings(
            sent={n: at - offset for n, at in pinger.sent.items()},
            rtt={n: at - pinger.sent[n] for n, at in pinger.answers.items()},
            arrived={n for _, n in echo.arrivals},
            changes=changes,
            blackholed=proxy.stats.blackholed,
        )

    out = run(with_echo(config_from_args(args).profile, body))
    link, hole = out.changes
    assert (link.kind, hole.kind) == (EventKind.LINK_CHANGE, EventKind.BLACKHOLE)
    assert 0.2 <= link.at < 0.25 and 0.4 <= hole.at < 0.45, out.changes
    start, end = hole.at, hole.at + 0.15  # seconds on the proxy's clock

    def sent(low: float, high: float) -> list[int]:
        return [n for n, at in out.sent.items() if low <= at < high]

    # 20 ms each way before the link change, lan (1 ms) after it.
    assert all(out.rtt[n] >= 0.040 - 0.001 for n in sent(0.0, link.at - 0.05))
    after = [out.rtt[n] for n in sent(link.at + 0.05, start - 0.01)]
    assert len(after) >= 10 and statistics.median(after) < 0.015, after  # a loaded loop adds
    # Nothing sent during the blackhole reached the echo; all sent after it came back.
    inside = sent(start, end - 0.01)
    assert len(inside) >= 10 and not set(inside) & out.arrived
    assert all(n in out.rtt for n in sent(end + 0.01, until))
    # Every datagram that did not get through, either way, is one the proxy blackholed.
    lost = len(out.sent) - len(out.rtt)
    assert out.blackholed == lost >= len(inside)


@pytest.mark.parametrize("taken_by", ["--control", "--listen"])
def test_startup_failure_leaves_no_pcap_and_names_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], taken_by: str
) -> None:
    """A port in use: one line naming the flag that chooses it, exit 1, nothing printed on
    stdout (no `proxy done`), and no pcap, since nothing was bound when it would be opened."""
    pcap = tmp_path / "never.pcap"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind((LOOPBACK, 0))
        port = taken.getsockname()[1]
        ports = {"--control": f"{LOOPBACK}:0", "--listen": f"{LOOPBACK}:0"}
        ports[taken_by] = f"{LOOPBACK}:{port}"
        argv = ["proxy", "--upstream", f"{LOOPBACK}:9", "--pcap", str(pcap), "--duration", "5"]
        argv += ["--listen", ports["--listen"], "--control", ports["--control"]]
        assert main(argv) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and f"UDP port {port} on {LOOPBACK} is already in use" in err
    assert taken_by in err and "--port" not in err, err
    assert not pcap.exists() and list(tmp_path.iterdir()) == []


def test_pcap_output_is_checked_before_starting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["proxy", "--listen", f"{LOOPBACK}:0", "--control", "off", "--duration", "5"]
    for target, text in (
        (tmp_path, "is a directory"),
        (Path("/proc/x.pcap"), "cannot create files in /proc"),
        (tmp_path / "no" / "x.pcap", "does not exist"),
    ):
        assert main([*base, "--pcap", str(target)]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and text in err, err
    assert list(tmp_path.iterdir()) == []


DONE_LINE = re.compile(
    r"proxy done: (\d+) datagrams from the client, (\d+) to the upstream, (\d+) back, "
    r"(\d+) to the client"
)


def pcap_records(path: Path) -> int:
    """Records in a classic pcap; fails if the file ends inside one."""
    data = path.read_bytes()
    assert data[:4] == b"\xd4\xc3\xb2\xa1"
    offset, count = 24, 0
    while offset < len(data):
        assert offset + 16 <= len(data), "cut short inside a record header"
        length = struct.unpack_from("<I", data, offset + 8)[0]
        offset += 16 + length
        assert offset <= len(data), "cut short inside a packet"
        count += 1
    return count


def test_sigterm_stops_the_proxy_cleanly_with_a_whole_pcap(
    certs: CertPaths, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`kill -TERM` in the middle of a download: exit 0, the counters printed, and a pcap
    holding exactly the datagrams counted, each whole (the default action of SIGTERM killed
    the process with the last buffered packets half-written)."""
    pcap, keys = tmp_path / "term.pcap", tmp_path / "term.keys"

    async def scenario() -> tuple[int | None, str]:
        async with LiveServer(
            certs, [(LOOPBACK, 0)], secrets_log=keys, log=lambda line: None
        ) as server:
            upstream = format_address(server.addresses[0])
            proxy, line = await start_quicmig(
                ["proxy", "--listen", f"{LOOPBACK}:0", "--upstream", upstream, "--control",
                 "off", "--delay-ms", "5", "--pcap", str(pcap), "--duration", "30"],
                re.compile(r"quicmig proxy: 127\.0\.0\.1:\d+ →"),
            )  # fmt: skip
            try:
                listen = (LOOPBACK, int(re.findall(r"127\.0\.0\.1:(\d+) →", line)[0]))
                sent = asyncio.Event()

                def halfway(received: int) -> None:
                    if received >= 1_000_000 and not sent.is_set():
                        sent.set()
                        proxy.send_signal(signal.SIGTERM)

                async with LiveClient(listen, ca=certs.ca, server_name="localhost") as client:
                    download = asyncio.ensure_future(
                        client.download(3_000_000, on_progress=halfway, timeout=15.0)
                    )
                    await asyncio.wait_for(proxy.wait(), 10.0)
                    assert sent.is_set() and not download.done(), "stopped mid-download"
                    download.cancel()
                    await asyncio.gather(download, return_exceptions=True)
                assert proxy.stdout is not None
                rest = (await proxy.stdout.read()).decode()
            finally:
                await stop_process(proxy)
        return proxy.returncode, rest

    code, output = run(scenario())
    assert code == 0, output
    assert "proxy stopped (SIGTERM)" in output
    match = DONE_LINE.search(output)
    assert match is not None, output
    counted = sum(int(n) for n in match.groups())
    assert counted > 500 and pcap_records(pcap) == counted
    if shutil.which("tshark") is not None:  # `quicmig check` reads all of it, no warning
        capsys.readouterr()
        main(["check", str(pcap), "--keylog", str(keys), "-q"])
        out, err = capsys.readouterr()
        assert err == "" and "unsupported" not in out, (out, err)
