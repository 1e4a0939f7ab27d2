"""The lab's impairment element: each link's delay, loss and rate, measured on TCP and UDP
through real namespaces and TUN devices; and that nothing is left behind afterwards.

Needs root, ip, nft, conntrack and /dev/net/tun; skips saying which is missing.
"""

from __future__ import annotations

import os
import signal
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from labnet import CLIENT_IP, PORT, SERVER_IP, needs_lab, tcp_pair, two_hosts, udp

from quicmig.lab.build import NamespaceLab
from quicmig.lab.owners import clean, leftovers, namespaces, owner_file
from quicmig.model.topology import LinkProfile

TCP_INFO_TOTAL_RETRANS = 100  # bytes into struct tcp_info (linux/tcp.h): __u32 tcpi_total_retrans
TCP_INFO_SEGS_OUT = 136  # bytes: __u32 tcpi_segs_out


@pytest.fixture(scope="module")
def net() -> Iterator[NamespaceLab]:
    with NamespaceLab(two_hosts()) as lab:
        yield lab


@needs_lab
def test_delay_on_tcp_and_udp(net: NamespaceLab) -> None:
    """Round trips over the client's link at 20 ms one way: 40 ms, and not less, on both."""
    net.set_link("client", LinkProfile(delay=0.020))
    client, server = tcp_pair(net.client_namespace("client"), net.server_namespace)

    def serve() -> None:
        for byte in iter(lambda: server.recv(1), b""):
            server.sendall(byte)

    echo = threading.Thread(target=serve)
    echo.start()
    tcp = []
    with client:
        for _ in range(8):
            begin = time.monotonic()
            client.sendall(b"x")
            assert client.recv(1) == b"x"
            tcp.append(time.monotonic() - begin)
    echo.join(5)
    server.close()
    a = udp(net.client_namespace("client"), ("0.0.0.0", 0))
    b = udp(net.server_namespace, (SERVER_IP, PORT))
    rtts = []
    with a, b:
        for i in range(8):
            begin = time.monotonic()
            a.sendto(struct.pack("!I", i), (SERVER_IP, PORT))
            data, peer = b.recvfrom(64)
            assert peer[0] == CLIENT_IP  # no NAT on this topology
            b.sendto(data, peer)
            assert a.recvfrom(64)[0] == data
            rtts.append(time.monotonic() - begin)
    for what, samples in (("tcp", tcp), ("udp", rtts)):
        assert min(samples) >= 0.040, (what, samples)  # the delay is never cut short
        assert statistics.median(samples) <= 0.040 * 1.05 + 0.002, (what, samples)


