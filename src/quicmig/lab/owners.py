"""Which lab names belong to which run, and removing what runs left behind (`clean()`).

Every name a lab run creates (namespaces, TUN devices, nftables tables) starts with its
prefix, `qm` + six hex digits, then `-` or `_`. A run owns its prefix through an owner file,
`/run/quicmig/PREFIX.pid` (its PID and start time), written before anything is created and
removed last (`owned()`). `clean()` removes what runs killed with SIGKILL left behind: only
names of that shape, and only of prefixes whose owner is gone; a run still going is skipped.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from quicmig.errors import QuicmigError
from quicmig.lab.system import run

NAME = re.compile(r"^qm[0-9a-f]{6}[-_]")  # every name a lab run creates starts like this
PREFIX = re.compile(r"qm[0-9a-f]{6}")  # and this is its run's prefix
OWNER_DIR = Path("/run/quicmig")  # <prefix>.pid: the run that owns the prefix (tmpfs: no reboot)
STOP_TIMEOUT = 3.0  # seconds to wait for the processes in a namespace to die


def new_prefix() -> str:
    """A fresh per-run prefix: `qm` + six random hex digits."""
    return f"qm{secrets.token_hex(3)}"


def owner_file(prefix: str) -> Path:
    return OWNER_DIR / f"{prefix}.pid"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # the name (field 2) may hold spaces
    return fields[19] if len(fields) > 19 else None


def claim(prefix: str) -> None:
    """Write the owner file of `prefix`: this process's PID and start time.

    The start time guards against PID reuse: a dead run whose PID now belongs to another
    process must not look alive to `clean()`.
    """
    pid = os.getpid()
    try:
        OWNER_DIR.mkdir(parents=True, exist_ok=True)
        path = owner_file(prefix)
        part = path.with_name(f"{path.name}.{pid}.part")
        part.write_text(f"{pid} {_start_time(pid) or '-'}\n")
        part.replace(path)  # atomic: `clean()` never reads half a file
    except OSError as exc:
        raise QuicmigError(f"cannot write the lab's owner file in {OWNER_DIR}: {exc}") from None


def release(prefix: str) -> None:
    with contextlib.suppress(OSError):
        owner_file(prefix).unlink(missing_ok=True)


@contextlib.contextmanager
def owned(prefix: str) -> Iterator[None]:
    """The run's owner file exists for the whole block; `clean()` leaves the prefix alone."""
    claim(prefix)
    try:
        yield
    finally:
        release(prefix)


def owner(prefix: str) -> int | None:
    """The PID of the live run that owns `prefix`, or None (no owner file, or its run is gone)."""
    try:
        pid_text, _, start = owner_file(prefix).read_text().strip().partition(" ")
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # it exists, as another user's process
    if start not in ("", "-") and _start_time(pid) not in (None, start):
        return None  # the PID was reused: the run that wrote the file is gone
    return pid


def owner_prefixes() -> list[str]:
    """Prefixes that have an owner file, of live runs or dead ones."""
    try:
        names = [path.name for path in OWNER_DIR.iterdir()]
    except OSError:
        return []
    return sorted(
        name.removesuffix(".pid")
        for name in names
        if name.endswith(".pid") and NAME.match(name.removesuffix(".pid") + "-")
    )


def delete_namespace(namespace: str) -> None:
    """Kill whatever still runs inside, then delete the namespace (its devices go with it)."""
    pids = run(["ip", "netns", "pids", namespace], check=False).split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError, PermissionError):
            os.kill(int(pid), signal.SIGKILL)
    deadline = time.monotonic() + STOP_TIMEOUT
    while pids and time.monotonic() < deadline:
        pids = run(["ip", "netns", "pids", namespace], check=False).split()
        if pids:
            time.sleep(0.02)
    run(["ip", "netns", "delete", namespace], check=False)


def namespaces() -> list[str]:
    return [line.split()[0] for line in run(["ip", "netns", "list"]).splitlines() if line.strip()]


def leftovers(prefix: str | None = None) -> list[str]:
    """Namespaces, links and nftables tables of lab runs (of `prefix`, or of any run) that exist.

    Links and tables are looked for in the caller's namespace; those inside a lab namespace go
    with it.
    """
    match: Callable[[str], bool] = (
        (lambda name: name.startswith(prefix + "-") or name.startswith(prefix + "_"))
        if prefix is not None
        else (lambda name: NAME.match(name) is not None)
    )
    found = [f"namespace {name}" for name in namespaces() if match(name)]
    for line in run(["ip", "-o", "link", "show"]).splitlines():
        parts = line.split(":")
        if len(parts) > 1:
            name = parts[1].strip().split("@")[0]
            if match(name):
                found.append(f"link {name}")
    for line in run(["nft", "list", "tables"], check=False).splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "table" and match(parts[2]):
            found.append(f"table {parts[1]} {parts[2]}")
    return found


def remove(items: Sequence[str]) -> None:
    """Delete items as `leftovers()` names them; failures are found by listing again."""
    for item in items:
        kind, _, name = item.partition(" ")
        if kind == "namespace":
            delete_namespace(name)
        elif kind == "link":
            run(["ip", "link", "delete", name], check=False)
        else:
            family, _, table = name.partition(" ")
            run(["nft", "delete", "table", family, table], check=False)


def prefix_of(item: str) -> str:
    """`namespace qm12ab34-client` -> `qm12ab34`."""
    name = item.partition(" ")[2].split(" ")[-1]
    return name[:8]


@dataclass(slots=True)
class Cleanup:
    """What `clean()` did: removed, left alone (their run is going), and could not remove."""

    removed: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # prefix -> PID of its live run
    failed: list[str] = field(default_factory=list)


def clean(prefix: str | None = None) -> Cleanup:
    """Remove the leftovers of runs that are gone (or all of `prefix`'s, whoever owns it).

    Without `prefix`, every lab name is considered, and a prefix whose owner file names a
    live process is skipped. Afterwards the names are listed again: `failed` is what is still
    there (the deletes report nothing themselves). Owner files of dead runs go too.
    """
    result = Cleanup()
    found = leftovers(prefix)
    if prefix is not None:
        targets = found
        stale = [prefix] if owner_file(prefix).exists() else []
    else:
        prefixes = {prefix_of(item) for item in found} | set(owner_prefixes())
        live = {p: pid for p in sorted(prefixes) if (pid := owner(p)) is not None}
        in_use = {prefix_of(item) for item in found}
        result.skipped = {p: pid for p, pid in live.items() if p in in_use}
        targets = [item for item in found if prefix_of(item) not in live]
        stale = [p for p in owner_prefixes() if p not in live]
    # Never anything else, whatever the listing matched (the last guard before `ip link del`).
    targets = [item for item in targets if PREFIX.fullmatch(prefix_of(item))]
    remove(targets)
    still = set(leftovers(prefix))
    result.failed = [item for item in targets if item in still]
    result.removed = [item for item in targets if item not in still]
    for dead in stale:
        if not any(prefix_of(item) == dead for item in result.failed):
            release(dead)
            if not owner_file(dead).exists():
                result.removed.append(f"owner file {owner_file(dead)}")
    return result
