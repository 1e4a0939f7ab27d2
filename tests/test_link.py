"""One direction of a simulated link: delay, rate, drop-tail queue, loss, bursts, jitter."""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import replace

import pytest
from conftest import loss_runs

from quicmig.core.datagram import Datagram
from quicmig.model.topology import LinkProfile
from quicmig.sim.link import Pipe

SRC = ("192.0.2.10", 50000)
DST4 = ("203.0.113.10", 4433)
DST6 = ("2001:db8::10", 4433)
IPV4_UDP = 20 + 8  # bytes of header around each payload sent to an IPv4 address
IPV6_UDP = 40 + 8


def datagram(index: int, size: int = 100, dst: tuple[str, int] = DST4) -> Datagram:
    """A datagram whose first four bytes number it, so deliveries can be told apart."""
    return Datagram(SRC, dst, index.to_bytes(4, "big").ljust(size, b"\x00"))


def number_of(dgram: Datagram) -> int:
    return int.from_bytes(dgram.data[:4], "big")


def drain(pipe: Pipe) -> list[tuple[float, int]]:
    """Collect every arrival at the time the pipe's timer says: (time, datagram number)."""
    arrivals: list[tuple[float, int]] = []
    while (when := pipe.get_timer()) is not None:
        out = pipe.datagrams_to_send(when)
        assert out, "a due timer must deliver something"
        arrivals += [(when, number_of(d)) for d in out]
    return arrivals


def pipe(profile: LinkProfile, seed: int = 0) -> Pipe:
    return Pipe("test", profile, random.Random(seed))


def test_exact_delay() -> None:
    delay = 0.020
    p = pipe(LinkProfile(delay=delay))
    sent_at = 1.0
    p.receive_datagram(datagram(7), sent_at)
    assert p.get_timer() == sent_at + delay
    assert p.datagrams_to_send(sent_at + delay - 1e-9) == []
    out = p.datagrams_to_send(sent_at + delay)
    assert [number_of(d) for d in out] == [7]
    assert out[0].src == SRC and out[0].dst == DST4
    assert p.get_timer() is None
    assert (p.stats.sent, p.stats.delivered, p.stats.bytes_delivered) == (1, 1, 100)


def test_zero_delay_delivers_at_send_time() -> None:
    p = pipe(LinkProfile(delay=0.0))
    p.receive_datagram(datagram(1), 3.5)
    assert drain(p) == [(3.5, 1)]


def test_rate_serialisation_and_back_to_back_spacing() -> None:
    delay, rate, size, count = 0.010, 10e6, 1000, 6
    p = pipe(LinkProfile(delay=delay, rate=rate))
    tx = (size + IPV4_UDP) * 8 / rate  # seconds to serialise one datagram
    for i in range(count):
        p.receive_datagram(datagram(i, size), 0.0)
    arrivals = drain(p)
    assert [n for _, n in arrivals] == list(range(count))
    for k, (when, _) in enumerate(arrivals, start=1):
        assert when == pytest.approx(k * tx + delay, abs=1e-12)
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(arrivals)]
    assert gaps == pytest.approx([tx] * (count - 1), abs=1e-12)


def test_rate_idle_link_has_no_queueing_delay() -> None:
    delay, rate, size = 0.005, 1e6, 500
    p = pipe(LinkProfile(delay=delay, rate=rate))
    tx = (size + IPV4_UDP) * 8 / rate
    p.receive_datagram(datagram(0, size), 0.0)
    later = 1.0  # long after the first datagram finished serialising
    p.receive_datagram(datagram(1, size), later)
    (first, n0), (second, n1) = drain(p)
    assert (n0, n1) == (0, 1)
    assert first == pytest.approx(tx + delay, abs=1e-12)
    assert second == pytest.approx(later + tx + delay, abs=1e-12)


def test_rate_counts_ipv6_header_overhead() -> None:
    rate, size = 1e6, 1200
    p = pipe(LinkProfile(delay=0.0, rate=rate))
    p.receive_datagram(datagram(0, size, DST6), 0.0)
    ((when, _),) = drain(p)
    assert when == pytest.approx((size + IPV6_UDP) * 8 / rate, abs=1e-12)


def test_drop_tail_queue_limit() -> None:
    queue, rate, size = 5, 1e6, 1000
    p = pipe(LinkProfile(delay=0.0, rate=rate, queue=queue))
    tx = (size + IPV4_UDP) * 8 / rate
    for i in range(12):
        p.receive_datagram(datagram(i, size), 0.0)
    assert p.stats.queue_drops == 12 - queue
    # After 2.5 serialisation times two datagrams have left the queue: room for two more.
    now = 2.5 * tx
    for i in range(12, 15):
        p.receive_datagram(datagram(i, size), now)
    assert p.stats.queue_drops == 12 - queue + 1
    arrivals = drain(p)
    assert [n for _, n in arrivals] == [0, 1, 2, 3, 4, 12, 13]
    assert p.stats.delivered == 7 == len(arrivals)
    assert p.stats.sent == 15
    reasons = []
    while (event := p.next_event()) is not None:
        reasons.append((event.reason, number_of(event.datagram)))
    assert reasons == [("queue", n) for n in [5, 6, 7, 8, 9, 10, 11, 14]]


