"""Benchmark the live server under N concurrent migrating HTTP/3 clients, against stock aioquic.

    python benchmarks/bench_server.py [--clients 50,200,500,1000] [--repeat 1] [--waves 2]
        [--variants quicmig,stock] [--json FILE]

For each N, and each repeat, the variants run one after the other in alternating order, so
each sees the same machine noise (2 shared cores: timing is noisy). A variant is a server
process (benchmarks/servers.py: `quicmig` is quicmig's LiveServer, `quicmig-retry` the same
with --retry, `stock` aioquic's asyncio HTTP/3 server sending the same bytes) that serves
`--waves` identical waves of N clients (benchmarks/h3clients.py: aioquic's public API, each
downloading 200 kB and moving to a new UDP port halfway). Reported per wave:

  - completed / intact: the body arrived whole and its SHA-256 is content(200000, 0)'s;
  - exact: moves the server recorded old port -> new port exactly as the client made them,
    against the moves made (quicmig only; stock keeps no records), and records of moves that
    never happened;
  - server CPU seconds over the wave (until every connection has closed), the client
    process's CPU seconds;
  - peak RSS during the wave (VmHWM, reset at its start), RSS once all connections closed,
    aioquic connection objects left in the server then;
  - median handshake and download seconds seen by the clients.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import IO, Any

from quicmig.live.certs import CertPaths, write

HERE = Path(__file__).resolve().parent
SIZE = 200_000  # bytes per client
# seconds for every connection to close after a wave: a client that gave up leaves its server
# connection to aioquic's idle timeout (60 s)
CLOSE_WAIT = 90.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    def __init__(self, variant: str, certs: Path, extra: list[str]) -> None:
        kind = "stock" if variant == "stock" else "quicmig"
        args = ["--retry"] if variant.endswith("-retry") else []
        self.port = free_port()
        command = [sys.executable, str(HERE / "servers.py"), kind, "--port", str(self.port)]
        self.proc = subprocess.Popen(
            [*command, "--certs", str(certs), *args, *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self._stdout().readline()
        if not line.startswith("ready"):
            raise RuntimeError(f"server did not start: {line!r}")

    def _stdout(self) -> IO[str]:
        assert self.proc.stdout is not None
        return self.proc.stdout

    def ask(self, request: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(request + "\n")
        self.proc.stdin.flush()
        answer: dict[str, Any] = json.loads(self._stdout().readline())
        return answer

    def stop(self) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


def wave(
    server: ServerProcess, ca: Path, clients: int, last_number: int, timeout: float
) -> dict[str, Any]:
    before = server.ask("stats")
    server.ask("reset-peak")
    spread = max(1.0, clients / 500)  # seconds over which the clients start
    started = time.perf_counter()
    command = [sys.executable, str(HERE / "h3clients.py"), "--port", str(server.port)]
    options = ["--ca", str(ca), "--clients", str(clients), "--size", str(SIZE)]
    out = subprocess.run(
        [*command, *options, "--spread", str(spread), "--timeout", str(timeout)],
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - started
    report = json.loads(out.stdout)
    results: list[dict[str, Any]] = report["clients"]
    deadline = time.monotonic() + CLOSE_WAIT
    after = server.ask("stats")
    while after["quic_connections"] and time.monotonic() < deadline:
        time.sleep(0.5)
        after = server.ask("stats")
    row: dict[str, Any] = {
        "clients": clients,
        "completed": sum(r["ok"] for r in results),
        "intact": sum(r["intact"] for r in results),
        "errors": dict(Counter(str(r["error"]).split(":")[0] for r in results if r["error"])),
        "moved_incomplete": sum(r["ports"] is not None and not r["ok"] for r in results),
        "moved": sum(r["ports"] is not None for r in results),
        "wall_s": wall,
        "server_cpu_s": after["cpu"] - before["cpu"],
        "client_cpu_s": report["cpu"],
        "peak_rss_mb": after["hwm_kb"] / 1024,
        "rss_after_mb": after["rss_kb"] / 1024,
        "quic_connections_left": after["quic_connections"],
        "handshake_median_s": statistics.median(
            [r["handshake"] for r in results if "handshake" in r] or [0.0]
        ),
        "download_median_s": statistics.median(
            [r["seconds"] for r in results if "seconds" in r] or [0.0]
        ),
    }
    if "migrations" in after:
        # Every move a client made, finished or not: the server must have seen each.
        made = Counter(tuple(r["ports"]) for r in results if r["ports"] is not None)
        recorded = Counter(
            (old, new) for number, old, new in after["migrations"] if number > last_number
        )
        row["exact"] = sum((made & recorded).values())
        row["unmade_records"] = sum((recorded - made).values())
        row["last_number"] = after["totals"]["connections"]
        for key in ("records_dropped", "refused_half_open", "handshake_timeouts", "unroutable"):
            row[key] = after["totals"][key] - before["totals"][key]
    return row


def run_variant(
    variant: str, certs: CertPaths, clients: int, waves: int, extra: list[str], timeout: float
) -> list[dict[str, Any]]:
    server = ServerProcess(variant, certs.cert.parent, extra)
    rows = []
    last = 0
    try:
        for index in range(waves):
            row = wave(server, certs.ca, clients, last, timeout)
            last = row.get("last_number", 0)
            row.update(variant=variant, wave=index + 1)
            rows.append(row)
            print(describe(row), flush=True)
    finally:
        server.stop()
    return rows


def describe(row: dict[str, Any]) -> str:
    exact = (
        f", exact {row['exact']}/{row['moved']} (+{row['unmade_records']} unmade)"
        if "exact" in row
        else f", moved {row['moved']}"
    )
    return (
        f"{row['variant']:>13} N={row['clients']:<5} wave {row['wave']}: "
        f"intact {row['intact']}/{row['clients']} (completed {row['completed']}){exact}; "
        f"server CPU {row['server_cpu_s']:.1f} s (clients {row['client_cpu_s']:.1f} s), "
        f"wall {row['wall_s']:.1f} s; peak RSS {row['peak_rss_mb']:.0f} MB, after "
        f"{row['rss_after_mb']:.0f} MB, {row['quic_connections_left']} aioquic connections "
        f"left; handshake {row['handshake_median_s'] * 1e3:.0f} ms, download "
        f"{row['download_median_s']:.2f} s (medians)"
        + (f"; errors {row['errors']}" if row["errors"] else "")
        + (
            f"; half-open refusals {row['refused_half_open']}, handshake timeouts "
            f"{row['handshake_timeouts']}, unroutable {row['unroutable']}"
            if "unroutable" in row
            else ""
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", default="50,200,500,1000")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--waves", type=int, default=2)
    parser.add_argument("--variants", default="quicmig,stock")
    parser.add_argument("--server-arg", action="append", default=[], help="to servers.py")
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds a client may take to download"
    )
    parser.add_argument("--json", type=Path, help="write every row here")
    args = parser.parse_args()
    variants = args.variants.split(",")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        certs = CertPaths.in_dir(Path(tmp))
        write(certs)
        for clients in (int(n) for n in args.clients.split(",")):
            for repeat in range(args.repeat):
                order = variants if repeat % 2 == 0 else variants[::-1]
                for variant in order:
                    rows += run_variant(
                        variant, certs, clients, args.waves, args.server_arg, args.timeout
                    )
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
