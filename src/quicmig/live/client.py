"""The live QUIC client: `ClientEndpoint` (the simulator's) on real asyncio UDP sockets.

Its moves are real: the client really sends from another socket, one mover per kind.

- `rebind()`: a new UDP socket on the same address (a new source port), or on `address` (an
  address rebinding); the old one is closed. The client behaves as if it did not notice (RFC
  9000 section 9.3): same connection ID; one PING stands for "its next packet", so an idle
  client does not stay silent. This is what a NAT rebinding looks like to the server.
- `move_to(address)`: a new socket on another local address; an active migration (an IP
  change), so a fresh connection ID and a PING at once (section 9.5).
- `switch(address, mode, ...)`: like a WiFi -> cellular handover, break-before-make (old
  socket closed, a gap, then the new one) or make-before-break (the new socket sends at once,
  the old one keeps receiving for an overlap), with a new CID unless told otherwise.
- `rotate_cid()`: a fresh connection ID on the same path (section 9.5).

What the server made of it is fetched from the server over the same connection (`MIGRATIONS`).
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from aioquic.quic.connection import QuicConnection
from cryptography import x509

from quicmig.aioquic_ext import connection_class
from quicmig.core.app import ClientWorkload, content
from quicmig.core.datagram import Address, format_address
from quicmig.core.endpoint import ClientEndpoint, Closed, HandshakeDone, client_configuration
from quicmig.errors import InputError, QuicmigError
from quicmig.live.server import MIGRATIONS_VERB
from quicmig.live.udp import Timer, UdpSocket, bind_error, family_of, open_socket
from quicmig.model.events import EventKind, SwitchMode
from quicmig.model.scenario import QuicExtensions

DEFAULT_IPV4_ADDRESSES = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
DEFAULT_IPV6_ADDRESSES = ("::1",)
DEFAULT_TIMEOUT = 5.0  # seconds: handshake and each request
DEFAULT_GAP = 0.2  # seconds without any socket (break-before-make) or with both (make-before)
CRYPTO_ERRORS = range(0x100, 0x200)  # RFC 9001 section 4.8: TLS alerts as QUIC errors
# aioquic's reason when the certificate is for other names: "hostname 'x' doesn't match
# either of DNSPattern(pattern=b'localhost'), IPAddressPattern(pattern=IPv4Address('...'))"
HOSTNAME_MISMATCH = re.compile(r"hostname '.*' doesn't match")
CERT_NAME = re.compile(r"pattern=b'([^']+)'|Address\('([^']+)'\)")


def certificate_names(reason: str) -> list[str] | None:
    """The names a certificate holds, from aioquic's hostname-mismatch reason (else None)."""
    if not HOSTNAME_MISMATCH.search(reason):
        return None
    return [dns or ip for dns, ip in CERT_NAME.findall(reason)]


def default_addresses(server_host: str) -> tuple[str, ...]:
    """Local addresses to move between: loopback ones for a loopback server, else any."""
    ip = ipaddress.ip_address(server_host)
    if ip.is_loopback:
        return DEFAULT_IPV6_ADDRESSES if ip.version == 6 else DEFAULT_IPV4_ADDRESSES
    return ("::",) if ip.version == 6 else ("0.0.0.0",)


class MigrationRefused(QuicmigError):
    """The client will not migrate actively: the server asked it not to."""


@dataclass(frozen=True, slots=True)
class Move:
    """One move the client made: what it did, not what the server saw."""

    kind: EventKind
    at: float  # seconds on the client's clock
    old_local: Address
    new_local: Address
    new_cid: bool
    detail: str = ""


@dataclass(slots=True)
class _Request:
    stream_id: int
    sent_at: float
    future: asyncio.Future[bytes]
    keep: bool  # keep the body (False for downloads: only count and hash)
    on_data: Callable[[int], None] | None
    body: bytearray = field(default_factory=bytearray)
    received: int = 0
    sha256: Any = field(default_factory=hashlib.sha256)
    done_at: float | None = None


