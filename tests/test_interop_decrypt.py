"""quicmig's own 1-RTT decryption (aioquic's packet protection and the key log) against
tshark's, on a capture both read whole: the same packet numbers, frames and path
challenges for every 1-RTT datagram; a GSO batch opened segment by segment; frames read
as RFC 9000 section 19 writes them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import BuiltinRuns

from quicmig.capture.tshark import QuicDatagram, read_datagrams
from quicmig.core.datagram import Address
from quicmig.interop.decrypt import Direction, parse_frames, read_secrets
from quicmig.interop.pcapfile import read_records, udp_header

CID = 8  # bytes: aioquic's connection IDs, both sides


def payloads(pcap: Path) -> list[bytes]:
    out = []
    for record in read_records(pcap):
        header = udp_header(record.ip)
        assert header is not None
        out.append(record.ip[len(record.ip) - header.payload :])
    return out


Opened = tuple[list[QuicDatagram], list[bytes], tuple[bytes, bytes], Address]


@pytest.fixture(scope="module")
def opened_capture(builtin_run: BuiltinRuns) -> Opened:
    """nat-rebinding's capture as tshark read it (once for the module), each frame's UDP
    payload, the connection's 1-RTT secrets (client's, server's) from its key log, and the
    server's address."""
    run = builtin_run("nat-rebinding", capture=True)
    pcap, keylog = Path(run.result.files["pcap"]), Path(run.result.files["keylog"])
    rows = read_datagrams(pcap, keylog)
    random = next(d.client_random for d in rows if d.client_random)
    assert random is not None
    secrets = read_secrets(keylog, random)
    assert secrets is not None
    server = next(d.dst for d in rows if d.has_initial)
    return rows, payloads(pcap), secrets, server


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_every_1rtt_datagram_opens_as_tshark_decrypted_it(opened_capture: Opened) -> None:
    rows, raw, secrets, server = opened_capture
    directions = {True: Direction(secrets[0]), False: Direction(secrets[1])}
    compared = challenges = 0
    for row in rows:
        if not row.only_short:
            continue
        assert row.decrypted, "tshark decrypts this whole capture"
        opened = directions[row.dst == server].open(raw[row.number - 1], CID)
        assert opened is not None, f"frame {row.number} did not open"
        assert opened.packet_number == row.short_pn
        assert opened.frames == row.frames, f"frame {row.number}"
        assert (opened.challenges, opened.responses) == (row.challenges, row.responses)
        compared += 1
        challenges += len(opened.challenges)
    assert compared > 500 and challenges >= 1  # the rebinding's PATH_CHALLENGE among them
    # Another connection's secrets open nothing.
    wrong = Direction(bytes(32))
    assert wrong.open(raw[rows[-1].number - 1], CID) is None


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_a_gso_batch_opens_segment_by_segment(opened_capture: Opened) -> None:
    rows, raw, secrets, server = opened_capture
    # Three consecutive full-size datagrams of the server's, glued as a GSO send is.
    sent = [r for r in rows if r.only_short and r.src == server and r.udp_length > 1200]
    size = sent[10].udp_length - 8
    run_of = [r for r in sent[10:] if r.udp_length - 8 == size][:3]
    batch = b"".join(raw[r.number - 1] for r in run_of)
    direction = Direction(secrets[1])
    direction.largest = (run_of[0].short_pn or 0) - 1
    opened = direction.open_batch(batch, CID)
    assert [(o.packet_number, n) for o, n in opened] == [(r.short_pn, size) for r in run_of]
    assert [o.frames for o, _ in opened] == [r.frames for r in run_of]


def test_frames_are_read_as_rfc9000_writes_them() -> None:
    payload = bytes.fromhex(
        "0000"  # PADDING x2: one run
        "01"  # PING
        "03"
        "40c8"
        "00"
        "01"
        "05"
        "02"
        "03"
        "00"
        "01"
        "02"  # ACK_ECN: 1 range, 3 counts
        "0e"
        "04"
        "4010"
        "03"
        "616263"  # STREAM id 4, offset 16, length 3
        "18"
        "01"
        "00"
        "08"
        "0102030405060708"
        + "ff"
        * 16  # NEW_CONNECTION_ID
        + "1a"
        "1122334455667788"  # PATH_CHALLENGE
        "1b"
        "8877665544332211"  # PATH_RESPONSE
        "1c"
        "0a"
        "00"
        "02"
        "6f6b"  # CONNECTION_CLOSE with a reason
    )
    frames, challenges, responses = parse_frames(payload)
    assert frames == (0x00, 0x01, 0x03, 0x0E, 0x18, 0x1A, 0x1B, 0x1C)
    assert challenges == ("1122334455667788",) and responses == ("8877665544332211",)
    # An unknown frame type ends the reading, keeping what came before.
    assert parse_frames(bytes.fromhex("013f01"))[0] == (0x01,)
