"""One lab run: build the network, start the live server and the client inside it, move the
network under the client mid-transfer, and pair each move with what the server observed.

`run_lab(options)` returns a `LabResult`; everything it created is gone when it returns or
raises (see `LabNetwork`). `on_move` is called after each network move, with the network and
the processes, so that tests can inject a failure in the middle of a run.

The verdict needs both views of the run: each move paired with the server's record of it
(`pair()`: did the kernel's move reach the server's tracker as that move?), and the interop
checks of `quicmig.core.checks` on the same record (`interop_checks()`: did the QUIC stack do
what RFC 9000 and quic-interop-runner ask, e.g. PATH_CHALLENGE in the server's first packet
on the new path?). The second is what `quicmig run` and `quicmig check` judge by; a lab run
that passed on the first alone printed ✅ while `quicmig check` failed its own capture.
"""

from __future__ import annotations

import contextlib
import json
import queue
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from quicmig.core import checks as check_mod
from quicmig.core.results import Check, MigrationResult, check_output_dir
from quicmig.errors import InputError, QuicmigError
from quicmig.lab.network import (
    SERVER_IP,
    SERVER_PORT,
    LabNetwork,
    NetworkMove,
    Process,
    Shaping,
    new_prefix,
    owned,
)
from quicmig.lab.system import Capabilities, detect
from quicmig.live.certs import CertPaths, write
from quicmig.model.scenario import STACKS, Expectation

KINDS = ("nat-rebinding", "network-switch", "ip-change")
EXPECTED = {  # RFC 9000 section 9.3: what the server's tracker must call each move
    "nat-rebinding": "port_change",
    "network-switch": "address_change",
    "ip-change": "address_change",
}
SCHEMA = "quicmig.lab/1"
STARTUP_TIMEOUT = 15.0  # seconds for the server to listen and the client to connect
EVENT_TIMEOUT = 30.0  # seconds without any word from the client before giving up


@dataclass(frozen=True, slots=True)
class LabOptions:
    migrate: tuple[str, ...] = KINDS
    download: int | None = 4_000_000  # bytes; None: messages between the moves
    messages: int = 2  # echoes before, between and after the moves (messages mode)
    rate_mbit: float = 20.0  # toward the client, on the router
    delay_ms: float = 0.0  # one way, each direction (netem only)
    loss_pct: float = 0.0  # each direction (netem only)
    gap: float = 0.2  # seconds without a route during a network switch
    pcap_dir: Path | None = None
    timeout: float = 5.0  # seconds for each request of the client
    stack: str = "stock"  # the server's: stock aioquic, or quicmig's server-side extensions


def parse_kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown or not kinds:
        what = f"unknown kind {', '.join(map(repr, unknown))}" if unknown else "no kind given"
        raise InputError(f"--migrate: {what}; the lab performs {', '.join(KINDS)}")
    return kinds


def validate(options: LabOptions) -> None:
    """Every input error, before anything is created."""
    for kind in options.migrate:
        if kind not in KINDS:
            raise InputError(
                f"--migrate: unknown kind {kind!r}; the lab performs {', '.join(KINDS)}"
            )
    if options.download is not None and not 0 < options.download <= 1_000_000_000:
        raise InputError(f"--download {options.download}: between 1 byte and 1G")
    if options.messages < 1:
        raise InputError(f"--messages {options.messages}: at least 1")
    if not 0 <= options.rate_mbit <= 10_000:
        raise InputError(f"--rate-mbit {options.rate_mbit:g}: between 0 (unlimited) and 10000")
    if not 0 <= options.delay_ms <= 10_000:
        raise InputError(f"--delay-ms {options.delay_ms:g}: between 0 and 10000")
    if not 0 <= options.loss_pct < 100:
        raise InputError(f"--loss-pct {options.loss_pct:g}: between 0 and 100 (exclusive)")
    if not 0 <= options.gap <= 10:
        raise InputError(f"--gap {options.gap:g}: between 0 and 10 seconds")
    if not 0 < options.timeout <= 300:
        raise InputError(f"--timeout {options.timeout:g}: between 0 and 300 seconds")
    if options.stack not in STACKS:
        raise InputError(f"--stack {options.stack!r}: allowed: {', '.join(STACKS)}")
    if options.pcap_dir is not None:
        check_output_dir(options.pcap_dir, "--pcap")


@dataclass(frozen=True, slots=True)
class MoveResult:
    """A network move beside the server's migration record for it."""

    move: NetworkMove
    expected: str  # port_change | address_change
    observed: dict[str, Any] | None
    confirmed: bool
    why: str


