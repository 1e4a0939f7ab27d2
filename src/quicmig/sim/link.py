"""One direction of a link: random and bursty loss, a rate limit with a drop-tail queue, delay.

Sans-IO like an aioquic connection: `receive_datagram()` puts a datagram on the link,
`get_timer()` tells when the next one arrives at the far end, `datagrams_to_send(now)`
hands over those that have arrived. Nothing here reads a clock or the global `random`.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

from quicmig.core.datagram import Datagram, udp_ip_overhead
from quicmig.model.topology import LinkProfile


@dataclass(frozen=True, slots=True)
class Dropped:
    """A datagram the link lost; `reason` is "loss", "queue" or "down"."""

    at: float
    datagram: Datagram
    reason: str


@dataclass(slots=True)
class PipeStats:
    sent: int = 0
    delivered: int = 0
    lost: int = 0  # random or burst loss, including a 100 % blackhole
    queue_drops: int = 0
    bytes_delivered: int = 0


class Pipe:
    """One direction of a link, with its own queue and its own random generator."""

    def __init__(self, name: str, profile: LinkProfile, rng: random.Random) -> None:
        self.name = name
        self.stats = PipeStats()
        self._rng = rng
        self._in_flight: deque[tuple[float, Datagram]] = deque()  # (arrival time, datagram)
        self._tx_ends: deque[float] = deque()  # when each queued packet finishes serialising
        self._busy_until = 0.0  # seconds: the bottleneck is serialising until then
        self._last_arrival = 0.0  # keeps FIFO order despite jitter
        self._bad_state = False  # Gilbert-Elliott channel state
        self._drops: deque[Dropped] = deque()
        self.profile = profile

    @property
    def profile(self) -> LinkProfile:
        return self._profile

    @profile.setter
    def profile(self, profile: LinkProfile) -> None:
        self._profile = profile
        # Gilbert-Elliott with a lossless good state and a lossy bad state: mean burst
        # length 1/r, and a stationary loss rate p / (p + r) equal to profile.loss.
        self._leave_bad = 1.0 / profile.burst_len
        if profile.loss >= 1.0:
            self._enter_bad, self._leave_bad = 1.0, 0.0  # a blackhole: never leave "bad"
        else:
            self._enter_bad = profile.loss * self._leave_bad / (1.0 - profile.loss)

    def _lost(self) -> bool:
        profile = self._profile
        if profile.loss <= 0.0:
            return False
        if profile.burst_len == 1.0:
            return self._rng.random() < profile.loss
        if self._bad_state:
            self._bad_state = self._rng.random() >= self._leave_bad
        else:
            self._bad_state = self._rng.random() < self._enter_bad
        return self._bad_state

    def receive_datagram(self, datagram: Datagram, now: float) -> None:
        """Put `datagram` on the link at `now`. After this, call get_timer()."""
        self.stats.sent += 1
        if self._lost():
            self.stats.lost += 1
            self._drops.append(Dropped(now, datagram, "loss"))
            return
        profile = self._profile
        start = now
        if profile.rate is not None:
            while self._tx_ends and self._tx_ends[0] <= now:
                self._tx_ends.popleft()
            if len(self._tx_ends) >= profile.queue:
                self.stats.queue_drops += 1
                self._drops.append(Dropped(now, datagram, "queue"))
                return
            size = len(datagram.data) + udp_ip_overhead(datagram.dst)  # bytes on the wire
            start = max(now, self._busy_until) + size * 8 / profile.rate
            self._busy_until = start
            self._tx_ends.append(start)
        arrival = start + profile.delay
        if profile.jitter:
            arrival += self._rng.uniform(-profile.jitter, profile.jitter)
        arrival = max(arrival, self._last_arrival, now)
        self._last_arrival = arrival
        self._in_flight.append((arrival, datagram))

    def get_timer(self) -> float | None:
        return self._in_flight[0][0] if self._in_flight else None

    def handle_timer(self, now: float) -> None:
        """Nothing to do: arrivals are collected by datagrams_to_send(now)."""

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        """Return the datagrams that reached the far end by `now`, in order."""
        out = []
        in_flight = self._in_flight
        while in_flight and in_flight[0][0] <= now:
            datagram = in_flight.popleft()[1]
            out.append(datagram)
            self.stats.bytes_delivered += len(datagram.data)
        self.stats.delivered += len(out)
        return out

    def next_event(self) -> Dropped | None:
        return self._drops.popleft() if self._drops else None
