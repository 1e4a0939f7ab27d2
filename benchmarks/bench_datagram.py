"""The cost of one datagram on ServerEndpoint, with and without many other connections.

    python benchmarks/bench_datagram.py [--others 0,800] [--count 300]

One client connection is established (sans-IO, virtual time); then `--others` half-open
connections are started from other clients' Initials. Measured: the median wall time of one
client datagram's handling, receive_datagram + datagrams_to_send + get_timer (the live
server's path), over `--count` PINGs. It should not depend on the other connections.
"""

from __future__ import annotations

import argparse
import statistics
import time

from quicmig.core.certs import simulation_certificates
from quicmig.core.datagram import Address
from quicmig.core.endpoint import (
    ClientEndpoint,
    ServerEndpoint,
    ServerLimits,
    client_configuration,
    server_configuration,
)
from quicmig.core.tap import TapLogger
from quicmig.model.scenario import Download

SERVER: Address = ("203.0.113.10", 4433)
CLIENT: Address = ("192.0.2.1", 40000)
CERTS = simulation_certificates()


def exchange(client: ClientEndpoint, server: ServerEndpoint, now: float) -> None:
    for data, _ in client.datagrams_to_send(now):
        server.receive_datagram(data, CLIENT, now)
    for data, addr in server.datagrams_to_send(now):
        if addr == CLIENT:
            client.receive_datagram(data, SERVER, now)


def measure(others: int, count: int) -> float:
    server = ServerEndpoint(
        server_configuration(CERTS, TapLogger(keep=False)),
        limits=ServerLimits(max_half_open=others + 10),
    )
    client = ClientEndpoint(client_configuration(CERTS.ca_pem), SERVER, Download(1000), seed=1)
    now = 0.0
    client.connect(now)
    while not client.workload.done:
        now += 0.001
        exchange(client, server, now)
        client.handle_timer(now)
        server.handle_timer(now)
    for index in range(others):
        stranger = ClientEndpoint(
            client_configuration(CERTS.ca_pem), SERVER, Download(1), seed=index
        )
        stranger.connect(now)
        for data, _ in stranger.datagrams_to_send(now):
            server.receive_datagram(data, ("198.51.100.1", 1024 + index), now)
    server.datagrams_to_send(now)
    times = []
    for uid in range(count):
        now += 0.002
        client.conn.send_ping(uid)
        out = client.datagrams_to_send(now)
        started = time.perf_counter()
        for data, _ in out:
            server.receive_datagram(data, CLIENT, now)
        back = server.datagrams_to_send(now)
        server.get_timer()
        if out:
            times.append((time.perf_counter() - started) / len(out))
        for data, addr in back:
            if addr == CLIENT:
                client.receive_datagram(data, SERVER, now)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--others", default="0,800")
    parser.add_argument("--count", type=int, default=300)
    args = parser.parse_args()
    for others in (int(n) for n in args.others.split(",")):
        seconds = measure(others, args.count)
        print(f"{others:5d} other connections: {seconds * 1e3:.3f} ms per datagram (median)")


if __name__ == "__main__":
    main()
