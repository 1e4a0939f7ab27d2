"""Running `ip`, `nft` and `conntrack`, and finding out up front what this machine allows.

Every command goes through `run()` so that a failure becomes a QuicmigError naming the command
and the kernel's answer. Nothing here changes the machine except the probe namespace of
`detect()`, which is created with the run prefix and deleted at once, with SIGINT and SIGTERM
held (`signals_held()`) so that no Ctrl-C can fall between the two.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import FrameType

from quicmig.errors import InputError, QuicmigError
from quicmig.live.stop import STOP_SIGNALS

CAP_NET_ADMIN = 12  # bit in /proc/self/status CapEff (linux/capability.h)
CAP_SYS_ADMIN = 21  # `ip netns add` mounts a namespace file under /run/netns
COMMAND_TIMEOUT = 10.0  # seconds; ip/nft/tc return in milliseconds

CAPABILITIES = (("CAP_NET_ADMIN", CAP_NET_ADMIN), ("CAP_SYS_ADMIN", CAP_SYS_ADMIN))

TUN_DEVICE = "/dev/net/tun"  # the TUN driver's clone device: the element's links
TOOLS = ("ip", "nft", "conntrack")  # run by the builder and the movers
PACKAGES = "iproute2, nftables, conntrack and (for --pcap) tshark"
INSTALL_HINT = (
    "install them with `apt-get install -y iproute2 nftables conntrack tshark` (Debian/Ubuntu)"
)


def run(args: Sequence[str], *, check: bool = True, input: str | None = None) -> str:
    """Run one command and return its stdout; a failure raises QuicmigError (if `check`)."""
    try:
        done = subprocess.run(
            list(args),
            input=input,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
            # Out of the terminal's process group: a Ctrl-C is ours to handle; killed
            # halfway, `nft -f` or `ip` would turn it into a failed command of their own.
            process_group=0,
        )
    except FileNotFoundError:
        raise QuicmigError(
            f"{args[0]} not found: quicmig lab needs {PACKAGES}; {INSTALL_HINT}"
        ) from None
    except subprocess.TimeoutExpired:
        raise QuicmigError(
            f"`{' '.join(args)}` did not return within {COMMAND_TIMEOUT:g} s"
        ) from None
    if check and done.returncode != 0:
        answer = (done.stderr or done.stdout).strip().splitlines()
        raise QuicmigError(
            f"`{' '.join(args)}` failed: {answer[-1] if answer else done.returncode}"
        )
    return done.stdout


def in_ns(namespace: str, *args: str) -> list[str]:
    """The command line that runs `args` inside `namespace`."""
    return ["ip", "netns", "exec", namespace, *args]


def needs_root(command: str) -> str:
    """What to do without the capabilities, for `quicmig COMMAND` (e.g. `lab run`)."""
    return (
        "quicmig lab needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN) to create network "
        "namespaces, TUN devices and nftables rules: run it with sudo "
        f"(`sudo $(which quicmig) {command}`) or as root in a container started with "
        "--cap-add NET_ADMIN --cap-add SYS_ADMIN"
    )


NEEDS_ROOT = needs_root("lab run")


def _capabilities() -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def missing_capabilities() -> list[str]:
    """The capabilities the lab needs that this process does not have in effect.

    Read from CapEff, not from the euid: root in a container started without --cap-add has
    uid 0 and neither capability.
    """
    caps = _capabilities()
    return [name for name, bit in CAPABILITIES if not caps >> bit & 1]


def privileged() -> bool:
    """Both capabilities that namespaces (CAP_SYS_ADMIN) and netfilter (CAP_NET_ADMIN) need."""
    return not missing_capabilities()


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block is done, then deliver each that came, once.

    For code that must not be cut short (creating and deleting OS state). Two layers, because
    blocking alone is not enough: the mask (pthread_sigmask) keeps the kernel from delivering
    to this thread, and the commands started meanwhile inherit it; but a process-directed
    signal still reaches the threads that do not block it, and CPython then runs the Python
    handler in the main thread anyway, so the handlers are swapped for one that only takes
    note. Outside the main thread nothing can be swapped, and no handler runs there: a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        if signum not in held:
            held.append(signum)

    previous: dict[int, signal._HANDLER] = {}
    mask: set[int | signal.Signals] | None = None
    try:
        for stop in STOP_SIGNALS:
            previous[stop] = signal.signal(stop, hold)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # pending ones reach `handler` now
        for signum in held:
            signal.raise_signal(signum)  # late, but not lost: the handler of before decides


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What this machine offers the lab; `missing` lists optional pieces that are absent."""

    dumpcap: bool  # packet capture (--pcap)
    missing: tuple[str, ...]


def require(command: str = "lab run") -> None:
    """Raise when the lab cannot run here at all, before anything is created: InputError
    (exit 2) naming `quicmig COMMAND` without root, QuicmigError without the tools."""
    missing = missing_capabilities()
    if missing:
        raise InputError(
            f"{' and '.join(missing)} missing from this process's effective capabilities "
            f"(/proc/self/status CapEff): {needs_root(command)}"
        )
    absent = [tool for tool in TOOLS if shutil.which(tool) is None]
    if absent:
        raise QuicmigError(
            f"quicmig lab needs {', '.join(absent)} on PATH ({PACKAGES}); {INSTALL_HINT}"
        )
    if not os.path.exists(TUN_DEVICE):
        raise QuicmigError(
            f"{TUN_DEVICE} is missing: the lab's links are TUN devices; load the driver with "
            "`modprobe tun` (in a container: --device /dev/net/tun)"
        )


def detect(probe_namespace: str) -> Capabilities:
    """Check that namespaces, nftables and TUN devices work in a namespace (required) and
    look for dumpcap (optional). The probe namespace is deleted before this returns,
    whatever happens."""
    require()
    # Held for the whole probe (tens of milliseconds): a Ctrl-C waits until the namespace is
    # gone. The add is inside the try: if it fails, the delete finds nothing (the name is
    # this run's, nobody else's).
    with signals_held():
        try:
            try:
                run(["ip", "netns", "add", probe_namespace])
            except QuicmigError as exc:
                raise QuicmigError(
                    f"cannot create a network namespace ({exc}); {NEEDS_ROOT}. In a container, "
                    "/run/netns must be writable and the container needs CAP_SYS_ADMIN"
                ) from None
            run(in_ns(probe_namespace, "nft", "list", "tables"))
            # A TUN device made (and deleted with the namespace) where the lab makes its own.
            tun = probe_namespace.partition("-")[0] + "-tun"
            run(["ip", "-n", probe_namespace, "tuntap", "add", "dev", tun, "mode", "tun"])
        finally:
            run(["ip", "netns", "delete", probe_namespace], check=False)
    dumpcap = shutil.which("dumpcap") is not None
    missing = [] if dumpcap else ["dumpcap (package tshark): no packet capture (--pcap)"]
    return Capabilities(dumpcap=dumpcap, missing=tuple(missing))


def unavailable(probe_namespace: str) -> str | None:
    """Why the lab cannot run here (one line), or None; changes nothing that outlives it."""
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    try:
        detect(probe_namespace)
    except QuicmigError as exc:
        return str(exc)
    return None
