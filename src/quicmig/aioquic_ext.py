"""quicmig's extensions to aioquic's QuicConnection: parts of RFC 9000 section 9 it leaves undone.

This is the only module that touches private aioquic attributes. Each use names the aioquic
version it was written against (1.7.2, pinned in pyproject.toml) and the RFC section it
implements. Every extension is a switch (`QuicExtensions`, the scenario's `[quic]` table);
with all of them off `connection_class()` returns aioquic's own QuicConnection, so stock
behaviour stays available and each extension is a measured difference, not a claim.

What aioquic 1.7.2 already does, so it is not repeated here: a lost PATH_CHALLENGE is sent
again with new data (`_on_path_challenge_delivery`, RFC 9000 section 8.2.1); validation of
a new peer address is abandoned after three PTOs and the connection falls back to the last
validated path, or closes silently without one (`_abandon_path_validation`, sections 8.2.4
and 9.3.2); data to an unvalidated address is capped at three times the bytes received
from it (`QuicNetworkPath.can_send`, section 8.1 as applied by section 9.3).
"""

from __future__ import annotations

import ipaddress
import math
import os
from typing import ClassVar

from aioquic import tls
from aioquic.buffer import Buffer  # type: ignore[attr-defined]  # re-exported from _buffer
from aioquic.quic import events
from aioquic.quic.congestion.base import create_congestion_control
from aioquic.quic.connection import (
    END_STATES,
    NetworkAddress,
    QuicConnection,
    QuicConnectionId,
    QuicNetworkPath,
)
from aioquic.quic.packet import (
    QuicPacketType,
    QuicPreferredAddress,
    pull_quic_transport_parameters,
    push_quic_transport_parameters,
)
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.quic.recovery import QuicPacketPacer

from quicmig.model.scenario import QuicExtensions, ServerSettings

STATELESS_RESET_TOKEN_SIZE = 16  # bytes, RFC 9000 section 10.3


def connection_class(
    extensions: QuicExtensions, server: ServerSettings | None = None
) -> type[QuicConnection]:
    """The connection class for `extensions` and the server's `server` settings.

    Stock QuicConnection when every switch is off and the server advertises nothing
    aioquic cannot. Pass it as `connection_class` to ClientEndpoint / ServerEndpoint.
    """
    settings = server or ServerSettings()
    if not extensions.enabled and not settings.enabled:
        return QuicConnection

    class Configured(QuicmigConnection):
        pass

    Configured.extensions = extensions
    Configured.server_settings = settings
    names = list(extensions.enabled)
    if settings.preferred_address is not None:
        names.append("preferred_address")
    if settings.disable_active_migration:
        names.append("disable_active_migration")
    Configured.__name__ = Configured.__qualname__ = "QuicmigConnection[" + ",".join(names) + "]"
    return Configured


def stream_send_backlog(conn: QuicConnection, stream_id: int) -> int | None:
    """Bytes written to the stream that aioquic has not sent once yet, or None when nothing
    more may be written (no such stream, FIN already written, reset, or connection closing).

    A server writing a long body a piece at a time reads this to keep memory bounded: data
    stays in the stream's buffer until acknowledged (RFC 9000 sections 2.2, 3.1), so the
    buffer holds what is in flight plus this backlog.
    """
    # aioquic 1.7.2 private: _state, _streams, QuicStreamSender._buffer_stop, _buffer_fin,
    # _reset_error_code (highest_offset is public: the highest offset ever sent).
    if conn._state in END_STATES:
        return None
    stream = conn._streams.get(stream_id)
    if stream is None:
        return None
    sender = stream.sender
    if sender._buffer_fin is not None or sender._reset_error_code is not None:
        return None
    return sender._buffer_stop - sender.highest_offset


