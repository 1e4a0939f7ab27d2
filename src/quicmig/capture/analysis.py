"""Any capture, judged like a run: decrypted datagrams become the tap's packet records, go
through the same `MigrationTracker`, and come out of the same judge as a Result
(`"backend": "capture"`). `quicmig check` and `quicmig run --pcap` agree by construction.

How datagrams become connections (the heuristic, also in the README):

1. Servers. The sender of the first Initial packet between two addresses is the client, the
   receiver a server. With no Initial in the capture (it started mid-connection), the side on
   a well-known QUIC port (443, 4433, `--quic-port`) is taken as the server.
2. Connections. Datagrams to or from a server belong to (server address, tshark's connection
   number). tshark follows a connection across addresses by its connection IDs, including
   those announced in NEW_CONNECTION_ID frames once decrypted. A datagram tshark could not
   place goes to the connection that used its DCID before, else to the server's only
   connection. A capture of both sides of a middlebox (the proxy) shows each connection once
   per server address: the client's leg and the upstream leg are reported separately.
3. Each connection's datagrams are replayed, in capture order, into a tracker as the server
   would have seen them: what the client sent as packets received, what the server sent as
   packets sent (RFC 9000 section 9.3: the peer address moves with the highest-numbered
   non-probing packet; section 9.1 names the probing frames, `core.tracker.PROBING_FRAMES`).
   A datagram is one record; its last packet is the 1-RTT one (section 12.2).

What a capture cannot show is said, never guessed: the application's bytes (`transfer-intact`
is not applicable), a connection the key log has no secrets for (named, verdict unsupported),
and 1-RTT datagrams on a new path that tshark failed to decrypt although it decrypted the
connection elsewhere (tshark before 4.5 loses some keys after a migration: unsupported, with
the reason, rather than a false "no migration").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from quicmig.capture.tshark import QUIC_PORTS, QuicDatagram
from quicmig.core.datagram import Address, format_address
from quicmig.core.judge import judge, unsupported
from quicmig.core.observation import ClientObservation, Expectations, Observation
from quicmig.core.results import NO_TRANSFER, Check, Result
from quicmig.core.tap import Packet
from quicmig.core.tracker import MigrationTracker
from quicmig.model.scenario import Expectation

KEYS_CHECK = "all-connections-decrypted"
NEW_PATH_CHECK = "new-paths-decrypted"
NAMED = 3  # undecrypted connections named in a one-line reason; the rest are counted
LONG_TYPES = {0: "initial", 1: "0RTT", 2: "handshake", 3: "retry"}
# RFC 9000 section 19 frame types -> the qlog names aioquic logs (what the tracker reads)
FRAME_NAMES: dict[int, str] = {
    0x00: "padding",
    0x01: "ping",
    0x02: "ack",
    0x03: "ack",
    0x04: "reset_stream",
    0x05: "stop_sending",
    0x06: "crypto",
    0x07: "new_token",
    **dict.fromkeys(range(0x08, 0x10), "stream"),
    0x10: "max_data",
    0x11: "max_stream_data",
    0x12: "max_streams",
    0x13: "max_streams",
    0x14: "data_blocked",
    0x15: "stream_data_blocked",
    0x16: "streams_blocked",
    0x17: "streams_blocked",
    0x18: "new_connection_id",
    0x19: "retire_connection_id",
    0x1A: "path_challenge",
    0x1B: "path_response",
    0x1C: "connection_close",
    0x1D: "connection_close",
    0x1E: "handshake_done",
    0x30: "datagram",
    0x31: "datagram",
}
UDP_HEADER = 8  # bytes


@dataclass(slots=True)
class PathUse:
    """One client address of a connection, as the server side saw it."""

    peer: Address
    first_at: float  # seconds since the capture's first QUIC datagram
    last_at: float
    datagrams_from: int = 0  # client -> server
    datagrams_to: int = 0  # server -> client
    undecrypted_from: int = 0  # 1-RTT datagrams from it tshark could not decrypt
    decrypted_from: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "peer": format_address(self.peer),
            "first_at": self.first_at,
            "last_at": self.last_at,
            "datagrams_from": self.datagrams_from,
            "datagrams_to": self.datagrams_to,
            "undecrypted_from": self.undecrypted_from,
        }


@dataclass(slots=True)
class ConnectionView:
    number: int  # ours, 1-based, in order of first appearance
    server: Address
    tshark_connection: int | None
    first_at: float
    last_at: float
    datagrams: int = 0
    paths: dict[Address, PathUse] = field(default_factory=dict)
    datagrams_1rtt: int = 0  # datagrams holding only a 1-RTT packet
    decrypted: int = 0  # of those, the ones tshark could decrypt
    initial_dcid: str | None = None  # DCID of the client's first packet, in the clear
    client_random: str | None = None  # hex, from the ClientHello: what key logs are keyed by
    tracker: MigrationTracker = field(default_factory=MigrationTracker)

    def path(self, peer: Address, at: float) -> PathUse:
        use = self.paths.get(peer)
        if use is None:
            use = self.paths[peer] = PathUse(peer, at, at)
        use.last_at = at
        return use

    @property
    def undecrypted(self) -> bool:
        """It has 1-RTT packets and tshark decrypted none: no secrets for it in the key log."""
        return self.datagrams_1rtt > 0 and self.decrypted == 0

    @property
    def hidden_paths(self) -> list[PathUse]:
        """Client addresses whose 1-RTT datagrams all failed to decrypt, in a connection that
        decrypted elsewhere: a new path tshark lost the keys for."""
        if self.undecrypted:
            return []
        return [p for p in self.paths.values() if p.undecrypted_from and not p.decrypted_from]

    def describe(self) -> str:
        """The connection by what is visible without its keys, in a few words."""
        first = next(iter(self.paths), None)
        client = format_address(first) if first else "?"
        known = [
            f"{label} {value}"
            for label, value in (
                ("DCID", self.initial_dcid),
                ("client random", self.client_random[:16] + "…" if self.client_random else None),
            )
            if value
        ]
        more = f", {len(self.paths)} client addresses" if len(self.paths) > 1 else ""
        server = format_address(self.server)
        return f"#{self.number} {client} → {server} ({'; '.join(known) or 'no IDs'}{more})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "connection": self.number,
            "server": format_address(self.server),
            "tshark_connection": self.tshark_connection,
            "first_at": self.first_at,
            "last_at": self.last_at,
            "datagrams": self.datagrams,
            "datagrams_1rtt": self.datagrams_1rtt,
            "decrypted": self.decrypted,
            "undecrypted": self.undecrypted,
            "initial_dcid": self.initial_dcid,
            "client_random": self.client_random,
            "paths": [p.to_dict() for p in self.paths.values()],
        }


def _servers(datagrams: list[QuicDatagram], quic_ports: tuple[int, ...]) -> set[Address]:
    servers: set[Address] = set()
    pairs: set[frozenset[Address]] = set()
    for dgram in datagrams:
        pair = frozenset((dgram.src, dgram.dst))
        if dgram.has_initial and pair not in pairs and dgram.src not in servers:
            servers.add(dgram.dst)
        pairs.add(pair)
    ports = {*QUIC_PORTS, *quic_ports}
    for dgram in datagrams:  # a capture that began after the handshake
        if dgram.src in servers or dgram.dst in servers:
            continue
        if dgram.dst[1] in ports:
            servers.add(dgram.dst)
        elif dgram.src[1] in ports:
            servers.add(dgram.src)
    return servers


def group(
    datagrams: list[QuicDatagram], quic_ports: tuple[int, ...] = ()
) -> list[tuple[ConnectionView, list[tuple[QuicDatagram, bool]]]]:
    """Split datagrams into connections; each datagram with `True` if the client sent it."""
    servers = _servers(datagrams, quic_ports)
    start = datagrams[0].at if datagrams else 0.0
    views: dict[tuple[Address, int | None], ConnectionView] = {}
    members: dict[int, list[tuple[QuicDatagram, bool]]] = {}
    by_dcid: dict[tuple[Address, str], tuple[Address, int | None]] = {}
    per_server: dict[Address, list[tuple[Address, int | None]]] = {}
    for dgram in datagrams:
        if dgram.dst in servers:
            server, from_client = dgram.dst, True
        elif dgram.src in servers:
            server, from_client = dgram.src, False
        else:
            continue
        key: tuple[Address, int | None] = (server, dgram.connection)
        if dgram.connection is None:
            dcid = dgram.short_dcid
            known = by_dcid.get((server, dcid)) if dcid else None
            if known is not None:
                key = known
            elif len(per_server.get(server, [])) == 1:
                key = per_server[server][0]
        at = dgram.at - start
        view = views.get(key)
        if view is None:
            view = ConnectionView(len(views) + 1, server, key[1], at, at)
            views[key] = view
            members[view.number] = []
            per_server.setdefault(server, []).append(key)
        view.last_at = at
        view.datagrams += 1
        for dcid in dgram.dcids:
            by_dcid[(server, dcid)] = key
        members[view.number].append((dgram, from_client))
    return [(view, members[view.number]) for view in views.values()]


def packet_of(dgram: QuicDatagram, at: float, peer: Address) -> Packet:
    """A datagram as the tap's packet record: its last packet's type, number and DCID, and
    every frame tshark decoded in it (PATH_CHALLENGE/RESPONSE with their data)."""
    challenges, responses = iter(dgram.challenges), iter(dgram.responses)
    frames: list[dict[str, Any]] = []
    for frame_type in dgram.frames:
        name = FRAME_NAMES.get(frame_type, f"unknown_0x{frame_type:x}")
        frame: dict[str, Any] = {"frame_type": name}
        if name == "path_challenge":
            frame["data"] = next(challenges, "")
        elif name == "path_response":
            frame["data"] = next(responses, "")
        frames.append(frame)
    if dgram.has_short:
        kind, number = "1RTT", dgram.short_pn if dgram.short_pn is not None else -1
    else:
        kind, number = LONG_TYPES.get(dgram.long_types[-1] if dgram.long_types else 0, "?"), -1
    dcid = dgram.short_dcid if dgram.has_short else (dgram.dcids[0] if dgram.dcids else "")
    return Packet(
        at=at,
        peer=peer,
        number=number,
        packet_type=kind,
        dcid=dcid or "",
        frames=tuple(frames),
        length=max(0, dgram.udp_length - UDP_HEADER),
    )


def replay(view: ConnectionView, datagrams: list[tuple[QuicDatagram, bool]], start: float) -> None:
    """Feed one connection's datagrams to its tracker, as the server saw them."""
    for dgram, from_client in datagrams:
        at = dgram.at - start
        peer = dgram.src if from_client else dgram.dst
        use = view.path(peer, at)
        if dgram.only_short:
            view.datagrams_1rtt += 1
            view.decrypted += dgram.decrypted
        if from_client:
            use.datagrams_from += 1
            if dgram.only_short:
                use.decrypted_from += dgram.decrypted
                use.undecrypted_from += not dgram.decrypted
            if view.initial_dcid is None and dgram.dcids:
                view.initial_dcid = dgram.dcids[0]
            if view.client_random is None:
                view.client_random = dgram.client_random
        else:
            use.datagrams_to += 1
        if dgram.has_short and not dgram.frames:
            continue  # a 1-RTT packet tshark could not decrypt: nothing to say about it
        packet = packet_of(dgram, at, peer)
        if from_client:
            view.tracker.on_packet_received(packet)
        else:
            view.tracker.on_packets_sent([packet])


