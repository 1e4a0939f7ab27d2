"""The `quicmig` command line: one-line errors, exit 0 / 1 / 2, no tracebacks for bad input."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import textwrap
from collections.abc import Sequence
from typing import IO, Any, NoReturn

from quicmig import __version__
from quicmig.errors import QuicmigError

COMMANDS: dict[str, str] = {  # name -> one line for `quicmig --help`; module quicmig.commands.NAME
    "scenarios": "list the built-in scenarios",
    "run": "run a scenario and report its migrations and checks",
    "certs": "create the local CA and server certificate for the live server",
    "server": "run the live QUIC server (real UDP), logging the migrations it observes",
    "client": "connect to the live server and migrate the connection for real",
    "demo": "interactive tour: concepts, and scenarios with their real packets",
    "check": "check the migrations in a capture (pcap/pcapng + TLS key log) with tshark",
    "proxy": "a UDP middlebox between a QUIC client and server: NAT rebinding, impairments",
    "lab": "a real network in Linux namespaces: kernel NAT, interface switch, IP change (root)",
    "compare": "results of one scenario from different backends or seeds, side by side",
    "sweep": "many runs (a grid of values, seeds, stacks) on local processes or Dask, aggregated",
    "interop": "a migration interop matrix of real QUIC stacks (ngtcp2, quic-go, Chromium, ...)",
    "report": "an HTML report of saved results (one self-contained file, works offline)",
}


# What `pip install -r requirements.txt` (or `pip install .`) brings: a missing one is said in
# one line (the seed scripts run from a clone with nothing installed), not as a traceback.
DEPENDENCIES = ("aioquic", "cryptography", "rich", "matplotlib")


class HelpFormatter(argparse.HelpFormatter):
    """Prose wrapped to the terminal, as argparse does, but never inside a hyphenated name
    (make-before-break); lines that start with a space (an epilog's examples) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        lines = []
        for line in text.splitlines():
            lines += (
                [line] if line.startswith(" ") else [indent + p for p in self._wrap(line, width)]
            )
        return "\n".join(lines)

    def _split_lines(self, text: str, width: int) -> list[str]:
        return self._wrap(" ".join(text.split()), width)

    @staticmethod
    def _wrap(text: str, width: int) -> list[str]:
        return textwrap.wrap(text, width, break_on_hyphens=False) or [""]


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line with the way to help, exit 2 (argparse prints the usage too);
    its subcommands' parsers are _Parsers too, with the same help layout."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the `selected` command's module is imported and registers its options.

    The other commands get a placeholder with their one-line summary, which is all
    `quicmig --help` shows: importing every command would load the live server, the proxy
    and the capture code for every `quicmig run`.
    """
    parser = _Parser(
        prog="quicmig",
        description="A lab for QUIC connection migration: real aioquic connections surviving "
        "NAT rebinding, address changes and network switches, measured and checked.",
        epilog="start with: quicmig scenarios; quicmig run all",
    )
    parser.add_argument("--version", action="version", version=f"quicmig {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for name, summary in COMMANDS.items():
        if name == selected:
            module = importlib.import_module(f"quicmig.commands.{name}")
            module.register(subparsers)
        else:
            subparsers.add_parser(name, help=summary)
    return parser


class ClosedPipeTolerant:
    """stdout that, once its reader has gone (`quicmig run ... --json F | head`), drops what
    is printed instead of raising, so the command still finishes and writes its files."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._closed = False

    def write(self, text: str) -> int:
        if not self._closed:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._drop()
        return len(text)

    def flush(self) -> None:
        if not self._closed:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._drop()

    def _drop(self) -> None:
        self._closed = True
        # What is still buffered goes to /dev/null too, also at the interpreter's exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())
        os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None and not isinstance(sys.stdout, ClosedPipeTolerant):
        sys.stdout = ClosedPipeTolerant(sys.stdout)
    args_list = list(sys.argv[1:] if argv is None else argv)
    # The command comes first; `quicmig --help` and `quicmig --version` select none.
    selected = args_list[0] if args_list and not args_list[0].startswith("-") else None
    try:
        # Inside the try: Ctrl-C while the command's module is still importing is common.
        args = build_parser(selected).parse_args(args_list)
        args.argv = args_list  # reports show the command that made them
        code: int = args.handler(args)
        return code
    except QuicmigError as exc:
        print(f"quicmig: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("quicmig: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as exc:
        package = (exc.name or "").partition(".")[0]
        if package not in DEPENDENCIES:
            raise
        print(
            f"quicmig: error: the Python package {package} is missing; install quicmig's "
            "dependencies with `pip install -r requirements.txt` (from the clone) or "
            "`pip install .`",
            file=sys.stderr,
        )
        return 1
