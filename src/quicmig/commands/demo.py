"""`quicmig demo`: an interactive tour of QUIC connection migration, with real packets."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo",
        description="An interactive tour of QUIC connection migration. Topics explain "
        "connection IDs, path validation, anti-amplification, probing packets, connection ID "
        "rotation and preferred addresses; each scenario runs in the simulator and shows, as a "
        "sequence diagram, the packets the server's aioquic really sent and received around "
        "each migration, with the measured detection delay, validation RTT and interruption. "
        "The topic 'Unlike TCP' races QUIC, TCP and MPTCP through a WiFi -> cellular switch "
        "in the namespace lab where it is available (root) and shows what each lost. "
        "Without a terminal on stdin (pipes, CI) it behaves as --no-input.",
        epilog="examples:\n"
        "  quicmig demo                                   # menu\n"
        "  quicmig demo --scenario nat-rebinding --no-input\n"
        "  quicmig demo --no-input | less -R              # everything once",
    )
    parser.add_argument(
        "--scenario",
        metavar="NAME",
        help="run one scenario (a built-in name, see `quicmig scenarios`, or a FILE.toml)",
    )
    parser.add_argument(
        "--no-input",
        action="store_true",
        help="never wait for the keyboard: with --scenario run it, else go through everything once",
    )
    parser.add_argument("--seed", type=int, default=1, help="run seed (default 1)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from quicmig.demo.menu import Demo, make_console
    from quicmig.model.loader import load_scenario

    if args.scenario is not None:
        load_scenario(args.scenario)  # unknown names fail here, before any output
    interactive = not args.no_input and sys.stdin.isatty()
    # The whole tour measures the Unlike-TCP topic too (a race in the lab, where it can).
    tour = args.scenario is None
    demo = Demo(make_console(), interactive=interactive, seed=args.seed, measure=tour)
    try:
        if args.scenario is not None:
            demo.scenario(args.scenario)
        elif interactive:
            demo.menu()
        else:
            demo.everything()
    except EOFError:  # Ctrl-D at a prompt
        demo.console.print()
    except KeyboardInterrupt:
        demo.console.print("\n[dim]demo interrupted[/dim]")
        return 130
    return 0
