"""The HTTP/3 servers under test, one per process, both serving /bytes/N = content(N, 0).

    python benchmarks/servers.py quicmig|stock --port P --certs DIR [--retry] [--history N]
        [--max-half-open N] [--stack stock|quicmig]

`quicmig` is quicmig's LiveServer (its ServerEndpoint, tracker and HTTP/3 app); `stock` is
aioquic's own asyncio server (`aioquic.asyncio.server.QuicServer`, what `serve()` builds) with
a minimal HTTP/3 handler that sends the body whole, as aioquic's examples do, on a socket
with the same receive buffer as quicmig's. Prints `ready PORT` once listening, then
answers each line on stdin with one JSON line:

    stats        CPU seconds (user + system), RSS and peak RSS (kB, /proc), aioquic
                 connections alive after a garbage collection, and for quicmig its totals and
                 every kept migration as [connection, old port, new port]
    reset-peak   reset the kernel's peak RSS (VmHWM), so the next wave's peak can be read
    quit
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
from pathlib import Path
from typing import Any

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import QuicEvent

from quicmig.commands.server import server_extensions
from quicmig.core.app import content
from quicmig.core.endpoint import ServerLimits
from quicmig.live.certs import CertPaths
from quicmig.live.server import DEFAULT_HANDSHAKE_TIMEOUT, RECEIVE_BUFFER, LiveServer
from quicmig.live.udp import bind_socket

HOST = "127.0.0.1"
BYTES_SEED = 0  # as quicmig's /bytes/N


def proc_status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


class StockH3(QuicConnectionProtocol):
    """aioquic's protocol with HTTP/3: GET /bytes/N answers content(N, 0), whole."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)

    def quic_event_received(self, event: QuicEvent) -> None:
        for h3_event in self.h3.handle_event(event):
            if isinstance(h3_event, HeadersReceived):
                path = dict(h3_event.headers).get(b":path", b"").decode()
                count = path.removeprefix("/bytes/")
                ok = path.startswith("/bytes/") and count.isdigit()
                body = content(int(count), BYTES_SEED) if ok else b"not found\n"
                self.h3.send_headers(
                    h3_event.stream_id,
                    [
                        (b":status", b"200" if ok else b"404"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                )
                self.h3.send_data(h3_event.stream_id, body, end_stream=True)


def stats(server: LiveServer | None) -> dict[str, Any]:
    gc.collect()
    times = os.times()
    out: dict[str, Any] = {
        "cpu": times.user + times.system,
        "rss_kb": proc_status_kb("VmRSS"),
        "hwm_kb": proc_status_kb("VmHWM"),
        "quic_connections": sum(isinstance(o, QuicConnection) for o in gc.get_objects()),
    }
    if server is not None:
        out["totals"] = server.totals()
        out["migrations"] = [
            [live.number, mig.old_peer[1], mig.new_peer[1]]
            for live in server.connections
            for mig in live.server_conn.tracker.migrations
        ]
    return out


async def answer_requests(server: LiveServer | None) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().strip():
        if line == "stats":
            print(json.dumps(stats(server)), flush=True)
        elif line == "reset-peak":
            Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM
            print(json.dumps({"ok": True}), flush=True)
        elif line == "quit":
            return


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=["quicmig", "stock"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--certs", type=Path, required=True)
    parser.add_argument("--retry", action="store_true")
    parser.add_argument("--history", type=int, default=1000)
    parser.add_argument("--max-half-open", type=int, default=1000)
    parser.add_argument("--stack", default="stock", choices=["stock", "quicmig"])
    args = parser.parse_args()
    certs = CertPaths.in_dir(args.certs)
    if args.kind == "quicmig":
        limits = ServerLimits(args.history, args.max_half_open, DEFAULT_HANDSHAKE_TIMEOUT)
        server = LiveServer(
            certs,
            [(HOST, args.port)],
            log=lambda line: None,
            limits=limits,
            retry=args.retry,
            extensions=server_extensions(args.stack),
        )
        async with server:
            print(f"ready {server.addresses[0][1]}", flush=True)
            await answer_requests(server)
        return
    config = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN)
    config.load_cert_chain(certs.cert, certs.key)
    # What aioquic.asyncio.serve() does, on a socket with the receive buffer quicmig's server
    # asks for, so both serving loops meet the same kernel drops.
    sock = bind_socket((HOST, args.port), "stock server", receive_buffer=RECEIVE_BUFFER)
    _, stock = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: QuicServer(configuration=config, create_protocol=StockH3, retry=args.retry),
        sock=sock,
    )
    print(f"ready {sock.getsockname()[1]}", flush=True)
    try:
        await answer_requests(None)
    finally:
        stock.close()


if __name__ == "__main__":
    asyncio.run(main())
