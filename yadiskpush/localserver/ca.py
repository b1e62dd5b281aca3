"""
A throwaway certificate authority, made at run time, for the local server.

The client verifies the server's certificate against the host it dials, so
the local server needs a certificate that a client can be told to trust (the
CA's PEM file) and that names the loopback host. Nothing here is stored or
reused: each :class:`CertificateAuthority` has a fresh key, and its
certificates are valid for a day. service-identity no longer falls back to
the certificate's CN, so every name is put in the subjectAltName (DNS names,
and IP addresses for names that parse as one).

Tests that need a bad certificate use the same API: a certificate for a
*wrong* name is ``ca.issueServerCertificate(["wrong.example"])``, one from a
*different* CA is ``CertificateAuthority.generate().issueServerCertificate(...)``,
and an expired one passes ``notValidAfter`` in the past.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import ssl

# Clocks of the test machine and of the certificate's consumer may disagree a
# little; a not-before in the past keeps a fresh certificate valid at once.
CLOCK_SKEW = datetime.timedelta(hours=1)
VALIDITY = datetime.timedelta(days=1)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _subjectAltName(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _keyPEM(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class ServerCertificate(NamedTuple):
    """
    A server certificate and its key, both PEM; a tuple, so ``cert, key =
    ca.issueServerCertificate(...)`` works.
    """

    certPEM: bytes
    keyPEM: bytes

    def serverOptions(self) -> ssl.CertificateOptions:
        """TLS options for a server presenting this certificate."""
        # cryptography objects, not Twisted's PrivateCertificate: that one
        # hands pyOpenSSL X509/PKey objects on, which pyOpenSSL deprecates.
        return ssl.CertificateOptions(
            privateKey=serialization.load_pem_private_key(self.keyPEM, None),
            certificate=x509.load_pem_x509_certificate(self.certPEM),
        )


class CertificateAuthority:
    """
    A CA key and self-signed certificate that exist only in memory.

    :ivar caCertificatePEM: the CA certificate, PEM; give it to the client
        as its trust root (``--ca-file``).
    """

    def __init__(
        self, key: ec.EllipticCurvePrivateKey, certificate: x509.Certificate
    ) -> None:
        self._key = key
        self._certificate = certificate
        self.caCertificatePEM: bytes = certificate.public_bytes(
            serialization.Encoding.PEM
        )

    @classmethod
    def generate(cls, commonName: str = "yadiskpush local CA") -> CertificateAuthority:
        """Make a new CA with a fresh key, valid for :data:`VALIDITY`."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, commonName)])
        now = _now()
        publicKey = key.public_key()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(publicKey)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
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
                True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(publicKey), False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, certificate)

    def issueServerCertificate(
        self,
        names: list[str],
        notValidBefore: datetime.datetime | None = None,
        notValidAfter: datetime.datetime | None = None,
    ) -> ServerCertificate:
        """
        Issue a TLS server certificate for ``names``.

        :param names: host names and IP addresses, all put in the
            subjectAltName; the first is also the subject's CN.
        :param notValidBefore: defaults to an hour ago.
        :param notValidAfter: defaults to a day from now; pass a past time
            for an expired certificate.
        :raises ValueError: if ``names`` is empty.
        """
        if not names:
            raise ValueError("a server certificate needs at least one name")
        now = _now()
        key = ec.generate_private_key(ec.SECP256R1())
        publicKey = key.public_key()
        caPublicKey = self._key.public_key()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
            )
            .issuer_name(self._certificate.subject)
            .public_key(publicKey)
            .serial_number(x509.random_serial_number())
            .not_valid_before(notValidBefore or now - CLOCK_SKEW)
            .not_valid_after(notValidAfter or now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .add_extension(_subjectAltName(names), False)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(publicKey), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(caPublicKey), False
            )
            .sign(self._key, hashes.SHA256())
        )
        return ServerCertificate(
            certificate.public_bytes(serialization.Encoding.PEM), _keyPEM(key)
        )

    def trustRoot(self) -> ssl.Certificate:
        """The CA as a trust root for ``optionsForClientTLS(trustRoot=...)``."""
        return ssl.Certificate.loadPEM(self.caCertificatePEM)

    def writeCACertificate(self, path: str | Path) -> Path:
        """
        Write the CA certificate (PEM) to ``path`` and return the path, for a
        client that reads its trust root from a file (``--ca-file``).
        """
        target = Path(path)
        target.write_bytes(self.caCertificatePEM)
        return target
