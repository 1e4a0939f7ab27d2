"""Running `ip`, `nft`, `tc` and `conntrack`, and finding out up front what this machine allows.

Every command goes through `run()` so that a failure becomes a QuicmigError naming the command
and the kernel's answer. Nothing here changes the machine except the probe namespace of
`detect()`, which is created with the run prefix and deleted at once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from quicmig.errors import QuicmigError

CAP_NET_ADMIN = 12  # bit in /proc/self/status CapEff (linux/capability.h)
CAP_SYS_ADMIN = 21  # `ip netns add` mounts a namespace file under /run/netns
COMMAND_TIMEOUT = 10.0  # seconds; ip/nft/tc return in milliseconds

NEEDS_ROOT = (
    "quicmig lab needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN) to create network namespaces, "
    "veth pairs and nftables rules: run it with sudo (`sudo $(which quicmig) lab run`) or as "
    "root in a container started with --cap-add NET_ADMIN --cap-add SYS_ADMIN"
)
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


def _capabilities() -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def privileged() -> bool:
    """Root, or both capabilities that namespaces and netfilter need."""
    if os.geteuid() == 0:
        return True
    caps = _capabilities()
    return bool(caps >> CAP_NET_ADMIN & 1) and bool(caps >> CAP_SYS_ADMIN & 1)


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What this machine offers the lab; `missing` lists optional pieces that are absent."""

    netem: bool  # delay and loss (sch_netem); without it only the rate limit (tbf) applies
    dumpcap: bool  # packet capture (--pcap)
    missing: tuple[str, ...]


def require() -> None:
    """Raise QuicmigError saying what is needed when the lab cannot run here at all."""
    if not privileged():
        raise QuicmigError(NEEDS_ROOT)
    absent = [tool for tool in ("ip", "nft", "conntrack", "tc") if shutil.which(tool) is None]
    if absent:
        raise QuicmigError(
            f"quicmig lab needs {', '.join(absent)} on PATH ({PACKAGES}); {INSTALL_HINT}"
        )


def detect(probe_namespace: str) -> Capabilities:
    """Check namespaces work (required) and probe netem and dumpcap (optional).

    The probe namespace is deleted before this returns, whatever happens.
    """
    require()
    try:
        run(["ip", "netns", "add", probe_namespace])
    except QuicmigError as exc:
        raise QuicmigError(
            f"cannot create a network namespace ({exc}); {NEEDS_ROOT}. In a container, "
            "/run/netns must be writable and the container needs CAP_SYS_ADMIN"
        ) from None
    try:
        run(in_ns(probe_namespace, "nft", "list", "tables"))
        netem = (
            subprocess.run(
                in_ns(probe_namespace, "tc", "qdisc", "add", "dev", "lo", "root", "netem"),
                capture_output=True,
                timeout=COMMAND_TIMEOUT,
                check=False,
            ).returncode
            == 0
        )
    finally:
        run(["ip", "netns", "delete", probe_namespace], check=False)
    dumpcap = shutil.which("dumpcap") is not None
    missing = []
    if not netem:
        missing.append(
            "netem: this kernel has no netem qdisc (sch_netem), so delay and loss are not "
            "emulated; bandwidth is still limited with tbf"
        )
    if not dumpcap:
        missing.append("dumpcap (package tshark): no packet capture (--pcap)")
    return Capabilities(netem=netem, dumpcap=dumpcap, missing=tuple(missing))


def unavailable(probe_namespace: str) -> str | None:
    """Why the lab cannot run here (one line), or None; changes nothing that outlives it."""
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    try:
        detect(probe_namespace)
    except QuicmigError as exc:
        return str(exc)
    return None