class RequestWorkload(ClientWorkload):
    """Requests on demand over the message protocol, each answered through a future.

    It can carry a scenario's own workload (`scenario`: the simulator's DownloadClient,
    MessagesClient or StreamClient), started with the connection as in the simulator; streams
    that are not requests made here are that workload's, and `scenario_done` is set when it
    completes or fails.
    """

    def __init__(self, conn: QuicConnection, scenario: ClientWorkload | None = None) -> None:
        super().__init__(conn)
        self.requests: dict[int, _Request] = {}
        self.scenario = scenario
        self.scenario_done = asyncio.Event()

    def start(self, now: float) -> None:
        super().start(now)
        if self.scenario is not None:
            self.scenario.start(now)

    def get_timer(self) -> float | None:
        running = self._running_scenario()
        return running.get_timer() if running is not None else None

    def handle_timer(self, now: float) -> None:
        running = self._running_scenario()
        if running is not None:
            running.handle_timer(now)
            self._note_scenario()

    def _running_scenario(self) -> ClientWorkload | None:
        return self.scenario if self.scenario is not None and not self.scenario.done else None

    def _note_scenario(self) -> None:
        if self.scenario is not None and self.scenario.done:
            self.scenario_done.set()

    def open(
        self,
        line: str,
        body: bytes,
        now: float,
        keep: bool = True,
        on_data: Callable[[int], None] | None = None,
    ) -> _Request:
        stream_id = self._request(line, body)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        request = _Request(stream_id, now, future, keep, on_data)
        self.requests[stream_id] = request
        return request

    def stream_data(self, stream_id: int, data: bytes, end_stream: bool, now: float) -> None:
        super().stream_data(stream_id, data, end_stream, now)
        request = self.requests.get(stream_id)
        if request is None:
            if self.scenario is not None:
                self.scenario.stream_data(stream_id, data, end_stream, now)
                self._note_scenario()
            return
        request.received += len(data)
        request.sha256.update(data)
        if request.keep:
            request.body += data
        if request.on_data is not None:
            request.on_data(request.received)
        if end_stream:
            request.done_at = now
            del self.requests[stream_id]
            if not request.future.done():
                request.future.set_result(bytes(request.body))

    def stream_reset(self, stream_id: int, now: float) -> None:
        request = self.requests.pop(stream_id, None)
        if request is None and self.scenario is not None:
            self.scenario.stream_reset(stream_id, now)
            self._note_scenario()
        elif request is not None and not request.future.done():
            request.future.set_exception(
                QuicmigError(f"the server refused request on stream {stream_id}")
            )

    def fail_all(self, error: Exception) -> None:
        for request in self.requests.values():
            if not request.future.done():
                request.future.set_exception(error)
        self.requests.clear()
        running = self._running_scenario()
        if running is not None:
            running.failed = str(error)
        self.scenario_done.set()


@dataclass(frozen=True, slots=True)
class Download:
    size: int  # bytes asked for
    received: int  # bytes received
    stream_id: int
    sha256: str  # of what the client received
    expected_sha256: str  # of what the protocol says the server sends
    seconds: float

    @property
    def intact(self) -> bool:
        return self.received == self.size and self.sha256 == self.expected_sha256


