"""The message protocol's server side, between two real aioquic connections (no network).

Requests that would make the server hold too much or never finish are refused with a
RESET_STREAM the client really receives; good ones are answered with the content named.
"""

from __future__ import annotations

import hashlib

import pytest
from aioquic.quic.connection import QuicConnection
from pairs import Pair

from quicmig.core.app import ClientWorkload, content
from quicmig.model.scenario import MAX_DOWNLOAD

ANSWER = 0.5  # seconds: far more than a small answer needs over the pair's 20 ms


class Requests(ClientWorkload):
    """A client that sends what the test asks and keeps what comes back, stream by stream."""

    def __init__(self, conn: QuicConnection) -> None:
        super().__init__(conn)
        self.bodies: dict[int, bytearray] = {}
        self.resets: set[int] = set()

    def stream_data(self, stream_id: int, data: bytes, end_stream: bool, now: float) -> None:
        super().stream_data(stream_id, data, end_stream, now)
        self.bodies.setdefault(stream_id, bytearray()).extend(data)

    def stream_reset(self, stream_id: int, now: float) -> None:
        self.resets.add(stream_id)


class Session:
    """Two real aioquic connections over the pair, the server running ServerApp."""

    def __init__(self) -> None:
        self.pair = Pair(workload=Requests)
        self.pair.run(ANSWER)  # the handshake
        workload = self.pair.client.workload
        assert isinstance(workload, Requests)
        self.workload = workload

    def request(self, line: str, body: bytes = b"") -> int:
        stream_id = self.workload._request(line, body)
        self.pair.run(self.pair.now + ANSWER)
        return stream_id

    def received(self, stream_id: int) -> bytes:
        return bytes(self.workload.bodies.get(stream_id, b""))

    def reset(self, stream_id: int) -> bool:
        return stream_id in self.workload.resets


def test_download_is_answered_with_the_named_content() -> None:
    pair = Session()
    stream_id = pair.request("DOWNLOAD 5000 7")
    body = pair.received(stream_id)
    assert hashlib.sha256(body).digest() == hashlib.sha256(content(5000, 7)).digest()
    assert not pair.reset(stream_id)


@pytest.mark.parametrize(
    "line",
    [
        f"DOWNLOAD {MAX_DOWNLOAD + 1} 1",  # more than the server will hold
        "DOWNLOAD -1 1",
        "STREAM -8000 1 100",  # negative rate: the job's loop would never end
        "STREAM inf 1 100",  # zero interval: likewise
        "STREAM 8000 nan 100",
        "STREAM 8000 1 0",
        "STREAM 8000 1e9 100",  # longer than an hour
        "TELEPORT now",
    ],
)
def test_requests_that_cannot_be_served_are_reset(line: str) -> None:
    pair = Session()
    stream_id = pair.request(line)
    assert pair.reset(stream_id)
    assert pair.received(stream_id) == b""
    # The connection goes on: the next request is answered.
    echo = pair.request("ECHO", b"still here")
    assert pair.received(echo) == b"still here"


def test_content_refuses_sizes_outside_the_limit() -> None:
    with pytest.raises(ValueError, match="outside"):
        content(MAX_DOWNLOAD + 1, 0)
