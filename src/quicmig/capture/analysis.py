"""Any capture, judged like a run: decrypted datagrams become the tap's packet records, go
through the same `MigrationTracker`, and come out of the same judge as a Result
(`"backend": "capture"`). `quicmig check` and `quicmig run --pcap` agree by construction.

How datagrams become connections (the heuristic, also in docs/check.md):

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
and 1-RTT datagrams tshark failed to decrypt although it decrypted the connection elsewhere
(unsupported, with the reason, rather than a false "no migration" or a false "not
validated"). tshark before 4.5 does so in two ways, both seen with tshark 4.0.17:

- on a new path (another client address, or the server's preferred address): a client with
  zero-length connection IDs (Chromium) leaves tshark no CID to find the connection by at an
  address it has not seen, so every datagram the server sends there fails (counted per path
  and direction: `new-paths-decrypted`);
- a whole direction of the first path: the server's datagrams to Chromium from aioquic, or
  everything after a Retry answered with a new ClientHello (tshark keeps the first client
  random, and the key log's secrets match nothing): `directions-decrypted`.

A datagram of a server's other address (its preferred address, RFC 9000 section 9.6) belongs
to that server when `group()` is told so (`aliases`); it reaches the tracker with `local` set.
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
DIRECTION_CHECK = "directions-decrypted"
DECRYPTION_CHECKS = (KEYS_CHECK, NEW_PATH_CHECK, DIRECTION_CHECK)
NAMED = 3  # undecrypted connections named in a one-line reason; the rest are counted
LONG_TYPES = {0: "initial", 1: "0RTT", 2: "handshake", 3: "retry"}
RETRY = 3  # long header packet type
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
    """One path of a connection: a client address and the server address it talked to
    (`local` None: the server's first), as the server side saw it."""

    peer: Address
    first_at: float  # seconds since the capture's first QUIC datagram
    last_at: float
    local: Address | None = None
    datagrams_from: int = 0  # client -> server
    datagrams_to: int = 0  # server -> client
    undecrypted_from: int = 0  # 1-RTT-only datagrams from it tshark could not decrypt
    decrypted_from: int = 0
    undecrypted_to: int = 0  # ... to it
    decrypted_to: int = 0

    def where(self) -> str:
        at = f" at {format_address(self.local)}" if self.local is not None else ""
        return f"{format_address(self.peer)}{at}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "peer": format_address(self.peer),
            "server_address": format_address(self.local) if self.local is not None else None,
            "first_at": self.first_at,
            "last_at": self.last_at,
            "datagrams_from": self.datagrams_from,
            "datagrams_to": self.datagrams_to,
            "undecrypted_from": self.undecrypted_from,
            "undecrypted_to": self.undecrypted_to,
        }


@dataclass(frozen=True, slots=True)
class DecryptionGap:
    """1-RTT datagrams of one path and direction that tshark could not decrypt."""

    connection: int
    path: PathUse
    to_client: bool  # the server's datagrams (else the client's)
    undecrypted: int
    of: int  # 1-RTT-only datagrams in that direction of that path

    def describe(self) -> str:
        if self.to_client:
            what = f"the server sent to {self.path.where()}"
        else:
            what = f"{self.path.where()} sent the server"
        return f"#{self.connection}: {self.undecrypted} of {self.of} datagrams {what}"


@dataclass(slots=True)
class ConnectionView:
    number: int  # ours, 1-based, in order of first appearance
    server: Address
    tshark_connection: int | None
    first_at: float
    last_at: float
    datagrams: int = 0
    paths: dict[tuple[Address, Address | None], PathUse] = field(default_factory=dict)
    datagrams_1rtt: int = 0  # datagrams holding only a 1-RTT packet
    decrypted: int = 0  # of those, the ones tshark could decrypt
    initial_dcid: str | None = None  # DCID of the client's first packet, in the clear
    client_random: str | None = None  # hex, from the ClientHello: what key logs are keyed by
    retry: bool = False  # the server sent a Retry (RFC 9000 section 17.2.5)
    tracker: MigrationTracker = field(default_factory=MigrationTracker)

    def path(self, peer: Address, at: float, local: Address | None = None) -> PathUse:
        use = self.paths.get((peer, local))
        if use is None:
            use = self.paths[(peer, local)] = PathUse(peer, at, at, local)
        use.last_at = at
        return use

    @property
    def undecrypted(self) -> bool:
        """It has 1-RTT packets and tshark decrypted none: no secrets for it in the key log."""
        return self.datagrams_1rtt > 0 and self.decrypted == 0

    def new_path_gaps(self) -> list[DecryptionGap]:
        """In a connection that decrypted, every direction of a path after the first with
        1-RTT datagrams tshark could not decrypt: what happened there cannot be judged."""
        if self.undecrypted:
            return []
        return [gap for path in list(self.paths.values())[1:] for gap in self._gaps(path)]

    def direction_gaps(self) -> list[DecryptionGap]:
        """A direction of the first path none of whose 1-RTT datagrams decrypted, while the
        other direction did: tshark lost that direction's keys (a failure of tshark's, not of
        the endpoints)."""
        first = next(iter(self.paths.values()), None)
        if self.undecrypted or first is None:
            return []
        return [gap for gap in self._gaps(first) if gap.undecrypted == gap.of]

    def _gaps(self, path: PathUse) -> list[DecryptionGap]:
        out = []
        for to_client, bad, good in (
            (True, path.undecrypted_to, path.decrypted_to),
            (False, path.undecrypted_from, path.decrypted_from),
        ):
            if bad:
                out.append(DecryptionGap(self.number, path, to_client, bad, bad + good))
        return out

    def describe(self) -> str:
        """The connection by what is visible without its keys, in a few words."""
        first = next(iter(self.paths.values()), None)
        client = format_address(first.peer) if first else "?"
        known = [
            f"{label} {value}"
            for label, value in (
                ("DCID", self.initial_dcid),
                ("client random", self.client_random[:16] + "…" if self.client_random else None),
            )
            if value
        ]
        peers = {peer for peer, _ in self.paths}
        more = f", {len(peers)} client addresses" if len(peers) > 1 else ""
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
    datagrams: list[QuicDatagram],
    quic_ports: tuple[int, ...] = (),
    aliases: dict[Address, Address] | None = None,
) -> list[tuple[ConnectionView, list[tuple[QuicDatagram, bool]]]]:
    """Split datagrams into connections; each datagram with `True` if the client sent it.
    `aliases`: another address of a server -> that server (a preferred address, which
    receives no Initial): its datagrams belong to the server's connections."""
    aliases = aliases or {}
    servers = _servers([d for d in datagrams if not {d.src, d.dst} & set(aliases)], quic_ports)
    start = datagrams[0].at if datagrams else 0.0
    views: dict[tuple[Address, int | None], ConnectionView] = {}
    members: dict[int, list[tuple[QuicDatagram, bool]]] = {}
    by_dcid: dict[tuple[Address, str], tuple[Address, int | None]] = {}
    per_server: dict[Address, list[tuple[Address, int | None]]] = {}
    for dgram in datagrams:
        if dgram.dst in servers or dgram.dst in aliases:
            server, from_client = aliases.get(dgram.dst, dgram.dst), True
        elif dgram.src in servers or dgram.src in aliases:
            server, from_client = aliases.get(dgram.src, dgram.src), False
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


