"""Can this machine race MPTCP? Asked before anything is built, changing nothing.

MPTCP needs a kernel built with it (Linux 5.6 or later, CONFIG_MPTCP), switched on
(`net.mptcp.enabled`, on by default; the lab's namespaces would start with it on, but an
administrator who turned it off on the host is obeyed), and iproute2's `ip mptcp` (5.8 or
later) for the endpoints that give each connection a subflow per interface.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from quicmig.race.sockets import IPPROTO_MPTCP

MPTCP_SYSCTL = Path("/proc/sys/net/mptcp/enabled")
PROBE_TIMEOUT = 5.0  # seconds for `ip mptcp endpoint show`


def unavailable() -> str | None:
    """Why MPTCP cannot be raced here (one line naming the fix), or None."""
    try:
        enabled = MPTCP_SYSCTL.read_text().strip()
    except OSError:
        return (
            "this kernel has no MPTCP (no net.mptcp.enabled): it needs Linux 5.6 or later "
            "built with CONFIG_MPTCP=y"
        )
    if enabled != "1":
        return (
            f"MPTCP is disabled (net.mptcp.enabled = {enabled}): enable it with "
            "`sysctl -w net.mptcp.enabled=1`"
        )
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP).close()
    except OSError as exc:
        return f"this kernel refuses MPTCP sockets ({exc.strerror})"
    try:
        done = subprocess.run(
            ["ip", "mptcp", "endpoint", "show"],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        done = None
    if done is None or done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()[:1] if done else []
        return (
            "`ip mptcp` is missing"
            + (f" ({said[0]})" if said else "")
            + ": iproute2 5.8 or later has it; upgrade iproute2 (`apt-get install iproute2`)"
        )
    return None
