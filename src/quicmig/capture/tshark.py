"""Read QUIC datagrams out of a capture with tshark, decrypted with a TLS key log.

One tshark run (`-T fields`) gives one row per UDP datagram that tshark dissects as QUIC:
addresses, the header form and DCID of each coalesced packet, the packet number, the frame
types, PATH_CHALLENGE / PATH_RESPONSE data and the ClientHello's random (what a key log is
keyed by, so a connection without secrets can be named). Fields of coalesced packets come
flattened per datagram; a short-header (1-RTT) packet is always the last one in a datagram (RFC 9000
section 12.2), so the last header form, DCID and packet number are the 1-RTT packet's.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from quicmig.core.datagram import Address
from quicmig.errors import InputError, QuicmigError

MIN_VERSION = (3, 6)  # QUIC v1 decryption with a key log and the path_* fields
APT_HINT = (
    "install it with `sudo apt-get install tshark` (Debian/Ubuntu) or `brew install wireshark`"
)
QUIC_PORTS = (443, 4433)  # decoded as QUIC even without tshark's heuristics
PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1",  # pcap, little-endian, microseconds
    b"\xa1\xb2\xc3\xd4",  # pcap, big-endian
    b"\x4d\x3c\xb2\xa1",  # pcap, little-endian, nanoseconds
    b"\xa1\xb2\x3c\x4d",  # pcap, big-endian, nanoseconds
    b"\x0a\x0d\x0d\x0a",  # pcapng section header block
}
TIMEOUT = 300.0  # seconds: tshark on a large capture

FIELDS = (
    "frame.number",
    "frame.time_epoch",
    "ip.src",
    "ipv6.src",
    "udp.srcport",
    "ip.dst",
    "ipv6.dst",
    "udp.dstport",
    "udp.length",
    "quic.connection.number",
    "quic.header_form",
    "quic.long.packet_type",
    "quic.dcid",
    "quic.packet_number",
    "quic.frame_type",
    "quic.path_challenge.data",
    "quic.path_response.data",
    "tls.handshake.type",
    "tls.handshake.random",
)
CLIENT_HELLO, SERVER_HELLO = 1, 2  # TLS handshake types: the two messages with a random
CUT_SHORT = "cut short in the middle of a packet"  # tshark, on a capture whose writer died


@dataclass(frozen=True, slots=True)
class QuicDatagram:
    """One UDP datagram holding QUIC packets, as tshark decoded it."""

    number: int  # frame number in the capture
    at: float  # seconds (capture timestamp)
    src: Address
    dst: Address
    connection: int | None  # tshark's connection number (it follows CIDs)
    header_forms: tuple[int, ...]  # 1 long, 0 short, per coalesced packet
    long_types: tuple[int, ...]  # 0 Initial, 1 0-RTT, 2 Handshake, 3 Retry
    dcids: tuple[str, ...]
    short_pn: int | None  # the 1-RTT packet's number, when decrypted
    frames: tuple[int, ...]  # frame types of every decrypted packet in the datagram
    challenges: tuple[str, ...]  # PATH_CHALLENGE data, hex
    responses: tuple[str, ...]  # PATH_RESPONSE data, hex
    client_random: str | None = None  # hex, of a ClientHello in this datagram (the key log's key)
    udp_length: int = 0  # bytes: the UDP header and payload

    @property
    def has_short(self) -> bool:
        return bool(self.header_forms) and self.header_forms[-1] == 0

    @property
    def only_short(self) -> bool:
        return self.header_forms == (0,)

    @property
    def has_initial(self) -> bool:
        return 0 in self.long_types

    @property
    def short_dcid(self) -> str | None:
        return self.dcids[-1] if self.has_short and self.dcids else None

    @property
    def decrypted(self) -> bool:
        """The 1-RTT packet of a datagram holding only one was decrypted (frames seen)."""
        return self.only_short and bool(self.frames)


def check_capture_file(path: Path) -> None:
    """Raise InputError unless `path` is a readable pcap or pcapng file (by its magic)."""
    try:
        with path.open("rb") as stream:
            magic = stream.read(4)
    except FileNotFoundError:
        raise InputError(f"capture {path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"capture {path}: is a directory, not a pcap or pcapng file") from None
    except OSError as exc:
        raise InputError(f"capture {path}: cannot read it ({exc.strerror or exc})") from None
    if magic not in PCAP_MAGICS:
        what = "empty" if not magic else f"starts with {magic.hex()}"
        raise InputError(
            f"capture {path}: not a pcap or pcapng file ({what}); capture with tcpdump -w, "
            "dumpcap, Wireshark, `quicmig run --pcap` or `quicmig proxy --pcap`"
        )


def find_tshark() -> tuple[str, tuple[int, int, int]]:
    """The tshark executable and its version; QuicmigError if missing or too old."""
    exe = shutil.which("tshark")
    if exe is None:
        raise QuicmigError(f"tshark is not installed (quicmig check needs it): {APT_HINT}")
    return exe, _version(exe)


@functools.cache
def _version(exe: str) -> tuple[int, int, int]:
    """`exe --version`, asked once per executable: it takes half a second, and one check
    asks for it once per tshark pass."""
    try:
        proc = subprocess.run(
            [exe, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise QuicmigError(f"cannot run {exe} --version: {exc}") from None
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", proc.stdout)
    if match is None:
        raise QuicmigError(f"cannot tell the version of {exe} from {proc.stdout[:60]!r}")
    version = (int(match[1]), int(match[2]), int(match[3]))
    if version[:2] < MIN_VERSION:
        raise QuicmigError(
            f"tshark {'.'.join(map(str, version))} is too old: quicmig check needs "
            f"{'.'.join(map(str, MIN_VERSION))} or newer to decrypt QUIC v1; {APT_HINT}"
        )
    return version


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part, 0) for part in text.split(",") if part)


def _hexes(text: str) -> tuple[str, ...]:
    return tuple(part.replace(":", "") for part in text.split(",") if part)


def parse_rows(output: str) -> list[QuicDatagram]:
    """Parse tshark's `-T fields -E separator=/t` output for FIELDS into datagrams."""
    datagrams = []
    for line in output.splitlines():
        cols = line.split("\t")
        if len(cols) != len(FIELDS):
            continue
        (
            number,
            epoch,
            ip_src,
            ip6_src,
            sport,
            ip_dst,
            ip6_dst,
            dport,
            udp_length,
            conn,
            forms,
            long_types,
            dcids,
            pns,
            frames,
            challenges,
            responses,
            hs_types,
            randoms,
        ) = cols
        src_host = ip_src or ip6_src
        dst_host = ip_dst or ip6_dst
        # ICMP errors quote the IP/UDP header they answer: several values; not QUIC traffic.
        if not src_host or "," in src_host or "," in sport or not sport or not dport:
            continue
        header_forms = _ints(forms)
        numbers = _ints(pns)
        short_pn = None
        if header_forms and header_forms[-1] == 0 and len(numbers) == len(header_forms):
            short_pn = numbers[-1]
        conn_numbers = _ints(conn)
        # Only hello messages carry a random: line the randoms up with those.
        hellos = [t for t in _ints(hs_types) if t in (CLIENT_HELLO, SERVER_HELLO)]
        hello_randoms = _hexes(randoms)
        client_random = None
        if CLIENT_HELLO in hellos and len(hellos) == len(hello_randoms):
            client_random = hello_randoms[hellos.index(CLIENT_HELLO)]
        datagrams.append(
            QuicDatagram(
                number=int(number),
                at=float(epoch),
                src=(src_host, int(sport)),
                dst=(dst_host, int(dport)),
                connection=conn_numbers[0] if conn_numbers else None,
                header_forms=header_forms,
                long_types=_ints(long_types),
                dcids=_hexes(dcids),
                short_pn=short_pn,
                frames=_ints(frames),
                challenges=_hexes(challenges),
                responses=_hexes(responses),
                client_random=client_random,
                udp_length=_ints(udp_length)[0] if udp_length else 0,
            )
        )
    return datagrams