def packet_of(
    dgram: QuicDatagram, at: float, peer: Address, local: Address | None = None
) -> Packet:
    """A datagram as the tap's packet record: its last packet's type, number and DCID, and
    every frame tshark decoded in it (PATH_CHALLENGE/RESPONSE with their data); `local`: the
    server address it reached or left, None for the server's first."""
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
        local=local,
    )


def replay(view: ConnectionView, datagrams: list[tuple[QuicDatagram, bool]], start: float) -> None:
    """Feed one connection's datagrams to its tracker, as the server saw them."""
    for dgram, from_client in datagrams:
        at = dgram.at - start
        peer, server_side = (dgram.src, dgram.dst) if from_client else (dgram.dst, dgram.src)
        local = None if server_side == view.server else server_side
        use = view.path(peer, at, local)
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
            view.retry = view.retry or RETRY in dgram.long_types
            if dgram.only_short:
                use.decrypted_to += dgram.decrypted
                use.undecrypted_to += not dgram.decrypted
        if dgram.has_short and not dgram.frames:
            continue  # a 1-RTT packet tshark could not decrypt: nothing to say about it
        packet = packet_of(dgram, at, peer, local)
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
    decrypted = [v for v in views if not v.undecrypted]
    problems = decryption_checks(views, tshark)
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
    retried = [c for c in hidden if c.retry]
    retry = (
        f"; {', '.join(f'#{c.number}' for c in retried)} began with a Retry: tshark before 4.5 "
        "keeps the client random of the attempt before it, so no secret matches (cut the "
        "capture at the Retry, e.g. with editcap -r)"
        if retried
        else ""
    )
    return (
        f"key log missing for {len(hidden)} of {total} connections: {named}: {its} 1-RTT "
        f"packets did not decrypt, so {its} migrations cannot be checked; pass a key log "
        f"holding {its} secrets too (concatenate key logs: cat a.keys b.keys > all.keys)" + retry
    )


def decryption_checks(views: list[ConnectionView], tshark: str) -> list[Check]:
    """An unsupported check for each way the capture could not be read: connections without
    secrets, new paths and whole directions tshark did not decrypt (none: all is readable)."""
    checks = []
    hidden = [v for v in views if v.undecrypted]
    if hidden:
        checks.append(unsupported(KEYS_CHECK, keys_missing(hidden, len(views))))
    gaps = [gap for v in views for gap in v.new_path_gaps()]
    if gaps:
        checks.append(unsupported(NEW_PATH_CHECK, undecrypted_paths(gaps, tshark)))
    lost = [gap for v in views for gap in v.direction_gaps()]
    if lost:
        checks.append(unsupported(DIRECTION_CHECK, undecrypted_directions(lost, tshark)))
    return checks


def _listed(gaps: list[DecryptionGap]) -> str:
    named = "; ".join(gap.describe() for gap in gaps[:NAMED])
    return named + (f"; and {len(gaps) - NAMED} more" if len(gaps) > NAMED else "")


def undecrypted_paths(gaps: list[DecryptionGap], tshark: str) -> str:
    """One line for new paths whose 1-RTT datagrams tshark could not decrypt."""
    return (
        f"1-RTT datagrams on a new path did not decrypt ({_listed(gaps)}) although the rest "
        f"of the connection did: tshark {tshark} loses keys after some migrations (Wireshark "
        "4.5 fixed it; with zero-length connection IDs it cannot find the connection at a new "
        "address), so what happened on that path cannot be judged"
    )


def undecrypted_directions(gaps: list[DecryptionGap], tshark: str) -> str:
    """One line for directions of which tshark decrypted no 1-RTT datagram at all."""
    return (
        f"no 1-RTT datagram of one direction decrypted ({_listed(gaps)}) although the other "
        f"direction did: tshark {tshark} lost that direction's keys (seen after a Retry "
        "answered with a new ClientHello, and for aioquic's datagrams to Chromium), so the "
        "migration checks cannot be judged from this capture"
    )
