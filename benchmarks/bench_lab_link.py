"""Benchmark the namespace lab's impairment element against what each link was told to do.

    sudo python benchmarks/bench_lab_link.py [--quick] [--json FILE]

One lab (quicmig.lab.build): a client and a server, each on its own link to the router;
the server's link is ideal, the client's gets the profile under test (`set_link`). Every
packet crosses the element twice (client link, server link), as in every lab run.

  - RTT against the configured delay (2 x one way): ping, a TCP request/response of one
    byte (TCP_NODELAY), a UDP echo, and QUIC PINGs over an aioquic connection (its ACK is
    sent within aioquic's 1 ms ack delay);
  - loss: 20,000 UDP datagrams at 5 % loss (independent, and in bursts of 4 on average),
    counted at the receiver;
  - throughput at the configured rate: TCP (bytes of payload; TCP/IP headers are the rest
    of the rate) and UDP (1,472-byte datagrams offered at 1.5 x the rate; the rate counts
    whole IP packets), over the steady part of the transfer;
  - the packet-rate ceiling: UDP from the client as fast as it can send, ideal links,
    64-byte and 1,472-byte datagrams (1,500-byte IP packets), received packets per second.

Reported as medians; the machine is shared (2 cores), so rerun when a figure looks odd.
The roles (`--role ...`) are this file run again inside a namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.quic.connection import QuicConnection

from quicmig.core.certs import simulation_certificates
from quicmig.core.endpoint import client_configuration, server_configuration
from quicmig.core.tap import TapLogger
from quicmig.lab.build import NamespaceLab
from quicmig.lab.system import in_ns
from quicmig.live.netns import bound_socket
from quicmig.model.topology import Host, Interface, Link, LinkProfile, Topology

CLIENT_IP = "192.0.2.10"
SERVER_IP = "203.0.113.10"
PORT = 5201
QUIC_PORT = 4433
IDEAL = LinkProfile(delay=0.0)

TOPOLOGY = Topology(
    hosts=(
        Host("client", (Interface("eth0", (CLIENT_IP,)),)),
        Host("server", (Interface("eth0", (SERVER_IP,)),)),
    ),
    links=(
        Link("client", "client.eth0", "internet", IDEAL),
        Link("server", "server.eth0", "internet", IDEAL),
    ),
)


# --- roles: run inside a namespace --------------------------------------------------------


def role_tcp_echo() -> None:
    with socket.create_server(("0.0.0.0", PORT)) as server:
        conn, _ = server.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := conn.recv(65536):
            conn.sendall(data)


def role_tcp_rtt(count: int) -> None:
    with socket.create_connection((SERVER_IP, PORT), timeout=10) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rtts = []
        for _ in range(count):
            start = time.perf_counter()
            conn.sendall(b"x")
            conn.recv(1)
            rtts.append(time.perf_counter() - start)
    print(json.dumps(rtts))


def role_udp_echo() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", PORT))
        while True:
            data, addr = sock.recvfrom(65536)
            sock.sendto(data, addr)


def role_udp_rtt(count: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2.0)
        rtts = []
        for i in range(count):
            start = time.perf_counter()
            sock.sendto(struct.pack("!I", i), (SERVER_IP, PORT))
            while True:  # a late answer to an earlier probe is skipped
                data, _ = sock.recvfrom(64)
                if struct.unpack("!I", data[:4])[0] == i:
                    break
            rtts.append(time.perf_counter() - start)
            time.sleep(0.01)
    print(json.dumps(rtts))


def role_tcp_sink(seconds: float) -> None:
    """Receive one TCP connection; print bytes received in [1 s, seconds] after the first."""
    with socket.create_server(("0.0.0.0", PORT)) as server:
        conn, _ = server.accept()
        conn.settimeout(seconds + 5)
        total, first, marks = 0, None, []
        while data := conn.recv(262144):
            now = time.monotonic()
            first = first or now
            total += len(data)
            marks.append((now - first, total))
    start = next(b for t, b in marks if t >= 1.0)
    end_t, end_b = [(t, b) for t, b in marks if t <= seconds][-1]
    t0 = next(t for t, b in marks if t >= 1.0)
    print(json.dumps({"bits_per_s": (end_b - start) * 8 / (end_t - t0)}))


def role_tcp_source(seconds: float) -> None:
    with socket.create_connection((SERVER_IP, PORT), timeout=10) as conn:
        block = bytes(65536)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            conn.sendall(block)


def role_udp_sink(seconds: float) -> None:
    """Count datagrams for `seconds` after the first; print counts, sizes and sequence gaps."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.bind(("0.0.0.0", PORT))
        sock.settimeout(3.0)
        seqs: list[int] = []
        times: list[float] = []
        size = 0
        try:
            while True:
                data = sock.recv(65536)
                now = time.monotonic()
                if times and now - times[0] > seconds:
                    break
                seqs.append(struct.unpack("!I", data[:4])[0])
                times.append(now)
                size = len(data)
        except TimeoutError:
            pass
    print(json.dumps({"seqs": seqs, "times": times, "size": size}))


