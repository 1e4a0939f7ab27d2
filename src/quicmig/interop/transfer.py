"""One download from a stack's server to a stack's client through quicmig's proxy.

    python -m quicmig.interop.transfer --server ngtcp2 --client qh3 --size 1M [--rebind 0.33]

The server serves a file of `size` bytes (quicmig's content(size, BYTES_SEED): the bytes
`quicmig server` serves as /bytes/N, so every server serves the same body); the proxy
(`quicmig.proxy.core.Proxy`) sits between the two and captures both legs; the client
downloads the file. A rebinding (`rebind_after`, a fraction of the body) gives the client's
mapping a new source port mid-transfer; an active migration (`migrate_at_ms`) asks the client
to move by itself. Everything of the run lands in one folder: the capture, each side's key
log and a merged one, each endpoint's log and qlogs, the downloaded file.

This is the groundwork for the interop matrix: it proves a pair of stacks works and keeps the
evidence; judging a run is the shared pipeline's job (the tracker fed from the capture).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from quicmig.core.app import content
from quicmig.core.datagram import Address
from quicmig.errors import InputError, QuicmigError
from quicmig.interop.process import (
    CAPTURE_START,
    Endpoint,
    EndpointError,
    EndpointExit,
    free_port,
)
from quicmig.interop.stacks import (
    ClientSpec,
    ServerSpec,
    Stack,
    command_line,
    load_stacks,
    missing,
    read_version,
    render,
    resolve_program,
)
from quicmig.live.certs import CertPaths, write
from quicmig.live.server import BYTES_SEED
from quicmig.live.stop import run_stoppable
from quicmig.model.topology import PROFILES
from quicmig.proxy.core import Proxy, ProxyConfig, ProxyEvent

SERVER_NAME = "localhost"  # the name our certificate carries (and caddy needs an SNI)
STARTUP = 15.0  # seconds for a server to bind its port
DEFAULT_TIMEOUT = 30.0  # seconds for the client's whole download
DATAGRAM_BODY = 1200  # bytes of body per datagram, roughly: for a rebinding's progress point
WATCH = 0.01  # seconds between looks at the proxy's counters
LOCAL_ADDRESSES = ("127.0.0.1", "127.0.0.2")  # a client on loopback may move between these


@dataclass(frozen=True, slots=True)
class Plan:
    """What to run: a server stack, a client stack, a body size and the network's events."""

    server: Stack
    client: Stack
    size: int  # bytes
    folder: Path  # everything of this run goes here (created)
    certs: CertPaths
    rebind_after: float | None = None  # fraction of the body through the proxy, then rebind
    migrate_at_ms: int | None = None  # the client migrates by itself this long after its start
    delay: float = 0.0  # seconds, one way, each direction of the proxy
    rate: float | None = None  # bits per second through the proxy; None: unlimited
    queue: int = 1000  # packets held behind the rate limit
    timeout: float = DEFAULT_TIMEOUT  # seconds for the client
    host: str = "127.0.0.1"
    lo_capture: bool = False  # also capture the server's port on lo with dumpcap (root)
    server_options: tuple[str, ...] = ()  # a capability's arguments (e.g. preferred_address)
    values: Mapping[str, str] = field(default_factory=dict)  # extra placeholder values


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a transfer left: the body's hashes, both exits, and where the evidence is."""

    server: str
    client: str
    size: int
    expected_sha256: str
    received_sha256: str | None  # whole, or the prefix a client prints
    received_bytes: int | None  # None: the client does not say
    server_address: Address
    proxy_address: Address
    server_exit: EndpointExit
    client_exit: EndpointExit
    proxy_events: tuple[ProxyEvent, ...]
    seconds: float
    folder: Path
    pcap: Path
    keylog: Path  # both sides' secrets
    lo_pcap: Path | None
    versions: tuple[tuple[str, str], ...]  # (role, version)

    @property
    def intact(self) -> bool:
        if self.received_sha256 is None or len(self.received_sha256) < 16:
            return False
        return self.expected_sha256.startswith(self.received_sha256) and (
            self.received_bytes is None or self.received_bytes == self.size
        )

    def describe(self) -> str:
        got = "nothing" if self.received_sha256 is None else self.received_sha256[:16]
        return (
            f"{self.server} -> {self.client}: {self.size:,} bytes, "
            f"{'intact' if self.intact else 'NOT intact'} (SHA-256 {got}..., expected "
            f"{self.expected_sha256[:16]}...) in {self.seconds:.2f} s; client "
            f"{self.client_exit.status()}; evidence in {self.folder}"
        )