def read_datagrams(
    capture: Path,
    keylog: Path | None,
    quic_ports: tuple[int, ...] = (),
    warnings: list[str] | None = None,
) -> list[QuicDatagram]:
    """Run tshark on `capture` (decrypting with `keylog`) and return its QUIC datagrams.

    A capture of both sides of a middlebox holds every QUIC packet twice, once per leg, with
    the same connection IDs: tshark would take the second copy for a retransmission and fail
    to decrypt. So when Initial packets go to more than one server address, each server's
    leg is cut out into its own temporary capture (`tshark -w` with an address filter) and
    read alone; frame numbers are mapped back to the original capture.

    A capture cut short in the middle of a packet (its writer was killed) is read up to the
    cut, with a line appended to `warnings`; one cut before any QUIC packet is an InputError.
    """
    check_capture_file(capture)
    if keylog is not None and not keylog.is_file():
        raise InputError(f"--keylog {keylog}: no such file")
    notes: list[str] = []
    datagrams = _tshark_fields(capture, keylog, quic_ports, notes)
    servers = _initial_servers(datagrams)
    if len(servers) > 1:
        datagrams = _read_legs(capture, keylog, quic_ports, servers, notes)
    if warnings is not None:
        warnings.extend(dict.fromkeys(notes))  # once each, though every tshark run says it
    return datagrams


