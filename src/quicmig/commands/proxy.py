"""`quicmig proxy`: a userspace UDP middlebox between any QUIC client and server on this host.

`quicmig proxy ctl rebind|switch PROFILE|blackhole SECONDS|status` talks to a running one.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import math
import signal
import sys
from pathlib import Path
from typing import Any

from quicmig.core.datagram import Address, format_address, parse_address
from quicmig.core.results import check_output_file
from quicmig.errors import InputError
from quicmig.live.backend import apply_on_time
from quicmig.live.stop import STOP_SIGNALS
from quicmig.model.events import Blackhole, LinkChange, NatRebind, TimelineEvent, timed_events
from quicmig.model.settings import apply_link_settings, check_seconds
from quicmig.proxy.control import (
    DEFAULT_CONTROL,
    ControlServer,
    blackhole_seconds,
    send_request,
)
from quicmig.proxy.core import (
    DEFAULT_MAX_SESSIONS,
    DEFAULT_SESSION_TIMEOUT,
    DEFAULT_UPSTREAM_TIMEOUT,
    EVICT_IDLE,
    Proxy,
    ProxyConfig,
    describe,
    is_loopback,
    profile_named,
)
from quicmig.proxy.driver import ProxyDriver

LINK = "client"  # the one link the proxy stands for

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
        "blackhole SECONDS, status. Runs until --duration, Ctrl-C (SIGINT) or SIGTERM, then "
        "closes the pcap whole and prints its counters. Exit status: 0 when stopped so, 1 when "
        "the upstream never answers or a socket fails, 2 bad input; on a startup failure no "
        "pcap is left behind.",
        epilog="examples:\n"
        "  quicmig server &   # 127.0.0.1:4433\n"
        "  quicmig proxy --listen 127.0.0.1:4434 --upstream 127.0.0.1:4433 \\\n"
        "      --profile wifi --first-rebind 1 --rebind-every 5 --pcap proxy.pcap\n"
        "  quicmig proxy ctl switch cellular\n"
        "  quicmig proxy ctl blackhole 2",
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
        "--link",
        "--switch",
        dest="link",
        action="append",
        default=[],
        metavar="AT:PROFILE",
        help="the link takes PROFILE at AT seconds (repeatable; --switch is its old name)",
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
        help=f"control socket, a loopback address: it takes requests from anyone who reaches "
        f"it (default {format_address(DEFAULT_CONTROL)}; `off` for none)",
    )
    parser.add_argument("--pcap", type=Path, metavar="FILE", help="capture both sides")
    parser.add_argument("--seed", type=int, default=1, help="seed of the loss model")
    parser.add_argument(
        "--duration", type=float, metavar="S", help="stop after S seconds (S > 0), exit 0"
    )
    parser.add_argument(
        "--upstream-timeout",
        type=float,
        default=DEFAULT_UPSTREAM_TIMEOUT,
        metavar="S",
        help="fail when the upstream never answers within S seconds "
        f"(default {DEFAULT_UPSTREAM_TIMEOUT:g})",
    )
    parser.add_argument(
        "--session-timeout",
        type=float,
        default=DEFAULT_SESSION_TIMEOUT,
        metavar="S",
        help="a client's mapping expires after S seconds without traffic, as in a NAT "
        f"(default {DEFAULT_SESSION_TIMEOUT:g}: Linux conntrack's, and RFC 4787's minimum); "
        "its next datagram then gets a new source port",
    )
    parser.add_argument(
        "--max-sessions",
        type=int,
        default=DEFAULT_MAX_SESSIONS,
        metavar="N",
        help=f"at most N mappings, each one socket (default {DEFAULT_MAX_SESSIONS}, fewer if "
        "the open-file limit leaves less room); a new source in a full table replaces the "
        f"mapping idle longest if idle {EVICT_IDLE:g} s, or is refused (counted and logged)",
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
        if not sep or not 0 <= seconds < math.inf or not rest:
            raise InputError(f"{flag} {value!r}: use AT:{kind} with AT in seconds >= 0")
        out.append((seconds, rest))
    return out


def control_address(text: str, *, off: bool) -> Address | None:
    """--control: a loopback ADDR:PORT (the channel has no authentication), or `off`."""
    if text == "off":
        if off:
            return None
        raise InputError("--control off: give the running proxy's control ADDR:PORT")
    # A proxy may bind any free port (0; its startup line names it), a request needs one.
    address = parse_address(text, "--control", default_host="127.0.0.1", any_port=off)
    if not is_loopback(address[0]):
        raise InputError(
            f"--control {text}: use a loopback address (127.0.0.1 or ::1): anyone who reaches "
            "the control channel can rebind, switch or blackhole the proxy"
        )
    return address


def config_from_args(args: argparse.Namespace) -> ProxyConfig:
    listen = parse_address(args.listen, "--listen", default_host="127.0.0.1", any_port=True)
    upstream = parse_address(args.upstream, "--upstream", default_host="127.0.0.1")
    profile = profile_named(args.profile)
    queue = args.queue_packets
    if queue is not None and not (math.isfinite(queue) and queue == int(queue)):
        raise InputError(f"--queue-packets {queue:g}: give a whole number of packets")
    settings = [
        (key, getattr(args, key)) for key, _ in IMPAIRMENT_FLAGS if getattr(args, key) is not None
    ]
    profile = apply_link_settings(profile, settings, "proxy link")
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
    check_seconds(args.duration, "--duration", zero=False)
    check_seconds(args.upstream_timeout, "--upstream-timeout", zero=False)
    check_seconds(args.session_timeout, "--session-timeout", zero=False)
    if args.max_sessions < 1:
        raise InputError(f"--max-sessions {args.max_sessions}: at least 1")
    if args.pcap is not None:
        check_output_file(args.pcap, "--pcap")
    return ProxyConfig(
        listen=listen,
        upstream=upstream,
        profile=profile,
        profile_name=args.profile if not settings else f"{args.profile}+flags",
        link=LINK,
        source_addresses=tuple(sources),
        pcap=args.pcap,
        seed=args.seed,
        upstream_timeout=args.upstream_timeout,
        session_timeout=args.session_timeout,
        max_sessions=args.max_sessions,
    )


def timeline_from_args(args: argparse.Namespace) -> tuple[TimelineEvent, ...]:
    """The schedule flags as a timeline of the event vocabulary (applied by the driver)."""
    check_seconds(args.first_rebind, "--first-rebind", zero=True)
    check_seconds(args.rebind_every, "--rebind-every", zero=False)
    events: list[TimelineEvent] = []
    if args.first_rebind is not None or args.rebind_every is not None:
        first = args.first_rebind if args.first_rebind is not None else args.rebind_every
        # With --rebind-addr, each rebinding also moves to the next source address.
        events.append(NatRebind(first, "proxy", bool(args.rebind_addr), args.rebind_every))
    for at, name in _pairs(args.link, "--link", "PROFILE"):
        profile_named(name)
        events.append(LinkChange(at, LINK, profile=name))
    for at, length in _pairs(args.blackhole, "--blackhole", "SECONDS"):
        try:
            seconds = blackhole_seconds(length)
        except InputError:
            raise InputError(
                f"--blackhole {at:g}:{length}: the length must be seconds > 0"
            ) from None
        events.append(Blackhole(at, LINK, seconds))
    return tuple(events)


def run(args: argparse.Namespace) -> int:
    if args.action:
        return _ctl(args)
    config = config_from_args(args)
    timeline = timeline_from_args(args)
    control = control_address(args.control, off=True)
    try:
        stopped_by = asyncio.run(_serve(config, timeline, control, args.duration))
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were in place
        stopped_by = "SIGINT"
    if stopped_by is not None:
        print(f"proxy stopped ({stopped_by})", flush=True)
    return 0


def _ctl(args: argparse.Namespace) -> int:
    if args.action[0] != "ctl" or len(args.action) < 2:
        raise InputError(
            "use `quicmig proxy [options]` to run a proxy, or `quicmig proxy ctl ACTION` with "
            "ACTION rebind | rebind-addr | link-change PROFILE | blackhole SECONDS | status"
        )
    control = control_address(args.control, off=False)
    assert control is not None
    print(send_request(control, " ".join(args.action[1:])))
    return 0


def _log(line: str) -> None:
    print(line, flush=True)


async def _serve(
    config: ProxyConfig,
    timeline: tuple[TimelineEvent, ...],
    control: tuple[str, int] | None,
    duration: float | None,
) -> str | None:
    """Run the proxy until `duration`, a stop signal (its name is returned) or a failure.

    Everything is bound before the pcap is opened and before anything is printed, so a
    startup failure (a port in use) leaves no file and no `proxy done` line behind.
    """
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[str] = loop.create_future()
    handled: list[signal.Signals] = []
    if sys.platform != "win32":
        # SIGTERM (kill, systemd, a test harness) ends the run like Ctrl-C: the default action
        # would kill the process with the pcap's last buffered packets unwritten.
        for number in STOP_SIGNALS:  # a clean stop: pcap closed whole, counters, exit 0
            loop.add_signal_handler(number, _stop, stop, number.name)
            handled.append(number)
    proxy = Proxy(config, log=_log)
    driver = ProxyDriver(LINK, config.profile, config.seed, proxy=proxy)
    server = ControlServer(driver)
    try:
        try:
            where = await server.open(control) if control is not None else None
            await proxy.start()
        except BaseException:
            await server.aclose()
            await proxy.aclose()
            raise
        try:
            return await _forward(config, driver, timeline, where, stop, duration)
        finally:
            await server.aclose()
            await proxy.aclose()
            _log(_done_line(proxy))
    finally:
        for number in handled:
            loop.remove_signal_handler(number)


def _stop(stop: asyncio.Future[str], name: str) -> None:
    if not stop.done():
        stop.set_result(name)


async def _forward(
    config: ProxyConfig,
    driver: ProxyDriver,
    timeline: tuple[TimelineEvent, ...],
    where: Address | None,
    stop: asyncio.Future[str],
    duration: float | None,
) -> str | None:
    loop = asyncio.get_running_loop()
    proxy = driver.proxy
    assert proxy is not None
    _log(
        f"quicmig proxy: {format_address(proxy.local)} → "
        f"{format_address(config.upstream)}, profile {config.profile_name} "
        f"({describe(config.profile)})"
        + (f"; control on {format_address(where)}" if where else "")
        + (f"; pcap {config.pcap}" if config.pcap else "")
    )
    rebind = NatRebind(0.0, "proxy", new_address=len(config.source_addresses) > 1)
    if sys.platform != "win32":
        loop.add_signal_handler(
            signal.SIGUSR1, lambda: asyncio.ensure_future(driver.apply(rebind, proxy.now()))
        )
    waiter = asyncio.ensure_future(proxy.wait())
    # The schedule: made as it is needed (with no --duration, a periodic one has no end).
    events = timed_events(timeline, duration if duration is not None else math.inf)
    schedule = asyncio.ensure_future(apply_on_time(events, driver, proxy.now, lambda c: None))
    deadline = None if duration is None else loop.time() + duration
    try:
        while True:
            watched: set[asyncio.Future[Any]] = {waiter, stop}
            if not schedule.done():
                watched.add(schedule)
            left = None if deadline is None else max(0.0, deadline - loop.time())
            done, _ = await asyncio.wait(watched, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                return None  # --duration reached
            for task in (waiter, schedule):
                if task in done:
                    task.result()  # a fatal error is raised here (QuicmigError)
            if stop in done:
                return stop.result()
    finally:
        for task in (waiter, schedule):
            task.cancel()
        await asyncio.gather(waiter, schedule, return_exceptions=True)
        if sys.platform != "win32":
            loop.remove_signal_handler(signal.SIGUSR1)


def _done_line(proxy: Proxy) -> str:
    stats = proxy.stats
    return (
        f"proxy done: {stats.from_client} datagrams from the client, "
        f"{stats.to_upstream} to the upstream, {stats.from_upstream} back, "
        f"{stats.to_client} to the client; lost {proxy.up.stats.lost}+"
        f"{proxy.down.stats.lost}, queue drops {proxy.up.stats.queue_drops}+"
        f"{proxy.down.stats.queue_drops}, blackholed {stats.blackholed}; sessions opened "
        f"{stats.sessions_opened}, expired {stats.sessions_expired}, evicted "
        f"{stats.sessions_evicted}, sources refused {stats.refused}"
    )
