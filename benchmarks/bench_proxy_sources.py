"""The proxy under 25,000 sources with a 1,024-file limit, serving its legitimate client.

    python benchmarks/bench_proxy_sources.py [--sources 25000] [--files 1024]
        [--size 50000000] [--json FILE]

Starts quicmig's server (benchmarks/servers.py) and `quicmig proxy` in front of it with
RLIMIT_NOFILE = `--files`, then one aioquic HTTP/3 client downloads /bytes/SIZE through the
proxy while this process sends one datagram from each of `--sources` distinct source ports
(sockets opened, used once and closed, in batches). Sampled every 0.25 s: the proxy's RSS
and peak RSS (/proc), its open files (/proc/PID/fd) and the session table (`ctl status`).
Reports whether the proxy kept running, the legitimate download's time and integrity, the
largest table and file count seen, and the refusals and evictions counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_flood import download
from bench_server import ServerProcess, free_port

from quicmig.live.certs import CertPaths, write
from quicmig.proxy.control import send_request

BATCH = 100  # source sockets open at once in this process (every 20 ms: no kernel drops)


def proc_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


async def sources(port: int, count: int) -> int:
    sent = 0
    while sent < count:
        batch = []
        for _ in range(min(BATCH, count - sent)):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
            batch.append(sock)
        for sock in batch:
            sock.sendto(os.urandom(100), ("127.0.0.1", port))
            sock.close()
        sent += len(batch)
        await asyncio.sleep(0.02)
    return sent


async def sample(
    loop: asyncio.AbstractEventLoop, control: int, pid: int, started: float
) -> dict[str, Any]:
    status = await loop.run_in_executor(None, send_request, ("127.0.0.1", control), "status")
    match = re.search(
        r"sessions (\d+)/(\d+).*opened (\d+), expired (\d+), evicted (\d+), refused (\d+)"
        r".*datagrams from client (\d+)",
        status,
    )
    assert match, status
    size, capacity, opened, expired, evicted, refused, from_client = map(int, match.groups())
    return {
        "at": time.perf_counter() - started,
        "sessions": size,
        "capacity": capacity,
        "opened": opened,
        "expired": expired,
        "evicted": evicted,
        "refused": refused,
        "from_client": from_client,
        "files": len(os.listdir(f"/proc/{pid}/fd")),
        "rss_kb": proc_kb(pid, "VmRSS"),
        "hwm_kb": proc_kb(pid, "VmHWM"),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sources", type=int, default=25_000)
    parser.add_argument("--files", type=int, default=1024)
    parser.add_argument("--size", type=int, default=50_000_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory() as tmp:
        certs = CertPaths.in_dir(Path(tmp))
        write(certs)
        upstream = ServerProcess("quicmig", certs.cert.parent, [])
        listen, control = free_port(), free_port()

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (args.files, args.files))

        proxy = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "quicmig",
            "proxy",
            "--listen",
            f"127.0.0.1:{listen}",
            "--upstream",
            f"127.0.0.1:{upstream.port}",
            "--control",
            f"127.0.0.1:{control}",
            stdout=asyncio.subprocess.DEVNULL,
            preexec_fn=limit,
        )
        samples: list[dict[str, Any]] = []
        try:
            await asyncio.sleep(1.0)  # the proxy binds its sockets
            unloaded = await download(listen, certs.ca, args.size)
            started = time.perf_counter()
            legit = asyncio.ensure_future(download(listen, certs.ca, args.size))
            await asyncio.sleep(0.5)  # the legitimate client is through the handshake
            flood = asyncio.ensure_future(sources(listen, args.sources))
            while not (legit.done() and flood.done()):
                samples.append(await sample(loop, control, proxy.pid, started))
                await asyncio.sleep(0.25)
            await asyncio.sleep(1.0)  # the proxy works through what is queued
            samples.append(await sample(loop, control, proxy.pid, started))
            result = legit.result()
            alive = proxy.returncode is None
        finally:
            if proxy.returncode is None:
                proxy.terminate()
            await proxy.wait()
            upstream.stop()
    last = samples[-1]
    report = {
        "sources": args.sources,
        "file_limit": args.files,
        "proxy_alive": alive,
        "legit_intact": result["intact"],
        "legit_seconds": result.get("seconds"),
        "legit_seconds_without_the_flood": unloaded.get("seconds"),
        "datagrams_from_clients": last["from_client"],
        "capacity": last["capacity"],
        "max_sessions_seen": max(s["sessions"] for s in samples),
        "max_files_seen": max(s["files"] for s in samples),
        "peak_rss_mb": last["hwm_kb"] / 1024,
        "rss_first_mb": samples[0]["rss_kb"] / 1024,
        "rss_last_mb": last["rss_kb"] / 1024,
        "opened": last["opened"],
        "evicted": last["evicted"],
        "refused": last["refused"],
    }
    print(json.dumps(report, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps({"report": report, "samples": samples}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