def spki_hash(cert: Path) -> str:
    """base64 SHA-256 of the certificate's SubjectPublicKeyInfo (Chromium's SPKI list)."""
    key = x509.load_pem_x509_certificate(cert.read_bytes()).public_key()
    der = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def file_name(size: int) -> str:
    return f"file-{size}.bin"  # .bin: application/octet-stream, a download for Chromium


def environment(env: tuple[tuple[str, str], ...], values: Mapping[str, str]) -> dict[str, str]:
    out = {key: value for key, value in os.environ.items() if key != "SSLKEYLOGFILE"}
    out.update({key: render(template, values) for key, template in env})
    return out


def write_files(files: tuple[tuple[str, str], ...], values: Mapping[str, str], where: Path) -> None:
    for name, template in files:
        (where / name).write_text(render(template, values, json_strings=name.endswith(".json")))


def check_pair(server: Stack, client: Stack) -> tuple[ServerSpec, ClientSpec]:
    """The two roles, or InputError: a role the stack lacks, a protocol the server does not
    speak, or a program that is not installed (naming the package)."""
    if server.server is None:
        raise InputError(f"stack {server.name} has no server (roles: {', '.join(server.roles)})")
    if client.client is None:
        raise InputError(f"stack {client.name} has no client (roles: {', '.join(client.roles)})")
    if client.client.protocol not in server.server.protocols:
        raise InputError(
            f"{client.name}'s client speaks {client.client.protocol}; {server.name}'s server "
            f"speaks {', '.join(server.server.protocols)}"
        )
    for stack, role in ((server, "server"), (client, "client")):
        line = missing(stack, role)
        if line is not None:
            raise InputError(line)
    return server.server, client.client


def folders(root: Path) -> dict[str, Path]:
    names = {
        "server": root / "server",
        "docroot": root / "server" / "docroot",
        "server_qlog": root / "server" / "qlog",
        "client": root / "client",
        "download": root / "client" / "download",
        "client_qlog": root / "client" / "qlog",
    }
    for path in names.values():
        path.mkdir(parents=True, exist_ok=True)
    return names