def role_udp_source(count: int, size: int, pps: float) -> None:
    """`count` datagrams of `size` bytes at `pps` per second (0: as fast as possible)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((SERVER_IP, PORT))
        pad = bytes(size - 4)
        start = time.monotonic()
        for i in range(count):
            if pps:
                wait = start + i / pps - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            with contextlib.suppress(OSError):  # ENOBUFS: the device queue is full
                sock.send(struct.pack("!I", i) + pad)


ROLES: dict[str, Callable[..., None]] = {
    "tcp-echo": role_tcp_echo,
    "tcp-rtt": role_tcp_rtt,
    "udp-echo": role_udp_echo,
    "udp-rtt": role_udp_rtt,
    "tcp-sink": role_tcp_sink,
    "tcp-source": role_tcp_source,
    "udp-sink": role_udp_sink,
    "udp-source": role_udp_source,
}


# --- the measurements ---------------------------------------------------------------------


def start(net: NamespaceLab, host: str, role: str, *args: Any) -> subprocess.Popen[str]:
    cmd = [sys.executable, __file__, "--role", role, *map(str, args)]
    return subprocess.Popen(in_ns(net.namespace_of(host), *cmd), stdout=subprocess.PIPE, text=True)


def pair(
    net: NamespaceLab, server: tuple[Any, ...], client: tuple[Any, ...], timeout: float
) -> str:
    """Start the server role, then the client role; the output of the one that reports."""
    srv = start(net, "server", *server)
    time.sleep(0.3)
    cli = start(net, "client", *client)
    try:
        out, _ = cli.communicate(timeout=timeout)
        if srv.poll() is None and not out.strip():
            out, _ = srv.communicate(timeout=timeout)
        return out
    finally:
        for proc in (srv, cli):
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def ping_rtts(net: NamespaceLab, count: int) -> list[float]:
    out = subprocess.run(
        in_ns(net.namespace_of("client"), "ping", "-n", "-c", str(count), "-i", "0.02", SERVER_IP),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [float(m) / 1e3 for m in re.findall(r"time=([0-9.]+) ms", out)]


async def quic_rtts(net: NamespaceLab, count: int) -> list[float]:
    certs = simulation_certificates()
    loop = asyncio.get_running_loop()
    server_config = server_configuration(certs, TapLogger(keep=False))
    server_config.quic_logger = None
    server_sock = bound_socket(net.server_namespace, socket.AF_INET, (SERVER_IP, QUIC_PORT))
    client_sock = bound_socket(net.client_namespace("client"), socket.AF_INET, ("0.0.0.0", 0))
    server_transport, _ = await loop.create_datagram_endpoint(
        lambda: QuicServer(configuration=server_config), sock=server_sock
    )
    connection = QuicConnection(configuration=client_configuration(certs.ca_pem))
    client_transport, protocol = await loop.create_datagram_endpoint(
        lambda: QuicConnectionProtocol(connection), sock=client_sock
    )
    try:
        protocol.connect((SERVER_IP, QUIC_PORT))
        await asyncio.wait_for(protocol.wait_connected(), 10)
        rtts = []
        for _ in range(count):
            begin = time.perf_counter()
            await asyncio.wait_for(protocol.ping(), 5)
            rtts.append(time.perf_counter() - begin)
            await asyncio.sleep(0.01)
        return rtts
    finally:
        protocol.close()
        client_transport.close()
        server_transport.close()


def udp_run(net: NamespaceLab, count: int, size: int, pps: float, seconds: float) -> dict[str, Any]:
    srv = start(net, "server", "udp-sink", seconds)
    time.sleep(0.3)
    cli = start(net, "client", "udp-source", count, size, pps)
    cli.wait(timeout=seconds + 60)
    out, _ = srv.communicate(timeout=seconds + 10)
    result: dict[str, Any] = json.loads(out)
    return result


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1e3


def measure(quick: bool) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    n = 20 if quick else 50
    with NamespaceLab(TOPOLOGY, log=print) as net:
        for delay_ms in (10, 50):
            profile = LinkProfile(delay=delay_ms / 1e3)
            net.set_link("client", profile)
            want = 2 * delay_ms
            row: dict[str, float] = {"configured_rtt_ms": want}
            row["ping_ms"] = median_ms(ping_rtts(net, n))
            row["tcp_ms"] = median_ms(json.loads(pair(net, ("tcp-echo",), ("tcp-rtt", n), 60)))
            row["udp_ms"] = median_ms(json.loads(pair(net, ("udp-echo",), ("udp-rtt", n), 60)))
            row["quic_ms"] = median_ms(asyncio.run(quic_rtts(net, n)))
            figures[f"rtt_{delay_ms}ms_one_way"] = row
            print(f"RTT at {delay_ms} ms one way (want {want} ms): {row}")
        net.set_link("client", IDEAL)
        ideal = {"ping_ms": median_ms(ping_rtts(net, n))}
        figures["rtt_ideal"] = ideal
        print(f"RTT, ideal links (the element's own cost): {ideal}")

        count = 10_000 if quick else 20_000
        for burst in (1.0, 4.0):
            net.set_link("client", LinkProfile(delay=0.005, loss=0.05, burst_len=burst))
            got = udp_run(net, count, 200, 5000, count / 5000 + 2)
            seqs = got["seqs"]
            received = len(set(seqs))
            lost = count - received
            gaps = _bursts(sorted(set(seqs)), count)
            row = {
                "configured_loss_pct": 5.0,
                "burst_len": burst,
                "sent": count,
                "lost_pct": 100 * lost / count,
                "mean_burst": statistics.mean(gaps) if gaps else 0.0,
            }
            figures[f"loss_burst_{burst:g}"] = row
            print(f"UDP loss: {row}")

        for rate_mbit in (10, 50):
            rate = rate_mbit * 1e6
            net.set_link("client", LinkProfile(delay=0.010, rate=rate, queue=100))
            seconds = 4.0 if quick else 6.0
            out = pair(net, ("tcp-sink", seconds), ("tcp-source", seconds + 0.5), seconds + 20)
            if not out.strip():
                out = "{}"
            tcp = json.loads(out).get("bits_per_s", 0.0)
            pps = rate / (1500 * 8) * 1.5
            got = udp_run(net, int(pps * 4), 1472, pps, 3.0)
            times, seqs = got["times"], got["seqs"]
            window = [t for t in times if 0.5 <= t - times[0] <= 2.5]
            udp = len(window) * 1500 * 8 / (window[-1] - window[0]) if len(window) > 1 else 0.0
            row = {
                "configured_mbit": rate_mbit,
                "tcp_goodput_mbit": tcp / 1e6,
                "tcp_goodput_expected_mbit": rate_mbit * 1448 / 1500,
                "udp_ip_mbit": udp / 1e6,
                "udp_received": len(seqs),
            }
            figures[f"rate_{rate_mbit}mbit"] = row
            print(f"Throughput: {row}")

        net.set_link("client", IDEAL)
        for size in (64, 1472):
            count = 200_000
            got = udp_run(net, count, size, 0, 2.0)
            times = got["times"]
            window = [t for t in times if 0.2 <= t - times[0] <= 1.8]
            pps = (len(window) - 1) / (window[-1] - window[0]) if len(window) > 1 else 0.0
            row = {"datagram_bytes": size, "ip_bytes": size + 28, "packets_per_s": pps}
            figures[f"ceiling_{size + 28}B"] = row
            print(f"Ceiling: {row}")
        figures["element"] = {k: v for k, v in net.stats()["links"].items()}
    return figures


def _bursts(received: list[int], count: int) -> list[int]:
    """Lengths of the runs of missing sequence numbers."""
    runs, previous = [], -1
    for seq in [*received, count]:
        if seq - previous > 1:
            runs.append(seq - previous - 1)
        previous = seq
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--role", choices=sorted(ROLES))
    parser.add_argument("args", nargs="*")
    options = parser.parse_args()
    if options.role:
        role = ROLES[options.role]
        role(*(float(a) if "." in a else int(a) for a in options.args))
        return
    figures = measure(options.quick)
    if options.json:
        options.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
