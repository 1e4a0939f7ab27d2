"""The yardstick: two aioquic connections moving a download with no network model at all.

Datagrams go straight from one connection to the other at the same instant; time only
jumps forward to the next timer when neither side has anything to send. What is left is
the cost of aioquic itself (TLS, packet protection, recovery) for the same bytes.
"""

from __future__ import annotations

import hashlib

from aioquic.quic import events
from aioquic.quic.connection import QuicConnection

from quicmig.core.app import content
from quicmig.core.certs import simulation_certificates
from quicmig.core.endpoint import client_configuration, server_configuration
from quicmig.core.tap import TapLogger

CLIENT = ("192.0.2.10", 50000)
SERVER = ("203.0.113.10", 4433)


def bare_download(size: int, seed: int = 1) -> tuple[int, str]:
    """Move `size` bytes server -> client; return (datagrams exchanged, SHA-256 received)."""
    certs = simulation_certificates()
    client = QuicConnection(configuration=client_configuration(certs.ca_pem))
    server_config = server_configuration(certs, TapLogger(keep=False))
    server_config.quic_logger = None
    server: QuicConnection | None = None
    now = 0.0
    client.connect(SERVER, now=now)
    digest = hashlib.sha256()
    received = 0
    datagrams = 0
    requested = False
    answered = False
    while received < size:
        moved = False
        for data, _ in client.datagrams_to_send(now=now):
            if server is None:
                server = QuicConnection(
                    configuration=server_config,
                    original_destination_connection_id=client.original_destination_connection_id,
                )
            server.receive_datagram(data, CLIENT, now=now)
            datagrams += 1
            moved = True
        if server is not None:
            while (event := server.next_event()) is not None:
                if (
                    isinstance(event, events.StreamDataReceived)
                    and event.end_stream
                    and not answered
                ):
                    server.send_stream_data(event.stream_id, content(size, seed), end_stream=True)
                    answered = True
            for data, _ in server.datagrams_to_send(now=now):
                client.receive_datagram(data, SERVER, now=now)
                datagrams += 1
                moved = True
        while (event := client.next_event()) is not None:
            if isinstance(event, events.HandshakeCompleted) and not requested:
                stream_id = client.get_next_available_stream_id()
                client.send_stream_data(
                    stream_id, f"DOWNLOAD {size} {seed}\n".encode(), end_stream=True
                )
                requested = True
            elif isinstance(event, events.StreamDataReceived):
                digest.update(event.data)
                received += len(event.data)
        if not moved:
            timers = [client.get_timer(), server.get_timer() if server else None]
            now = max(now, min(t for t in timers if t is not None))
            client.handle_timer(now=now)
            if server is not None:
                server.handle_timer(now=now)
    return datagrams, digest.hexdigest()
