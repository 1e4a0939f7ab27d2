"""The builder's handle on the impairment element (quicmig.lab.element): start it, change a
link's profile, read its counters, stop it. One JSON line each way per request."""

from __future__ import annotations

import contextlib
import json
import queue
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from quicmig.errors import QuicmigError
from quicmig.lab.element import LinkSpec, profile_to_json
from quicmig.lab.process import Process
from quicmig.model.topology import LinkProfile

IMPAIRMENT = "quicmig-tun"  # what `stats()` says shapes the links
START_TIMEOUT = 10.0  # seconds for the element to start and open every TUN device
REPLY_TIMEOUT = 5.0  # seconds for the element to answer a request
# Packets per second one element moves from a client to the server (through the client's
# link and the server's: every lab path crosses two), 1,500-byte packets, measured with
# benchmarks/bench_lab_link.py on the development machine (2 shared cores). A link rate
# needing more is warned about: the element would be the bottleneck, not the link.
CEILING_PPS = 45_000  # packets/s
CEILING_PACKET = 1500  # bytes


def ceiling_warning(link: str, profile: LinkProfile) -> str | None:
    """One line if `profile`'s rate needs more full-size packets/s than the element moves."""
    if profile.rate is None:
        return None
    needed = profile.rate / (CEILING_PACKET * 8)  # packets/s
    if needed <= CEILING_PPS:
        return None
    ceiling = CEILING_PPS * CEILING_PACKET * 8 / 1e6  # Mbit/s
    return (
        f"link {link}: {profile.rate / 1e6:g} Mbit/s needs {needed:,.0f} packets/s of "
        f"{CEILING_PACKET} bytes; the lab's element moves about {CEILING_PPS:,} (measured, "
        f"about {ceiling:.0f} Mbit/s), so it will limit this link, not the rate"
    )


class Shaper:
    """The element process, started in the caller's namespace with every link's two ends."""

    def __init__(self, specs: Sequence[LinkSpec], workdir: Path) -> None:
        self.specs = list(specs)
        self._replies: queue.Queue[str] = queue.Queue()
        self._lock = threading.Lock()
        self.process = Process(
            "element", [sys.executable, "-m", "quicmig.lab.element"], workdir, stdin=True
        )
        try:
            self.process.on_line(self._replies.put)
            links = [spec.to_json() for spec in self.specs]
            ready = self._request({"links": links}, START_TIMEOUT)
            self.pid = int(ready["pid"])
        except BaseException:
            self.process.stop()
            raise

    def _request(self, message: dict[str, Any], timeout: float = REPLY_TIMEOUT) -> dict[str, Any]:
        with self._lock:
            self.process.write(json.dumps(message))
            try:
                line = self._replies.get(timeout=timeout)
            except queue.Empty:
                why = self.process.tail() or f"no answer within {timeout:g} s"
                raise QuicmigError(f"the lab's impairment element failed: {why}") from None
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise QuicmigError(f"the lab's impairment element: {answer['error']}")
        return answer

    def set_link(self, link: str, profile: LinkProfile) -> None:
        self._request({"op": "set_link", "link": link, "profile": profile_to_json(profile)})

    def stats(self) -> dict[str, Any]:
        links: dict[str, Any] = self._request({"op": "stats"})["links"]
        return links

    def stop(self) -> None:
        """Ask it to stop; SIGTERM, then SIGKILL, if it does not. Its devices go with it."""
        if self.process.popen.poll() is None:
            with contextlib.suppress(QuicmigError):
                self._request({"op": "stop"}, timeout=1.0)
        self.process.stop()
