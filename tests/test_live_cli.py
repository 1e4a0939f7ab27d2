"""The live lab's commands and seed scripts: certificates, bad input, Ctrl-C, a whole session.

Bad input must end in one line that says what to do and the documented exit status, never a
traceback. Ports are ephemeral; subprocesses are bounded by a watchdog.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from quicmig.cli import main
from quicmig.core.results import Result
from quicmig.errors import InputError
from quicmig.live.certs import SAN_IPS, CertPaths, check_server_pair, write
from quicmig.model.events import EventKind

ROOT = Path(__file__).resolve().parent.parent
WATCHDOG = 30.0  # seconds: a stuck subprocess is killed


@pytest.fixture
def certs(tmp_path: Path) -> CertPaths:
    paths = CertPaths.in_dir(tmp_path)
    write(paths)
    return paths


@pytest.fixture
def udp_port() -> Iterator[tuple[socket.socket, int]]:
    """A UDP socket bound on 127.0.0.1 (its port is in use while the test runs)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock, sock.getsockname()[1]
    finally:
        sock.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- certificates ----------------------------------------------------------------------


def test_certs_command_writes_a_ca_signed_certificate_for_the_loopback_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["certs", "--dir", str(tmp_path)]) == 0
    paths = CertPaths.in_dir(tmp_path)
    cert = check_server_pair(paths)
    ca = x509.load_pem_x509_certificate(paths.ca.read_bytes())
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    assert ips == set(SAN_IPS) and {"127.0.0.1", "::1"} <= ips
    assert paths.key.stat().st_mode & 0o077 == 0
    # A second run keeps them; --force replaces them.
    assert main(["certs", "--dir", str(tmp_path)]) == 0
    assert "already" in capsys.readouterr().out
    assert check_server_pair(paths).serial_number == cert.serial_number
    assert main(["certs", "--dir", str(tmp_path), "--force"]) == 0
    assert check_server_pair(paths).serial_number != cert.serial_number