@dataclass(slots=True)
class LabResult:
    prefix: str
    capabilities: Capabilities
    options: LabOptions
    moves: list[MoveResult] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)
    download: dict[str, Any] | None = None
    messages: dict[str, Any] | None = None
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0
    checks: list[Check] = field(default_factory=list)

    @property
    def download_intact(self) -> bool | None:
        if self.download is None:
            return None
        sent = self.record.get("sent_sha256", {}).get(str(self.download["stream_id"]))
        return bool(self.download["intact"]) and sent == self.download["sha256"]

    @property
    def passed(self) -> bool:
        # Every view must agree (see the module docstring); an unsupported check (None) is
        # not a pass either.
        return (
            all(m.confirmed for m in self.moves)
            and self.download_intact is not False
            and all(c.passed is True for c in self.checks)
        )

    def to_json(self) -> dict[str, Any]:
        options = asdict(self.options)
        options["pcap_dir"] = str(self.options.pcap_dir) if self.options.pcap_dir else None
        return {
            "schema": SCHEMA,
            "backend": "lab",
            "prefix": self.prefix,
            "verdict": "passed" if self.passed else "failed",
            "capabilities": {
                "netem": self.capabilities.netem,
                "dumpcap": self.capabilities.dumpcap,
                "missing": list(self.capabilities.missing),
            },
            "options": options,
            "checks": [asdict(c) for c in self.checks],
            "moves": [
                {
                    **asdict(m.move),
                    "expected": m.expected,
                    "confirmed": m.confirmed,
                    "why": m.why,
                    "observed": m.observed,
                }
                for m in self.moves
            ],
            "download": None
            if self.download is None
            else {**self.download, "server_confirmed_intact": self.download_intact},
            "messages": self.messages,
            "server_record": self.record,
            "files": self.files,
            "seconds": self.seconds,
        }


def pair(moves: Sequence[NetworkMove], record: dict[str, Any]) -> list[MoveResult]:
    """Each move with the server's migration records, in order.

    Confirmed when the server saw a migration to the NAT's new public address (for a
    rebinding: a port in the new range), classified as expected, and validated it.
    """
    migrations = list(record.get("migrations", []))
    validated = {str(migrations[0]["old_peer"])} if migrations else set()  # the handshake's
    out = []
    for move in moves:
        expected = EXPECTED[move.kind]
        seen = migrations.pop(0) if migrations else None
        if seen is None:
            out.append(MoveResult(move, expected, None, False, "the server saw no migration"))
            continue
        problems = []
        new_peer = str(seen["new_peer"])
        host, _, port = new_peer.rpartition(":")
        if host != move.new_public:
            problems.append(f"server saw {host}, the NAT maps the client to {move.new_public}")
        low, high = move.port_range
        if move.kind == "nat-rebinding" and not low <= int(port) <= high:
            problems.append(f"port {port} outside the NAT's new range {low}-{high}")
        if seen["observed"] != expected:
            problems.append(f"classified {seen['observed']}, expected {expected}")
        note = ""
        if seen["validated_at"] is not None:
            validated.add(new_peer)
        elif new_peer in validated:
            # Back to an address validated before (the NAT kept its mapping): aioquic does not
            # validate it again, as RFC 9000 section 9.3 allows.
            note = f"back to {new_peer}, validated earlier: no new PATH_CHALLENGE"
        else:
            problems.append("the new path was never validated")
        out.append(
            MoveResult(
                move, expected, seen, not problems, "; ".join(problems) if problems else note
            )
        )
    return out


def interop_checks(kinds: Sequence[str], record: dict[str, Any]) -> list[Check]:
    """`quicmig.core.checks.migration_checks` on the server's record of the connection.

    The moves are passive (the client never knew, RFC 9000 section 9.3), so no network change
    is active and the new-DCID check does not apply. The record counts every PATH_CHALLENGE
    the server sent, probes of the old path (`--stack quicmig`) included; the interop check
    asks only about those in its first packet on each new path, which the record counts
    apart (`first_packet_challenges_sent` / `_answered`).
    """
    names = {f.name for f in fields(MigrationResult)}
    migrations = [
        MigrationResult(**{k: v for k, v in m.items() if k in names})
        for m in record.get("migrations", [])
    ]
    sent = record["first_packet_challenges_sent"]
    answered = record["first_packet_challenges_answered"]
    return check_mod.migration_checks(
        Expectation(migrations=tuple(EXPECTED[kind] for kind in kinds)),
        migrations,
        [],
        len(record.get("paths_seen", [])),
        int(sent),
        int(answered),
        len(record.get("cid_rotations", [])),
    )


Log = Callable[[str], None]
OnMove = Callable[[LabNetwork, NetworkMove, dict[str, Process]], None]


