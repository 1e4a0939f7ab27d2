"""quic-interop-runner's migration checks on any capture (decrypted datagrams from tshark).

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
3. Paths and switches, as the server sees them (RFC 9000 section 9.3): the client's address
   is the source of its highest-numbered non-probing 1-RTT packet; a switch is such a packet
   from a new address. Probing packets hold only PATH_CHALLENGE, PATH_RESPONSE,
   NEW_CONNECTION_ID and PADDING (section 9.1).

The checks (quic-interop-runner `rebind-port` / `rebind-addr` / `connectionmigration`): more
than one path; the server's first datagram to each new path carries PATH_CHALLENGE; every
PATH_CHALLENGE (either direction) answered by a PATH_RESPONSE with the same data; with
`active=True` (the user says the client moved on purpose: a capture cannot tell that from a
NAT rebinding) a new DCID on every new path (section 9.5). A capture in which no connection
changed path gives the verdict failed, with "no migration in this capture" as the reason.

A connection whose 1-RTT packets tshark could not decrypt (the key log lacks its secrets)
cannot be judged: its frames, and so its migrations, are hidden. It is named by what is in
the clear (addresses, the Initial's DCID, the ClientHello's random, which key logs are keyed
by) and makes the verdict unsupported, never passed; with no migration in the decrypted
connections, "no migration" cannot be claimed either.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from quicmig.capture.tshark import QUIC_PORTS, QuicDatagram
from quicmig.core.checks import verdict
from quicmig.core.datagram import Address, format_address
from quicmig.core.results import Check, Verdict

SCHEMA = "quicmig.check/1"
PADDING, PING_FRAME, NEW_CONNECTION_ID = 0x00, 0x01, 0x18
PATH_CHALLENGE, PATH_RESPONSE = 0x1A, 0x1B
PROBING = frozenset({PADDING, NEW_CONNECTION_ID, PATH_CHALLENGE, PATH_RESPONSE})
NO_MIGRATION = "no migration in this capture"
KEYS_CHECK = "all-connections-decrypted"
NAMED = 3  # undecrypted connections named in a one-line reason; the rest are counted


@dataclass(slots=True)
class PathUse:
    """One client address of a connection, as the server side saw it."""

    peer: str
    first_at: float  # seconds since the capture's first QUIC datagram
    last_at: float
    datagrams_from: int = 0  # client -> server
    datagrams_to: int = 0  # server -> client


@dataclass(slots=True)
class ChallengeSeen:
    data: str  # hex
    sent_at: float
    sender: str  # "server" | "client"
    to: str  # the address it went to
    answered_at: float | None = None


@dataclass(slots=True)
class Switch:
    """The client's non-probing packets started to come from a new address."""

    observed: str  # "port_change" | "address_change"
    old_peer: str
    new_peer: str
    detected_at: float  # seconds since the capture's first QUIC datagram
    frame: int  # capture frame number of that first packet
    old_dcid: str | None
    new_dcid: str | None
    first_server_frame: int | None = None
    first_server_at: float | None = None
    first_packet_had_challenge: bool | None = None  # None: no server datagram to it captured
    first_packet_challenges: list[str] = field(default_factory=list)  # data in that datagram
    challenges: list[str] = field(default_factory=list)  # data the server sent to new_peer
    challenge_sent_at: float | None = None  # the first of them
    validated_at: float | None = None  # the first PATH_RESPONSE to one of them

    @property
    def validation_rtt(self) -> float | None:
        if self.validated_at is None or self.challenge_sent_at is None:
            return None
        return self.validated_at - self.challenge_sent_at

    @property
    def cid_changed(self) -> bool | None:
        if self.old_dcid is None or self.new_dcid is None:
            return None
        return self.old_dcid != self.new_dcid

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["challenges"] = len(self.challenges)
        data["cid_changed"] = self.cid_changed
        data["validation_rtt"] = self.validation_rtt
        return data


