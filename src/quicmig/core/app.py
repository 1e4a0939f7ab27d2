"""The quicmig message protocol and the workloads built on it, sans-IO.

Every request goes on a fresh client-initiated bidirectional stream: one ASCII line
`VERB ARGS...\\n`, an optional body, then FIN. The server answers on the same stream.

    ECHO\\n<body>                        -> <body>
    DOWNLOAD <bytes> <seed>\\n           -> <bytes> of content drawn from <seed>
    STREAM <bits/s> <seconds> <chunk>\\n -> <chunk>-byte frames at that rate, for that long

Content is drawn from a seeded generator so both ends can name it, but each end hashes
what it actually sent or received: "intact" compares those two SHA-256 digests. The server
generates a body a piece at a time, as the connection takes it (`ServerApp.pump`), so a
200 MB download never sits in memory whole.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aioquic.quic.connection import QuicConnection

from quicmig.aioquic_ext import stream_send_backlog
from quicmig.model.scenario import MAX_DOWNLOAD, Download, Messages, Stream, Workload

MAX_REQUEST = 1 << 20  # bytes: a longer request is refused, and no STREAM frame is larger
MAX_STREAM_S = 3600.0  # seconds: the longest STREAM
CHUNK = 1 << 16  # bytes of a body generated at a time (a multiple of 4, see content_chunks)
SEND_AHEAD = 1 << 18  # bytes: a body is generated while less than this waits to be sent


def _check_size(size: int) -> None:
    if not 0 <= size <= MAX_DOWNLOAD:
        raise ValueError(f"content size {size} outside 0..{MAX_DOWNLOAD}")


def content(size: int, seed: int) -> bytes:
    """The deterministic body of `DOWNLOAD size seed` (0 <= size <= MAX_DOWNLOAD)."""
    _check_size(size)
    return random.Random(seed).randbytes(size)


def content_chunks(size: int, seed: int, chunk: int = CHUNK) -> Iterator[bytes]:
    """`content(size, seed)` in pieces of `chunk` bytes (the last may be shorter).

    `Random.randbytes` draws whole 32-bit words, so pieces whose length is a multiple of 4
    join up to exactly the bytes of one call.
    """
    _check_size(size)  # now, not at the first piece
    if chunk <= 0 or chunk % 4:
        raise ValueError(f"chunk {chunk}: give a positive multiple of 4 bytes")
    rng = random.Random(seed)
    return (rng.randbytes(min(chunk, size - start)) for start in range(0, size, chunk))


def content_digest(size: int, seed: int) -> str:
    """SHA-256 (hex) of `content(size, seed)`, without holding it in memory."""
    digest = hashlib.sha256()
    for piece in content_chunks(size, seed):
        digest.update(piece)
    return digest.hexdigest()


class ProtocolError(Exception):
    """A request the server cannot parse; the stream is reset."""


@dataclass(slots=True)
class Delivery:
    """What the client's application received over time (the receiver's view)."""

    times: list[float] = field(default_factory=list)  # seconds, one per StreamDataReceived
    totals: list[int] = field(default_factory=list)  # cumulative bytes delivered

    def add(self, at: float, size: int) -> None:
        if size:
            self.times.append(at)
            self.totals.append((self.totals[-1] if self.totals else 0) + size)

    @property
    def total(self) -> int:
        return self.totals[-1] if self.totals else 0


# --- server side -------------------------------------------------------------------------


@dataclass(slots=True)
class _StreamJob:
    stream_id: int
    interval: float  # seconds between frames
    chunk: int  # bytes
    end_at: float
    next_at: float
    sequence: int = 0


@dataclass(slots=True)
class _Body:
    """A response body still being generated: what is left and the hash of what was sent."""

    stream_id: int
    pieces: Iterator[bytes]
    left: int  # bytes not generated yet
    digest: Any = field(default_factory=hashlib.sha256)  # hashlib's type is private


class ServerApp:
    """Answers the message protocol on one server-side connection.

    The endpoint driving the connection calls `stream_data()` for each request's data and,
    after every input to the connection (a datagram, a timer), `pump()`: long bodies are
    generated as the connection sends them. After `release()` nothing is served any more;
    `sent_digests` stays.
    """

    def __init__(self, conn: QuicConnection) -> None:
        self._conn: QuicConnection | None = conn
        self._requests: dict[int, bytearray] = {}
        self._jobs: list[_StreamJob] = []
        self._bodies: dict[int, _Body] = {}
        self.sent_digests: dict[int, str] = {}  # stream id -> SHA-256 of the response body
        self.on_request: Callable[[str], bytes | None] | None = None  # extra verbs (live server)

    @property
    def conn(self) -> QuicConnection:
        if self._conn is None:
            raise RuntimeError("this connection's application was released")
        return self._conn

    def release(self) -> None:
        """The connection is over: drop it and everything pending; keep `sent_digests`."""
        self._conn = None
        self._requests.clear()
        self._jobs.clear()
        self._bodies.clear()
        self.on_request = None

    def stream_data(self, stream_id: int, data: bytes, end_stream: bool, now: float) -> None:
        buffer = self._requests.setdefault(stream_id, bytearray())
        buffer += data
        if len(buffer) > MAX_REQUEST:
            self._requests.pop(stream_id)
            self.conn.reset_stream(stream_id, error_code=1)
            return
        if end_stream:
            request = bytes(self._requests.pop(stream_id))
            try:
                self._answer(stream_id, request, now)
            except ProtocolError:
                self.conn.reset_stream(stream_id, error_code=2)

    def _answer(self, stream_id: int, request: bytes, now: float) -> None:
        line, _, body = request.partition(b"\n")
        verb, *args = line.decode("ascii", "replace").split()
        try:
            if verb == "ECHO":
                self._send(stream_id, body)
            elif verb == "DOWNLOAD":
                self.send_content(stream_id, int(args[0]), int(args[1]))
            elif verb == "STREAM":
                rate, seconds, chunk = float(args[0]), float(args[1]), int(args[2])
                interval = chunk * 8 / rate
                # A zero, negative or infinite interval would never end the job's loop.
                if not (0 < interval < math.inf and 0 < seconds <= MAX_STREAM_S):
                    raise ProtocolError(line)
                if chunk > MAX_REQUEST:  # bytes held per frame
                    raise ProtocolError(line)
                self._jobs.append(_StreamJob(stream_id, interval, chunk, now + seconds, now))
                self._run_jobs(now)
            elif self.on_request is not None and (reply := self.on_request(line.decode())):
                self._send(stream_id, reply)
            else:
                raise ProtocolError(verb)
        except (IndexError, ValueError, ZeroDivisionError) as exc:
            raise ProtocolError(line) from exc

    def _send(self, stream_id: int, body: bytes) -> None:
        self.sent_digests[stream_id] = hashlib.sha256(body).hexdigest()
        self.write(stream_id, body, True)

    def write(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        """Put response bytes on the stream (HTTP/3 wraps them in DATA frames)."""
        self.conn.send_stream_data(stream_id, data, end_stream=end_stream)

    def send_content(self, stream_id: int, size: int, seed: int) -> None:
        """Answer with `content(size, seed)`, generated as the connection takes it."""
        pieces = content_chunks(size, seed)  # checks the size
        self._bodies[stream_id] = _Body(stream_id, pieces, size)
        self.pump()

    def pump(self) -> None:
        """Generate more of each body whose stream has less than SEND_AHEAD bytes unsent."""
        if self._conn is None:
            return
        for body in list(self._bodies.values()):
            backlog = stream_send_backlog(self._conn, body.stream_id)
            if backlog is None:  # reset by the peer, or the connection is closing
                del self._bodies[body.stream_id]
                continue
            while backlog < SEND_AHEAD and body.stream_id in self._bodies:
                piece = next(body.pieces, b"")
                body.left -= len(piece)
                body.digest.update(piece)
                done = body.left <= 0
                if done:
                    self.sent_digests[body.stream_id] = body.digest.hexdigest()
                    del self._bodies[body.stream_id]
                self.write(body.stream_id, piece, done)
                backlog += len(piece)

    def _run_jobs(self, now: float) -> None:
        for job in self._jobs:
            while job.next_at <= now and job.next_at < job.end_at:
                frame = job.sequence.to_bytes(8, "big").ljust(job.chunk, b"\x00")[: job.chunk]
                self.conn.send_stream_data(job.stream_id, frame)
                job.sequence += 1
                job.next_at += job.interval
            if job.next_at >= job.end_at:
                self.conn.send_stream_data(job.stream_id, b"", end_stream=True)
        self._jobs = [job for job in self._jobs if job.next_at < job.end_at]

    def get_timer(self) -> float | None:
        return min((job.next_at for job in self._jobs), default=None)

    def handle_timer(self, now: float) -> None:
        self._run_jobs(now)


# --- client side -------------------------------------------------------------------------


class ClientWorkload:
    """Base of the client workloads: start(), stream_data(), timers, and a result."""

    def __init__(self, conn: QuicConnection) -> None:
        self.conn = conn
        self.delivery = Delivery()
        self.started_at: float | None = None
        self.completed_at: float | None = None
        self.failed: str | None = None

    @property
    def done(self) -> bool:
        return self.completed_at is not None or self.failed is not None

    def _request(self, line: str, body: bytes = b"") -> int:
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_stream_data(stream_id, line.encode() + b"\n" + body, end_stream=True)
        return stream_id

    def start(self, now: float) -> None:
        self.started_at = now

    def stream_data(self, stream_id: int, data: bytes, end_stream: bool, now: float) -> None:
        self.delivery.add(now, len(data))

    def stream_reset(self, stream_id: int, now: float) -> None:
        self.failed = f"stream {stream_id} reset by the server"

    def get_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        """Workloads with a cadence override this."""


class DownloadClient(ClientWorkload):
    def __init__(self, conn: QuicConnection, spec: Download, seed: int) -> None:
        super().__init__(conn)
        self.spec = spec
        self.seed = seed
        self.stream_id = -1
        self._hash = hashlib.sha256()
        self.digest: str | None = None

    def start(self, now: float) -> None:
        super().start(now)
        self.stream_id = self._request(f"DOWNLOAD {self.spec.size} {self.seed}")

    def stream_data(self, stream_id: int, data: bytes, end_stream: bool, now: float) -> None:
        super().stream_data(stream_id, data, end_stream, now)
        self._hash.update(data)
        if end_stream:
            self.digest = self._hash.hexdigest()
            self.completed_at = now


@dataclass(frozen=True, slots=True)
class MessageRecord:
    sent_at: float
    rtt: float | None  # seconds; None if no answer came


class MessagesClient(ClientWorkload):
    def __init__(self, conn: QuicConnection, spec: Messages, seed: int) -> None:
        super().__init__(conn)
        self.spec = spec
        self._body = random.Random(seed).randbytes(spec.size)
        self._sent: dict[int, float] = {}  # stream id -> sent at
        self._answers: dict[int, bytearray] = {}
        self.rtts: dict[int, float] = {}
        self.mismatches = 0
        self._next_at: float | None = None

    def start(self, now: float) -> None:
        super().start(now)
        self._next_at = now

    def get_timer(self) -> float | None:
        return self._next_at

    def handle_timer(self, now: float) -> None:
        while self._next_at is not None and self._next_at <= now:
            self._sent[self._request("ECHO", self._body)] = now
            self._next_at = (
                self._next_at + self.spec.interval if len(self._sent) < self.spec.count else None
            )

    def stream_data(self, stream_id: int, data: bytes, end_stream: bool, now: float) -> None:
        super().stream_data(stream_id, data, end_stream, now)
        self._answers.setdefault(stream_id, bytearray()).extend(data)
        if end_stream and stream_id in self._sent:
            self.rtts[stream_id] = now - self._sent[stream_id]
            if bytes(self._answers.pop(stream_id)) != self._body:
                self.mismatches += 1
            if len(self.rtts) == self.spec.count:
                self.completed_at = now

    @property
    def records(self) -> list[MessageRecord]:
        return [MessageRecord(at, self.rtts.get(sid)) for sid, at in self._sent.items()]


class StreamClient(ClientWorkload):
    def __init__(self, conn: QuicConnection, spec: Stream) -> None:
        super().__init__(conn)
        self.spec = spec
        self.frame_times: list[float] = []  # when each whole frame had arrived
        self._received = 0  # bytes

    def start(self, now: float) -> None:
        super().start(now)
        spec = self.spec
        self._request(f"STREAM {spec.rate:g} {spec.duration:g} {spec.chunk}")

    def stream_data(self, stream_id: int, data: bytes, end_stream: bool, now: float) -> None:
        super().stream_data(stream_id, data, end_stream, now)
        before = self._received // self.spec.chunk
        self._received += len(data)
        self.frame_times.extend([now] * (self._received // self.spec.chunk - before))
        if end_stream:
            self.completed_at = now

    def stalls(self, run_end: float) -> list[tuple[float, float]]:
        """(start, seconds) of every gap between frames longer than the playout buffer.

        A stream that never finished counts its silence up to `run_end` as well.
        """
        times = list(self.frame_times)
        if self.completed_at is None and self.started_at is not None:
            times = [*(times or [self.started_at]), run_end]
        return [(a, b - a) for a, b in itertools.pairwise(times) if b - a > self.spec.stall]


def make_workload(conn: QuicConnection, spec: Workload, seed: int) -> ClientWorkload:
    match spec:
        case Download():
            return DownloadClient(conn, spec, seed)
        case Messages():
            return MessagesClient(conn, spec, seed)
        case Stream():
            return StreamClient(conn, spec)
