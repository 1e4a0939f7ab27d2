"""The results of one run, in one schema for every backend (documented in the README)."""

from __future__ import annotations

import contextlib
import json
import tempfile
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from quicmig.errors import InputError, QuicmigError

SCHEMA = "quicmig.result/1"


class Verdict(Enum):
    PASSED = "passed"
    FAILED = "failed"
    UNSUPPORTED = "unsupported"


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    passed: bool | None  # None: the behaviour is not supported, so it could not be checked
    detail: str


@dataclass(frozen=True, slots=True)
class NetworkChange:
    at: float  # seconds
    event: str  # "nat-rebind", "switch", "address-change", "cid-rotate", ...
    detail: str
    active: bool  # the client knew it moved, so it must use a new connection ID


@dataclass(frozen=True, slots=True)
class MigrationResult:
    observed: str  # "port_change" | "address_change"
    old_peer: str
    new_peer: str
    network_change_at: float | None  # the latest network change before detection
    network_change: str | None
    detected_at: float  # first non-probing packet from the new address reached the server
    detection_delay: float | None
    first_packet_had_challenge: bool | None
    challenge_sent_at: float | None
    validated_at: float | None  # PATH_RESPONSE received
    validation_rtt: float | None
    challenges: int
    cid_changed: bool  # the client's packets on the new path carry a new DCID
    server_cid_changed: bool | None  # the server's packets to the new path carry a new DCID
    interruption: float | None  # longest gap in application data delivery around it
    lost_packets: int  # declared lost by the server while this migration was the latest
    retransmitted_bytes: int


@dataclass(frozen=True, slots=True)
class Transfer:
    workload: str  # "download" | "messages" | "stream"
    bytes: int  # application bytes the client received
    expected_bytes: int | None
    intact: bool
    started_at: float | None
    completed_at: float | None
    sha256: str | None  # of what the client received (downloads)
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Series:
    """Time series for the figure, sampled from observed events."""

    delivered: list[tuple[float, int]]  # (seconds, cumulative bytes) at the client
    rtt: list[tuple[float, float]]  # (seconds, smoothed RTT seconds) at the server
    cwnd: list[tuple[float, int]]  # (seconds, bytes) at the server


@dataclass(frozen=True, slots=True)
class Result:
    scenario: str
    backend: str
    seed: int
    verdict: Verdict
    expected_verdict: str
    reasons: list[str]
    checks: list[Check]
    transfer: Transfer
    migrations: list[MigrationResult]
    cid_rotations: list[float]
    network_changes: list[NetworkChange]
    paths_seen: list[str]
    stats: dict[str, Any]
    wall: dict[str, float]  # wall-clock measurements: the only fields that vary between runs
    series: Series
    files: dict[str, str] = field(default_factory=dict)

    @property
    def as_expected(self) -> bool:
        return self.verdict.value == self.expected_verdict

    def to_dict(self, series: bool = False) -> dict[str, Any]:
        data = asdict(self)
        data["verdict"] = self.verdict.value
        if not series:
            del data["series"]
        return {"schema": SCHEMA, **data}

    def write_json(self, path: Path) -> None:
        write_atomically(path, json.dumps(self.to_dict(), indent=2) + "\n")


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