async def run_transfer(plan: Plan) -> Outcome:
    """Start the server, the proxy and the client; return once the client is done (or its
    timeout passed) and everything is stopped."""
    server_spec, client_spec = check_pair(plan.server, plan.client)
    if plan.migrate_at_ms is not None and client_spec.active_migration is None:
        raise InputError(f"{plan.client.name}'s client cannot migrate by itself")
    dirs = folders(plan.folder)
    body = content(plan.size, BYTES_SEED)
    seed = client_spec.content_seed
    expected = hashlib.sha256(body if seed is None else content(plan.size, seed)).hexdigest()
    name = file_name(plan.size)
    (dirs["docroot"] / name).write_bytes(body)
    server_keys, client_keys = plan.folder / "server.keys", plan.folder / "client.keys"
    pcap = plan.folder / "proxy.pcap"
    common = {
        "python": sys.executable,
        "server_name": SERVER_NAME,
        "cert": str(plan.certs.cert),
        "key": str(plan.certs.key),
        "ca": str(plan.certs.ca),
        "size": str(plan.size),
        "file": name,
        "timeout": str(max(1, round(plan.timeout))),
        "local_addresses": ",".join(LOCAL_ADDRESSES),
        "local_host": LOCAL_ADDRESSES[0],
        **dict(plan.server.values),
        **plan.values,
    }
    port = free_port(plan.host, tcp=server_spec.tcp)
    server_values = {
        **common,
        "program": program_of(plan.server, "server"),
        "workdir": str(dirs["server"]),
        "keylog": str(server_keys),
        "qlog_dir": str(dirs["server_qlog"]),
        "host": plan.host,
        "port": str(port),
        "docroot": str(dirs["docroot"]),
    }
    write_files(server_spec.launch.files, server_values, dirs["server"])
    started = time.monotonic()
    async with contextlib.AsyncExitStack() as stack:
        lo_pcap = None
        if plan.lo_capture:
            lo_pcap = plan.folder / "lo.pcapng"
            await stack.enter_async_context(_dumpcap(port, lo_pcap, plan.folder / "dumpcap.log"))
        server = Endpoint(
            f"{plan.server.name} server",
            command_line(server_spec.launch, server_values, plan.server_options),
            env=environment(server_spec.launch.env, server_values),
            cwd=dirs["server"],
            log=plan.folder / "server.log",
        )
        await stack.enter_async_context(server)
        await server.wait_ready(plan.host, port, STARTUP)
        profile = dataclasses.replace(
            PROFILES["ideal"], delay=plan.delay, rate=plan.rate, queue=plan.queue
        )
        proxy = Proxy(
            ProxyConfig(
                listen=(plan.host, 0), upstream=(plan.host, port), profile=profile, pcap=pcap
            ),
            log=appender(plan.folder / "proxy.log"),
        )
        await stack.enter_async_context(proxy)
        proxy_host, proxy_port = proxy.local
        url_path = render(
            server_spec.path, {"server_name": SERVER_NAME, "size": str(plan.size), "file": name}
        )
        client_values = {
            **common,
            "program": program_of(plan.client, "client"),
            "workdir": str(dirs["client"]),
            "keylog": str(client_keys),
            "qlog_dir": str(dirs["client_qlog"]),
            "host": proxy_host,
            "port": str(proxy_port),
            "url": f"https://{SERVER_NAME}:{proxy_port}{url_path}",
            "spki": spki_hash(plan.certs.cert),
            "download_dir": str(dirs["download"]),
            "migrate_at_ms": str(plan.migrate_at_ms or 0),
        }
        client = Endpoint(
            f"{plan.client.name} client",
            command_line(client_spec.launch, client_values, _client_options(plan, client_spec)),
            env=environment(client_spec.launch.env, client_values),
            cwd=dirs["client"],
            log=plan.folder / "client.log",
        )
        await stack.enter_async_context(client)
        watchers = [asyncio.ensure_future(proxy.wait())]
        if plan.rebind_after is not None:
            threshold = plan.size * plan.rebind_after / DATAGRAM_BODY
            watchers.append(asyncio.ensure_future(_rebind_when(proxy, threshold)))
        try:
            client_exit = await _client_exit(client, plan.timeout, watchers[0])
        finally:
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
        seconds = time.monotonic() - started
        await proxy.aclose()
        server_exit = await server.stop()
    keylog = merge_keys(plan.folder / "keys.log", [server_keys, client_keys])
    received_sha256, received_bytes = received_body(client_spec, dirs["download"], client_exit)
    return Outcome(
        plan.server.name,
        plan.client.name,
        plan.size,
        expected,
        received_sha256,
        received_bytes,
        (plan.host, port),
        (proxy_host, proxy_port),
        server_exit,
        client_exit,
        tuple(proxy.events),
        seconds,
        plan.folder,
        pcap,
        keylog,
        lo_pcap,
        (
            ("server", read_version(server_spec.launch)),
            ("client", read_version(client_spec.launch)),
        ),
    )


def _client_options(plan: Plan, spec: ClientSpec) -> tuple[str, ...]:
    if plan.migrate_at_ms is None:
        return ()
    return spec.active_migration or ()


def program_of(stack: Stack, role: str) -> str:
    program = resolve_program(stack.spec(role).launch)
    assert program is not None  # check_pair() refused missing programs
    return program


def appender(path: Path) -> Callable[[str], None]:
    def log(line: str) -> None:
        with path.open("a") as out:
            out.write(line + "\n")

    return log


async def _rebind_when(proxy: Proxy, datagrams_to_client: float) -> None:
    while proxy.stats.to_client < datagrams_to_client:
        await asyncio.sleep(WATCH)
    await proxy.rebind(new_address=False)


async def _client_exit(
    client: Endpoint, timeout: float, proxy_failed: asyncio.Future[None]
) -> EndpointExit:
    waiting = asyncio.ensure_future(client.wait(timeout))
    either: set[asyncio.Future[Any]] = {waiting, proxy_failed}
    done, _ = await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    if waiting in done:
        return waiting.result()
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    exc = proxy_failed.exception()
    await client.stop()
    raise QuicmigError(f"the proxy stopped: {exc}")