@dataclass(slots=True)
class ConnectionView:
    number: int  # ours, 1-based, in order of first appearance
    server: str
    tshark_connection: int | None
    first_at: float
    last_at: float
    datagrams: int = 0
    paths: list[PathUse] = field(default_factory=list)
    switches: list[Switch] = field(default_factory=list)
    challenges: list[ChallengeSeen] = field(default_factory=list)
    datagrams_1rtt: int = 0  # datagrams holding only a 1-RTT packet
    decrypted: int = 0  # of those, the ones tshark could decrypt
    initial_dcid: str | None = None  # DCID of the client's first packet, in the clear
    client_random: str | None = None  # hex, from the ClientHello: what key logs are keyed by
    # tracking state
    _peer: Address | None = None
    _largest_pn: int = -1
    _dcid: str | None = None

    def path(self, peer: Address, at: float) -> PathUse:
        text = format_address(peer)
        for use in self.paths:
            if use.peer == text:
                use.last_at = at
                return use
        use = PathUse(text, at, at)
        self.paths.append(use)
        return use

    @property
    def undecrypted(self) -> bool:
        """It has 1-RTT packets and tshark decrypted none: no secrets for it in the key log."""
        return self.datagrams_1rtt > 0 and self.decrypted == 0

    def describe(self) -> str:
        """The connection by what is visible without its keys, in a few words."""
        client = self.paths[0].peer if self.paths else "?"
        known = [
            f"{label} {value}"
            for label, value in (
                ("DCID", self.initial_dcid),
                ("client random", self.client_random[:16] + "…" if self.client_random else None),
            )
            if value
        ]
        more = f", {len(self.paths)} client addresses" if len(self.paths) > 1 else ""
        return f"#{self.number} {client} → {self.server} ({'; '.join(known) or 'no IDs'}{more})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "connection": self.number,
            "server": self.server,
            "tshark_connection": self.tshark_connection,
            "first_at": self.first_at,
            "last_at": self.last_at,
            "datagrams": self.datagrams,
            "datagrams_1rtt": self.datagrams_1rtt,
            "decrypted": self.decrypted,
            "undecrypted": self.undecrypted,
            "initial_dcid": self.initial_dcid,
            "client_random": self.client_random,
            "paths": [asdict(p) for p in self.paths],
            "migrations": [s.to_dict() for s in self.switches],
            "challenges": [asdict(c) for c in self.challenges],
        }


@dataclass(frozen=True, slots=True)
class CaptureReport:
    capture: str
    keylog: str | None
    tshark: str
    start_epoch: float  # capture timestamp of the first QUIC datagram; times count from it
    datagrams: int
    decrypted: int  # datagrams holding only a 1-RTT packet whose frames tshark decoded
    connections: list[ConnectionView]
    checks: list[Check]
    verdict: Verdict
    reasons: list[str]
    warnings: list[str] = field(default_factory=list)  # e.g. the capture was cut short

    @property
    def migrated(self) -> bool:
        return any(c.switches for c in self.connections)

    @property
    def undecrypted(self) -> list[ConnectionView]:
        return [c for c in self.connections if c.undecrypted]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "capture": self.capture,
            "keylog": self.keylog,
            "tshark": self.tshark,
            "start_epoch": self.start_epoch,
            "datagrams": self.datagrams,
            "decrypted": self.decrypted,
            "migrated": self.migrated,
            "verdict": self.verdict.value,
            "reasons": self.reasons,
            "warnings": self.warnings,
            "checks": [asdict(c) for c in self.checks],
            "connections": [c.to_dict() for c in self.connections],
        }

    def write_json(self, path: Path) -> None:
        from quicmig.core.results import write_atomically

        write_atomically(path, json.dumps(self.to_dict(), indent=2) + "\n")


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
            view = ConnectionView(len(views) + 1, format_address(server), key[1], at, at)
            views[key] = view
            members[view.number] = []
            per_server.setdefault(server, []).append(key)
        view.last_at = at
        view.datagrams += 1
        for dcid in dgram.dcids:
            by_dcid[(server, dcid)] = key
        members[view.number].append((dgram, from_client))
    return [(view, members[view.number]) for view in views.values()]


