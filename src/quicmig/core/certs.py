"""Certificates: a local CA and a server certificate signed by it, made with `cryptography`.

Ed25519 keeps signatures a fixed 64 bytes, so handshake sizes, and with them simulated
timelines, do not vary from run to run.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from functools import cache

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

DEFAULT_NAMES = ("localhost",)
DEFAULT_IPS = ("127.0.0.1", "::1")
VALIDITY = datetime.timedelta(days=825)


@dataclass(frozen=True, slots=True)
class CertificateSet:
    ca_cert: x509.Certificate
    ca_key: ed25519.Ed25519PrivateKey
    cert: x509.Certificate
    key: ed25519.Ed25519PrivateKey

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


def make_certificates(
    names: tuple[str, ...] = DEFAULT_NAMES,
    ips: tuple[str, ...] = DEFAULT_IPS,
    serials: tuple[int, int] | None = None,
) -> CertificateSet:
    """A fresh CA and a server certificate for `names` and `ips`, signed by that CA.

    Serial numbers are random unless `serials` (CA, server) are given: a random serial's DER
    length varies by a byte, which would change handshake sizes between simulated runs.
    """
    ca_serial, serial = serials or (x509.random_serial_number(), x509.random_serial_number())
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ed25519.Ed25519PrivateKey.generate()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "quicmig local CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(ca_serial)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
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
        .sign(ca_key, None)
    )
    key = ed25519.Ed25519PrivateKey.generate()
    san: list[x509.GeneralName] = [x509.DNSName(name) for name in names]
    san += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, None)
    )
    return CertificateSet(ca_cert, ca_key, cert, key)


@cache
def simulation_certificates() -> CertificateSet:
    """One certificate set per process for simulated runs (made once, in memory)."""
    return make_certificates(serials=(1, 2))
