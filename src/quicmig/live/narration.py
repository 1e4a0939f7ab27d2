"""The live server's log: one line for each thing a connection's tracker observed.

Nothing here decides anything. `Narrator.tell()` compares what a tracker holds with what was
already told (a `Told` per connection) and logs the difference: handshake, migrations and
their validation, moves to the preferred address, CID rotations, the close. The server calls
it only for connections that just had input, so the log costs nothing per idle connection.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from quicmig.core.datagram import Address, format_address
from quicmig.core.endpoint import HalfOpenLimit, ServerConnection
from quicmig.model.verdicts import MigrationKind

Log = Callable[[str], None]


@dataclass(slots=True)
class Told:
    """What the log already said about one connection."""

    handshake: bool = False
    migrations: int = 0
    validations: set[int] = field(default_factory=set)
    rotations: int = 0
    server_moves: set[Address] = field(default_factory=set)
    closed: bool = False


def count(number: int, noun: str, plural: str = "s") -> str:
    return f"{number} {noun}{'' if number == 1 else plural}"


class Narrator:
    def __init__(self, log: Log) -> None:
        self.log = log

    def tell(self, name: str, server_conn: ServerConnection, told: Told) -> None:
        """Log what `server_conn`'s tracker observed since the last call (`name`: conn #N)."""
        if told.closed:
            return
        tracker = server_conn.tracker
        if not told.handshake and server_conn.handshake_at is not None:
            told.handshake = True
            peer = tracker.peer
            self.log(
                f"🔗 {name}: handshake done with "
                f"{format_address(peer) if peer else '?'} (ALPN {server_conn.alpn})"
            )
        migrations = tracker.migrations
        for index in range(told.migrations, len(migrations)):
            mig = migrations[index]
            what = (
                "port change (same address: a NAT rebinding or a new socket)"
                if mig.kind is MigrationKind.PORT_CHANGE
                else "address change"
            )
            cid = "new connection ID" if mig.cid_changed else "same connection ID"
            self.log(
                f"🔀 {name} migration {index + 1}: {format_address(mig.old_peer)} → "
                f"{format_address(mig.new_peer)}, {what}, {cid}"
            )
        told.migrations = len(migrations)
        if len(told.validations) < len(migrations):
            for index, mig in enumerate(migrations):
                rtt = mig.validation_rtt
                if index in told.validations or rtt is None:
                    continue
                told.validations.add(index)
                self.log(
                    f"✅ {name} migration {index + 1}: path {format_address(mig.new_peer)} "
                    f"validated, PATH_CHALLENGE → PATH_RESPONSE in {rtt * 1e3:.2f} ms "
                    f"({count(len(migrations), 'migration')} on this connection)"
                )
        for local, use in tracker.server_addresses.items():
            if use.moved_at is None or local in told.server_moves:
                continue
            told.server_moves.add(local)
            self.log(
                f"🏠 {name}: the client moved to the preferred address {format_address(local)}; "
                f"its first packet there used "
                + ("a new connection ID" if use.first_dcid_new else "an old connection ID (!)")
            )
        for rotation in tracker.cid_rotations[told.rotations :]:
            self.log(
                f"🆔 {name}: the client switched to a new connection ID on the same path "
                f"({format_address(rotation.peer)})"
            )
        told.rotations = len(tracker.cid_rotations)
        closed = server_conn.closed
        if closed is None:
            return
        told.closed = True
        reason = f": {closed.reason}" if closed.reason else ""
        if server_conn.handshake_at is None:
            first = tracker.peers_seen[0] if tracker.peers_seen else None
            self.log(
                f"❌ {name} from {format_address(first) if first else '?'}: closed before "
                f"the handshake completed{reason}"
            )
            return
        self.log(
            f"👋 {name} closed{reason} ({count(len(migrations), 'migration')}, "
            f"{count(len(tracker.cid_rotations), 'CID rotation')}, "
            f"{count(len(tracker.peers_seen), 'client address', 'es')} seen)"
        )

    def half_open_limit(self, where: Address, event: HalfOpenLimit) -> None:
        self.log(
            f"⛔ {format_address(where)}: {event.limit} handshakes in progress, the half-open "
            f"limit: new connections are refused until some complete or time out "
            f"({count(event.refused, 'Initial')} refused so far; raise --max-half-open, or "
            "use --retry against spoofed sources)"
        )

    def history_full(self, history: int) -> None:
        self.log(
            f"🗄  history full: from now on the records of closed connections beyond the newest "
            f"{history} are dropped (the totals stay exact; --history sets how many are kept)"
        )
