"""Certificates made by the tests (never committed keys): a CA and leaf certificates it
signs, ECDSA P-256, written as PEM files in a directory (``cryptography``)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass
class Leaf:
    cert: Path
    key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class TestCA:
    """A CA in ``directory``: ``ca.pem``, and ``leaf(name, *sans)`` certificates it signs."""

    __test__ = False  # not a test class

    def __init__(self, directory: Path, cn: str = "ats_cffi test CA") -> None:
        self.dir = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.name = _name(cn)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = directory / f"{cn.replace(' ', '_')}.pem"
        self.pem.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def leaf(self, cn: str, *sans: str, chain_extra: int = 0) -> Leaf:
        """A certificate for ``cn`` with the DNS or IP ``sans`` (none: no SAN at all, the
        common name only); ``chain_extra`` copies of the CA certificate appended to the
        chain file (a long chain: a large handshake flight)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        b = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
        )
        if sans:
            names: list[x509.GeneralName] = []
            for s in sans:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(s)))
                except ValueError:
                    names.append(x509.DNSName(s))
            b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = b.sign(self.key, hashes.SHA256())
        stem = cn.replace("*", "star").replace(" ", "_")
        cert_path = self.dir / f"{stem}.crt"
        key_path = self.dir / f"{stem}.key"
        pem = cert.public_bytes(serialization.Encoding.PEM)
        pem += self.cert.public_bytes(serialization.Encoding.PEM) * chain_extra
        cert_path.write_bytes(pem)
        key_path.write_bytes(_key_pem(key))
        return Leaf(cert_path, key_path)
