"""The impairment element: every lab link's delay, jitter, loss, bursts, rate and queue.

```
  P-client                 element process (caller's namespace)               P-router
 ┌──────────┐  TUN pair   ┌───────────────────────────────────────────┐   ┌──────────┐
 │ P-wifi  ◄├─────────────┤ fd ──► Pipe "wifi/up"   (sim.link) ──► fd ├───┤► P-rwifi │
 │          │  (one end   │ fd ◄── Pipe "wifi/down" (sim.link) ◄── fd │   │ nftables │
 └──────────┘  per netns) └───────────────────────────────────────────┘   └──────────┘
```

Each lab link is a pair of TUN devices, one in each namespace it joins. This process opens
both ends of every link (quicmig.lab.tun) and moves each IP packet from one end to the other
through a `quicmig.sim.link.Pipe`, one per direction: the simulator's own link model, on
this process's asyncio loop and its monotonic clock, so TCP and UDP alike get exactly the
scenario's LinkProfile, on any kernel (netem is not needed). A Pipe charges a datagram's
length plus 28 bytes of IP and UDP header to the rate; here the whole IP packet is the
datagram, so the Pipe is handed a stand-in 28 bytes shorter and the rate counts exactly the
bytes of the IP packet, as the simulator does for a UDP datagram.

It runs as its own process (`python -m quicmig.lab.element`, started by quicmig.lab.shaper)
so that moving packets never competes with aioquic for a GIL. The loop uses select(2),
whose timeout has microsecond resolution (epoll's is a millisecond, which would add up to a
millisecond to every delay).

Control, JSON lines: the first line on stdin is `{"links": [LinkSpec...]}`; the element
answers `{"ready": ...}` once every device exists (or `{"error": ...}` and exits). Then each
line `{"op": "set_link" | "stats" | "stop", ...}` gets one answer line. End of stdin (its
builder died) stops it too; the kernel then deletes its devices with their fds.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import selectors
import signal
import sys
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from quicmig.core.datagram import Datagram
from quicmig.lab.tun import open_tun
from quicmig.model.topology import LinkProfile
from quicmig.sim.link import Pipe

MTU = 1500  # bytes: every lab TUN device's
READ_SIZE = 4096  # bytes per read: more than the MTU, so no packet is cut short
BATCH = 64  # packets read from one device per wakeup before others get their turn
IP_UDP_HEADER = 28  # bytes the Pipe adds to each datagram for IPv4 and UDP headers
NOWHERE = ("0.0.0.0", 0)  # the stand-in datagrams' addresses (IPv4: 28 bytes of header)


def profile_to_json(profile: LinkProfile) -> dict[str, Any]:
    return asdict(profile)


def profile_from_json(data: dict[str, Any]) -> LinkProfile:
    return LinkProfile(**data)


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """One link for the element: its name, both TUN ends (namespace, device), its profile."""

    name: str
    host: tuple[str, str]  # (namespace, TUN name) of the host's end
    router: tuple[str, str]  # (namespace, TUN name) of the router's end
    profile: LinkProfile
    seed: int  # the Pipes' random generators derive from it and the link's name

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "host": list(self.host),
            "router": list(self.router),
            "profile": profile_to_json(self.profile),
            "seed": self.seed,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LinkSpec:
        return cls(
            data["name"],
            (data["host"][0], data["host"][1]),
            (data["router"][0], data["router"][1]),
            profile_from_json(data["profile"]),
            int(data["seed"]),
        )


class Direction:
    """One direction of one link: packets read from `source` cross `pipe` to `sink`."""

    def __init__(self, pipe: Pipe, source: int, sink: int, loop: asyncio.AbstractEventLoop) -> None:
        self.pipe = pipe
        self.source = source
        self.sink = sink
        self.loop = loop
        self.packets: deque[bytes] = deque()  # in the Pipe's order: it keeps FIFO
        self.bytes_delivered = 0  # bytes of IP packets written to the far end
        self.undeliverable = 0  # delivered by the Pipe, refused by the far device (down)
        self._timer: asyncio.TimerHandle | None = None
        self._stand_ins: dict[int, bytes] = {}  # length -> zero bytes of that length

    def readable(self) -> None:
        """Read what the near device has (up to BATCH packets) onto the Pipe."""
        pipe = self.pipe
        now = self.loop.time()
        for _ in range(BATCH):
            try:
                packet = os.read(self.source, READ_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break  # the device went away: the builder is tearing down
            if not packet:
                break
            length = max(0, len(packet) - IP_UDP_HEADER)
            stand_in = self._stand_ins.get(length)
            if stand_in is None:
                stand_in = self._stand_ins[length] = bytes(length)
            pipe.receive_datagram(Datagram(NOWHERE, NOWHERE, stand_in), now)
            if pipe.next_event() is None:  # else lost or dropped: counted in pipe.stats
                self.packets.append(packet)
        if self._timer is None:
            self._arm()

    def _arm(self) -> None:
        when = self.pipe.get_timer()
        if when is None:
            return
        if when <= self.loop.time():
            self.deliver()
        else:
            self._timer = self.loop.call_at(when, self.deliver)

    def deliver(self) -> None:
        """Write the packets that have crossed the link by now to the far device."""
        self._timer = None
        arrived = self.pipe.datagrams_to_send(self.loop.time())
        for _ in arrived:
            packet = self.packets.popleft()
            try:
                os.write(self.sink, packet)
                self.bytes_delivered += len(packet)
            except OSError:
                self.undeliverable += 1  # the far interface is down (EIO), say
        self._arm()

    def stats(self) -> dict[str, int]:
        s = self.pipe.stats
        return {
            "sent": s.sent,
            "delivered": s.delivered - self.undeliverable,
            "lost": s.lost,
            "queue_drops": s.queue_drops,
            "undeliverable": self.undeliverable,
            "in_flight": len(self.packets),
            "bytes_delivered": self.bytes_delivered,
        }

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Link:
    """Both directions of one link: `up` from the host to the router, `down` back."""

    def __init__(self, spec: LinkSpec, loop: asyncio.AbstractEventLoop) -> None:
        self.spec = spec
        self.profile = spec.profile
        self.fds: list[int] = []
        try:
            host = open_tun(*spec.host)
            self.fds.append(host)
            router = open_tun(*spec.router)
            self.fds.append(router)
        except BaseException:
            self.close()
            raise
        rng = random.Random(f"{spec.seed}/link/{spec.name}")
        up = Pipe(f"{spec.name}/up", spec.profile, random.Random(rng.random()))
        down = Pipe(f"{spec.name}/down", spec.profile, random.Random(rng.random()))
        self.up = Direction(up, host, router, loop)
        self.down = Direction(down, router, host, loop)

    def set_profile(self, profile: LinkProfile) -> None:
        """From now on; packets already on the link keep their arrival times."""
        self.profile = profile
        self.up.pipe.profile = profile
        self.down.pipe.profile = profile

    def close(self) -> None:
        for direction in ("up", "down"):
            if hasattr(self, direction):
                getattr(self, direction).close()
        for fd in self.fds:
            os.close(fd)  # without IFF_PERSIST the device goes with its fd
        self.fds.clear()


class Element:
    """All links of one lab, and the control channel on stdin/stdout."""

    def __init__(self, specs: list[LinkSpec], loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.links: dict[str, Link] = {}
        self.stopped = loop.create_future()
        self._buffer = b""
        try:
            for spec in specs:
                self.links[spec.name] = Link(spec, loop)
        except BaseException:
            self.close()
            raise

    def start(self) -> None:
        for link in self.links.values():
            self.loop.add_reader(link.up.source, link.up.readable)
            self.loop.add_reader(link.down.source, link.down.readable)
        os.set_blocking(sys.stdin.fileno(), False)
        self.loop.add_reader(sys.stdin.fileno(), self._control)

    def _control(self) -> None:
        try:
            chunk = os.read(sys.stdin.fileno(), 65536)
        except BlockingIOError:
            return
        if not chunk:  # the builder is gone
            self._stop()
            return
        self._buffer += chunk
        while b"\n" in self._buffer:
            line, _, self._buffer = self._buffer.partition(b"\n")
            if line.strip():
                reply(self.handle(json.loads(line)))

    def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        op = command.get("op")
        if op == "set_link":
            link = self.links.get(command.get("link", ""))
            if link is None:
                return {"error": f"no link {command.get('link')!r}"}
            link.set_profile(profile_from_json(command["profile"]))
            return {"ok": True, "at": self.loop.time()}
        if op == "stats":
            return {"ok": True, "links": self.stats()}
        if op == "stop":
            self._stop()
            return {"ok": True}
        return {"error": f"unknown op {op!r}"}

    def stats(self) -> dict[str, Any]:
        return {
            name: {
                "up": link.up.stats(),
                "down": link.down.stats(),
                "profile": profile_to_json(link.profile),
            }
            for name, link in self.links.items()
        }

    def _stop(self) -> None:
        if not self.stopped.done():
            self.stopped.set_result(None)

    def close(self) -> None:
        for link in self.links.values():
            for fd in link.fds:
                self.loop.remove_reader(fd)
            link.close()
        self.links.clear()


def reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def serve(specs: list[LinkSpec]) -> None:
    element = Element(specs, asyncio.get_running_loop())
    try:
        element.start()
        reply({"ready": True, "pid": os.getpid(), "links": sorted(element.links)})
        await element.stopped
    finally:
        element.close()


def main() -> int:
    # Its builder stops it (stdin, SIGTERM); a Ctrl-C meant for the builder is not for us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    first = sys.stdin.readline()
    if not first:
        return 0
    try:
        specs = [LinkSpec.from_json(link) for link in json.loads(first)["links"]]
        loop = asyncio.SelectorEventLoop(selectors.SelectSelector())
        try:
            loop.run_until_complete(serve(specs))
        finally:
            loop.close()
    except OSError as exc:
        reply({"error": f"the impairment element could not open its TUN devices: {exc}"})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