class QuicmigConnection(QuicConnection):
    """aioquic's QuicConnection with the switches in `extensions` applied.

    Drive it exactly like QuicConnection. Use `connection_class()` to get one configured.
    """

    extensions: ClassVar[QuicExtensions] = QuicExtensions()
    server_settings: ClassVar[ServerSettings] = ServerSettings()

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        # The server's disable_active_migration as this client read it (RFC 9000 18.2).
        self._qm_peer_disable_active_migration = False
        self._qm_preferred_cid: QuicConnectionId | None = None
        if not self._is_client and self.server_settings.preferred_address is not None:
            self._qm_issue_preferred_cid()
        # The peer address whose recovery state the congestion controller currently
        # describes (reset_recovery), and the first packet number sent after the active
        # path last changed: packets below it went to an older path.
        self._qm_recovery_addr: NetworkAddress | None = None
        self._qm_active_addr: NetworkAddress | None = None
        self._qm_path_first_pn = 0
        # probe_old_path: the previously active path, to challenge on the next send.
        self._qm_old_path: QuicNetworkPath | None = None

    # --- the sans-IO API, wrapped -----------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: NetworkAddress, now: float) -> None:
        super().receive_datagram(data, addr, now)
        self._qm_after_input()

    def handle_timer(self, now: float) -> None:
        super().handle_timer(now)
        self._qm_after_input()

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, NetworkAddress]]:
        if self.extensions.challenge_first and self._qm_challenge_blocked():
            # RFC 9000 sections 8.2.1 and 9.3: the server must validate a new peer address
            # before sending it more than the anti-amplification allowance, so the
            # PATH_CHALLENGE is what the new path needs first. Stock aioquic 1.7.2 writes it
            # inside the congestion-controlled packet loop, and when packets in flight on
            # the old, often dead path fill the window (bytes_in_flight == cwnd) only a bare
            # ACK leaves; the challenge waits for a PTO or for ACKs to free the window. RFC
            # 9002 section 7 lets probe packets exceed the congestion window, and RFC 9000
            # section 9.4 says packets sent on the old path must not count towards
            # congestion control on the new one. aioquic 1.7.2's flag for "this packet is a
            # probe and may exceed the window" is `_probe_pending` (it allows one datagram
            # and adds a PING); setting it sends the challenge in the first packet on the
            # new path. The anti-amplification limit still applies (max_total_bytes).
            self._probe_pending = True  # aioquic 1.7.2 private, RFC 9002 section 7
        datagrams = super().datagrams_to_send(now)
        if self._qm_old_path is not None:
            datagrams += self._qm_challenge_old_path(self._qm_old_path, now)
            self._qm_old_path = None
        return datagrams

    # --- transport parameters: preferred_address, disable_active_migration ----------------

    @property
    def peer_disabled_active_migration(self) -> bool:
        """The server sent disable_active_migration (RFC 9000 section 18.2); client side."""
        return self._qm_peer_disable_active_migration

    def active_migration_refusal(self) -> str | None:
        """Why this client must not migrate actively, or None if it may.

        Only with the `honour_disable_migration` switch: stock aioquic 1.7.2 never reads the
        parameter, so a stock client migrates whatever the server said.
        """
        if not (self._is_client and self.extensions.honour_disable_migration):
            return None
        if not self._qm_peer_disable_active_migration:
            return None
        return (
            "the server sent disable_active_migration (RFC 9000 section 18.2): this client "
            "does not migrate actively and stays on its current address"
        )

    def _qm_issue_preferred_cid(self) -> None:
        """RFC 9000 sections 5.1.1 and 18.2: the preferred address carries the connection ID
        with sequence number 1 and its stateless reset token."""
        # aioquic 1.7.2 private: _host_cids, _host_cid_seq (1 for a new connection),
        # _configuration, _events. was_sent=True: the transport parameters carry it, so no
        # NEW_CONNECTION_ID frame repeats it; the event tells the endpoint to route it, as
        # aioquic does for the IDs it issues in NEW_CONNECTION_ID frames.
        assert self._host_cid_seq == 1
        cid = QuicConnectionId(
            cid=os.urandom(self._configuration.connection_id_length),
            sequence_number=self._host_cid_seq,
            stateless_reset_token=os.urandom(STATELESS_RESET_TOKEN_SIZE),
            was_sent=True,
        )
        self._host_cids.append(cid)
        self._host_cid_seq += 1
        self._qm_preferred_cid = cid
        self._events.append(events.ConnectionIdIssued(connection_id=cid.cid))

    def _serialize_transport_parameters(self) -> bytes:
        # aioquic 1.7.2 private: QuicConnection._serialize_transport_parameters builds the
        # parameters without disable_active_migration or preferred_address (a server could
        # not send either); add them to what it built. RFC 9000 section 18.2.
        data = super()._serialize_transport_parameters()
        settings = self.server_settings
        if self._is_client or not settings.enabled:
            return data
        params = pull_quic_transport_parameters(Buffer(data=data))
        if settings.disable_active_migration:
            params.disable_active_migration = True
        preferred = settings.preferred_address
        if preferred is not None and self._qm_preferred_cid is not None:
            token = self._qm_preferred_cid.stateless_reset_token
            assert token is not None
            ipv4 = ipaddress.ip_address(preferred[0]).version == 4
            params.preferred_address = QuicPreferredAddress(
                ipv4_address=preferred if ipv4 else None,
                ipv6_address=None if ipv4 else preferred,
                connection_id=self._qm_preferred_cid.cid,
                stateless_reset_token=token,
            )
        if self._quic_logger is not None:
            self._quic_logger.log_event(
                category="transport",
                event="parameters_set",
                data={
                    "owner": "local",
                    "disable_active_migration": params.disable_active_migration,
                    "preferred_address": None
                    if preferred is None
                    else {"address": list(preferred), "sequence_number": 1},
                },
            )
        buf = Buffer(capacity=3 * self._max_datagram_size)
        push_quic_transport_parameters(buf, params)
        return bytes(buf.data)

    def _parse_transport_parameters(self, data: bytes, from_session_ticket: bool = False) -> None:
        # aioquic 1.7.2 private: it parses disable_active_migration and drops it; read it
        # again from the same bytes (RFC 9000 section 18.2).
        super()._parse_transport_parameters(data, from_session_ticket)
        if self._is_client and not from_session_ticket:
            params = pull_quic_transport_parameters(Buffer(data=data))
            self._qm_peer_disable_active_migration = bool(params.disable_active_migration)

    # --- challenge_first --------------------------------------------------------------------

    def _qm_challenge_blocked(self) -> bool:
        """A server's PATH_CHALLENGE is due on the active path but the window is full."""
        # aioquic 1.7.2 private: _is_client, _handshake_complete, _state, _network_paths,
        # QuicNetworkPath.local_challenge_sent, _loss, _max_datagram_size (RFC 9000 9.3).
        if self._is_client or not self._handshake_complete or self._state in END_STATES:
            return False
        if not self._network_paths:
            return False
        path = self._network_paths[0]
        if path.is_validated or path.local_challenge_sent:
            return False
        room = self._loss.congestion_window - self._loss.bytes_in_flight  # bytes
        return room < self._max_datagram_size

    # --- reset_recovery ---------------------------------------------------------------------

    def _qm_after_input(self) -> None:
        """After input (the only time the active path changes): follow the peer's address."""
        # aioquic 1.7.2 private: _is_client, _state, _network_paths, _packet_number.
        if self._is_client or self._state in END_STATES or not self._network_paths:
            return
        path = self._network_paths[0]
        if path.addr != self._qm_active_addr:
            # Promoted by a non-probing packet (RFC 9000 section 9.3) or restored after a
            # failed validation (section 9.3.2). Nothing has been sent to it since: sending
            # only happens in datagrams_to_send(), so every packet numbered from here on
            # goes to this address.
            if self.extensions.probe_old_path and not path.is_validated:
                # An apparent migration: remember the old path to challenge it (9.3.3).
                self._qm_old_path = next(
                    (
                        p
                        for p in self._network_paths[1:]
                        if p.addr == self._qm_active_addr and p.is_validated
                    ),
                    None,
                )
            self._qm_active_addr = path.addr
            self._qm_path_first_pn = self._packet_number
        if not path.is_validated:
            return
        if self._qm_recovery_addr is None:
            self._qm_recovery_addr = path.addr  # validated by the handshake
            return
        if path.addr == self._qm_recovery_addr:
            return
        old, self._qm_recovery_addr = self._qm_recovery_addr, path.addr
        # RFC 9000 section 9.4: reset "unless the only change in the peer's address is its
        # port number" -- a NAT rebinding keeps its path's congestion state and RTT.
        if self.extensions.reset_recovery and old[0] != path.addr[0]:
            self._qm_reset_recovery(self._qm_path_first_pn)

    def _qm_challenge_old_path(
        self, path: QuicNetworkPath, now: float
    ) -> list[tuple[bytes, NetworkAddress]]:
        """One PATH_CHALLENGE to the previously active path (RFC 9000 section 9.3.3).

        "In response to an apparent migration, endpoints MUST validate the previously active
        path using a PATH_CHALLENGE frame." If the client is still there (the new address
        was an attacker forwarding copies of its packets), its answer -- PATH_RESPONSE with
        an ACK, a non-probing packet -- makes the old path active again; if it has really
        moved, the challenge is lost and costs one small packet. The old path keeps its
        validated flag: it is the fallback of section 9.3.2 if the new address fails.
        aioquic 1.7.2's own prober (_send_probing_frames) only challenges unvalidated paths
        and applies the anti-amplification limit, so the packet is built here.
        """
        # aioquic 1.7.2 private: _network_paths, _peer_cid_available, _cryptos, _version,
        # _packet_number, _max_datagram_size, _quic_logger, _write_path_challenge_frame,
        # _flush_builder, _spaces, _loss._cc, QuicNetworkPath.peer_cid.
        if (
            path not in self._network_paths[1:]
            or self._state in END_STATES
            or self._version is None
        ):
            return []
        if path.peer_cid is None:
            if not self._peer_cid_available:
                return []  # RFC 9000 section 9.5: no spare connection ID for another path
            path.peer_cid = self._peer_cid_available.pop(0)
        builder = QuicPacketBuilder(
            host_cid=self.host_cid,
            is_client=False,
            max_datagram_size=self._max_datagram_size,
            packet_number=self._packet_number,
            peer_cid=path.peer_cid.cid,
            quic_logger=self._quic_logger,
            version=self._version,
        )
        builder.start_packet(QuicPacketType.ONE_RTT, self._cryptos[tls.Epoch.ONE_RTT])
        self._write_path_challenge_frame(builder=builder, network_path=path)
        first = self._packet_number
        datagrams = self._flush_builder(
            builder=builder, network_path=path, peer_cid=path.peer_cid.cid, now=now
        )
        # RFC 9000 section 9.4: packets sent on another path must not contribute to the
        # active path's congestion control. The probe stays tracked (its loss or its answer
        # still reaches _on_path_challenge_delivery) but leaves bytes in flight, so losing
        # it on a path that really died is no congestion event for the new one.
        sent = self._spaces[tls.Epoch.ONE_RTT].sent_packets
        probes = [sent[n] for n in range(first, self._packet_number) if n in sent]
        for packet in probes:
            if packet.in_flight:
                self._loss._cc.on_packets_expired(packets=[packet])
                packet.in_flight = False
        return datagrams

    def _qm_reset_recovery(self, first_new_pn: int) -> None:
        """Fresh congestion controller and RTT estimate for the new, just validated path.

        RFC 9000 section 9.4: "On confirming a peer's ownership of its new address, an
        endpoint MUST immediately reset the congestion controller and round-trip time
        estimator for the new path to initial values" (RFC 9002 appendices A.3, B.3), and
        "Packets sent on the old path MUST NOT contribute to congestion control or RTT
        estimation for the new path."

        Packets still in flight on the old path: they stay tracked by loss detection, so
        their data is retransmitted on the new path once declared lost (by the packet
        threshold as soon as newer packets are acknowledged, RFC 9002 section 6.1.1), or
        acknowledged if they arrive after all (make-before-break). They stop counting as
        bytes in flight, so neither their acknowledgement nor their loss moves the new
        path's window: they belong to another path's controller (section 9.4 above). We do
        not declare them lost at once: on an overlap they may still be delivered, and a
        spurious retransmission would cost the new path's window. Packets already sent to
        the new address (the PATH_CHALLENGE among them) count towards the new controller.
        """
        # aioquic 1.7.2 private: QuicPacketRecovery._cc, ._pacer, ._rtt_*, ._pto_count,
        # .spaces[].sent_packets, QuicSentPacket.in_flight, _configuration, _max_datagram_size.
        loss = self._loss
        loss._cc = create_congestion_control(
            self._configuration.congestion_control_algorithm,
            max_datagram_size=self._max_datagram_size,
        )
        loss._pacer = QuicPacketPacer(max_datagram_size=self._max_datagram_size)
        # RFC 9002 appendix A.3: initial values of the RTT estimator.
        loss._rtt_initialized = False
        loss._rtt_latest = 0.0
        loss._rtt_min = math.inf
        loss._rtt_smoothed = 0.0
        loss._rtt_variance = 0.0
        loss._rtt_first_sample_time = 0.0
        loss._pto_count = 0
        for space in loss.spaces:
            for number, packet in space.sent_packets.items():
                if not packet.in_flight:
                    continue
                if number < first_new_pn:
                    packet.in_flight = False  # old path: out of the new controller
                else:
                    loss._cc.on_packet_sent(packet=packet)
        if self._quic_logger is not None:
            # The window and bytes in flight; the RTT is logged with its first new sample.
            loss._log_metrics_updated()
