"""1-RTT packets tshark could not decrypt, decrypted with aioquic's packet protection.

tshark 4.0 (Debian 12's) loses some 1-RTT packets after a migration: a short header to a
zero-length connection ID (Chromium's) at an address it has not seen belongs to no
connection it knows, so it does not even try. The keys are in the key log all the same:
`CLIENT_TRAFFIC_SECRET_0` and `SERVER_TRAFFIC_SECRET_0` of the connection's client random.
With them, aioquic's public `CryptoContext` (RFC 9001 section 5: header protection, then
AEAD) opens the packet, following key updates (section 6), and the frames are read here
(RFC 9000 section 19), as far as the tracker needs them: each frame's type, and the data of
PATH_CHALLENGE and PATH_RESPONSE. A packet that does not open stays undecrypted, and the
decryption checks still say so. tests/test_interop_decrypt.py holds this against tshark on
captures both can read.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from aioquic.quic.crypto import CryptoContext, next_key_phase
from aioquic.quic.packet import QuicProtocolVersion
from aioquic.tls import CipherSuite

from quicmig.interop.pcapfile import GSO_MAX_SEGMENT, GSO_MIN_SEGMENT

CLIENT_SECRET, SERVER_SECRET = "CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0"
# Cipher suites by secret length (bytes): the key log does not name the suite.
SUITES = {
    32: (CipherSuite.AES_128_GCM_SHA256, CipherSuite.CHACHA20_POLY1305_SHA256),
    48: (CipherSuite.AES_256_GCM_SHA384,),
}
PATH_CHALLENGE, PATH_RESPONSE = 0x1A, 0x1B
CHALLENGE_DATA = 8  # bytes (RFC 9000 section 19.17)
RESET_TOKEN = 16  # bytes


def read_secrets(keylog: Path, client_random: str) -> tuple[bytes, bytes] | None:
    """The client's and the server's 1-RTT secrets of the connection whose ClientHello had
    `client_random` (hex), from an SSLKEYLOGFILE; None when the log lacks one of them."""
    found: dict[str, bytes] = {}
    for line in keylog.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1].lower() == client_random.lower():
            found.setdefault(parts[0], bytes.fromhex(parts[2]))
    if CLIENT_SECRET in found and SERVER_SECRET in found:
        return found[CLIENT_SECRET], found[SERVER_SECRET]
    return None


@dataclass(frozen=True, slots=True)
class Opened:
    """What a decrypted 1-RTT packet holds, in the terms of capture.tshark.QuicDatagram."""

    packet_number: int
    frames: tuple[int, ...]  # frame types, in order (a PADDING run counts once)
    challenges: tuple[str, ...]  # PATH_CHALLENGE data, hex
    responses: tuple[str, ...]  # PATH_RESPONSE data, hex


class Direction:
    """One direction's packet protection; after a key update it moves to the next phase."""

    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.crypto: CryptoContext | None = None  # once a cipher suite has opened a packet
        self.largest = -1  # the largest packet number opened: the next is expected after it

    def _contexts(self) -> Iterator[CryptoContext]:
        if self.crypto is not None:
            yield self.crypto
            return
        for suite in SUITES.get(len(self.secret), ()):
            crypto = CryptoContext()
            crypto.setup(
                cipher_suite=suite, secret=self.secret, version=QuicProtocolVersion.VERSION_1
            )
            yield crypto

    def open(self, packet: bytes, cid_length: int) -> Opened | None:
        """Decrypt one short-header packet (a whole datagram) with a DCID of `cid_length`
        bytes; None when it does not open (another connection ID length, other keys)."""
        if len(packet) < 1 + cid_length + 20 or packet[0] & 0x80:
            return None
        for crypto in self._contexts():
            try:
                _, payload, number, updated = crypto.decrypt_packet(
                    packet, 1 + cid_length, self.largest + 1
                )
            except ValueError:  # aioquic's CryptoError is one: the packet does not open
                continue
            self.crypto = next_key_phase(crypto) if updated else crypto
            self.largest = max(self.largest, number)
            frames, challenges, responses = parse_frames(payload)
            return Opened(number, frames, challenges, responses)
        return None

    def open_batch(self, batch: bytes, cid_length: int) -> list[tuple[Opened, int]]:
        """A UDP GSO batch captured whole on lo (quicmig.interop.pcapfile.gso_segments)
        whose destination connection ID is too short to find its segment size by: the size
        is the one whose first segment opens (the AEAD tag says so); then each segment is
        opened. [(what it held, its size in bytes)], or [] when no size opens."""
        for size in range(GSO_MIN_SEGMENT, min(GSO_MAX_SEGMENT, len(batch) - 1) + 1):
            first = self.open(batch[:size], cid_length)
            if first is None:
                continue
            out = [(first, size)]
            for at in range(size, len(batch), size):
                segment = batch[at : at + size]
                opened = self.open(segment, cid_length)
                if opened is None:
                    return out  # the rest does not open: keep what did
                out.append((opened, len(segment)))
            return out
        return []


