"""The suite's one pair of endpoints, driven by hand in virtual time (like aioquic's own
`client_and_server()` tests): a `ClientEndpoint` and a `ServerEndpoint` joined by a lossless
pipe, where a migration is just a new `client_addr`, and `drop` decides what never arrives."""

from __future__ import annotations

from collections.abc import Callable

from aioquic.quic.connection import QuicConnection

from quicmig.aioquic_ext import connection_class
from quicmig.core.app import ClientWorkload
from quicmig.core.certs import simulation_certificates
from quicmig.core.datagram import Address
from quicmig.core.endpoint import (
    ClientEndpoint,
    ServerEndpoint,
    client_configuration,
    server_configuration,
)
from quicmig.core.tap import TapLogger
from quicmig.core.tracker import MigrationTracker
from quicmig.model.scenario import Download, QuicExtensions, Workload

SERVER: Address = ("203.0.113.10", 4433)
OLD: Address = ("198.51.100.10", 50000)
NEW: Address = ("198.51.100.20", 50001)
ONE_WAY = 0.02  # seconds
STEP = 0.005  # seconds between looks at both endpoints

Drop = Callable[[bytes, Address, Address], bool]  # (data, src, dst) -> lost?


class Pair:
    """A client and a server endpoint `one_way` seconds apart; see the module notes."""

    def __init__(
        self,
        extensions: QuicExtensions | None = None,
        workload: Workload | Callable[[QuicConnection], ClientWorkload] | None = None,
        one_way: float = ONE_WAY,
        keepalive: float | None = None,
        failover_after: float | None = None,
    ) -> None:
        certs = simulation_certificates()
        self.logger = TapLogger(keep=False)
        self.server = ServerEndpoint(
            server_configuration(certs, self.logger),
            connection_class=connection_class(extensions or QuicExtensions()),
        )
        self.client = ClientEndpoint(
            client_configuration(certs.ca_pem),
            SERVER,
            workload if workload is not None else Download(3_000_000),
            seed=1,
            keepalive=keepalive,
            failover_after=failover_after,
        )
        self.one_way = one_way
        self.client_addr = OLD
        self.now = 0.0
        self.drop: Drop = lambda data, src, dst: False
        self.sent: list[tuple[float, Address, Address, bytes]] = []  # what entered the pipe
        self._flight: list[tuple[float, str, bytes, Address]] = []  # (arrival, to, data, src)

    def run(self, until: float, step: float = STEP) -> None:
        """Drive both endpoints until `until` seconds."""
        if self.now == 0.0:
            self.client.connect(0.0)
        while self.now < until:
            for data, _ in self.client.datagrams_to_send(self.now):
                self._send("server", data, self.client_addr, SERVER)
            for data, dst in self.server.datagrams_to_send(self.now):
                if dst == self.client_addr:  # the client listens on its current address only
                    self._send("client", data, SERVER, dst)
            self.now = round(self.now + step, 6)
            due = [f for f in self._flight if f[0] <= self.now]
            self._flight = [f for f in self._flight if f[0] > self.now]
            for _, to, data, src in due:
                if to == "server":
                    self.server.receive_datagram(data, src, self.now)
                else:
                    self.client.receive_datagram(data, src, self.now)
            self.client.handle_timer(self.now)
            self.server.handle_timer(self.now)

    def _send(self, to: str, data: bytes, src: Address, dst: Address) -> None:
        self.sent.append((self.now, src, dst, data))
        if not self.drop(data, src, dst):
            self._flight.append((self.now + self.one_way, to, data, src))

    def migrate(self, new: Address, new_cid: bool) -> None:
        """The client now sends from `new`, knowing it moved (`new_cid`) or not."""
        self.client_addr = new
        self.client.migrate(self.now, new_cid=new_cid)

    @property
    def tracker(self) -> MigrationTracker:
        (conn,) = self.server.connections
        return conn.tracker
