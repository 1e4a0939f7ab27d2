"""Benchmark reading one interop cell's capture: the server's leg cut out in Python and read
by tshark once (what `quicmig interop` does), against `read_datagrams()` on the proxy's
capture of both legs (one pass, then three per leg: a write, its frame numbers, its fields).

    python benchmarks/bench_interop_capture.py [--runs N] [--json FILE]

The capture is made first: one rebind-port cell (qh3 server, qh3 client: a 10 MB download
through the proxy at 10 Mbit/s, rebound at 1 s and 6 s). Then each way of reading it runs
`--runs` times, alternating, and the medians (seconds, wall clock) and their ratio are
printed; both must find the same datagrams of the server's leg. The machine is shared
(2 cores): the ratio, measured in the same run, is the figure to keep.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from quicmig.capture.tshark import read_datagrams
from quicmig.interop.matrix import Job, MatrixRun, Selection, load_case
from quicmig.interop.pcapfile import read_records, touching, udp_header, write_records
from quicmig.interop.stacks import load_stacks, missing
from quicmig.live.certs import CertPaths, write


def make_capture(folder: Path) -> Path:
    stacks = load_stacks()
    lines = [line for line in (missing(stacks["qh3"], "server"),) if line]
    if lines:
        sys.exit(f"bench_interop_capture: {lines[0]}")
    certs = CertPaths.in_dir(folder / "certs")
    (folder / "certs").mkdir()
    write(certs)
    matrix = MatrixRun(Selection((), (), ("rebind-port",)), "proxy", folder, certs)
    job = Job("rebind-port", stacks["qh3"], stacks["qh3"], 1, load_case("rebind-port"))
    (cell,) = asyncio.run(matrix.run_jobs([job]))
    if cell.folder is None:
        sys.exit(f"bench_interop_capture: the cell did not run: {cell.reasons}")
    return Path(cell.folder)


def server_address(cell: Path) -> tuple[str, int]:
    first = next(read_records(cell / "server-side.pcap"))
    header = udp_header(first.ip)
    assert header is not None
    return header.dst  # the client's first datagram goes to the server


def cut_and_read(cell: Path, server: tuple[str, int], out: Path) -> int:
    write_records(out, touching(read_records(cell / "proxy.pcap"), {server}))
    return len(read_datagrams(out, cell / "keys.log", (server[1],)))


def read_both_legs(cell: Path, server: tuple[str, int]) -> int:
    rows = read_datagrams(cell / "proxy.pcap", cell / "keys.log", (server[1],))
    return sum(1 for d in rows if server in (d.src, d.dst))


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench_interop_capture")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-interop-") as tmp:
        cell = make_capture(Path(tmp))
        server = server_address(cell)
        cut_times, both_times = [], []
        counts = set()
        for _ in range(args.runs):
            started = time.perf_counter()
            counts.add(("cut", cut_and_read(cell, server, Path(tmp) / "leg.pcap")))
            cut_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            counts.add(("both", read_both_legs(cell, server)))
            both_times.append(time.perf_counter() - started)
        size = (cell / "proxy.pcap").stat().st_size
    found = {kind: n for kind, n in counts}
    figures = {
        "capture_bytes": size,
        "server_leg_datagrams": found,
        "cut_then_one_pass_s": statistics.median(cut_times),
        "read_datagrams_both_legs_s": statistics.median(both_times),
        "runs": args.runs,
    }
    figures["ratio"] = figures["read_datagrams_both_legs_s"] / figures["cut_then_one_pass_s"]
    print(json.dumps(figures, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if len(set(found.values())) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
