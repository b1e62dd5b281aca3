"""
A throwaway certificate authority for the Prosody test server.

One CA and one server certificate whose subjectAltName lists the names the
tests dial (service-identity ignores the CN), all written as PEM files.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class CertificateFiles:
    """Paths of the PEM files :func:`writeCertificates` made."""

    caCertificate: Path
    certificate: Path
    key: Path


def _name(commonName: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, commonName)])


def _builder(
    subject: x509.Name, issuer: x509.Name, publicKey: Any
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(publicKey)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


def makeAuthority(
    commonName: str,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA key and certificate, valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(commonName)
    certificate = (
        _builder(name, name, key.public_key())
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
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def writeCertificates(
    directory: Path, dnsNames: list[str], ipAddresses: list[str]
) -> CertificateFiles:
    """
    Make a CA and a server certificate it signs, valid for ``dnsNames`` and
    ``ipAddresses``, and write ``ca.pem``, ``server.pem`` and ``server.key``
    into ``directory``.
    """
    caKey, caCertificate = makeAuthority("yadiskpush Prosody test CA")
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dnsNames]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ipAddresses]
    certificate = (
        _builder(_name(dnsNames[0]), caCertificate.subject, key.public_key())
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        .sign(caKey, hashes.SHA256())
    )
    files = CertificateFiles(
        caCertificate=directory / "ca.pem",
        certificate=directory / "server.pem",
        key=directory / "server.key",
    )
    files.caCertificate.write_bytes(
        caCertificate.public_bytes(serialization.Encoding.PEM)
    )
    files.certificate.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    files.key.chmod(0o600)
    return files


def writeUnrelatedAuthority(path: Path) -> Path:
    """Write the certificate of a CA that signed nothing, to distrust a server."""
    _, certificate = makeAuthority("yadiskpush unrelated CA")
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path