def _follow(view: ConnectionView, datagrams: list[tuple[QuicDatagram, bool]], start: float) -> None:
    """Replay one connection's datagrams like the server's migration tracker."""
    pending: dict[str, ChallengeSeen] = {}
    for dgram, from_client in datagrams:
        at = dgram.at - start
        peer = dgram.src if from_client else dgram.dst
        use = view.path(peer, at)
        sender = "client" if from_client else "server"
        if dgram.only_short:
            view.datagrams_1rtt += 1
            view.decrypted += dgram.decrypted
        if from_client:
            if view.initial_dcid is None and dgram.dcids:
                view.initial_dcid = dgram.dcids[0]
            if view.client_random is None:
                view.client_random = dgram.client_random
        for data in dgram.responses:  # answers challenges sent the other way
            challenge = pending.get(data)
            if challenge is not None and challenge.sender != sender and not challenge.answered_at:
                challenge.answered_at = at
        for data in dgram.challenges:
            if data not in pending:
                challenge = ChallengeSeen(data, at, sender, format_address(dgram.dst))
                pending[data] = challenge
                view.challenges.append(challenge)
        if from_client:
            use.datagrams_from += 1
            _client_datagram(view, dgram, at)
        else:
            use.datagrams_to += 1
            current = view.switches[-1] if view.switches else None
            if current is not None and format_address(dgram.dst) == current.new_peer:
                if current.first_server_frame is None and dgram.number > current.frame:
                    current.first_server_frame = dgram.number
                    current.first_server_at = at
                    current.first_packet_had_challenge = bool(dgram.challenges)
                    current.first_packet_challenges = list(dgram.challenges)
                if dgram.challenges and current.challenge_sent_at is None:
                    current.challenge_sent_at = at
                current.challenges.extend(dgram.challenges)
    for switch in view.switches:
        answered = [
            pending[data].answered_at
            for data in switch.challenges
            if pending[data].answered_at is not None
        ]
        switch.validated_at = min(a for a in answered if a is not None) if answered else None


def _client_datagram(view: ConnectionView, dgram: QuicDatagram, at: float) -> None:
    if view._peer is None:
        view._peer = dgram.src
    if not dgram.has_short or not dgram.frames:
        return  # a handshake datagram, or a 1-RTT packet tshark could not decrypt
    if dgram.only_short and set(dgram.frames) <= PROBING:
        return  # RFC 9000 section 9.3: probing packets do not move the connection
    if dgram.short_pn is not None:
        if dgram.short_pn <= view._largest_pn:
            return  # reordered: an older packet does not move the connection back
        view._largest_pn = dgram.short_pn
    dcid = dgram.short_dcid
    if dgram.src != view._peer:
        old, new = view._peer, dgram.src
        view.switches.append(
            Switch(
                observed="port_change" if old[0] == new[0] else "address_change",
                old_peer=format_address(old),
                new_peer=format_address(new),
                detected_at=at,
                frame=dgram.number,
                old_dcid=view._dcid,
                new_dcid=dcid,
            )
        )
    view._peer = dgram.src
    if dcid:
        view._dcid = dcid


def analyse(
    datagrams: list[QuicDatagram],
    *,
    capture: str,
    keylog: str | None,
    tshark: str,
    active: bool = False,
    quic_ports: tuple[int, ...] = (),
    warnings: list[str] | None = None,
) -> CaptureReport:
    start = datagrams[0].at if datagrams else 0.0
    connections = []
    for view, members in group(datagrams, quic_ports):
        _follow(view, members, start)
        connections.append(view)
    checks = capture_checks(connections, active)
    outcome, reasons = verdict(checks)
    return CaptureReport(
        capture=capture,
        keylog=keylog,
        tshark=tshark,
        start_epoch=start,
        datagrams=len(datagrams),
        decrypted=sum(d.decrypted for d in datagrams),
        connections=connections,
        checks=checks,
        verdict=outcome,
        reasons=reasons,
        warnings=list(warnings or []),
    )


