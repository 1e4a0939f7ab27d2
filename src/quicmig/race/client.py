"""The race's TCP and MPTCP client: a download that resumes the way a well-written app does.

One connection at a time: a TCP (or MPTCP) handshake, TLS 1.3 (Python's ssl), `GET
/download` from the first byte it does not hold yet (quicmig.race.http). It notices a
broken connection the two ways an application can: an error from its socket (a reset, a
route gone), or no byte for `stall_timeout` seconds. The kernel tells it nothing when its
path silently dies (a WiFi link gone, an address removed, a NAT that drops): only the
timeout does. The defaults are OkHttp's (Android's HTTP client, the one most phone apps
use): a 10 s read timeout and a 10 s connect timeout that covers TLS too. curl, Python's
requests and Go's net/http have no read timeout unless asked; Apple's URLSession's is
60 s; httpx's is 5 s. Then it reconnects at once with a new TCP and TLS handshake and asks
for the rest with `Range: bytes=N-`; an attempt that brought nothing is retried after
0.25 s, doubling up to 2 s. Every attempt is recorded (quicmig.core.connections.Attempt):
its handshakes, the Range asked for, the bytes received and those received twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from quicmig.core.app import Delivery
from quicmig.core.connections import Attempt, Subflow
from quicmig.core.datagram import Address
from quicmig.race import http
from quicmig.race.sockets import (
    IPPROTO_MPTCP,
    connect,
    ending,
    make_in,
    mptcp_info,
    set_congestion,
    subflows,
)

READ = 65536  # bytes asked for per read
RETRY_FIRST = 0.25  # seconds before retrying an attempt that brought no byte
RETRY_MAX = 2.0  # seconds: the longest wait between attempts


@dataclass(frozen=True, slots=True)
class ClientSettings:
    stall_timeout: float = 10.0  # seconds without a byte: OkHttp's default read timeout
    connect_timeout: float = 10.0  # seconds for TCP and TLS: OkHttp's connect timeout
    congestion: str = "cubic"  # TCP congestion control of both ends' sockets (Linux's default)


def client_context(ca: Path, keylog: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.set_alpn_protocols(["http/1.1"])
    if keylog is not None:  # SSLKEYLOGFILE format: Wireshark decrypts the capture with it
        context.keylog_filename = str(keylog)
    return context


class ResumingDownload:
    """Downloads `size` bytes from `server`; `run()` until done or out of time."""

    def __init__(
        self,
        server: Address,
        *,
        size: int,
        namespace: str | None,
        mptcp: bool,
        context: ssl.SSLContext,
        server_name: str,
        clock: Callable[[], float],
        settings: ClientSettings,
    ) -> None:
        self.server = server
        self.size = size
        self.namespace = namespace
        self.mptcp = mptcp
        self.context = context
        self.server_name = server_name
        self.clock = clock
        self.settings = settings
        self.delivery = Delivery()
        self.attempts: list[Attempt] = []
        self.fallback: str | None = None  # why MPTCP could not be used
        self.started_at: float | None = None
        self.completed_at: float | None = None
        self.digest: str | None = None
        self._hash = hashlib.sha256()
        self._socket: socket.socket | None = None  # the current attempt's
        self._subflows: dict[tuple[Address, Address], Subflow] = {}

    @property
    def held(self) -> int:
        return self.delivery.total

    async def run(self, until: float) -> None:
        """Attempt after attempt until the body is complete or the clock reaches `until`."""
        self.started_at = self.clock()
        idle = 0  # attempts in a row that brought nothing
        while self.held < self.size and self.clock() < until:
            before = self.held
            await self._attempt(until)
            if self.held >= self.size:
                break
            idle = 0 if self.held > before else idle + 1
            if idle:
                wait = min(RETRY_MAX, RETRY_FIRST * 2 ** (idle - 1))
                await asyncio.sleep(max(0.0, min(wait, until - self.clock())))

    def _socket_for_attempt(self) -> socket.socket:
        sock: socket.socket | None = None
        if self.mptcp and self.fallback is None:
            try:
                sock = make_in(self.namespace, IPPROTO_MPTCP)
            except OSError as exc:
                self.fallback = f"socket(IPPROTO_MPTCP) failed ({exc.strerror}): plain TCP instead"
        if sock is None:
            sock = make_in(self.namespace, socket.IPPROTO_TCP)
        try:
            set_congestion(sock, self.settings.congestion)
        except BaseException:
            sock.close()
            raise
        return sock

    async def _attempt(self, until: float) -> None:
        settings = self.settings
        attempt = Attempt(started_at=self.clock(), range_start=self.held)
        sock = self._socket_for_attempt()
        self._socket, self._subflows = sock, {}
        writer: asyncio.StreamWriter | None = None
        phase = "connect"
        end = "run ended"  # cancelled: the run's time was up
        try:
            budget = max(0.001, min(settings.connect_timeout, until - self.clock()))
            await asyncio.wait_for(connect(sock, self.server), budget)
            local = sock.getsockname()
            attempt = replace(attempt, connected_at=self.clock(), local=(local[0], local[1]))
            budget = max(0.001, settings.connect_timeout - (self.clock() - attempt.started_at))
            reader, opened = await asyncio.wait_for(
                asyncio.open_connection(
                    sock=sock,
                    ssl=self.context,
                    server_hostname=self.server_name,
                    ssl_handshake_timeout=budget,
                ),
                budget,
            )
            writer = opened
            info = mptcp_info(sock) if self.mptcp and self.fallback is None else None
            attempt = replace(
                attempt,
                secured_at=self.clock(),
                mptcp=(info is not None and not info.fallback) if self.mptcp else None,
            )
            phase = "read"
            opened.write(http.request(self.server_name, self.held))
            head = await asyncio.wait_for(reader.readuntil(http.END), settings.stall_timeout)
            response = http.parse_response(head, self.size)
            if response.start > self.held:
                raise http.HttpError(f"the body from byte {response.start}, not {self.held}")
            attempt = replace(attempt, status=response.status)
            skip = self.held - response.start  # bytes held already: fetched twice
            left = response.length
            while left > 0:
                data = await asyncio.wait_for(reader.read(min(READ, left)), settings.stall_timeout)
                if not data:
                    raise asyncio.IncompleteReadError(b"", left)
                now = self.clock()
                left -= len(data)
                again = min(skip, len(data))
                skip -= again
                attempt = replace(
                    attempt,
                    first_byte_at=attempt.first_byte_at if attempt.first_byte_at else now,
                    received=attempt.received + len(data),
                    refetched=attempt.refetched + again,
                )
                self._deliver(data[again:], now)
            end = "complete"
        except TimeoutError:
            end = (
                f"stalled {settings.stall_timeout:g} s"
                if phase == "read"
                else f"connect: no TCP and TLS handshake within {settings.connect_timeout:g} s"
            )
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            end = ending(exc) if phase == "read" else f"connect: {ending(exc)}"
        except http.HttpError as exc:
            end = f"bad response: {exc}"
        finally:
            self.sample()
            self._socket = None
            if writer is not None:
                writer.transport.abort()
            else:
                sock.close()
            self.attempts.append(
                replace(
                    attempt,
                    ended_at=self.clock(),
                    end=end,
                    subflows=tuple(self._subflows.values()),
                )
            )

    def _deliver(self, data: bytes, now: float) -> None:
        if not data:
            return
        self._hash.update(data)
        self.delivery.add(now, len(data))
        if self.held >= self.size:
            self.digest = self._hash.hexdigest()
            self.completed_at = now

    def sample(self) -> None:
        """Record the current MPTCP connection's subflows (the backend calls it
        periodically): which local addresses carry it, and the bytes each received."""
        sock = self._socket
        if sock is None or not self.mptcp or sock.fileno() < 0:
            return
        now = self.clock()
        with contextlib.suppress(OSError):
            for local, remote, counters in subflows(sock) or []:
                old = self._subflows.get((local, remote))
                samples = (*(old.samples if old else ()), (now, counters.bytes_received))
                first = old.first_seen if old else now
                self._subflows[(local, remote)] = Subflow(local, remote, first, now, samples)
