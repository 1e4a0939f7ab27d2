"""A legitimate download under a junk flood, against the same download unloaded, in one run.

    python benchmarks/bench_flood.py [--size 20000000] [--rate 1000] [--repeat 3]
        [--variant quicmig|stock] [--json FILE]

One server process (benchmarks/servers.py). Each repeat downloads /bytes/SIZE with one
aioquic HTTP/3 client (benchmarks/h3clients.py, no move) twice, alternating which goes first:
unloaded, and while this process sends `--rate` junk datagrams per second at the server from
eight sockets: random bytes (1 to 1,400 bytes), empty datagrams, 65,507-byte datagrams,
client Initials cut short or with one bit flipped, long headers of unknown versions (1,200
bytes: those are answered with Version Negotiation), short headers with random connection
IDs. Reports the median download seconds both ways and their ratio (target <= 2), the
server's CPU seconds, and what the server counted (unroutable, Version Negotiation,
Initials that did not decrypt).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aioquic.h3.connection import H3_ALPN
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from bench_server import HERE, ServerProcess

from quicmig.live.certs import CertPaths, write

SOCKETS = 8  # junk comes from this many source ports
POOL = 4000  # junk datagrams made in advance
MAX_UDP = 65_507  # bytes: the largest UDP payload over IPv4


def client_initials(count: int) -> list[bytes]:
    out = []
    for _ in range(count):
        config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
        conn = QuicConnection(configuration=config)
        conn.connect(("127.0.0.1", 4433), now=0.0)
        out.append(conn.datagrams_to_send(now=0.0)[0][0])
    return out


def junk_pool(rng: random.Random) -> list[bytes]:
    initials = client_initials(20)
    pool: list[bytes] = []
    for index in range(POOL):
        kind = index % 7
        if kind == 0:
            pool.append(rng.randbytes(rng.randint(1, 1400)))
        elif kind == 1:
            pool.append(bytes(MAX_UDP) if index % 70 == 1 else b"")  # 1 in 10 of them: huge
        elif kind == 2:
            initial = rng.choice(initials)
            pool.append(initial[: rng.randint(1, len(initial) - 1)])
        elif kind == 3:
            flipped = bytearray(rng.choice(initials))
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            pool.append(bytes(flipped))
        elif kind == 4:
            # 0x?a?a?a?a: reserved versions (RFC 9000 section 15), never spoken
            version = rng.getrandbits(32) & 0xF0F0F0F0 | 0x0A0A0A0A
            head = bytes([0xC0]) + version.to_bytes(4, "big") + bytes([8]) + rng.randbytes(8)
            pool.append((head + bytes([8]) + rng.randbytes(8)).ljust(1200, b"\0"))
        else:
            pool.append(bytes([0x40 | rng.getrandbits(6)]) + rng.randbytes(rng.randint(20, 1300)))
    return pool


async def flood(port: int, rate: float, pool: list[bytes], stop: asyncio.Event) -> int:
    loop = asyncio.get_running_loop()
    socks = []
    for _ in range(SOCKETS):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(("127.0.0.1", 0))
        socks.append(sock)
    sent = 0
    started = loop.time()
    try:
        while not stop.is_set():
            due = int((loop.time() - started) * rate)
            while sent < due:
                data = pool[sent % len(pool)]
                with contextlib.suppress(OSError):  # best effort (a full send buffer)
                    socks[sent % SOCKETS].sendto(data, ("127.0.0.1", port))
                sent += 1
            await asyncio.sleep(0.005)
    finally:
        for sock in socks:
            sock.close()
    return sent


async def download(port: int, ca: Path, size: int) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HERE / "h3clients.py"),
        "--port",
        str(port),
        "--ca",
        str(ca),
        "--clients",
        "1",
        "--size",
        str(size),
        "--no-move",
        "--spread",
        "0",
        "--timeout",
        "300",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    result: dict[str, Any] = json.loads(out)["clients"][0]
    return result


async def one(
    server: ServerProcess, ca: Path, size: int, rate: float, pool: list[bytes]
) -> dict[str, Any]:
    before = server.ask("stats")
    stop = asyncio.Event()
    junk = asyncio.ensure_future(flood(server.port, rate, pool, stop)) if rate else None
    started = time.perf_counter()
    result = await download(server.port, ca, size)
    wall = time.perf_counter() - started
    stop.set()
    sent = await junk if junk is not None else 0
    after = server.ask("stats")
    row = {
        "flood_rate": rate,
        "seconds": result.get("seconds"),
        "intact": result["intact"],
        "wall_s": wall,
        "junk_sent": sent,
        "server_cpu_s": after["cpu"] - before["cpu"],
    }
    if "totals" in after:
        for key in ("unroutable", "version_negotiations", "connections"):
            row[key] = after["totals"][key] - before["totals"][key]
    return row


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=20_000_000)
    parser.add_argument("--rate", type=float, default=1000.0, help="junk datagrams per second")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--variant", default="quicmig", choices=["quicmig", "stock"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    pool = junk_pool(random.Random(0))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        certs = CertPaths.in_dir(Path(tmp))
        write(certs)
        server = ServerProcess(args.variant, certs.cert.parent, [])
        try:
            for repeat in range(args.repeat):
                rates = [0.0, args.rate] if repeat % 2 == 0 else [args.rate, 0.0]
                for rate in rates:
                    row = await one(server, certs.ca, args.size, rate, pool)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        finally:
            server.stop()
    unloaded = [r["seconds"] for r in rows if not r["flood_rate"] and r["intact"]]
    flooded = [r["seconds"] for r in rows if r["flood_rate"] and r["intact"]]
    if unloaded and flooded:
        a, b = statistics.median(unloaded), statistics.median(flooded)
        print(
            f"{args.variant}: {args.size / 1e6:g} MB in {a:.2f} s unloaded, {b:.2f} s under "
            f"{args.rate:g} junk datagrams/s (medians of {len(unloaded)} and {len(flooded)}): "
            f"ratio {b / a:.2f}"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
