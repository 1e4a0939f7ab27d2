"""Certificate files for the live lab: a local CA and a server certificate it signed.

Where they live (seed-compatible): `cert.pem` and `key.pem` in the current directory, with the
CA as `ca.pem` beside `cert.pem`. The CA's private key is not kept: nothing else can be signed
with it, so trusting `ca.pem` trusts this one server certificate only.

Keys are ECDSA P-256 (not the simulator's Ed25519) so that browsers and curl accept them too.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from quicmig.errors import InputError, QuicmigError

CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
CA_FILE = "ca.pem"
SAN_NAMES = ("localhost",)
# The server listens on 127.0.0.1 and ::1 by default; the others are there for --listen.
SAN_IPS = ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4", "::1")
VALIDITY = datetime.timedelta(days=825)
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
        return (
            f"regenerate them with `{REGENERATE}{where}` "
            f"(or `python generate_certs.py --force{where}`)"
        )


@dataclass(frozen=True, slots=True)
class GeneratedCertificates:
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "quicmig live lab"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def generate(
    names: tuple[str, ...] = SAN_NAMES, ips: tuple[str, ...] = SAN_IPS
) -> GeneratedCertificates:
    """A fresh CA and a server certificate for `names` and `ips`, signed by it (in memory)."""
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + VALIDITY
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("quicmig local CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    san: list[x509.GeneralName] = [x509.DNSName(name) for name in names]
    san += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return GeneratedCertificates(
        ca_pem=ca_cert.public_bytes(serialization.Encoding.PEM),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
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
    return cert


def _public_bytes(public_key: object) -> bytes:
    encode = getattr(public_key, "public_bytes", None)
    if encode is None:
        return b""
    data: bytes = encode(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data
