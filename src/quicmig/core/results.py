"""The result of one run: one schema for every backend, typed until `to_dict()`.

`quicmig.result/2` (documented in docs/results.md). Changes from /1: each check has a
`state` (passed, failed, unsupported, not_applicable) and the `rules` it counts under;
`verdicts` gives the strict (quic-interop-runner) and the RFC 9000 verdict, `verdict` is the
strict one; `stack` and `transport` name what ran; `stats.run_seconds` is the run's length
(virtual time in the simulator, real time elsewhere) where /1 said `simulated_seconds`;
network changes have a `kind` from the event vocabulary; migrations count the bytes the
server sent to and received from the new address before validating it.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quicmig.core.datagram import Address, format_address, parse_address
from quicmig.errors import InputError, QuicmigError
from quicmig.model.events import EventKind
from quicmig.model.verdicts import CheckState, MigrationKind, Rules, Verdict

if TYPE_CHECKING:
    from quicmig.core.packetlog import PacketLog

SCHEMA = "quicmig.result/2"
RUNS_SCHEMA = "quicmig.results/2"  # several results in one file (`quicmig run all --json`)
BOTH = (Rules.STRICT, Rules.RFC9000)


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    state: CheckState
    detail: str
    rules: tuple[Rules, ...] = BOTH  # the verdicts this check counts in

    @classmethod
    def of(cls, name: str, passed: bool, detail: str, rules: tuple[Rules, ...] = BOTH) -> Check:
        return cls(name, CheckState.PASSED if passed else CheckState.FAILED, detail, rules)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state.value,
            "detail": self.detail,
            "rules": [r.value for r in self.rules],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Check:
        return cls(
            data["name"],
            CheckState(data["state"]),
            data.get("detail", ""),
            tuple(Rules(r) for r in data.get("rules", [r.value for r in BOTH])),
        )


@dataclass(frozen=True, slots=True)
class NetworkChange:
    """A change a backend really made to the network (or the client made), when it took effect."""

    at: float  # seconds
    kind: EventKind
    detail: str
    active: bool  # the client knew it moved, so it must use a new connection ID
    # Where the server should see the client from now on, as far as the network knows: the
    # IP (and port, where it is known before the next packet); checked against observation.
    expect_ip: str | None = None
    expect_port: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "kind": self.kind.value,
            "detail": self.detail,
            "active": self.active,
            "expect_ip": self.expect_ip,
            "expect_port": self.expect_port,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetworkChange:
        return cls(
            data["at"],
            EventKind(data["kind"]),
            data.get("detail", ""),
            bool(data.get("active", False)),
            data.get("expect_ip"),
            data.get("expect_port"),
        )


@dataclass(frozen=True, slots=True)
class MigrationResult:
    observed: MigrationKind
    old_peer: Address
    new_peer: Address
    network_change_at: float | None  # the latest network change before detection
    network_change: EventKind | None
    detected_at: float  # first non-probing packet from the new address reached the server
    detection_delay: float | None
    first_packet_had_challenge: bool | None  # None: no packet to the new address was seen
    challenge_sent_at: float | None
    validated_at: float | None  # PATH_RESPONSE received
    validation_rtt: float | None
    challenges: int
    cid_changed: bool  # the client's packets on the new path carry a new DCID
    server_cid_changed: bool | None  # the server's packets to the new path carry a new DCID
    interruption: float | None  # longest gap in application data delivery around it
    lost_packets: int  # declared lost by the server while this migration was the latest
    retransmitted_bytes: int
    sent_before_validation: int = 0  # bytes to the new address before it was validated
    received_before_validation: int = 0  # bytes from it, in that time
    sent_to_old_after: int = 0  # packets the server still sent to the old address after it
    path_known: bool = False  # validated before: RFC 9000 section 9.3 lets the server skip it

    def to_dict(self) -> dict[str, Any]:
        return {
            "observed": self.observed.value,
            "old_peer": format_address(self.old_peer),
            "new_peer": format_address(self.new_peer),
            "network_change_at": self.network_change_at,
            "network_change": self.network_change.value if self.network_change else None,
            "detected_at": self.detected_at,
            "detection_delay": self.detection_delay,
            "first_packet_had_challenge": self.first_packet_had_challenge,
            "challenge_sent_at": self.challenge_sent_at,
            "validated_at": self.validated_at,
            "validation_rtt": self.validation_rtt,
            "challenges": self.challenges,
            "cid_changed": self.cid_changed,
            "server_cid_changed": self.server_cid_changed,
            "interruption": self.interruption,
            "lost_packets": self.lost_packets,
            "retransmitted_bytes": self.retransmitted_bytes,
            "sent_before_validation": self.sent_before_validation,
            "received_before_validation": self.received_before_validation,
            "sent_to_old_after": self.sent_to_old_after,
            "path_known": self.path_known,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MigrationResult:
        change = data.get("network_change")
        return cls(
            observed=MigrationKind(data["observed"]),
            old_peer=parse_address(data["old_peer"]),
            new_peer=parse_address(data["new_peer"]),
            network_change_at=data.get("network_change_at"),
            network_change=EventKind(change) if change else None,
            detected_at=data["detected_at"],
            detection_delay=data.get("detection_delay"),
            first_packet_had_challenge=data.get("first_packet_had_challenge"),
            challenge_sent_at=data.get("challenge_sent_at"),
            validated_at=data.get("validated_at"),
            validation_rtt=data.get("validation_rtt"),
            challenges=data.get("challenges", 0),
            cid_changed=bool(data.get("cid_changed")),
            server_cid_changed=data.get("server_cid_changed"),
            interruption=data.get("interruption"),
            lost_packets=data.get("lost_packets", 0),
            retransmitted_bytes=data.get("retransmitted_bytes", 0),
            sent_before_validation=data.get("sent_before_validation", 0),
            received_before_validation=data.get("received_before_validation", 0),
            sent_to_old_after=data.get("sent_to_old_after", 0),
            path_known=data.get("path_known", False),
        )


@dataclass(frozen=True, slots=True)
class Transfer:
    workload: str  # "download" | "messages" | "stream" | "none" (nothing to judge: a capture)
    bytes: int  # application bytes the client received
    expected_bytes: int | None
    intact: bool
    started_at: float | None
    completed_at: float | None
    sha256: str | None  # of what the client received (downloads)
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "bytes": self.bytes,
            "expected_bytes": self.expected_bytes,
            "intact": self.intact,
            "started_at": self.started_at,
            "completed_at": self.completed_at,
            "sha256": self.sha256,
            "detail": self.detail,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Transfer:
        return cls(
            data.get("workload", "none"),
            data.get("bytes", 0),
            data.get("expected_bytes"),
            bool(data.get("intact")),
            data.get("started_at"),
            data.get("completed_at"),
            data.get("sha256"),
            dict(data.get("detail", {})),
        )


NO_TRANSFER = Transfer("none", 0, None, False, None, None, None)


@dataclass(frozen=True, slots=True)
class Series:
    """Time series for the figure, sampled from observed events."""

    delivered: list[tuple[float, int]]  # (seconds, cumulative bytes) at the client
    rtt: list[tuple[float, float]]  # (seconds, smoothed RTT seconds) at the server
    cwnd: list[tuple[float, int]]  # (seconds, bytes) at the server

    def to_dict(self) -> dict[str, Any]:
        return {
            "delivered": [list(p) for p in self.delivered],
            "rtt": [list(p) for p in self.rtt],
            "cwnd": [list(p) for p in self.cwnd],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Series:
        return cls(
            [(float(t), int(v)) for t, v in data.get("delivered", [])],
            [(float(t), float(v)) for t, v in data.get("rtt", [])],
            [(float(t), int(v)) for t, v in data.get("cwnd", [])],
        )


NO_SERIES = Series([], [], [])


@dataclass(frozen=True, slots=True)
class Result:
    scenario: str
    backend: str  # sim | proxy | lab | live | capture
    seed: int
    stack: str  # stock | quicmig | custom (some of quicmig's extensions)
    verdict: Verdict  # under the strict rules (quic-interop-runner's)
    verdicts: dict[Rules, Verdict]
    expected_verdict: Verdict
    reasons: list[str]  # of the strict verdict
    checks: list[Check]
    transfer: Transfer
    migrations: list[MigrationResult]
    cid_rotations: list[float]
    network_changes: list[NetworkChange]
    paths_seen: list[Address]
    stats: dict[str, Any]
    wall: dict[str, float]  # wall-clock measurements: the only fields that vary between runs
    series: Series
    files: dict[str, str] = field(default_factory=dict)
    transport: str = "quic"
    # The packets around each migration (quicmig.core.packetlog), for reports that draw
    # them: only when asked for (`--html`), it is the largest part of a result.
    packets: PacketLog | None = None
    command: str | None = None  # the command line that made it (reports show it)

    @property
    def as_expected(self) -> bool:
        return self.verdict is self.expected_verdict

    def to_dict(self, series: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "schema": SCHEMA,
            "scenario": self.scenario,
            "backend": self.backend,
            "transport": self.transport,
            "seed": self.seed,
            "stack": self.stack,
            "verdict": self.verdict.value,
            "verdicts": {rules.value: v.value for rules, v in self.verdicts.items()},
            "expected_verdict": self.expected_verdict.value,
            "reasons": list(self.reasons),
            "checks": [c.to_dict() for c in self.checks],
            "transfer": self.transfer.to_dict(),
            "migrations": [m.to_dict() for m in self.migrations],
            "cid_rotations": list(self.cid_rotations),
            "network_changes": [c.to_dict() for c in self.network_changes],
            "paths_seen": [format_address(p) for p in self.paths_seen],
            "stats": self.stats,
            "wall": self.wall,
            "files": dict(self.files),
        }
        if series:
            data["series"] = self.series.to_dict()
        if self.command is not None:
            data["command"] = self.command
        if self.packets is not None:
            data["packets"] = self.packets.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Result:
        """A result as `to_dict()` wrote it (KeyError/ValueError on a malformed one)."""
        from quicmig.core.packetlog import PacketLog

        return cls(
            scenario=data["scenario"],
            backend=data["backend"],
            seed=data["seed"],
            stack=data.get("stack", "stock"),
            verdict=Verdict(data["verdict"]),
            verdicts={Rules(k): Verdict(v) for k, v in data.get("verdicts", {}).items()},
            expected_verdict=Verdict(data["expected_verdict"]),
            reasons=list(data.get("reasons", [])),
            checks=[Check.from_dict(c) for c in data["checks"]],
            transfer=Transfer.from_dict(data["transfer"]),
            migrations=[MigrationResult.from_dict(m) for m in data["migrations"]],
            cid_rotations=list(data.get("cid_rotations", [])),
            network_changes=[NetworkChange.from_dict(c) for c in data.get("network_changes", [])],
            paths_seen=[parse_address(p) for p in data.get("paths_seen", [])],
            stats=dict(data.get("stats", {})),
            wall=dict(data.get("wall", {})),
            series=Series.from_dict(data["series"]) if "series" in data else NO_SERIES,
            files=dict(data.get("files", {})),
            transport=data.get("transport", "quic"),
            packets=PacketLog.from_dict(data["packets"]) if data.get("packets") else None,
            command=data.get("command"),
        )


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file, so a failure leaves nothing half-written
    (Ctrl-C included: the temporary file goes too)."""
    tmp = path.with_name(path.name + ".part")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise QuicmigError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise


def _writable(directory: Path) -> bool:
    """Can a file be made in `directory`? Tried, not asked: os.access() says yes to root
    everywhere, /proc and read-only mounts included."""
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".quicmig-probe-"):
            return True
    except OSError:
        return False


def check_output_file(path: Path, flag: str) -> None:
    """Refuse an output file that cannot be written, before anything runs or is written
    (InputError): its directory must exist and take a new file, and it is no directory."""
    if path.is_dir():
        raise InputError(f"{flag} {path}: is a directory; give a file name")
    parent = path.parent
    if not parent.is_dir():
        raise InputError(f"{flag} {path}: directory {parent} does not exist; create it first")
    if not _writable(parent):
        raise InputError(f"{flag} {path}: cannot create files in {parent}; choose another")


def check_output_dir(path: Path, flag: str) -> None:
    """Refuse an output directory that could not be made or written to (InputError)."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "exists and is not a directory" if existing == path else f"{existing} is a file"
        raise InputError(f"{flag} {path}: {what}")
    if not _writable(existing):
        raise InputError(f"{flag} {path}: cannot create files in {existing}; choose another")