def run_lab(
    options: LabOptions,
    *,
    log: Log = print,
    on_move: OnMove | None = None,
    capabilities: Capabilities | None = None,
    prefix: str | None = None,
) -> LabResult:
    """Build, run, tear down. Raises QuicmigError when the run itself breaks."""
    validate(options)
    prefix = prefix or new_prefix()
    with owned(prefix):  # from before the probe: `quicmig lab clean` leaves this run alone
        caps = capabilities or detect(f"{prefix}-probe")
        if capabilities is None:
            for line in caps.missing:
                log(f"⚠️  {line}")
        if options.pcap_dir is not None and not caps.dumpcap:
            raise QuicmigError("--pcap needs dumpcap (package tshark): apt-get install -y tshark")
        started = time.monotonic()
        result = LabResult(prefix, caps, options)
        shaping = Shaping(options.rate_mbit, options.delay_ms, options.loss_pct)
        with tempfile.TemporaryDirectory(prefix=f"{prefix}-") as tmp:
            workdir = Path(tmp)
            certs = CertPaths.in_dir(workdir)
            write(certs)
            with LabNetwork(prefix, shaping, caps, workdir) as net:
                log(
                    f"🧪 Lab {prefix}: namespaces {net.client_ns}, {net.router_ns}, "
                    f"{net.server_ns}; NAT table {net.table}; server stack {options.stack}"
                )
                if options.pcap_dir is not None:
                    captures = net.start_captures(options.pcap_dir.resolve())
                    result.files += [str(path) for path in captures]
                _session(net, options, certs, result, log, on_move)
    result.seconds = time.monotonic() - started
    return result


def _session(
    net: LabNetwork,
    options: LabOptions,
    certs: CertPaths,
    result: LabResult,
    log: Log,
    on_move: OnMove | None,
) -> None:
    server = net.spawn(
        net.server_ns,
        [
            sys.executable, "-m", "quicmig", "server", "--host", SERVER_IP,
            "--port", str(SERVER_PORT), "--cert", str(certs.cert), "--key", str(certs.key),
            "--stack", options.stack,
        ],
    )  # fmt: skip
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not any("Starting QUIC server" in line for line in server.stdout):
        if server.popen.poll() is not None or time.monotonic() > deadline:
            raise QuicmigError(f"the server did not start in {net.server_ns}: {server.tail()}")
        time.sleep(0.02)
    log(f"🚀 Server listening on {SERVER_IP}:{SERVER_PORT} in {net.server_ns}")
    count = len(options.migrate)
    marks = [(index + 1) / (count + 1) for index in range(count)]
    keylog = options.pcap_dir / "keys.log" if options.pcap_dir is not None else None
    args = [
        sys.executable, "-m", "quicmig.lab.agent", "--server", f"{SERVER_IP}:{SERVER_PORT}",
        "--ca", str(certs.ca), "--timeout", str(options.timeout),
        "--messages", str(options.messages), "--marks", ",".join(f"{m:.4f}" for m in marks),
    ]  # fmt: skip
    if options.download is not None:
        args += ["--download", str(options.download)]
    if keylog is not None:
        args += ["--secrets-log", str(keylog.resolve())]
        result.files.append(str(keylog.resolve()))
    events: queue.Queue[dict[str, Any]] = queue.Queue()
    client = net.spawn(net.client_ns, args, stdin=True)

    def on_line(line: str) -> None:
        with contextlib.suppress(ValueError):  # not an event: ignore
            events.put(json.loads(line))

    client.on_line(on_line)
    processes = {"server": server, "client": client}
    done = 0

    def move(index: int) -> None:
        nonlocal done
        kind = options.migrate[index]
        network_move = net.move(kind, options.gap)
        done += 1
        log(f"🔀 {kind} at {network_move.at:.2f} s: {network_move.detail}")
        if on_move is not None:
            on_move(net, network_move, processes)

    last = time.monotonic()
    while True:
        try:
            event = events.get(timeout=0.2)
        except queue.Empty:
            if client.popen.poll() is not None:
                time.sleep(0.1)  # let the reader thread deliver the last lines
                if events.empty():
                    raise QuicmigError(
                        f"the client exited ({client.popen.returncode}) before reporting: "
                        f"{client.tail()}"
                    ) from None
            elif server.popen.poll() is not None:
                raise QuicmigError(
                    f"the server exited ({server.popen.returncode}) mid-run: {server.tail()}"
                ) from None
            elif time.monotonic() - last > EVENT_TIMEOUT:
                raise QuicmigError(f"no word from the client for {EVENT_TIMEOUT:g} s") from None
            continue
        last = time.monotonic()
        name = event.get("event")
        if name == "connected":
            log(f"✅ Client connected from {net.client_ns} ({net.public} after NAT)")
        elif name == "mark":
            move(int(event["index"]))
            if options.download is None:
                client.write("go")
        elif name == "downloaded":
            result.download = {k: v for k, v in event.items() if k != "event"}
            log(f"📦 Downloaded {event['received']:,} bytes in {event['seconds']:.2f} s")
        elif name == "messages":
            result.messages = {k: v for k, v in event.items() if k != "event"}
        elif name == "done":
            while done < count:  # the transfer finished first: move anyway, then ask
                move(done)
            client.write(f"record {count}")
        elif name == "record":
            result.record = event["record"]
            break
        elif name == "error":
            raise QuicmigError(f"the client failed: {event['message']}; server: {server.tail(2)}")
    result.moves = pair(net.moves, result.record)
    result.checks = interop_checks(options.migrate, result.record)
