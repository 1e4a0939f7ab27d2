"""`quicmig interop`: the migration interop matrix of real QUIC stacks, without Docker."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import (
    TaskID,
)

from quicmig.core.results import check_output_dir, write_atomically
from quicmig.errors import InputError
from quicmig.interop.matrix import (
    ERROR,
    FAILED,
    INCOMPLETE,
    NO_PAIR,
    RFC9000_ONLY,
    STRICT_ONLY,
    TESTS,
    Cell,
    Job,
    MatrixRun,
    Selection,
    load_case,
    not_run,
    select,
)
from quicmig.interop.process import check_port_free
from quicmig.interop.report import (
    explained,
    legend,
    markdown,
    terminal_tables,
    unsupported_reasons,
)
from quicmig.interop.stacks import Stack, load_stacks, missing
from quicmig.live.certs import CertPaths, write
from quicmig.live.stop import run_stoppable
from quicmig.report.table import count_progress, make_console

DEFAULT_JOBS = 2  # cells at a time: the proxy and each pair's two programs share 2 cores here


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "interop",
        description="Run real QUIC stacks against each other (servers x clients x tests) "
        "through quicmig's proxy (default, no root) or the namespace lab (--backend lab, "
        "root), judge every cell from its capture with quicmig's tracker and judge (verdicts "
        "under the strict quic-interop-runner rules and under RFC 9000's), and print a "
        "matrix per test. Each cell's evidence (captures, key log, logs, qlogs, Result JSON) "
        "goes to --out DIR/cells/; DIR/matrix.json and DIR/matrix.md hold the matrix. "
        f"Tests: {', '.join(TESTS)}. Exit status: 0 when no cell failed (unsupported "
        "cells do not count), 1 when one did, 2 for usage errors, 130 when interrupted "
        "(finished cells are kept).",
        epilog="examples:\n"
        "  quicmig interop --list\n"
        "  quicmig interop --tests transfer,rebind-port\n"
        "  quicmig interop --servers ngtcp2,caddy --clients qh3 --tests rebind-port \\\n"
        "      --repeat 3\n"
        "  sudo quicmig interop --backend lab --tests rebind-addr --out lab-matrix/\n"
        "  quicmig interop --stacks-dir my-stacks/ --servers mystack",
    )
    parser.add_argument("--servers", metavar="A,B", help="server stacks (default: all)")
    parser.add_argument("--clients", metavar="C,D", help="client stacks (default: all)")
    parser.add_argument("--tests", metavar="T1,T2", help="tests (default: all)")
    parser.add_argument(
        "--backend", choices=("proxy", "lab"), default="proxy", help="network (default proxy)"
    )
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="where the evidence goes (default: a new "
        "folder interop-YYYYmmdd-HHMMSS here)"
    )  # fmt: skip
    parser.add_argument("--repeat", type=int, default=1, metavar="N", help="runs per cell")
    parser.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help=f"cells at a time (default {DEFAULT_JOBS}: each has its own ports or namespaces)",
    )
    parser.add_argument(
        "--stacks-dir",
        type=Path,
        metavar="DIR",
        help="more stack files (*.toml), see docs/interop.md",
    )
    parser.add_argument(
        "--base-port",
        type=int,
        metavar="PORT",
        help="the proxy's servers listen on ports from PORT up (default: any free port)",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the network's randomness")
    parser.add_argument("--list", action="store_true", help="list stacks and tests, then exit")
    parser.set_defaults(handler=run)


def _names(text: str | None, flag: str) -> list[str] | None:
    if text is None:
        return None
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise InputError(f"{flag} {text!r}: give one name or more, separated by commas")
    return names


def run(args: argparse.Namespace) -> int:
    console = make_console()
    stacks = load_stacks(args.stacks_dir)
    if args.list:
        return _list(console, stacks, TESTS)
    selection = select(
        stacks,
        _names(args.servers, "--servers"),
        _names(args.clients, "--clients"),
        _names(args.tests, "--tests"),
        args.repeat,
    )
    if not selection.servers or not selection.clients:
        raise InputError("no stack selected: give --servers and --clients names")
    jobs = args.jobs if args.jobs is not None else DEFAULT_JOBS
    if jobs < 1:
        raise InputError(f"--jobs {jobs}: give 1 or more")
    if args.backend == "lab":
        from quicmig.lab import system

        system.require("interop --backend lab")
    if args.base_port is not None:
        if not 1024 <= args.base_port <= 65000:
            raise InputError(f"--base-port {args.base_port}: give a port from 1024 to 65000")
        if args.backend == "lab":
            raise InputError("--base-port is for the proxy: the lab's servers use 4433")
        # The first port must be free (each cell then takes the next free one).
        check_port_free("127.0.0.1", args.base_port, False, "quicmig interop --base-port")
    out = args.out or Path(time.strftime("interop-%Y%m%d-%H%M%S"))
    check_output_dir(out, "--out")
    for stack in {*selection.servers, *selection.clients}:
        for role in stack.roles:
            used = stack in (selection.servers if role == "server" else selection.clients)
            line = missing(stack, role) if used else None
            if line is not None:
                console.print(f"⚠️  {line}; its cells are unsupported", markup=False)
    return _run_matrix(console, selection, args.backend, out, jobs, args.seed, args.base_port)


def _list(console: Console, stacks: dict[str, Stack], tests: dict[str, str]) -> int:
    console.print("[bold]stacks[/bold]")
    for stack in stacks.values():
        states = []
        for role in stack.roles:
            line = missing(stack, role)
            states.append(f"{role}" + (" (not installed)" if line else ""))
        console.print(f"  {stack.name:12} {', '.join(states):40} {stack.summary}", markup=False)
    console.print("[bold]tests[/bold]")
    for test in tests:
        console.print(f"  {test:20} {load_case(test).summary}", markup=False)
    return 0


def _run_matrix(
    console: Console,
    selection: Selection,
    backend: str,
    out: Path,
    jobs: int,
    seed: int,
    base_port: int | None,
) -> int:
    out.mkdir(parents=True, exist_ok=True)
    (out / INCOMPLETE).unlink(missing_ok=True)
    certs = CertPaths.in_dir(out / "certs")
    if not certs.cert.is_file():
        certs.cert.parent.mkdir(parents=True, exist_ok=True)
        write(certs)
    tasks: dict[tuple[str, str, str, int], TaskID] = {}
    show = console.is_terminal
    with count_progress(console, show) as progress:
        matrix = MatrixRun(
            selection, backend, out, certs, jobs=jobs, seed=seed, base_port=base_port
        )
        all_jobs = matrix.all_jobs()
        to_run = sum(not_run(job) is None for job in all_jobs)
        overall = progress.add_task("cells", total=len(all_jobs))

        def on_progress(job: Job, status: str) -> None:
            key = (job.test, job.server.name, job.client.name, job.repeat)
            if key not in tasks:
                tasks[key] = progress.add_task(job.label, total=None)
            progress.update(tasks[key], description=f"  {job.label}: {status}")

        def on_finished(cell: Cell) -> None:
            key = (cell.test, cell.server, cell.client, cell.repeat)
            if key in tasks:
                progress.remove_task(tasks.pop(key))
            progress.advance(overall)
            if cell.letter != NO_PAIR and (cell.verdicts is not None or cell.seconds):
                console.print(
                    f"{cell.letter} {cell.test} {cell.server} → {cell.client}"
                    + (f" #{cell.repeat}" if selection.repeat > 1 else "")
                    + f" ({cell.seconds:.1f} s)",
                    markup=False,
                    highlight=False,
                )

        matrix.progress = on_progress
        matrix.finished = on_finished
        console.print(
            f"{len(all_jobs)} cells, {to_run} to run, {jobs} at a time, through the "
            f"{backend}; evidence in {out}/cells/",
            markup=False,
        )
        started = time.monotonic()
        try:
            cells = run_stoppable(matrix.run())
        except KeyboardInterrupt:
            _write(matrix, out, complete=False)
            write_atomically(
                out / INCOMPLETE,
                f"interrupted after {len(matrix.cells)} of {len(all_jobs)} cells; "
                "matrix.json and matrix.md hold the finished ones\n",
            )
            print(
                f"quicmig: interrupted after {len(matrix.cells)} of {len(all_jobs)} cells; "
                f"{out} holds the finished ones and an {INCOMPLETE} note",
                file=sys.stderr,
            )
            raise
    wall = time.monotonic() - started
    _write(matrix, out, complete=True)
    servers = [s.name for s in selection.servers]
    clients = [s.name for s in selection.clients]
    for table in terminal_tables(cells, servers, clients):
        console.print(table)
    console.print(legend(), markup=False, highlight=False)
    for line in explained(sorted(cells, key=matrix.order)):
        console.print(line, markup=False, highlight=False)
    for line in unsupported_reasons(sorted(cells, key=matrix.order)):
        console.print(f"U: {line}", markup=False, highlight=False)
    ran = [c for c in cells if c.verdicts is not None or c.letter == ERROR]
    per_cell = sum(c.seconds for c in ran) / len(ran) if ran else 0.0
    console.print(
        f"{len(ran)} cells run in {wall:.0f} s ({per_cell:.1f} s per cell, {jobs} at a time); "
        f"{out / 'matrix.md'}, {out / 'matrix.json'}",
        markup=False,
    )
    bad = {FAILED, RFC9000_ONLY, STRICT_ONLY, ERROR}
    return 1 if any(c.letter in bad for c in cells) else 0


def _write(matrix: MatrixRun, out: Path, complete: bool) -> None:
    data = matrix.to_dict(complete)
    write_atomically(out / "matrix.json", json.dumps(data, indent=2) + "\n")
    selection = matrix.selection
    notes = [
        f"Backend: {matrix.backend}; {len(matrix.cells)} cells; wall time "
        f"{data['wall_seconds']:.0f} s, {matrix.jobs} cells at a time; "
        f"{os.cpu_count()} CPUs." + ("" if complete else " **Interrupted: incomplete.**"),
        "",
        "Versions: "
        + "; ".join(
            f"{name} {role} {version}" for (name, role), version in sorted(matrix.versions.items())
        ),
    ]
    write_atomically(
        out / "matrix.md",
        markdown(
            sorted(matrix.cells, key=matrix.order),
            [s.name for s in selection.servers],
            [s.name for s in selection.clients],
            "QUIC migration interop matrix",
            notes,
        ),
    )