def _varint(data: bytes, at: int) -> tuple[int, int]:
    """RFC 9000 section 16: (value, the offset after it)."""
    first = data[at]
    length = 1 << (first >> 6)
    if at + length > len(data):
        raise ValueError("truncated variable-length integer")
    value = first & 0x3F
    for index in range(1, length):
        value = value << 8 | data[at + index]
    return value, at + length


def parse_frames(payload: bytes) -> tuple[tuple[int, ...], tuple[str, ...], tuple[str, ...]]:
    """Frame types, PATH_CHALLENGE data and PATH_RESPONSE data of a decrypted payload. An
    unknown frame type ends the reading (what came before it is kept)."""
    frames: list[int] = []
    challenges: list[str] = []
    responses: list[str] = []
    at = 0
    try:
        while at < len(payload):
            kind, at = _varint(payload, at)
            if kind == 0x00:  # PADDING: a run of zero bytes
                while at < len(payload) and payload[at] == 0:
                    at += 1
            elif kind == 0x01 or kind == 0x1E:  # PING, HANDSHAKE_DONE
                pass
            elif kind in (0x02, 0x03):  # ACK: largest, delay, count, first range, ranges
                _, at = _varint(payload, at)
                _, at = _varint(payload, at)
                count, at = _varint(payload, at)
                _, at = _varint(payload, at)
                for _ in range(2 * count + (3 if kind == 0x03 else 0)):
                    _, at = _varint(payload, at)
            elif kind == 0x04:  # RESET_STREAM
                at = _skip(payload, at, 3)
            elif kind == 0x05 or kind == 0x11 or kind == 0x15:  # two integers
                at = _skip(payload, at, 2)
            elif kind == 0x06:  # CRYPTO: offset, length, data
                _, at = _varint(payload, at)
                length, at = _varint(payload, at)
                at += length
            elif kind == 0x07:  # NEW_TOKEN
                length, at = _varint(payload, at)
                at += length
            elif 0x08 <= kind <= 0x0F:  # STREAM: id, [offset], [length], data
                _, at = _varint(payload, at)
                if kind & 0x04:
                    _, at = _varint(payload, at)
                if kind & 0x02:
                    length, at = _varint(payload, at)
                    at += length
                else:
                    at = len(payload)
            elif kind in (0x10, 0x12, 0x13, 0x14, 0x16, 0x17, 0x19):  # one integer
                _, at = _varint(payload, at)
            elif kind == 0x18:  # NEW_CONNECTION_ID: sequence, retire prior to, cid, token
                at = _skip(payload, at, 2)
                at += 1 + payload[at] + RESET_TOKEN
            elif kind in (PATH_CHALLENGE, PATH_RESPONSE):
                data = payload[at : at + CHALLENGE_DATA].hex()
                (challenges if kind == PATH_CHALLENGE else responses).append(data)
                at += CHALLENGE_DATA
            elif kind in (0x1C, 0x1D):  # CONNECTION_CLOSE: error, [frame type], reason
                at = _skip(payload, at, 2 if kind == 0x1C else 1)
                length, at = _varint(payload, at)
                at += length
            elif kind in (0x30, 0x31):  # DATAGRAM
                if kind == 0x31:
                    length, at = _varint(payload, at)
                    at += length
                else:
                    at = len(payload)
            else:
                break
            if at > len(payload):
                break
            frames.append(kind)
    except (ValueError, IndexError):
        pass
    return tuple(frames), tuple(challenges), tuple(responses)


def _skip(payload: bytes, at: int, count: int) -> int:
    for _ in range(count):
        _, at = _varint(payload, at)
    return at
