"""A standard HTTP/3 client, not ours, across a NAT rebinding made by `quicmig proxy`.

Three programs: `quicmig server` (which speaks ALPN h3), `quicmig proxy` in front of it, and an
HTTP/3 client built only from aioquic's public API (`aioquic.asyncio.connect`,
`QuicConnectionProtocol`, `aioquic.h3.connection.H3Connection`), the way aioquic's own
examples/http3_client.py is. The client GETs /bytes/N; a third of the way through the body the
proxy is told to rebind (SIGUSR1), so the rest of the body reaches the client after the server
has seen the client's packets arrive from a new port. Then, over the same connection, GET
/migrations must show that port change, from the proxy's old source port to its new one,
validated with PATH_CHALLENGE / PATH_RESPONSE.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol, QuicStreamHandler
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import QuicEvent
from conftest import start_quicmig, stop_process

from quicmig.cli import main
from quicmig.core.app import content

SIZE = 6_000_000  # bytes of /bytes/N
BYTES_SEED = 0  # the server's /bytes/N is content(N, 0) (quicmig.live.server)
TEST_TIMEOUT = 40.0  # seconds for the whole exchange
REBIND_LINE = re.compile(r"rebind 1: client \S+ now reaches \S+ from (\S+) \(was (\S+)\)")


class Response:
    def __init__(self) -> None:
        self.headers: dict[bytes, bytes] = {}
        self.body = bytearray()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class H3Client(QuicConnectionProtocol):
    """A minimal HTTP/3 client over aioquic's public API, as in its examples/http3_client.py."""

    def __init__(self, quic: QuicConnection, stream_handler: QuicStreamHandler | None = None):
        super().__init__(quic, stream_handler)
        self.quic = quic
        self.h3 = H3Connection(quic)
        self.responses: dict[int, Response] = {}
        # called with the body bytes received so far, on each DATA frame
        self.on_body: Callable[[int], None] | None = None

    def quic_event_received(self, event: QuicEvent) -> None:
        for h3_event in self.h3.handle_event(event):
            if not isinstance(h3_event, HeadersReceived | DataReceived):
                continue
            response = self.responses.get(h3_event.stream_id)
            if response is None:
                continue
            if isinstance(h3_event, HeadersReceived):
                response.headers.update(dict(h3_event.headers))
            else:
                response.body += h3_event.data
                if self.on_body is not None:
                    self.on_body(len(response.body))
            if h3_event.stream_ended and not response.done.done():
                response.done.set_result(None)

    async def get(self, path: str) -> Response:
        stream_id = self.quic.get_next_available_stream_id()
        response = Response()
        self.responses[stream_id] = response
        self.h3.send_headers(
            stream_id,
            [
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", b"localhost"),
                (b":path", path.encode()),
                (b"user-agent", b"aioquic-h3-example"),
            ],
            end_stream=True,
        )
        self.transmit()
        await response.done
        return response


async def _exchange(folder: Path) -> dict[str, Any]:
    server, line = await start_quicmig(
        ["server", "--host", "127.0.0.1", "--port", "0", "--cert", str(folder / "cert.pem"),
         "--key", str(folder / "key.pem")],
        re.compile(r"Starting QUIC server on 127\.0\.0\.1:\d+"),
    )  # fmt: skip
    processes = [server]
    try:
        server_port = int(re.findall(r"127\.0\.0\.1:(\d+)", line)[0])
        proxy, line = await start_quicmig(
            # --delay-ms: with none, a rebinding can fall when nothing is in flight through the
            # proxy; the server's next packets go to the closed mapping and the client, which
            # only receives, says nothing (nat-rebinding-idle). Packets in the proxy's pipes
            # cross the rebinding, and the client's ACKs for them carry the new port.
            ["proxy", "--listen", "127.0.0.1:0", "--upstream", f"127.0.0.1:{server_port}",
             "--delay-ms", "5", "--control", "off", "--duration", str(TEST_TIMEOUT)],
            re.compile(r"quicmig proxy: 127\.0\.0\.1:\d+ →"),
        )  # fmt: skip
        processes.append(proxy)
        proxy_port = int(re.findall(r"127\.0\.0\.1:(\d+) →", line)[0])
        rebind_lines: list[str] = []
        at_rebind: list[int] = []  # body bytes the client had when the proxy said it rebound
        received = [0]
        asked = asyncio.Event()

        async def watch_proxy() -> None:
            assert proxy.stdout is not None
            while text := (await proxy.stdout.readline()).decode():
                if REBIND_LINE.search(text):
                    rebind_lines.append(text.strip())
                    at_rebind.append(received[0])

        watcher = asyncio.ensure_future(watch_proxy())
        configuration = QuicConfiguration(
            is_client=True, alpn_protocols=H3_ALPN, server_name="localhost"
        )
        configuration.load_verify_locations(cafile=str(folder / "ca.pem"))
        async with connect(
            "127.0.0.1", proxy_port, configuration=configuration, create_protocol=H3Client
        ) as client:
            assert isinstance(client, H3Client)

            def on_body(count: int) -> None:
                received[0] = count
                if count >= SIZE // 3 and not asked.is_set() and proxy.returncode is None:
                    asked.set()
                    proxy.send_signal(signal.SIGUSR1)

            client.on_body = on_body
            body = await client.get(f"/bytes/{SIZE}")
            client.on_body = None
            migrations = await client.get("/migrations")
        await asyncio.sleep(0.1)
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        return {
            "status": body.headers.get(b":status"),
            "length": len(body.body),
            "sha256": hashlib.sha256(body.body).hexdigest(),
            "content_length": body.headers.get(b"content-length"),
            "records": json.loads(bytes(migrations.body)),
            "rebind_lines": rebind_lines,
            "received_at_rebind": at_rebind,
        }
    finally:
        for process in reversed(processes):
            await stop_process(process)


def test_aioquic_h3_client_gets_bytes_across_a_proxy_rebinding(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["certs", "--dir", str(tmp_path)]) == 0
    capsys.readouterr()
    out = asyncio.run(asyncio.wait_for(_exchange(tmp_path), TEST_TIMEOUT))

    assert out["status"] == b"200" and out["content_length"] == str(SIZE).encode()
    assert out["length"] == SIZE
    assert out["sha256"] == hashlib.sha256(content(SIZE, BYTES_SEED)).hexdigest()

    (line,) = out["rebind_lines"]
    new_source, old_source = REBIND_LINE.search(line).groups()  # type: ignore[union-attr]
    (received,) = out["received_at_rebind"]
    assert received < SIZE, "the rebinding must happen while the body is still arriving"

    records = out["records"]
    (ours,) = [c for c in records["connections"] if c["connection"] == records["requested_by"]]
    assert ours["alpn"] == "h3"
    (migration,) = ours["migrations"]
    # The server saw exactly what the proxy did: its old source port, then its new one.
    assert migration["observed"] == "port_change"
    assert (migration["old_peer"], migration["new_peer"]) == (old_source, new_source)
    assert old_source.rpartition(":")[0] == new_source.rpartition(":")[0] == "127.0.0.1"
    assert migration["validated_at"] is not None and migration["challenges"] >= 1
    tracker = ours["tracker"]  # the server's MigrationTracker, as its record
    assert tracker["peers_seen"] == [old_source, new_source] and ours["peer"] == new_source
    assert tracker["peer"] == new_source
    # The server challenged the new path, and every PATH_CHALLENGE it sent was answered.
    assert new_source in [c["peer"] for c in tracker["challenges"]]
    assert all(c["answered_at"] is not None for c in tracker["challenges"])