def capture_expectations(name: str, active: bool) -> Expectations:
    """What any capture is held to: at least one migration, judged by the usual checks."""
    return Expectations(
        name=name,
        stack="unknown",
        expect=Expectation(min_migrations=1),
        workload=None,
        all_active=active or None,
    )


def analyse(
    datagrams: list[QuicDatagram],
    *,
    capture: str,
    keylog: str | None,
    tshark: str,
    expectations: Expectations,
    quic_ports: tuple[int, ...] = (),
    warnings: list[str] | None = None,
) -> tuple[Result, list[ConnectionView]]:
    """The Result of a capture, and the connections it was read as."""
    start = datagrams[0].at if datagrams else 0.0
    views = []
    for view, members in group(datagrams, quic_ports):
        replay(view, members, start)
        views.append(view)
    hidden = [v for v in views if v.undecrypted]
    decrypted = [v for v in views if not v.undecrypted]
    gaps = [(v, p) for v in decrypted for p in v.hidden_paths]
    problems: list[Check] = []
    if hidden:
        problems.append(unsupported(KEYS_CHECK, keys_missing(hidden, len(views))))
    if gaps:
        problems.append(unsupported(NEW_PATH_CHECK, undecrypted_paths(gaps, tshark)))
    observation = Observation(
        backend="capture",
        seed=0,
        run_end=(datagrams[-1].at - start) if datagrams else 0.0,
        # A connection tshark could not decrypt shows no frames: it is not judged, only named.
        clients=[ClientObservation(NO_TRANSFER, (), (), v.tracker) for v in decrypted],
        changes=(),
        unsupported=problems,
        stats={
            "clock": "capture",
            "capture": capture,
            "keylog": keylog,
            "tshark": tshark,
            "start_epoch": start,
            "datagrams": len(datagrams),
            "decrypted": sum(d.decrypted for d in datagrams),
            "warnings": list(warnings or []),
            "connections": [v.to_dict() for v in views],
        },
        files={"pcap": capture, **({"keylog": keylog} if keylog else {})},
    )
    return judge(expectations, observation), views


def keys_missing(hidden: list[ConnectionView], total: int) -> str:
    """One line naming the connections whose 1-RTT packets did not decrypt, and the fix."""
    named = "; ".join(c.describe() for c in hidden[:NAMED])
    if len(hidden) > NAMED:
        named += f"; and {len(hidden) - NAMED} more"
    its = "its" if len(hidden) == 1 else "their"
    return (
        f"key log missing for {len(hidden)} of {total} connections: {named}: {its} 1-RTT "
        f"packets did not decrypt, so {its} migrations cannot be checked; pass a key log "
        f"holding {its} secrets too (concatenate key logs: cat a.keys b.keys > all.keys)"
    )


def undecrypted_paths(gaps: list[tuple[ConnectionView, PathUse]], tshark: str) -> str:
    """One line for new paths whose 1-RTT datagrams tshark could not decrypt."""
    where = "; ".join(
        f"#{v.number}: {p.undecrypted_from} from {format_address(p.peer)}" for v, p in gaps[:NAMED]
    )
    return (
        f"1-RTT datagrams on a new path did not decrypt ({where}) although the rest of the "
        f"connection did: tshark {tshark} loses keys after some migrations (Wireshark 4.5 "
        "fixed it), so what happened on that path cannot be judged"
    )
