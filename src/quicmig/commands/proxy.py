"""`quicmig proxy`: a userspace UDP middlebox between any QUIC client and server on this host.

`quicmig proxy ctl rebind|switch PROFILE|blackhole SECONDS|status` talks to a running one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import signal
import sys
from dataclasses import replace
from pathlib import Path

from quicmig.core.datagram import format_address
from quicmig.errors import InputError
from quicmig.model.settings import apply_link_settings
from quicmig.proxy.control import DEFAULT_CONTROL, ControlServer, send_request
from quicmig.proxy.core import (
    DEFAULT_UPSTREAM_TIMEOUT,
    Proxy,
    ProxyConfig,
    describe,
    parse_address,
    profile_named,
)

IMPAIRMENT_FLAGS = (
    ("delay_ms", "one-way delay, ms"),
    ("jitter_ms", "jitter, ms (uniform ±, order kept)"),
    ("loss_pct", "random loss, percent, each direction"),
    ("burst_len", "mean loss burst in packets (Gilbert-Elliott); 1 = independent"),
    ("rate_mbit", "rate limit, Mbit/s, each direction (0 = none)"),
    ("queue_packets", "drop-tail queue behind the rate limit, packets"),
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "proxy",
        description="Forward UDP from --listen to --upstream like a NAT, rebinding (a new "
        "source port, or with --rebind-addr a new loopback address) on a schedule or on "
        "demand (SIGUSR1, or `quicmig proxy ctl rebind`), with the simulator's link model "
        "(delay, jitter, loss, bursty loss, rate + queue) in each direction, blackhole windows "
        "and switches between named profiles. Prints each rebinding and switch as it happens. "
        "`quicmig proxy ctl ACTION` talks to a running proxy: rebind, switch PROFILE, "
        "blackhole SECONDS, status.",
        epilog="examples:\n"
        "  quicmig server &   # 127.0.0.1:4433\n"
        "  quicmig proxy --listen 127.0.0.1:4434 --upstream 127.0.0.1:4433 --profile wifi \\\n"
        "      --first-rebind 1 --rebind-every 5 --pcap proxy.pcap\n"
        "  quicmig proxy ctl switch cellular\n"
        "  quicmig proxy ctl blackhole 2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "action",
        nargs="*",
        metavar="ctl ACTION",
        help="with `ctl`: send ACTION (rebind | switch PROFILE | blackhole SECONDS | status) "
        "to a running proxy",
    )
    parser.add_argument(
        "--listen", default="127.0.0.1:4434", metavar="ADDR:PORT", help="default 127.0.0.1:4434"
    )
    parser.add_argument(
        "--upstream", default="127.0.0.1:4433", metavar="ADDR:PORT", help="default 127.0.0.1:4433"
    )
    parser.add_argument(
        "--profile", default="ideal", metavar="NAME", help="link profile (ideal, lan, wifi, ...)"
    )
    for key, text in IMPAIRMENT_FLAGS:
        parser.add_argument(f"--{key.replace('_', '-')}", type=float, metavar="N", help=text)
    parser.add_argument(
        "--source",
        default=None,
        metavar="ADDR",
        help="source address towards the upstream (default: 127.0.0.1 or ::1)",
    )
    parser.add_argument(
        "--rebind-addr",
        action="append",
        default=[],
        metavar="ADDR",
        help="rebindings cycle through these loopback source addresses too (repeatable)",
    )
    parser.add_argument("--first-rebind", type=float, metavar="S", help="first rebinding at S")
    parser.add_argument("--rebind-every", type=float, metavar="S", help="then every S seconds")
    parser.add_argument(
        "--switch",
        action="append",
        default=[],
        metavar="AT:PROFILE",
        help="switch to PROFILE at AT seconds (repeatable)",
    )
    parser.add_argument(
        "--blackhole",
        action="append",
        default=[],
        metavar="AT:SECONDS",
        help="drop everything from AT for SECONDS (repeatable)",
    )
    parser.add_argument(
        "--control",
        default=format_address(DEFAULT_CONTROL),
        metavar="ADDR:PORT",
        help=f"control socket (default {format_address(DEFAULT_CONTROL)}; `off` for none)",
    )
    parser.add_argument("--pcap", type=Path, metavar="FILE", help="capture both sides")
    parser.add_argument("--seed", type=int, default=1, help="seed of the loss model")
    parser.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    parser.add_argument(
        "--upstream-timeout",
        type=float,
        default=DEFAULT_UPSTREAM_TIMEOUT,
        metavar="S",
        help="fail when the upstream never answers within S seconds "
        f"(default {DEFAULT_UPSTREAM_TIMEOUT:g})",
    )
    parser.set_defaults(handler=run)


def _pairs(values: list[str], flag: str, kind: str) -> list[tuple[float, str]]:
    out = []
    for value in values:
        at, sep, rest = value.partition(":")
        try:
            seconds = float(at)
        except ValueError:
            seconds = -1.0
        if not sep or seconds < 0 or not rest:
            raise InputError(f"{flag} {value!r}: use AT:{kind} with AT in seconds >= 0")
        out.append((seconds, rest))
    return out


def config_from_args(args: argparse.Namespace) -> ProxyConfig:
    listen = parse_address(args.listen, "--listen")
    upstream = parse_address(args.upstream, "--upstream")
    if upstream[1] == 0:
        raise InputError(f"--upstream {args.upstream}: give the server's port")
    profile = profile_named(args.profile)
    settings = [
        (key, getattr(args, key)) for key, _ in IMPAIRMENT_FLAGS if getattr(args, key) is not None
    ]
    profile = apply_link_settings(profile, settings, "proxy link")
    if args.queue_packets is not None:
        profile = replace(profile, queue=int(args.queue_packets))
    default_source = "::1" if ":" in upstream[0] else "127.0.0.1"
    sources = [args.source or default_source, *args.rebind_addr]
    for host in sources:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise InputError(f"--rebind-addr/--source {host!r}: not an IP address") from None
        if not ip.is_loopback:
            raise InputError(
                f"--rebind-addr/--source {host}: use a loopback address (127.0.0.0/8 or ::1)"
            )
        if (ip.version == 6) != (":" in upstream[0]):
            raise InputError(f"--rebind-addr/--source {host}: not of the upstream's IP version")
    if args.first_rebind is not None and args.first_rebind < 0:
        raise InputError(f"--first-rebind {args.first_rebind:g}: must be >= 0 seconds")
    if args.rebind_every is not None and args.rebind_every <= 0:
        raise InputError(f"--rebind-every {args.rebind_every:g}: must be > 0 seconds")
    switches = [(at, name) for at, name in _pairs(args.switch, "--switch", "PROFILE")]
    for _, name in switches:
        profile_named(name)
    blackholes = []
    for at, length in _pairs(args.blackhole, "--blackhole", "SECONDS"):
        try:
            seconds = float(length)
        except ValueError:
            seconds = 0.0
        if seconds <= 0:
            raise InputError(f"--blackhole {at:g}:{length}: the length must be seconds > 0")
        blackholes.append((at, seconds))
    if args.pcap is not None and not args.pcap.parent.is_dir():
        raise InputError(f"--pcap {args.pcap}: directory {args.pcap.parent} does not exist")
    if args.upstream_timeout <= 0:
        raise InputError("--upstream-timeout: must be > 0 seconds")
    return ProxyConfig(
        listen=listen,
        upstream=upstream,
        profile=profile,
        profile_name=args.profile if not settings else f"{args.profile}+flags",
        source_addresses=tuple(sources),
        first_rebind=args.first_rebind,
        rebind_every=args.rebind_every,
        switches=tuple(switches),
        blackholes=tuple(blackholes),
        pcap=args.pcap,
        seed=args.seed,
        upstream_timeout=args.upstream_timeout,
    )


def run(args: argparse.Namespace) -> int:
    if args.action:
        return _ctl(args)
    config = config_from_args(args)
    control = None if args.control == "off" else parse_address(args.control, "--control")
    try:
        asyncio.run(_serve(config, control, args.duration))
    except KeyboardInterrupt:
        print("proxy stopped", flush=True)
    return 0


def _ctl(args: argparse.Namespace) -> int:
    if args.action[0] != "ctl" or len(args.action) < 2:
        raise InputError(
            "use `quicmig proxy [options]` to run a proxy, or `quicmig proxy ctl ACTION` with "
            "ACTION rebind | switch PROFILE | blackhole SECONDS | status"
        )
    control = parse_address(args.control, "--control")
    print(send_request(control, " ".join(args.action[1:])))
    return 0


def _log(line: str) -> None:
    print(line, flush=True)


async def _serve(
    config: ProxyConfig, control: tuple[str, int] | None, duration: float | None
) -> None:
    proxy = Proxy(config, log=_log)
    server = ControlServer(proxy)
    loop = asyncio.get_running_loop()
    async with proxy:
        try:
            where = await server.open(control) if control is not None else None
            _log(
                f"quicmig proxy: {format_address(proxy.local)} → "
                f"{format_address(config.upstream)}, profile {config.profile_name} "
                f"({describe(config.profile)})"
                + (f"; control on {format_address(where)}" if where else "")
                + (f"; pcap {config.pcap}" if config.pcap else "")
            )
            if sys.platform != "win32":
                loop.add_signal_handler(
                    signal.SIGUSR1, lambda: asyncio.ensure_future(proxy.rebind())
                )
            waiter = proxy.wait()
            if duration is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter, duration)
            else:
                await waiter
        finally:
            if sys.platform != "win32":
                loop.remove_signal_handler(signal.SIGUSR1)
            await server.aclose()
            stats = proxy.stats
            _log(
                f"proxy done: {stats.from_client} datagrams from the client, "
                f"{stats.to_upstream} to the upstream, {stats.from_upstream} back, "
                f"{stats.to_client} to the client; lost {proxy.up.stats.lost}+"
                f"{proxy.down.stats.lost}, queue drops {proxy.up.stats.queue_drops}+"
                f"{proxy.down.stats.queue_drops}, blackholed {stats.blackholed}"
            )