def test_random_loss_rate_within_binomial_bounds() -> None:
    n, loss = 20_000, 0.10
    p = pipe(LinkProfile(delay=0.0, loss=loss), seed=7)
    for i in range(n):
        p.receive_datagram(datagram(i, 20), i * 1e-3)
    delivered = {number for _, number in drain(p)}
    lost = n - len(delivered)
    sigma = math.sqrt(n * loss * (1 - loss))
    assert abs(lost - n * loss) <= 4 * sigma
    assert p.stats.lost == lost
    assert p.stats.delivered == len(delivered)
    dropped = []
    while (event := p.next_event()) is not None:
        assert event.reason == "loss"
        dropped.append(number_of(event.datagram))
    assert sorted(dropped) == sorted(set(range(n)) - delivered)


def _lost_flags(profile: LinkProfile, n: int, seed: int) -> list[bool]:
    p = pipe(profile, seed=seed)
    for i in range(n):
        p.receive_datagram(datagram(i, 20), i * 1e-3)
    delivered = {number for _, number in drain(p)}
    return [i not in delivered for i in range(n)]


def test_bursty_loss_average_and_mean_burst_length() -> None:
    n, loss, burst = 40_000, 0.10, 4.0
    lost = _lost_flags(LinkProfile(delay=0.0, loss=loss, burst_len=burst), n, seed=11)
    # Two-state Markov chain: leave the bad state with r = 1/burst, enter it with p chosen
    # so that the stationary loss p/(p+r) is `loss`. Its samples are correlated: the
    # variance of the mean is inflated by (1+lambda)/(1-lambda), lambda = 1 - p - r.
    r = 1 / burst
    p_enter = loss * r / (1 - loss)
    lam = 1 - p_enter - r
    sigma_rate = math.sqrt(loss * (1 - loss) / n * (1 + lam) / (1 - lam))
    assert abs(sum(lost) / n - loss) <= 4 * sigma_rate
    runs = loss_runs(lost)
    # Burst lengths are geometric with mean 1/r and variance (1-r)/r^2.
    sigma_burst = math.sqrt((1 - r) / r**2 / len(runs))
    assert abs(sum(runs) / len(runs) - burst) <= 4 * sigma_burst


def test_independent_loss_has_short_bursts() -> None:
    n, loss = 40_000, 0.10
    runs = loss_runs(_lost_flags(LinkProfile(delay=0.0, loss=loss), n, seed=11))
    # Independent losses: run lengths are geometric with mean 1/(1-loss).
    mean = 1 / (1 - loss)
    sigma = math.sqrt(loss / (1 - loss) ** 2 / len(runs))
    assert abs(sum(runs) / len(runs) - mean) <= 4 * sigma


def test_jitter_keeps_fifo_order_within_bounds() -> None:
    delay, jitter, spacing, n = 0.050, 0.020, 0.001, 2000
    p = pipe(LinkProfile(delay=delay, jitter=jitter), seed=3)
    sent = [i * spacing for i in range(n)]
    for i, at in enumerate(sent):
        p.receive_datagram(datagram(i), at)
    arrivals = drain(p)
    assert [number for _, number in arrivals] == list(range(n))  # jitter > spacing, no reorder
    times = [when for when, _ in arrivals]
    assert times == sorted(times)
    offsets = [when - sent[i] - delay for i, (when, _) in enumerate(arrivals)]
    assert min(offsets) >= -jitter - 1e-12
    assert max(offsets) <= jitter + 1e-12
    assert len({round(o, 9) for o in offsets}) > n // 2  # the jitter really varies arrivals


def test_jitter_without_contention_is_uniform() -> None:
    delay, jitter, spacing, n = 0.050, 0.020, 0.100, 4000
    p = pipe(LinkProfile(delay=delay, jitter=jitter), seed=5)
    for i in range(n):
        p.receive_datagram(datagram(i), i * spacing)
    offsets = [when - number * spacing - delay for when, number in drain(p)]
    # Spacing > 2 * jitter: the FIFO clamp never acts, offsets are uniform in +-jitter.
    sigma = jitter / math.sqrt(3) / math.sqrt(n)
    assert abs(sum(offsets) / n) <= 4 * sigma
    assert min(offsets) < -0.9 * jitter
    assert max(offsets) > 0.9 * jitter


def test_profile_change_at_runtime_blackhole_and_back() -> None:
    delay = 0.010
    profile = LinkProfile(delay=delay)
    p = pipe(profile)
    for i in range(5):
        p.receive_datagram(datagram(i), i * 1e-3)
    p.profile = replace(profile, loss=1.0)  # a blackhole from now on
    for i in range(5, 15):
        p.receive_datagram(datagram(i), 0.005 + i * 1e-3)
    p.profile = profile
    p.receive_datagram(datagram(15), 0.1)
    arrivals = drain(p)
    # Datagrams already on the link before the change still arrive; those sent during
    # the blackhole are lost; the link works again after the profile is restored.
    assert [number for _, number in arrivals] == [0, 1, 2, 3, 4, 15]
    assert arrivals[-1][0] == 0.1 + delay
    assert p.stats.lost == 10


def test_blackhole_with_burst_len_loses_everything() -> None:
    p = pipe(LinkProfile(delay=0.0, loss=1.0, burst_len=5.0))
    for i in range(200):
        p.receive_datagram(datagram(i), float(i))
    assert drain(p) == []
    assert p.stats.lost == 200


def test_shorter_delay_at_runtime_does_not_overtake() -> None:
    p = pipe(LinkProfile(delay=0.050))
    p.receive_datagram(datagram(0), 0.0)
    p.profile = LinkProfile(delay=0.010)
    p.receive_datagram(datagram(1), 0.001)
    p.receive_datagram(datagram(2), 0.100)
    assert drain(p) == [(0.050, 0), (0.050, 1), (0.100 + 0.010, 2)]
