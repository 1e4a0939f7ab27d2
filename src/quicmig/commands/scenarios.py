"""`quicmig scenarios`: list the built-in scenarios, or show one as TOML."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich import box
from rich.table import Table

from quicmig.model.loader import builtin_names, builtin_text, load_scenario
from quicmig.report.table import make_console


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "scenarios",
        description="List the built-in scenarios with one line each, or print one as TOML "
        "(a starting point for a custom scenario file).",
    )
    parser.add_argument(
        "--show",
        metavar="NAME|FILE.toml",
        help="print scenario NAME as TOML, with its notes (a FILE.toml is checked, then printed)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    console = make_console()
    if args.show:
        if args.show.endswith(".toml") or "/" in args.show:
            load_scenario(args.show)  # a file: said to be wrong in one line, else shown as is
            text = Path(args.show).read_text()
        else:
            text = builtin_text(args.show)
        print(text, end="")
        return 0
    table = Table(
        title="Built-in scenarios (quicmig run NAME; quicmig scenarios --show NAME)",
        title_justify="left",
        box=box.HEAVY_HEAD if console.width >= 100 else box.SIMPLE_HEAD,
    )
    table.add_column("name", style="bold")
    table.add_column("expected")
    table.add_column("what happens")
    for name in builtin_names():
        scenario = load_scenario(name)
        table.add_row(name, scenario.expect.verdict.value, scenario.summary)
    console.print(table)
    return 0
