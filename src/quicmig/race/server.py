"""The race's HTTPS server: one body over TLS 1.3, from any byte on, over TCP or MPTCP.

It listens in the lab's server namespace and serves `GET /download` (quicmig.race.http)
with the bytes the QUIC server sends for the same download (quicmig.core.app.content), so
all three transports deliver one body with one SHA-256. Each connection it accepts is
recorded as its socket saw it (quicmig.core.connections.Accepted): the client's address
after the NATs, the TLS handshake, the Range asked for, the bytes written, and, sampled
while it lives, the kernel's counters (TCP_INFO; for MPTCP every subflow). It never closes
a connection because the client went quiet: a connection lost to a move lingers, as it
would on a real server, until the client resets it or the run ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any

from quicmig.core.connections import Accepted, Subflow
from quicmig.core.datagram import Address
from quicmig.race import http
from quicmig.race.sockets import (
    IPPROTO_MPTCP,
    ending,
    make_in,
    mptcp_info,
    set_congestion,
    subflows,
    tcp_info,
)

CHUNK = 65536  # bytes written per drain
WRITE_HIGH = 256 * 1024  # bytes the transport buffers before drain() waits: `sent` stays honest
HANDSHAKE_TIMEOUT = 10.0  # seconds for a client's TLS handshake and request head
CLOSE_TIMEOUT = 30.0  # seconds for the rest of a complete body to leave and the client to go
BACKLOG = 16


@dataclass(slots=True)
class _Served:
    """A connection being served (mutable; `Accepted` once the run is over)."""

    record: Accepted
    sock: socket.socket  # the accepted socket: the kernel's counters are read from it
    writer: asyncio.StreamWriter | None = None  # once TLS is up
    subflows: dict[tuple[Address, Address], Subflow] = field(default_factory=dict)
    retrans: dict[tuple[Address, Address], int] = field(default_factory=dict)  # per subflow
    open: bool = True


def server_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["http/1.1"])
    return context


class RangeServer:
    """Serves `body` at `address` inside `namespace`; `clock()` is the run's time.

    It accepts by itself (not asyncio.start_server) so that each connection is dated when
    its TCP handshake is done, before TLS, and TLS starts on the raw socket at once: the
    ClientHello comes with the handshake's last ACK, before any handler could ask for it."""

    def __init__(
        self,
        body: bytes,
        *,
        address: Address,
        namespace: str | None,
        mptcp: bool,
        context: ssl.SSLContext,
        clock: Callable[[], float],
        congestion: str = "cubic",
    ) -> None:
        self.body = body
        self.address = address
        self.namespace = namespace
        self.protocol = IPPROTO_MPTCP if mptcp else socket.IPPROTO_TCP
        self.context = context
        self.clock = clock
        self.congestion = congestion
        self.served: list[_Served] = []
        self._listener: socket.socket | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        listener = make_in(self.namespace, self.protocol)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            set_congestion(listener, self.congestion)  # the accepted sockets inherit it
            listener.bind(self.address)
            listener.listen(BACKLOG)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        self._spawn(self._accepting(listener))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accepting(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, peer = await loop.sock_accept(listener)
            sock.setblocking(False)
            congestion = None
            with contextlib.suppress(OSError):
                name = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16)
                congestion = name.rstrip(b"\0").decode()
            record = Accepted((peer[0], peer[1]), self.clock(), congestion=congestion)
            served = _Served(record, sock)
            self.served.append(served)
            self.sample_one(served)  # MPTCP or not, before anything can fail
            self._spawn(self._serve(served))

    async def _serve(self, served: _Served) -> None:
        loop = asyncio.get_running_loop()
        end = "complete"
        try:
            reader = asyncio.StreamReader()
            protocol = asyncio.StreamReaderProtocol(reader)
            transport, _ = await asyncio.wait_for(
                loop.connect_accepted_socket(
                    lambda: protocol,
                    served.sock,
                    ssl=self.context,
                    ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
                ),
                HANDSHAKE_TIMEOUT,
            )
            writer = served.writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            served.record = replace(served.record, secured_at=self.clock())
            head = await asyncio.wait_for(reader.readuntil(http.END), HANDSHAKE_TIMEOUT)
            request = http.parse_request(head)
            status, answer = http.response_head(len(self.body), request.range_start)
            served.record = replace(
                served.record,
                request=request.line,
                range_start=request.range_start,
                status=status,
            )
            transport.set_write_buffer_limits(high=WRITE_HIGH)
            writer.write(answer)
            if status != 416:
                await self._send(served, writer, request.range_start or 0)
            self.sample_one(served)
            # A TLS close: what the TLS layer and the socket's transport still buffer goes
            # out first (an abort would drop it), then close_notify; the client hangs up
            # once it has the whole body.
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), CLOSE_TIMEOUT)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            end = ending(exc)
        except TimeoutError:
            end = f"no TLS handshake and request within {HANDSHAKE_TIMEOUT:g} s"
        except http.HttpError as exc:
            end = f"bad request: {exc}"
        finally:
            if end != "complete":
                self.sample_one(served)
            served.open = False
            served.record = replace(served.record, ended_at=self.clock(), end=end)
            self._abort(served)

    @staticmethod
    def _abort(served: _Served) -> None:
        if served.writer is not None:
            served.writer.transport.abort()
        else:
            served.sock.close()

    async def _send(self, served: _Served, writer: asyncio.StreamWriter, start: int) -> None:
        for offset in range(start, len(self.body), CHUNK):
            chunk = self.body[offset : offset + CHUNK]
            writer.write(chunk)
            served.record = replace(served.record, sent=served.record.sent + len(chunk))
            await writer.drain()

    # --- the kernel's counters ----------------------------------------------------------------

    def sample(self) -> None:
        """Read every open connection's counters now (the backend calls it periodically)."""
        for served in self.served:
            if served.open:
                self.sample_one(served)

    def sample_one(self, served: _Served) -> None:
        sock = served.sock
        if sock.fileno() < 0:
            return
        now = self.clock()
        record = served.record
        info = mptcp_info(sock) if self.protocol == IPPROTO_MPTCP else None
        counters = tcp_info(sock)
        if self.protocol == IPPROTO_MPTCP:
            record = replace(record, mptcp=info is not None and not info.fallback)
        if info is not None and not info.fallback:
            for local, remote, sub in subflows(sock) or []:
                key = (local, remote)
                old = served.subflows.get(key)
                samples = [*(old.samples if old else ()), (now, sub.bytes_acked)]
                first = old.first_seen if old else now
                served.subflows[key] = Subflow(local, remote, first, now, tuple(samples))
                served.retrans[key] = sub.bytes_retrans
            record = replace(
                record,
                bytes_acked=sum(s.samples[-1][1] for s in served.subflows.values()),
                # Sent again by a subflow's TCP, or by MPTCP on another subflow (reinjected).
                bytes_retrans=info.bytes_retrans + sum(served.retrans.values()),
                subflows=tuple(served.subflows.values()),
            )
        elif counters is not None:
            record = replace(
                record,
                bytes_acked=counters.bytes_acked,
                bytes_retrans=counters.bytes_retrans,
                samples=(*record.samples, (now, counters.bytes_acked)),
            )
        served.record = record

    def records(self) -> list[Accepted]:
        return [served.record for served in self.served]

    async def aclose(self) -> None:
        """Stop listening, end every connection (an abort: no FIN wait) and its task."""
        for served in self.served:
            if served.open:
                self.sample_one(served)
            self._abort(served)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._listener is not None:
            self._listener.close()
