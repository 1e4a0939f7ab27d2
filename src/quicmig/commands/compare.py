"""`quicmig compare A.json B.json [C.json ...]`: one scenario's results side by side."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from quicmig.core.results import check_output_file
from quicmig.errors import InputError
from quicmig.report.compare import compare_table, load_runs, scenario_warning
from quicmig.report.table import fold_columns, make_console


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "compare",
        description="Print results of the same scenario from different backends, seeds or "
        "stacks side by side: verdict, transfer, checks, and per migration the kind the "
        "server observed, detection delay, validation round trip, interruption, lost and "
        "retransmitted data. Exit status: 0, or 2 for bad input.",
        epilog="example:\n"
        "  quicmig run nat-rebinding --json sim.json\n"
        "  quicmig run nat-rebinding --backend proxy --json proxy.json\n"
        "  quicmig compare sim.json proxy.json\n"
        "  sudo quicmig lab race --json race.json && quicmig compare race.json",
    )
    parser.add_argument(
        "files",
        nargs="+",
        type=Path,
        metavar="RESULT.json",
        help="two or more files written by `quicmig run NAME --json FILE`, or a race's "
        "(`quicmig lab race --json FILE`: its transports side by side)",
    )
    parser.add_argument(
        "--html",
        type=Path,
        metavar="FILE",
        help="also write the comparison and each run's report as one self-contained page",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    files: list[Path] = args.files
    if args.html is not None:
        check_output_file(args.html, "--html")
    runs = [run for path in files for run in load_runs(path)]
    if len(runs) < 2:
        raise InputError(
            "compare needs at least two result files (quicmig run NAME --json FILE), or one "
            "race (quicmig lab race --json FILE)"
        )
    warning = scenario_warning(runs)
    if warning is not None:
        print(f"quicmig: {warning}", file=sys.stderr)
    table = compare_table(runs)
    console = make_console()
    console.print(fold_columns(table, console.width))
    if args.html is not None:
        from quicmig.core.results import Result
        from quicmig.report.html import rich_table_html, write_html

        results = [Result.from_dict(r.data) for r in runs]
        preface = rich_table_html(table)
        write_html(args.html, results, title=_plain(table.title), preface=preface)
    return 0


def _plain(title: object) -> str:
    from rich.text import Text

    return Text.from_markup(title).plain if isinstance(title, str) else ""