@needs_lab
def test_loss_on_udp_and_tcp(net: NamespaceLab) -> None:
    """10 % loss: the receiver misses 10 % of 3,000 datagrams (within 3 standard deviations);
    TCP retransmits about as many of its segments (the kernel's own count)."""
    net.set_link("client", LinkProfile(delay=0.001, loss=0.10))
    a = udp(net.client_namespace("client"), ("0.0.0.0", 0))
    b = udp(net.server_namespace, (SERVER_IP, PORT))
    count = 3000
    with a, b:
        for i in range(count):
            a.sendto(struct.pack("!I", i) + bytes(100), (SERVER_IP, PORT))
            if i % 100 == 99:
                time.sleep(0.002)  # never more than the queue and the socket buffer hold
        b.settimeout(0.5)
        got = set()
        try:
            while True:
                got.add(struct.unpack("!I", b.recv(200)[:4])[0])
        except TimeoutError:
            pass
    lost = 1 - len(got) / count
    assert abs(lost - 0.10) <= 3 * (0.10 * 0.90 / count) ** 0.5, lost
    net.set_link("client", LinkProfile(delay=0.001, loss=0.05))
    client, server = tcp_pair(net.client_namespace("client"), net.server_namespace)
    body = os.urandom(2_000_000)
    received = bytearray()

    def read() -> None:
        for chunk in iter(lambda: server.recv(65536), b""):
            received.extend(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    with client:
        client.sendall(body)
        client.shutdown(2)
        reader.join(20)
        info = client.getsockopt(6, 11, 256)  # IPPROTO_TCP, TCP_INFO
    server.close()
    assert bytes(received) == body
    retrans = struct.unpack_from("I", info, TCP_INFO_TOTAL_RETRANS)[0]
    segs = struct.unpack_from("I", info, TCP_INFO_SEGS_OUT)[0]
    assert 0.03 <= retrans / segs <= 0.08, (retrans, segs)


@needs_lab
def test_rate_on_tcp_and_udp(net: NamespaceLab) -> None:
    """At 8 Mbit/s the receiver gets 8 Mbit/s of IP packets, within 5 %: TCP (payload plus
    its 52 bytes of headers per 1,448) and UDP offered at 1.5 times the rate."""
    rate = 8e6  # bits per second
    net.set_link("client", LinkProfile(delay=0.005, rate=rate, queue=50))
    a = udp(net.client_namespace("client"), ("0.0.0.0", 0))
    b = udp(net.server_namespace, (SERVER_IP, PORT))
    times: list[float] = []

    def count() -> None:
        b.settimeout(0.5)
        try:
            while True:
                b.recv(2048)
                times.append(time.monotonic())
        except TimeoutError:
            pass

    with a, b:
        reader = threading.Thread(target=count)
        reader.start()
        pps = rate * 1.5 / (1500 * 8)
        begin = time.monotonic()
        sent = 0
        while time.monotonic() - begin < 1.5:
            a.sendto(bytes(1472), (SERVER_IP, PORT))
            sent += 1
            while sent > (time.monotonic() - begin) * pps:
                time.sleep(0.001)
        reader.join(5)
    steady = [t for t in times if times[0] + 0.3 <= t <= times[0] + 1.3]
    udp_rate = (len(steady) - 1) * 1500 * 8 / (steady[-1] - steady[0])
    assert abs(udp_rate / rate - 1) <= 0.05, udp_rate
    client, server = tcp_pair(net.client_namespace("client"), net.server_namespace)
    marks: list[tuple[float, int]] = []

    def sink() -> None:
        total = 0
        for chunk in iter(lambda: server.recv(65536), b""):
            total += len(chunk)
            marks.append((time.monotonic(), total))

    reader = threading.Thread(target=sink)
    reader.start()
    with client:
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            client.sendall(bytes(65536))
        client.shutdown(2)
    reader.join(10)
    server.close()
    (t0, b0), (t1, b1) = next(m for m in marks if m[0] >= marks[0][0] + 0.6), marks[-1]
    goodput = (b1 - b0) * 8 / (t1 - t0)
    assert abs(goodput / (rate * 1448 / 1500) - 1) <= 0.05, goodput


BUILDER = """
import sys, time
from labnet import two_hosts
from quicmig.lab.build import NamespaceLab
with NamespaceLab(two_hosts()) as net:
    print(net.prefix, net.shaper.pid, flush=True)
    time.sleep(60)
"""


@needs_lab
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_nothing_left_after_the_builder_is_stopped(sig: signal.Signals) -> None:
    """Ctrl-C and SIGTERM: the builder tears down. SIGKILL: the element dies with it (end of
    its stdin), taking the TUN devices; `clean()` removes the namespaces."""
    tests = os.path.dirname(__file__)
    builder = subprocess.Popen(
        [sys.executable, "-c", BUILDER],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": tests},
        start_new_session=True,
    )
    assert builder.stdout is not None
    prefix, pid = builder.stdout.readline().split()
    element = int(pid)
    try:
        tuns = subprocess.run(
            ["ip", "-n", f"{prefix}-router", "-o", "link", "show", "type", "tun"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert tuns.count(prefix) == 2  # the router's ends of both links exist
        builder.send_signal(sig)
        builder.wait(15)
        deadline = time.monotonic() + 5
        while os.path.exists(f"/proc/{element}") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.exists(f"/proc/{element}")  # the element, and so its devices, gone
        if sig is signal.SIGKILL:
            assert f"{prefix}-router" in namespaces()  # nobody tore down: clean() must
            clean(prefix)
        assert leftovers(prefix) == []
        assert not [n for n in namespaces() if n.startswith(prefix)]
        assert not owner_file(prefix).exists()
    finally:
        if builder.poll() is None:
            builder.kill()
            builder.wait()
        builder.stdout.close()
        clean(prefix)