class LiveClient:
    """One live QUIC connection that can migrate; use as `async with LiveClient(...)`."""

    def __init__(
        self,
        server: Address,
        *,
        ca: Path | None = None,
        insecure: bool = False,
        server_name: str | None = None,
        addresses: Sequence[str] | None = None,
        secrets_log: TextIO | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        honour_disable_migration: bool = True,
        keepalive: float | None = None,
        clock: Callable[[], float] | None = None,
        workload: Callable[[QuicConnection], ClientWorkload] | None = None,
    ) -> None:
        """`honour_disable_migration`: refuse active moves once the server sent
        disable_active_migration (RFC 9000 section 18.2); False migrates anyway, to show
        what the server does then. `keepalive` (seconds): PING after this long without
        sending. `clock` (seconds): the run's clock, so that the client's times compare with
        the server tracker's; by default the time since connect(). `workload`: makes a
        scenario workload for the connection (see RequestWorkload)."""
        if ca is None and not insecure:
            raise ValueError("give a CA to verify the server against, or insecure=True")
        self.server = server
        self.ca = ca
        self.insecure = insecure
        self.addresses = tuple(addresses) if addresses else default_addresses(server[0])
        self.timeout = timeout
        self.keepalive = keepalive
        ca_pem = None
        if not insecure:
            assert ca is not None
            try:
                # aioquic only stores the path and fails inside the handshake; read it now.
                ca_pem = ca.read_bytes()
                x509.load_pem_x509_certificates(ca_pem)
            except (OSError, ValueError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not a PEM certificate"
                raise InputError(
                    f"cannot load the CA certificate {ca} ({reason}): the server writes ca.pem "
                    "beside its cert.pem on first start (or run `quicmig certs`); pass it with "
                    "--ca FILE, or skip verification with --insecure"
                ) from exc
        self.server_name = server_name or server[0]
        self._config = client_configuration(
            ca_pem, secrets_log=secrets_log, server_name=self.server_name
        )
        self._workload: RequestWorkload | None = None
        # Stock aioquic 1.7.2 drops the parameter; the extension reads it (aioquic_ext.py).
        self._connection_class = connection_class(
            QuicExtensions(honour_disable_migration=honour_disable_migration)
        )
        self.endpoint: ClientEndpoint | None = None
        self.moves: list[Move] = []
        self.handshake_seconds: float | None = None
        self._sockets: list[UdpSocket] = []
        self._current: UdpSocket | None = None  # the socket we send from (None: no network)
        self._handshake: asyncio.Future[None] | None = None
        self._timer: Timer | None = None
        self._t0 = 0.0
        self._clock = clock
        self._scenario_workload = workload
        self._closed: Closed | None = None

    # --- clock and driver ---------------------------------------------------------------

    def now(self) -> float:
        if self._clock is not None:
            return self._clock()
        return asyncio.get_running_loop().time() - self._t0

    @property
    def closed(self) -> Closed | None:
        """How the connection ended, once it has."""
        return self._closed

    @property
    def local(self) -> Address:
        """The address the client currently sends from."""
        return self._current.local if self._current is not None else ("", 0)

    @property
    def workload(self) -> RequestWorkload:
        assert self._workload is not None, "connect() first"
        return self._workload

    def _make_workload(self, conn: QuicConnection) -> RequestWorkload:
        make = self._scenario_workload
        self._workload = RequestWorkload(conn, make(conn) if make is not None else None)
        return self._workload

    def _endpoint(self) -> ClientEndpoint:
        if self.endpoint is None:
            raise RuntimeError("connect() first")
        return self.endpoint

    def _on_datagram(self, data: bytes, addr: Address) -> None:
        if self.endpoint is None or self._closed is not None:
            return
        self.endpoint.receive_datagram(data, addr, self.now())
        self._service()

    def _on_timer(self, now: float) -> None:
        if self.endpoint is None:
            return
        self.endpoint.handle_timer(now)
        self._service()

    def _service(self) -> None:
        endpoint = self._endpoint()
        for data, addr in endpoint.datagrams_to_send(self.now()):
            if self._current is not None:  # else: between networks, the datagram is lost
                self._current.sendto(data, addr)
        while (event := endpoint.next_event()) is not None:
            match event:
                case HandshakeDone():
                    if self._handshake is not None and not self._handshake.done():
                        self._handshake.set_result(None)
                case Closed():
                    self._on_closed(event)
        if self._timer is not None:
            self._timer.arm(endpoint.get_timer())

    def _on_closed(self, closed: Closed) -> None:
        self._closed = closed
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_exception(QuicmigError(self._handshake_error(closed)))
        error = QuicmigError(
            f"the connection was closed by {'the server' if closed.error_code == 0 else 'QUIC'}"
            f"{': ' + closed.reason if closed.reason else ''}"
        )
        self.workload.fail_all(error)

    def _handshake_error(self, closed: Closed) -> str:
        reason = closed.reason or f"error 0x{closed.error_code:x}"
        names = certificate_names(reason)
        if closed.error_code in CRYPTO_ERRORS and not self.insecure and names is not None:
            # The CA is fine: the certificate is for other names (aioquic's hostname check).
            return (
                f"TLS handshake with {format_address(self.server)} failed: the server's "
                f"certificate is not for {self.server_name!r}; it names {', '.join(names)}: "
                "give one of them with --server-name (or leave it out)"
            )
        if closed.error_code in CRYPTO_ERRORS and not self.insecure:
            return (
                f"TLS handshake with {format_address(self.server)} failed ({reason}): the "
                f"server's certificate does not verify against {self.ca}. Use the ca.pem the "
                "server wrote beside its cert.pem, or regenerate both with `quicmig certs "
                "--force` and restart the server, or skip verification with --insecure"
            )
        return f"the handshake with {format_address(self.server)} failed: {reason}"

    async def _open(self, host: str) -> UdpSocket:
        sock = await open_socket((host, 0), self._on_datagram, "client")
        self._sockets.append(sock)
        return sock

    def _close_socket(self, sock: UdpSocket) -> None:
        sock.close()
        if sock in self._sockets:
            self._sockets.remove(sock)
        if self._current is sock:
            self._current = None

    # --- lifecycle ----------------------------------------------------------------------

    async def connect(self) -> None:
        """Open a socket on the first local address and complete the handshake."""
        loop = asyncio.get_running_loop()
        self._t0 = loop.time()
        started = self.now()
        self._current = await self._open(self.addresses[0])
        self._workload = None
        endpoint = ClientEndpoint(
            self._config,
            self.server,
            self._make_workload,
            seed=0,
            keepalive=self.keepalive,
            connection_class=self._connection_class,
        )
        self.endpoint = endpoint
        self._timer = Timer(self._on_timer, self.now)
        self._handshake = loop.create_future()
        endpoint.connect(self.now())
        self._service()
        try:
            await asyncio.wait_for(self._handshake, self.timeout)
        except TimeoutError:
            raise QuicmigError(
                f"no answer from {format_address(self.server)} within {self.timeout:g} s: is the "
                "server running? Start it with `quicmig server` (or `python quic_server.py`), "
                "or point the client at it with --host/--port"
            ) from None
        self.handshake_seconds = self.now() - started

    async def aclose(self) -> None:
        """Send CONNECTION_CLOSE (if still open) and close every socket and the timer."""
        if self.endpoint is not None and self._closed is None and self._current is not None:
            self.endpoint.close()
            self._service()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for sock in list(self._sockets):
            self._close_socket(sock)
        if self._handshake is not None and not self._handshake.done():
            self._handshake.cancel()
        if self._workload is not None:
            self._workload.fail_all(QuicmigError("the client closed the connection"))
        self.endpoint = None

    async def __aenter__(self) -> LiveClient:
        try:
            await self.connect()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- requests -----------------------------------------------------------------------

    async def request(
        self,
        line: str,
        body: bytes = b"",
        *,
        keep: bool = True,
        on_data: Callable[[int], None] | None = None,
        timeout: float | None = None,
    ) -> tuple[bytes, _Request]:
        """Send one request on a new stream and wait for the whole answer."""
        if self._closed is not None:
            raise QuicmigError(f"the connection is closed ({self._closed.reason})")
        request = self.workload.open(line, body, self.now(), keep, on_data)
        self._service()
        limit = self.timeout if timeout is None else timeout
        try:
            answer = await asyncio.wait_for(request.future, limit)
        except TimeoutError:
            self.workload.requests.pop(request.stream_id, None)
            raise QuicmigError(
                f"no answer to {line.split()[0]} from {format_address(self.server)} within "
                f"{limit:g} s"
            ) from None
        return answer, request

    async def send_message(self, body: bytes) -> float:
        """Send `body` with ECHO, wait for it to come back; returns the round trip (seconds)."""
        answer, request = await self.request("ECHO", body)
        if answer != body:
            raise QuicmigError(f"the echo on stream {request.stream_id} came back different")
        assert request.done_at is not None
        return request.done_at - request.sent_at

    async def download(
        self,
        size: int,
        seed: int = 1,
        on_progress: Callable[[int], None] | None = None,
        timeout: float | None = None,
    ) -> Download:
        """DOWNLOAD `size` bytes; the answer is hashed as it arrives, not kept."""
        _, request = await self.request(
            f"DOWNLOAD {size} {seed}", keep=False, on_data=on_progress, timeout=timeout
        )
        assert request.done_at is not None
        return Download(
            size=size,
            received=request.received,
            stream_id=request.stream_id,
            sha256=request.sha256.hexdigest(),
            expected_sha256=hashlib.sha256(content(size, seed)).hexdigest(),
            seconds=request.done_at - request.sent_at,
        )

    async def server_record(self) -> dict[str, Any]:
        """What the server's tracker observed on this connection, fetched over it."""
        answer, _ = await self.request(MIGRATIONS_VERB)
        record: dict[str, Any] = json.loads(answer)
        return record

    async def confirmed_record(self, timeout: float = 2.0) -> dict[str, Any]:
        """The server's record once it shows every path move of this client validated (or
        after `timeout` seconds)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        paths = sum(move.kind is not EventKind.CID_ROTATION for move in self.moves)
        while True:
            record = await self.server_record()
            migrations = record["migrations"]
            if (
                len(migrations) >= paths and all(m["validated_at"] is not None for m in migrations)
            ) or loop.time() >= deadline:
                return record
            await asyncio.sleep(0.05)

    # --- moves --------------------------------------------------------------------------

    def next_address(self) -> str:
        """The local address after the current one in `addresses` (InputError if only one)."""
        if len(self.addresses) < 2:
            ipv6 = ":" in self.addresses[0]
            hint = (
                "::1 is the only IPv6 loopback address; add one (Linux: `sudo ip -6 addr add "
                "::2/128 dev lo`) and pass --addresses ::1,::2"
                if ipv6
                else "pass two or more with --addresses, e.g. 127.0.0.1,127.0.0.2"
            )
            raise InputError(f"a move to another address needs a second local address: {hint}")
        here = self.local[0]
        index = self.addresses.index(here) if here in self.addresses else -1
        return self.addresses[(index + 1) % len(self.addresses)]

    def check_addresses(self) -> None:
        """Fail early, before connecting, if the local addresses cannot be bound."""
        for host in self.addresses:
            try:
                with socket.socket(family_of(host), socket.SOCK_DGRAM) as probe:
                    probe.bind((host, 0))
            except OSError as exc:
                raise QuicmigError(bind_error((host, 0), exc, "client")) from None

    def _refuse_active(self, what: str) -> None:
        refusal = self._endpoint().active_migration_refusal()
        if refusal is not None:
            raise MigrationRefused(f"{what} refused: {refusal}")

    def _socket(self) -> UdpSocket:
        if self._current is None:
            raise RuntimeError("no socket: a move is already in progress")
        return self._current

    def _moved(
        self, kind: EventKind, started: float, old: Address, new_cid: bool, detail: str
    ) -> Move:
        self._service()
        move = Move(kind, started, old, self.local, new_cid, detail)
        self.moves.append(move)
        return move

    async def rebind(self, address: str | None = None) -> Move:
        """A NAT rebinding as the server sees it: a new socket, on `address` if given (an
        address rebinding), same CID; the client does not know it moved."""
        old = self._socket()
        started = self.now()
        new = await self._open(address or old.local[0])
        self._current = new
        self._close_socket(old)
        # The PING only stands for "its next packet": without one, an idle or receive-only
        # client would stay silent and the server would keep sending to the old port.
        self._endpoint().migrate(self.now(), new_cid=False)
        kind = EventKind.ADDRESS_REBINDING if address else EventKind.NAT_REBINDING
        what = "new address" if address else "new source port, same address"
        return self._moved(kind, started, old.local, False, f"new socket, {what}, same CID")

    async def move_to(self, address: str) -> Move:
        """An active move to another local address (an IP change): new socket, new CID."""
        self._refuse_active("ip-change")
        old = self._socket()
        started = self.now()
        self._current = await self._open(address)
        self._close_socket(old)
        self._endpoint().migrate(self.now(), new_cid=True)
        return self._moved(
            EventKind.ADDRESS_CHANGE, started, old.local, True, "new address, new CID"
        )

    async def switch(
        self,
        address: str,
        mode: SwitchMode = SwitchMode.BREAK_BEFORE_MAKE,
        gap: float = DEFAULT_GAP,
        overlap: float = DEFAULT_GAP,
        new_cid: bool = True,
    ) -> Move:
        """Move to `address` like a WiFi -> cellular handover (see the module notes)."""
        self._refuse_active("network-switch")
        old = self._socket()
        started = self.now()
        cid = "new CID" if new_cid else "same CID"
        if mode is SwitchMode.BREAK_BEFORE_MAKE:
            self._close_socket(old)
            await asyncio.sleep(gap)
            self._current = await self._open(address)
            self._endpoint().migrate(self.now(), new_cid=new_cid)
            detail = f"break-before-make, {gap * 1e3:.0f} ms without network, {cid}"
        else:
            self._current = await self._open(address)
            self._endpoint().migrate(self.now(), new_cid=new_cid)
            self._service()
            await asyncio.sleep(overlap)
            self._close_socket(old)
            detail = f"make-before-break, both up for {overlap * 1e3:.0f} ms, {cid}"
        return self._moved(EventKind.INTERFACE_SWITCH, started, old.local, new_cid, detail)

    def rotate_cid(self) -> Move:
        """A fresh connection ID on the same path (RFC 9000 section 9.5)."""
        started = self.now()
        self._endpoint().rotate_cid(started)
        local = self.local
        return self._moved(EventKind.CID_ROTATION, started, local, True, "same path, new CID")
