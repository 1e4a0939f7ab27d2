"""Concurrent HTTP/3 clients built only from aioquic's public API, each moving mid-download.

    python benchmarks/h3clients.py --port P --ca ca.pem --clients N [--size 200000]
        [--spread S] [--timeout S] [--no-move]

Each client is `aioquic.asyncio.connect()` with an HTTP/3 protocol: it GETs /bytes/SIZE,
hashes the body as it arrives, and once half of it is in opens a new UDP socket (a new source
port) and hands it to its protocol as the new transport (`create_datagram_endpoint(sock=...)`
calls the protocol's `connection_made`); the old socket is closed, as a NAT forgetting its
mapping would. The starts are spread evenly over `--spread` seconds. Prints one JSON object:
the clients' results and this process's CPU seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import socket
import ssl
from pathlib import Path
from typing import Any, cast

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent

from quicmig.core.app import content_digest

BYTES_SEED = 0  # both servers serve /bytes/N = content(N, 0)
RECEIVE_BUFFER = 1 << 20  # bytes per client socket: fewer kernel drops when this process lags
CLOSE_GRACE = 30.0  # seconds for a client's close after its download


class MovingClient(QuicConnectionProtocol):
    """aioquic's client protocol with HTTP/3: one GET, and one move to a new UDP socket."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.transports: list[asyncio.DatagramTransport] = []
        self.digest = hashlib.sha256()
        self.received = 0
        self.status = b""
        self.size = 0
        self.move_at: int | None = None  # bytes received when it moves
        self.ports: tuple[int, int] | None = None  # (old, new) local port
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._moving: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        self.transports.append(cast(asyncio.DatagramTransport, transport))

    async def get(self, size: int, move: bool) -> None:
        self.size = size
        self.move_at = size // 2 if move else None
        stream_id = self._quic.get_next_available_stream_id()
        self.h3.send_headers(
            stream_id,
            [
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", b"localhost"),
                (b":path", f"/bytes/{size}".encode()),
            ],
            end_stream=True,
        )
        self.transmit()
        await self.done
        if self._moving is not None:
            await self._moving

    def quic_event_received(self, event: QuicEvent) -> None:
        for h3_event in self.h3.handle_event(event):
            if isinstance(h3_event, HeadersReceived):
                self.status = dict(h3_event.headers).get(b":status", b"")
            elif isinstance(h3_event, DataReceived):
                self.digest.update(h3_event.data)
                self.received += len(h3_event.data)
                if (
                    self.move_at is not None
                    and self._moving is None
                    and self.received >= self.move_at
                ):
                    self._moving = asyncio.ensure_future(self.move())
            else:
                continue
            if h3_event.stream_ended and not self.done.done():
                self.done.set_result(None)

    async def move(self) -> None:
        """A new socket, on a new port, becomes the transport; the old one is closed."""
        old = self.transports[-1]
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # as connect() does
        sock.bind(("::", 0, 0, 0))
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, sock=sock)
        old_port = old.get_extra_info("sockname")[1]
        new_port = self.transports[-1].get_extra_info("sockname")[1]
        old.close()
        self.ports = (old_port, new_port)
        self._quic.send_ping(1)  # a non-probing packet from the new port at once
        self.transmit()

    def close_transports(self) -> None:
        for transport in self.transports:
            transport.close()


async def one_client(
    port: int, ca: Path, size: int, move: bool, delay: float, timeout: float, expected: str
) -> dict[str, Any]:
    await asyncio.sleep(delay)
    loop = asyncio.get_running_loop()
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
    config.load_verify_locations(cafile=str(ca))
    config.verify_mode = ssl.CERT_REQUIRED
    config.server_name = "localhost"
    started = loop.time()
    deadline = started + timeout  # for the handshake and the download
    result: dict[str, Any] = {"ok": False, "intact": False, "ports": None, "error": None}
    client: MovingClient | None = None
    try:
        # The close (CONNECTION_CLOSE, then aioquic's closing period) gets CLOSE_GRACE more.
        async with asyncio.timeout_at(deadline + CLOSE_GRACE):
            async with connect(
                "127.0.0.1", port, configuration=config, create_protocol=MovingClient
            ) as protocol:
                client = cast(MovingClient, protocol)
                result["handshake"] = loop.time() - started
                async with asyncio.timeout_at(deadline):
                    await client.get(size, move)
                result["seconds"] = loop.time() - started
                result["ok"] = client.status == b"200" and client.received == size
                result["intact"] = result["ok"] and client.digest.hexdigest() == expected
                result["ports"] = client.ports
    except TimeoutError:
        result["error"] = "close timeout" if "seconds" in result else "timeout"
    except Exception as exc:  # a failed handshake, a reset: reported, not raised
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if client is not None:
            result["received"] = client.received
            result["ports"] = client.ports
            client.close_transports()
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ca", type=Path, required=True)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--size", type=int, default=200_000)
    parser.add_argument("--spread", type=float, default=1.0, help="seconds over which to start")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per client")
    parser.add_argument("--no-move", action="store_true")
    args = parser.parse_args()
    expected = content_digest(args.size, BYTES_SEED)
    step = args.spread / max(1, args.clients)
    results = await asyncio.gather(
        *(
            one_client(
                args.port, args.ca, args.size, not args.no_move, i * step, args.timeout, expected
            )
            for i in range(args.clients)
        )
    )
    times = os.times()
    print(json.dumps({"clients": results, "cpu": times.user + times.system}))


if __name__ == "__main__":
    asyncio.run(main())
