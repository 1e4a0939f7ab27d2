"""The message protocol's server side, between two real aioquic connections (no network).

Requests that would make the server hold too much or never finish are refused with a
RESET_STREAM the client really receives; good ones are answered with the content named.
"""

from __future__ import annotations

import hashlib

import pytest
from aioquic.quic import events
from aioquic.quic.connection import QuicConnection

from quicmig.core.app import ServerApp, content
from quicmig.core.certs import simulation_certificates
from quicmig.core.endpoint import client_configuration, server_configuration
from quicmig.core.tap import TapLogger
from quicmig.model.scenario import MAX_DOWNLOAD

CLIENT = ("192.0.2.10", 50000)
SERVER = ("203.0.113.10", 4433)
ROUNDS = 200  # exchanges: far more than a handshake and a small answer need


class Pair:
    """A client and a server connection passing datagrams directly; the server runs ServerApp."""

    def __init__(self) -> None:
        certs = simulation_certificates()
        self.client = QuicConnection(configuration=client_configuration(certs.ca_pem))
        config = server_configuration(certs, TapLogger(keep=False))
        config.quic_logger = None
        self.server = QuicConnection(
            configuration=config,
            original_destination_connection_id=self.client.original_destination_connection_id,
        )
        self.app = ServerApp(self.server)
        self.now = 0.0
        self.client.connect(SERVER, now=self.now)
        self.events: list[events.QuicEvent] = []
        self.exchange()

    def exchange(self) -> None:
        for _ in range(ROUNDS):
            moved = False
            for data, _ in self.client.datagrams_to_send(now=self.now):
                self.server.receive_datagram(data, CLIENT, now=self.now)
                moved = True
            while (event := self.server.next_event()) is not None:
                if isinstance(event, events.StreamDataReceived):
                    self.app.stream_data(event.stream_id, event.data, event.end_stream, self.now)
            for data, _ in self.server.datagrams_to_send(now=self.now):
                self.client.receive_datagram(data, SERVER, now=self.now)
                moved = True
            while (event := self.client.next_event()) is not None:
                self.events.append(event)
            if not moved:
                return
            self.now += 0.001
        raise AssertionError("the connections never went quiet")

    def request(self, line: str) -> int:
        stream_id = self.client.get_next_available_stream_id()
        self.client.send_stream_data(stream_id, f"{line}\n".encode(), end_stream=True)
        self.exchange()
        return stream_id

    def received(self, stream_id: int) -> bytes:
        return b"".join(
            e.data
            for e in self.events
            if isinstance(e, events.StreamDataReceived) and e.stream_id == stream_id
        )

    def reset(self, stream_id: int) -> bool:
        return any(
            isinstance(e, events.StreamReset) and e.stream_id == stream_id for e in self.events
        )


def test_download_is_answered_with_the_named_content() -> None:
    pair = Pair()
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
    pair = Pair()
    stream_id = pair.request(line)
    assert pair.reset(stream_id)
    assert pair.received(stream_id) == b""
    # The connection goes on: the next request is answered.
    echo = pair.client.get_next_available_stream_id()
    pair.client.send_stream_data(echo, b"ECHO\nstill here", end_stream=True)
    pair.exchange()
    assert pair.received(echo) == b"still here"


def test_content_refuses_sizes_outside_the_limit() -> None:
    with pytest.raises(ValueError, match="outside"):
        content(MAX_DOWNLOAD + 1, 0)