def _read_legs(
    capture: Path,
    keylog: Path | None,
    quic_ports: tuple[int, ...],
    servers: list[Address],
    notes: list[str],
) -> list[QuicDatagram]:
    exe, _ = find_tshark()
    out: list[QuicDatagram] = []
    with tempfile.TemporaryDirectory(prefix="quicmig-check-") as folder:
        for index, server in enumerate(servers):
            host, port = server
            field_name = "ipv6" if ":" in host else "ip"
            leg_filter = f"{field_name}.addr=={host} && udp.port=={port}"
            leg = Path(folder) / f"leg{index}.pcapng"
            read = [exe, "-n", "-r", str(capture), "-Y", leg_filter]
            _run([*read, "-w", str(leg)], capture, notes, writes=True)
            numbers = _run([*read, "-T", "fields", "-e", "frame.number"], capture, notes).split()
            for dgram in _tshark_fields(leg, keylog, quic_ports, [], name=capture):
                if dgram.src == server or dgram.dst == server:
                    out.append(replace(dgram, number=int(numbers[dgram.number - 1])))
    out.sort(key=lambda d: d.number)
    return out


def _initial_servers(datagrams: list[QuicDatagram]) -> list[Address]:
    """Receivers of the first Initial between each pair of addresses, in order of appearance."""
    servers: list[Address] = []
    pairs: set[frozenset[Address]] = set()
    for dgram in datagrams:
        pair = frozenset((dgram.src, dgram.dst))
        if (
            dgram.has_initial
            and pair not in pairs
            and dgram.src not in servers
            and dgram.dst not in servers
        ):
            servers.append(dgram.dst)
        pairs.add(pair)
    return servers


def _run(command: list[str], capture: Path, notes: list[str], *, writes: bool = False) -> str:
    """tshark's output; `writes`: the command writes a capture (`-w`) rather than rows."""
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise QuicmigError(f"tshark took more than {TIMEOUT:g} s on {capture}") from None
    if proc.returncode != 0:
        errors = [
            line
            for line in proc.stderr.splitlines()
            if line.strip() and "dangerous" not in line and not line.startswith("Running as")
        ]
        detail = errors[0] if errors else f"exit status {proc.returncode}"
        # tshark read every whole packet before the cut: analyse those rather than nothing.
        if CUT_SHORT in proc.stderr and (proc.stdout.strip() or writes):
            notes.append(
                f"{capture} was {CUT_SHORT} (its writer was stopped while writing?); "
                "analysing the packets before the cut"
            )
            return proc.stdout
        raise InputError(f"tshark cannot read {capture}: {detail}")
    return proc.stdout


def _tshark_fields(
    capture: Path,
    keylog: Path | None,
    quic_ports: tuple[int, ...],
    notes: list[str],
    name: Path | None = None,
) -> list[QuicDatagram]:
    """`name`: the capture to name in errors (the user's, when `capture` is a leg of it)."""
    exe, _ = find_tshark()
    command = [exe, "-n", "-r", str(capture)]
    for port in sorted({*QUIC_PORTS, *quic_ports}):
        command += ["-d", f"udp.port=={port},quic"]
    if keylog is not None:
        command += ["-o", f"tls.keylog_file:{keylog}"]
    command += ["-Y", "quic && !icmp && !icmpv6", "-T", "fields", "-E", "separator=/t"]
    for field_name in FIELDS:
        command += ["-e", field_name]
    return parse_rows(_run(command, name or capture, notes))
