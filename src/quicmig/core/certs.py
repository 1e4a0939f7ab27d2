"""Certificates: a local CA and a server certificate signed by it, made with `cryptography`."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from functools import cache

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_NAMES = ("localhost",)
DEFAULT_IPS = ("127.0.0.1", "::1")
VALIDITY = datetime.timedelta(days=825)

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True, slots=True)
class CertificateSet:
    ca_cert: x509.Certificate
    ca_key: PrivateKey
    cert: x509.Certificate
    key: PrivateKey

    @property
    def ca_pem(self) -> bytes:
        return self.ca_cert.public_bytes(serialization.Encoding.PEM)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _name(common_name: str, organization: str | None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization is not None:
        attributes.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def make_certificates(
    names: tuple[str, ...] = DEFAULT_NAMES,
    ips: tuple[str, ...] = DEFAULT_IPS,
    web: bool = False,
    serials: tuple[int, int] | None = None,
) -> CertificateSet:
    """A fresh CA and a server certificate for `names` and `ips`, signed by that CA.

    The default is the simulator's profile: Ed25519 keys, whose 64-byte signatures keep
    handshake sizes, and with them simulated timelines, the same from run to run (so do fixed
    `serials`: a random serial's DER length varies by a byte). With `web`, the live lab's
    profile: ECDSA P-256 with key identifiers and serverAuth, which browsers and curl accept.
    """
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + VALIDITY
    ca_serial, serial = serials or (x509.random_serial_number(), x509.random_serial_number())
    organization = "quicmig live lab" if web else None
    digest = hashes.SHA256() if web else None  # Ed25519 signs without a separate digest

    def new_key() -> PrivateKey:
        return (
            ec.generate_private_key(ec.SECP256R1()) if web else ed25519.Ed25519PrivateKey.generate()
        )

    ca_key = new_key()
    ca_name = _name("quicmig local CA", organization)
    ca_builder = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(ca_serial)
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
    )
    if web:
        ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
        ca_builder = ca_builder.add_extension(ski, critical=False)
    ca_cert = ca_builder.sign(ca_key, digest)
    key = new_key()
    san: list[x509.GeneralName] = [x509.DNSName(name) for name in names]
    san += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0], organization))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if web:
        eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
        builder = builder.add_extension(eku, critical=False).add_extension(aki, critical=False)
    return CertificateSet(ca_cert, ca_key, builder.sign(ca_key, digest), key)


@cache
def simulation_certificates() -> CertificateSet:
    """One certificate set per process for simulated runs (made once, in memory)."""
    return make_certificates(serials=(1, 2))
