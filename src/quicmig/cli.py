"""The `quicmig` command line: one-line errors, exit 0 / 1 / 2, no tracebacks for bad input."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from quicmig import __version__
from quicmig.commands import certs as certs_command
from quicmig.commands import check as check_command
from quicmig.commands import client as client_command
from quicmig.commands import demo as demo_command
from quicmig.commands import lab as lab_command
from quicmig.commands import proxy as proxy_command
from quicmig.commands import run as run_command
from quicmig.commands import scenarios as scenarios_command
from quicmig.commands import server as server_command
from quicmig.errors import QuicmigError

COMMANDS = (
    scenarios_command,
    run_command,
    certs_command,
    server_command,
    client_command,
    demo_command,
    check_command,
    proxy_command,
    lab_command,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quicmig",
        description="A lab for QUIC connection migration: real aioquic connections surviving "
        "NAT rebinding, address changes and network switches, measured and checked.",
        epilog="start with: quicmig scenarios; quicmig run all",
    )
    parser.add_argument("--version", action="version", version=f"quicmig {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
        return code
    except QuicmigError as exc:
        print(f"quicmig: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("quicmig: interrupted", file=sys.stderr)
        return 130