def capture_checks(connections: list[ConnectionView], active: bool) -> list[Check]:
    hidden = [c for c in connections if c.undecrypted]
    checks = _migration_checks(connections, active, hidden)
    if hidden:
        checks.append(Check(KEYS_CHECK, None, keys_missing(hidden, len(connections))))
    return checks


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


def _migration_checks(
    connections: list[ConnectionView], active: bool, hidden: list[ConnectionView]
) -> list[Check]:
    switches = [s for c in connections for s in c.switches]
    moved = [c for c in connections if c.switches]
    if not moved and hidden:
        return [
            Check(
                "multiple-paths",
                None,
                f"no migration in the {len(connections) - len(hidden)} decrypted connections; "
                f"{len(hidden)} more could not be decrypted, and a migration in them cannot be "
                "told from their encrypted packets",
            )
        ]
    if not moved:
        most = max((len(c.paths) for c in connections), default=0)
        detail = (
            f"{NO_MIGRATION}: each of the {len(connections)} connections kept one client "
            "address for its 1-RTT packets"
            if most <= 1
            else f"{NO_MIGRATION}: packets came from {most} client addresses but the client's "
            "non-probing 1-RTT packets never moved"
        )
        return [Check("multiple-paths", False, detail)]
    checks = [
        Check(
            "multiple-paths",
            True,
            f"{len(switches)} path changes in {len(moved)} of {len(connections)} connections "
            f"({', '.join(sorted({s.observed for s in switches}))})",
        )
    ]
    without = [s for s in switches if s.first_packet_had_challenge is False]
    unseen = [s for s in switches if s.first_packet_had_challenge is None]
    if without:
        checks.append(
            Check(
                "first-packet-challenge",
                False,
                "no PATH_CHALLENGE in the server's first datagram to "
                + ", ".join(f"{s.new_peer} (frame {s.first_server_frame})" for s in without),
            )
        )
    elif unseen:
        checks.append(
            Check(
                "first-packet-challenge",
                None,
                "the capture holds no server datagram to "
                + ", ".join(s.new_peer for s in unseen)
                + " (captured on the client's side only, or it ended first)",
            )
        )
    else:
        checks.append(
            Check(
                "first-packet-challenge",
                True,
                f"the server's first datagram on each of the {len(switches)} new paths carried "
                "PATH_CHALLENGE",
            )
        )
    # As quic-interop-runner's rebind checks: the challenges in the server's first datagram on
    # each new path must be answered. One sent again after a loss, and a probe of the old path
    # (RFC 9000 section 9.3.3, nobody left there after a real move), are not asked about.
    seen = {ch.data: ch for c in moved for ch in c.challenges if ch.sender == "server"}
    challenges = [seen[data] for s in switches for data in s.first_packet_challenges]
    unanswered = [ch for ch in challenges if ch.answered_at is None]
    detail = (
        f"{len(challenges) - len(unanswered)} of {len(challenges)} PATH_CHALLENGE in the "
        "server's first datagram on a new path answered"
    )
    if unanswered:
        detail += "; unanswered: " + ", ".join(
            f"{ch.data} (to {ch.to} at {ch.sent_at:.3f}s)" for ch in unanswered
        )
    checks.append(Check("challenges-answered", not unanswered, detail))
    if active:
        reused = [s for s in switches if s.cid_changed is False]
        unknown = [s for s in switches if s.cid_changed is None]
        checks.append(
            Check(
                "new-dcid-after-active-migration",
                False if reused else (None if unknown else True),
                f"{len(reused)} of {len(switches)} migrations kept the old DCID "
                "(RFC 9000 section 9.5)"
                if reused
                else (
                    f"DCID unknown for {len(unknown)} migrations"
                    if unknown
                    else f"the client used a new DCID after all {len(switches)} migrations"
                ),
            )
        )
    return checks