@contextlib.asynccontextmanager
async def _dumpcap(port: int, out: Path, log: Path) -> AsyncIterator[None]:
    exe = shutil.which("dumpcap")
    if exe is None:
        raise InputError("lo capture: dumpcap is not installed: apt-get install tshark")
    capture = Endpoint(
        "dumpcap", [exe, "-q", "-i", "lo", "-f", f"udp port {port}", "-w", str(out)], log=log
    )
    async with capture:
        try:
            await capture.wait_capturing(out, CAPTURE_START)
        except EndpointError as exc:
            raise EndpointError(f"lo capture failed: {exc}") from None
        yield


def merge_keys(out: Path, logs: list[Path]) -> Path:
    lines: dict[str, None] = {}
    for path in logs:
        if path.is_file():
            for line in path.read_text(errors="replace").splitlines():
                if line.strip() and not line.startswith("#"):
                    lines[line] = None
    out.write_text("".join(line + "\n" for line in lines))
    return out


def received_body(
    spec: ClientSpec, download: Path, exit: EndpointExit
) -> tuple[str | None, int | None]:
    if spec.body == "download_dir":
        files = [
            p for p in download.iterdir() if p.is_file() and not p.name.endswith(".crdownload")
        ]
        if len(files) != 1:
            return None, None
        data = files[0].read_bytes()
        return hashlib.sha256(data).hexdigest(), len(data)
    assert spec.sha256_pattern is not None
    text = exit.log.read_text(errors="replace") if exit.log.is_file() else ""
    matches = list(re.finditer(spec.sha256_pattern, text))
    if not matches:
        return None, None
    last = matches[-1]
    count = last.groupdict().get("bytes")
    return last["sha256"], int(count.replace(",", "")) if count else None


# --- command line (for trying a pair by hand) ----------------------------------------------


def parse_size(text: str) -> int:
    units = {"": 1, "K": 1000, "M": 1000_000}
    match = re.fullmatch(r"(\d+)([KM]?)", text.strip().upper())
    if match is None:
        raise InputError(f"--size {text!r}: expected bytes such as 1000000, 500K or 10M")
    return int(match[1]) * units[match[2]]


async def _main(args: argparse.Namespace) -> int:
    stacks = load_stacks(args.stacks_dir)
    for wanted in (args.server, args.client):
        if wanted not in stacks:
            raise InputError(f"unknown stack {wanted!r}; known: {', '.join(stacks)}")
    folder = args.out or Path(tempfile.mkdtemp(prefix="quicmig-transfer-"))
    certs = CertPaths.in_dir(folder / "certs")
    if not certs.cert.is_file():
        (folder / "certs").mkdir(parents=True, exist_ok=True)
        write(certs)
    plan = Plan(
        stacks[args.server],
        stacks[args.client],
        parse_size(args.size),
        folder,
        certs,
        rebind_after=args.rebind,
        migrate_at_ms=args.migrate_at_ms,
        delay=args.delay_ms / 1000,
        rate=args.rate_mbit * 1e6 if args.rate_mbit else None,
        queue=args.queue,
        timeout=args.timeout,
        lo_capture=args.lo_capture,
    )
    outcome = await run_transfer(plan)
    print(outcome.describe())
    if args.json:
        from quicmig.interop.wire import summarize

        print(json.dumps(summarize(outcome), indent=2))
    return 0 if outcome.intact else 1


def main(argv: list[str] | None = None) -> int:
    top = argparse.ArgumentParser(prog="python -m quicmig.interop.transfer")
    top.add_argument("--server", required=True)
    top.add_argument("--client", required=True)
    top.add_argument("--size", default="1M")
    top.add_argument("--rebind", type=float, help="rebind after this fraction of the body")
    top.add_argument("--migrate-at-ms", type=int, help="client migrates by itself then")
    top.add_argument("--delay-ms", type=float, default=0.0)
    top.add_argument("--rate-mbit", type=float)
    top.add_argument("--queue", type=int, default=1000)
    top.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    top.add_argument("--lo-capture", action="store_true", help="also capture on lo (root)")
    top.add_argument("--stacks-dir", type=Path)
    top.add_argument("--out", type=Path)
    top.add_argument("--json", action="store_true", help="print what the capture shows")
    args = top.parse_args(argv)
    try:
        return run_stoppable(_main(args))
    except KeyboardInterrupt:
        return 130
    except QuicmigError as exc:
        print(f"transfer: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
