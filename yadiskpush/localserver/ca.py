"""
A throwaway certificate authority, made at run time, for the local server.

The client verifies the server's certificate against the host it dials, so
the local server needs a certificate that a client can be told to trust (the
CA's PEM file) and that names the loopback host. By default nothing is stored
or reused: each :class:`CertificateAuthority` has a fresh key, and its
certificates are valid for a day. :func:`loadOrCreate` keeps a CA and a
server certificate in a directory instead (``--state-dir``), so that a
client given the CA file once still trusts the server after a restart.
service-identity no longer falls back to the certificate's CN, so every name
is put in the subjectAltName (DNS names, and IP addresses for names that
parse as one).

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
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import ssl

from yadiskpush.privatefile import writePrivateFile

# Clocks of the test machine and of the certificate's consumer may disagree a
# little; a not-before in the past keeps a fresh certificate valid at once.
CLOCK_SKEW = datetime.timedelta(hours=1)
VALIDITY = datetime.timedelta(days=1)
#: How long a CA and certificate kept in a state directory are valid: a
#: test server started by hand may run, and be restarted, for weeks. The CA
#: outlives its certificates, so that one is issued again, by the same CA,
#: long before the clients' trust root runs out.
KEPT_CA_VALIDITY = datetime.timedelta(days=3650)
KEPT_VALIDITY = datetime.timedelta(days=365)
#: A kept server certificate this close to its end is issued again.
RENEW_BEFORE = datetime.timedelta(days=1)

#: File names in a state directory.
CA_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
SERVER_FILE = "server.pem"
SERVER_KEY_FILE = "server-key.pem"


class StateDirError(Exception):
    """The state directory's CA cannot be used; the message says what to do."""


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

    def serves(
        self, names: list[str], ca: CertificateAuthority, at: datetime.datetime
    ) -> bool:
        """
        Whether this certificate names every one of ``names``, was issued by
        ``ca`` and stays valid for more than :data:`RENEW_BEFORE` after
        ``at``.
        """
        try:
            certificate = x509.load_pem_x509_certificate(self.certPEM)
            key = serialization.load_pem_private_key(self.keyPEM, None)
            san = certificate.extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            ).value
        except (ValueError, x509.ExtensionNotFound):
            return False
        if key.public_key() != certificate.public_key():
            return False
        try:
            certificate.verify_directly_issued_by(ca._certificate)
        except (ValueError, TypeError, InvalidSignature):
            return False
        wanted = set(_subjectAltName(names))
        if not wanted <= set(san):
            return False
        return (
            certificate.not_valid_before_utc <= at
            and at + RENEW_BEFORE < certificate.not_valid_after_utc
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
    def generate(
        cls,
        commonName: str = "yadiskpush local CA",
        validity: datetime.timedelta = VALIDITY,
    ) -> CertificateAuthority:
        """Make a new CA with a fresh key, valid for ``validity``."""
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
            .not_valid_after(now + validity)
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

    @property
    def keyPEM(self) -> bytes:
        """The CA's private key, PEM (PKCS#8, unencrypted)."""
        return _keyPEM(self._key)

    @property
    def notValidAfter(self) -> datetime.datetime:
        """When the CA certificate expires (UTC)."""
        return self._certificate.not_valid_after_utc

    @classmethod
    def fromPEM(cls, certificatePEM: bytes, keyPEM: bytes) -> CertificateAuthority:
        """
        A CA from its certificate and key, both PEM.

        :raises ValueError: if either does not parse, or they do not match.
        """
        certificate = x509.load_pem_x509_certificate(certificatePEM)
        key = serialization.load_pem_private_key(keyPEM, None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("the CA key is not an elliptic-curve key")
        if key.public_key() != certificate.public_key():
            raise ValueError("the CA key does not match the CA certificate")
        return cls(key, certificate)


class KeptAuthority(NamedTuple):
    """What :func:`loadOrCreate` found or made in a state directory."""

    ca: CertificateAuthority
    certificate: ServerCertificate
    #: ``"created"`` (a new CA), ``"reused"`` or ``"reissued"`` (same CA, a
    #: new server certificate).
    how: str


def loadOrCreate(
    directory: str | Path, names: list[str], at: datetime.datetime | None = None
) -> KeptAuthority:
    """
    The CA and server certificate kept in ``directory``, made there if
    missing: ``ca.pem``, ``ca-key.pem``, ``server.pem`` and
    ``server-key.pem``. The directory is created with mode 0700 and the keys
    with mode 0600. A kept server certificate that does not name all of
    ``names``, was not issued by the kept CA or is about to expire is issued
    again by the same CA, so clients that trust ``ca.pem`` keep trusting the
    server.

    :raises StateDirError: if the directory or its files cannot be used: a
        CA certificate without its key, a damaged file, an expired CA. The
        message names the file and what to do.
    """
    now = at or _now()
    root = Path(directory)
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise StateDirError(f"cannot create {root}: {e.strerror or e}") from None
    if not root.is_dir():
        raise StateDirError(f"{root} is not a directory")
    if root.stat().st_mode & 0o077:
        raise StateDirError(
            f"{root} may be read by others and will hold the CA's private key: "
            f"chmod 700 {root}"
        )
    caPath, caKeyPath = root / CA_FILE, root / CA_KEY_FILE
    serverPath, serverKeyPath = root / SERVER_FILE, root / SERVER_KEY_FILE
    try:
        if not caPath.exists() and not caKeyPath.exists():
            ca = CertificateAuthority.generate(validity=KEPT_CA_VALIDITY)
            writePrivateFile(caKeyPath, ca.keyPEM, 0o600)
            writePrivateFile(caPath, ca.caCertificatePEM, 0o644)
            how = "created"
        else:
            ca = _loadAuthority(caPath, caKeyPath, now)
            how = "reused"
        certificate: ServerCertificate | None = None
        if how == "reused" and serverPath.exists() and serverKeyPath.exists():
            kept = ServerCertificate(
                serverPath.read_bytes(), serverKeyPath.read_bytes()
            )
            if kept.serves(names, ca, now):
                certificate = kept
        if certificate is None:
            # Not past the CA's own end: a client would refuse the chain.
            lifetime = min(KEPT_VALIDITY, ca.notValidAfter - now)
            certificate = ca.issueServerCertificate(names, notValidAfter=now + lifetime)
            writePrivateFile(serverKeyPath, certificate.keyPEM, 0o600)
            writePrivateFile(serverPath, certificate.certPEM, 0o644)
            if how == "reused":
                how = "reissued"
    except OSError as e:
        raise StateDirError(
            f"cannot use {e.filename or root}: {e.strerror or e}"
        ) from None
    return KeptAuthority(ca, certificate, how)


def _loadAuthority(
    caPath: Path, caKeyPath: Path, now: datetime.datetime
) -> CertificateAuthority:
    for present, missing in ((caPath, caKeyPath), (caKeyPath, caPath)):
        if not missing.exists():
            raise StateDirError(
                f"{present} is there but {missing} is not: restore it, or remove "
                f"{present} to make a new CA (clients then need the new {CA_FILE})"
            )
    try:
        ca = CertificateAuthority.fromPEM(caPath.read_bytes(), caKeyPath.read_bytes())
    except ValueError as e:
        raise StateDirError(
            f"{caPath} and {caKeyPath} are not a usable CA ({e}): remove both to "
            f"make a new CA (clients then need the new {CA_FILE})"
        ) from None
    if ca.notValidAfter <= now + RENEW_BEFORE:
        raise StateDirError(
            f"the CA in {caPath} expires on {ca.notValidAfter:%Y-%m-%d}: remove "
            f"{caPath} and {caKeyPath} to make a new one (clients then need the "
            f"new {CA_FILE})"
        )
    return ca
