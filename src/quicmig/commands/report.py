"""`quicmig report RESULTS... -o FILE.html`: the HTML report of saved results."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from quicmig.core.results import RUNS_SCHEMA, SCHEMA, Result, check_output_file
from quicmig.errors import InputError
from quicmig.report.compare import load_run


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "report",
        description="Write one self-contained HTML page (it works offline and loads nothing) "
        "for saved results: for each, the verdict and its checks with their reasons, what "
        "happened in each migration in words and numbers, the timeline with the network "
        "changes and the paths, links to the files it was made from and the command that "
        "reproduces it. The packets around each migration are drawn when the result keeps "
        "them (written with `quicmig run ... --html FILE --json FILE`). Exit status: 0, or 2 "
        "for bad input.",
        epilog="examples:\n"
        "  quicmig run network-switch --json ns.json --with-series\n"
        "  quicmig report ns.json -o ns.html\n"
        "  quicmig run all --out results/ && quicmig report results/ -o all.html",
    )
    parser.add_argument(
        "results",
        nargs="+",
        type=Path,
        metavar="RESULT",
        help="result files (`quicmig run --json`, also `run all --json`), or folders of them "
        "(`run all --out DIR`)",
    )
    parser.add_argument(
        "-o", "--output", type=Path, metavar="FILE.html", required=True, help="the page to write"
    )
    parser.add_argument("--title", metavar="TEXT", help="the page's title (several results)")
    parser.set_defaults(handler=run)


def load_results(paths: list[Path]) -> list[Result]:
    """Every result in `paths` (files or folders), in order; InputError names a bad one."""
    results: list[Result] = []
    for path in paths:
        if path.is_dir():
            files = sorted(p for p in path.glob("*.json"))
            found = [f for f in files if _schema(f) == SCHEMA]
            if not found:
                raise InputError(f"{path}: no {SCHEMA} files in this folder")
            results += [Result.from_dict(load_run(f).data) for f in found]
        elif _schema(path) == RUNS_SCHEMA:
            runs = json.loads(path.read_text()).get("runs", [])
            try:
                results += [Result.from_dict(r) for r in runs]
            except (KeyError, ValueError, TypeError) as exc:
                raise InputError(f"{path}: a run in it is malformed ({exc})") from None
        else:
            data = load_run(path).data  # one-line errors for anything else
            try:
                results.append(Result.from_dict(data))
            except (KeyError, ValueError, TypeError) as exc:
                raise InputError(f"{path}: a malformed {SCHEMA} ({exc})") from None
    return results


def _schema(path: Path) -> object:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data.get("schema") if isinstance(data, dict) else None


def run(args: argparse.Namespace) -> int:
    from quicmig.report.html import write_html

    output: Path = args.output
    check_output_file(output, "-o")
    if output.suffix.lower() not in (".html", ".htm"):
        raise InputError(f"-o {output}: use a .html file name")
    results = load_results(args.results)
    write_html(output, results, title=args.title)
    series = sum(1 for r in results if r.series.delivered)
    packets = sum(1 for r in results if r.packets is not None)
    print(
        f"{output}: {len(results)} result{'s' if len(results) != 1 else ''}"
        f" ({series} with time series, {packets} with the packets around each migration)"
    )
    return 0