def test_mismatched_or_missing_key_says_how_to_regenerate(
    certs: CertPaths, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = CertPaths.in_dir(tmp_path / "other")
    write(other)
    with pytest.raises(InputError, match=r"do not match.*quicmig certs --force"):
        check_server_pair(CertPaths(certs.cert, other.key, certs.ca))
    certs.key.unlink()
    code = main(["server", "--port", "0", "--cert", str(certs.cert), "--key", str(certs.key)])
    err = capsys.readouterr().err
    assert code == 2
    assert "key.pem" in err and "not found" in err and "quicmig certs --force" in err
    assert "Traceback" not in err


# --- bad input -------------------------------------------------------------------------


def test_port_in_use_names_the_port_and_the_way_out(
    certs: CertPaths, udp_port: tuple[socket.socket, int], capsys: pytest.CaptureFixture[str]
) -> None:
    _, port = udp_port
    code = main(["server", "--port", str(port), "--cert", str(certs.cert), "--key", str(certs.key)])
    err = capsys.readouterr().err
    assert code == 1
    assert f"UDP port {port}" in err and "already in use" in err and "--port" in err
    assert len(err.strip().splitlines()) == 1


def test_unreachable_server_times_out_with_a_clear_message(
    certs: CertPaths, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()  # nothing listens there
    code = main(["client", "--port", str(port), "--ca", str(certs.ca), "--timeout", "0.3"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"no answer from 127.0.0.1:{port} within 0.3 s" in err and "quicmig server" in err


def test_unknown_migration_kind_lists_the_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["client", "--migrate", "nat-rebinding,teleport"]) == 2
    err = capsys.readouterr().err
    moves = [EventKind.NAT_REBINDING, EventKind.ADDRESS_REBINDING, EventKind.ADDRESS_CHANGE]
    moves += [EventKind.INTERFACE_SWITCH, EventKind.CID_ROTATION]
    assert "'teleport'" in err and all(kind.value in err for kind in moves)
    assert err.count("\n") == 1


def test_missing_ca_says_where_it_comes_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["client", "--ca", str(tmp_path / "ca.pem")]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "--insecure" in err


def test_a_ca_that_is_not_a_certificate_is_named(
    certs: CertPaths, capsys: pytest.CaptureFixture[str]
) -> None:
    # aioquic would only fail inside the handshake, and the client would report a timeout.
    assert main(["client", "--port", str(free_port()), "--ca", str(certs.key)]) == 2
    err = capsys.readouterr().err
    assert f"{certs.key} (not a PEM certificate)" in err and "--insecure" in err
    assert err.count("\n") == 1


def test_a_ca_that_did_not_sign_the_certificate_is_refused(
    certs: CertPaths, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = CertPaths.in_dir(tmp_path / "other")
    write(other)
    certs.ca.write_bytes(other.ca.read_bytes())
    assert main(["certs", "--dir", str(certs.cert.parent)]) == 2
    assert main(["server", "--port", "0", "--cert", str(certs.cert)]) == 2
    err = capsys.readouterr().err
    assert err.count(f"{certs.ca} did not sign {certs.cert}") == 2
    assert "quicmig certs --force" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["server", "--listen", "not-an-ip"],
        ["server", "--port", "70000"],
        ["client", "--download", "lots"],
        ["client", "--addresses", "127.0.0.1,::1"],
        ["client", "--download", "300M"],
        ["client", "--timeout", "nan"],
        ["client", "--interval", "inf"],
        ["server", "--listen", "[::1"],
    ],
)
def test_other_bad_values_are_input_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert "Traceback" not in capsys.readouterr().err


# --- the seed's walkthrough, as subprocesses -------------------------------------------


class Process:
    """A script run in a subprocess, killed by a watchdog if it hangs."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )
        self.watchdog = threading.Timer(WATCHDOG, self.proc.kill)
        self.watchdog.start()
        self.lines: list[str] = []

    def wait_for(self, pattern: str) -> re.Match[str]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if match := re.search(pattern, line):
                return match
        raise AssertionError(f"{pattern!r} never printed: {''.join(self.lines)}")

    def interrupt(self) -> tuple[int, str, str]:
        self.proc.send_signal(signal.SIGINT)
        return self.finish()

    def finish(self) -> tuple[int, str, str]:
        out, err = self.proc.communicate()
        self.watchdog.cancel()
        return self.proc.returncode, "".join(self.lines) + out, err


def test_seed_scripts_migrate_for_real_and_stop_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    server = Process([str(ROOT / "quic_server.py"), "--port", "0"], tmp_path)
    try:
        port = int(server.wait_for(r"🚀 Starting QUIC server on 127\.0\.0\.1:(\d+)").group(1))
        server.wait_for("📋 Server supports connection migration")
        # Certificates were created on first start, in the working directory.
        assert check_server_pair(CertPaths.in_dir(tmp_path))
        client = Process(
            [
                str(ROOT / "quic_client.py"),
                "--port",
                str(port),
                # Moves 0.3 s apart: the server validates each new path before the next
                # move (at --interval 0 the timeline puts every move at the same instant).
                "--interval",
                "0.3",
                "--messages",
                "1",
                "--json",
                "client.json",
            ],
            tmp_path,
        )
        code, out, err = client.finish()
        assert code == 0, out + err  # 0: the server confirmed every migration
        # Its result: what the client did, and what the server's tracker (fetched over the
        # connection) saw, each new path exactly where the client's new socket was.
        result = Result.from_dict(json.loads((tmp_path / "client.json").read_text()))
        assert [c.kind for c in result.network_changes] == [
            EventKind.NAT_REBINDING,
            EventKind.ADDRESS_CHANGE,
            EventKind.INTERFACE_SWITCH,
            EventKind.CID_ROTATION,
        ]
        paths = result.network_changes[:3]
        assert [m.new_peer for m in result.migrations] == [
            (c.expect_ip, c.expect_port) for c in paths
        ]
        assert [m.observed.value for m in result.migrations] == [
            "port_change",
            "address_change",
            "address_change",
        ]
        # The server's times, put on the client's clock: each migration follows its move.
        assert [m.network_change_at for m in result.migrations] == [c.at for c in paths]
        assert all(m.validated_at is not None for m in result.migrations)
        assert len(result.cid_rotations) == 1 and result.backend == "live"
        # A client interrupted mid-session closes cleanly.
        idle = Process(
            [str(ROOT / "quic_client.py"), "--port", str(port), "--interval", "30"], tmp_path
        )
        idle.wait_for(r"connected to 127\.0\.0\.1:\d+ from 127\.0\.0\.1:\d+")
        code, _, err = idle.interrupt()
        assert code == 130 and "Traceback" not in err and "interrupted" in err
    finally:
        code, out, err = server.interrupt()
    assert code == 0 and "Traceback" not in err, err
    assert "No certificate found: created" in out
    for observed in ("port change", "address change", "validated", "new connection ID"):
        assert observed in out
    assert "Server stopped: 2 connections, 3 migrations observed" in out
