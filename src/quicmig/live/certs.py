"""Certificate files for the live lab: a local CA and a server certificate it signed.

Where they live (seed-compatible): `cert.pem` and `key.pem` in the current directory, with the
CA as `ca.pem` beside `cert.pem`. The CA's private key is not kept: nothing else can be signed
with it, so trusting `ca.pem` trusts this one server certificate only.

Keys are ECDSA P-256 (not the simulator's Ed25519) so that browsers and curl accept them too.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from quicmig.core.certs import make_certificates
from quicmig.errors import InputError, QuicmigError

CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
CA_FILE = "ca.pem"
SAN_NAMES = ("localhost",)
# The server listens on 127.0.0.1 and ::1 by default; the others are there for --listen.
SAN_IPS = ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4", "::1")
REGENERATE = "quicmig certs --force"  # the command that fixes every certificate problem


@dataclass(frozen=True, slots=True)
class CertPaths:
    cert: Path
    key: Path
    ca: Path

    @classmethod
    def beside(cls, cert: Path, key: Path | None = None) -> CertPaths:
        """`cert`, `key` (default: key.pem beside cert) and ca.pem beside the certificate."""
        return cls(
            cert, key if key is not None else cert.with_name(KEY_FILE), cert.with_name(CA_FILE)
        )

    @classmethod
    def in_dir(cls, directory: Path) -> CertPaths:
        return cls(directory / CERT_FILE, directory / KEY_FILE, directory / CA_FILE)

    def regenerate_hint(self) -> str:
        directory = self.cert.parent
        where = "" if directory == Path(".") else f" --dir {directory}"
        if self != CertPaths.in_dir(directory):  # `quicmig certs` writes the default names only
            made = CertPaths.in_dir(directory)
            return (
                f"make new ones with `{REGENERATE}{where}` and pass "
                f"--cert {made.cert} --key {made.key}"
            )
        return (
            f"regenerate them with `{REGENERATE}{where}` "
            f"(or `python generate_certs.py --force{where}`)"
        )


@dataclass(frozen=True, slots=True)
class GeneratedCertificates:
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes


def generate(
    names: tuple[str, ...] = SAN_NAMES, ips: tuple[str, ...] = SAN_IPS
) -> GeneratedCertificates:
    """A fresh CA and a server certificate for `names` and `ips`, signed by it (in memory)."""
    certs = make_certificates(names, ips, web=True)
    return GeneratedCertificates(
        ca_pem=certs.ca_pem, cert_pem=certs.cert_pem, key_pem=certs.key_pem
    )


def write(paths: CertPaths) -> None:
    """Generate and write all three files (the key readable by its owner only)."""
    made = generate()
    try:
        for path in (paths.cert, paths.key, paths.ca):
            path.parent.mkdir(parents=True, exist_ok=True)
        paths.ca.write_bytes(made.ca_pem)
        paths.cert.write_bytes(made.cert_pem)
        fd = os.open(paths.key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(made.key_pem)
    except OSError as exc:
        raise QuicmigError(f"cannot write certificates: {exc}") from exc


def check_server_pair(paths: CertPaths) -> x509.Certificate:
    """Check that the server's certificate and key load, match and are valid now.

    Every failure says how to fix it. Returns the certificate; after this, load the pair
    with QuicConfiguration.load_cert_chain().
    """
    hint = paths.regenerate_hint()
    missing = [p for p in (paths.cert, paths.key) if not p.is_file()]
    if missing:
        raise InputError(
            f"{' and '.join(str(p) for p in missing)} not found "
            f"(certificate {paths.cert}, key {paths.key}): {hint}"
        )
    try:
        cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
    except ValueError as exc:
        raise InputError(f"{paths.cert} is not a PEM certificate ({exc}): {hint}") from exc
    try:
        key = serialization.load_pem_private_key(paths.key.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise InputError(
            f"{paths.key} is not an unencrypted PEM private key ({exc}): {hint}"
        ) from exc
    if _public_bytes(cert.public_key()) != _public_bytes(key.public_key()):
        raise InputError(
            f"{paths.cert} and {paths.key} do not match (the key is not the certificate's): {hint}"
        )
    now = datetime.datetime.now(datetime.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise InputError(
            f"{paths.cert} is valid from {cert.not_valid_before_utc:%Y-%m-%d} to "
            f"{cert.not_valid_after_utc:%Y-%m-%d}, not now: {hint}"
        )
    if paths.ca.is_file():  # a certificate from elsewhere may come without ours: see the server
        try:
            cert.verify_directly_issued_by(x509.load_pem_x509_certificate(paths.ca.read_bytes()))
        except (ValueError, TypeError, InvalidSignature):
            raise InputError(
                f"{paths.ca} did not sign {paths.cert}, so clients verifying against it "
                f"would fail: {hint}"
            ) from None
    return cert


def _public_bytes(public_key: object) -> bytes:
    encode = getattr(public_key, "public_bytes", None)
    if encode is None:
        return b""
    data: bytes = encode(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data
