"""
TLS for the push connection: one context per trust root, shared by every
connection in the process, and a verifier per connection attempt.

Twisted's ``optionsForClientTLS(host, trustRoot)`` builds a whole OpenSSL
context per call; with the system trust store each costs about 900 KiB, so a
process watching thousands of accounts cannot afford one per account. Here
:class:`TLSContexts` keeps one context per CA file (or the system's), and
:class:`VerifyingConnector` is the cheap per-attempt object that makes the
``SSL.Connection``, sends SNI and checks the certificate against the
reference identities of *that* attempt: the host dialled, and after a
``see-other-host`` redirect also the original ``--host`` (RFC 6120
§4.9.3.19). Nothing about a host is kept in the shared context, so nothing
can go stale between attempts.

The context's verify callback also records *why* OpenSSL refused a chain
(expired, not yet valid, unknown issuer), which OpenSSL's own error only
says as "certificate verify failed".

What an idle connection costs is mostly OpenSSL's (about 30 KiB of it): the
shared context keeps Twisted's ``SSL_MODE_RELEASE_BUFFERS`` (no record
buffers while idle) and sends one key share, not two (see
:func:`shareOneKey`).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from OpenSSL import SSL, crypto
from service_identity import VerificationError
from service_identity.pyopenssl import verify_hostname, verify_ip_address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from yadiskpush.errors import ConfigurationError

# X509_V_ERR_* codes worth a sentence of their own (OpenSSL's x509_vfy.h).
_VERIFY_ERRORS = {
    9: "the server's certificate is not valid yet (check this machine's clock)",
    10: "the server's certificate has expired",
    13: "the server's certificate has an invalid notBefore date",
    14: "the server's certificate has an invalid notAfter date",
    18: "the server's certificate is self-signed",
    19: "the server's certificate chain ends in a self-signed CA that is not trusted",
    20: "the server's certificate is not signed by a trusted CA",
    21: "the server's certificate is not signed by a trusted CA",
    23: "the server's certificate has been revoked",
}


# OpenSSL's default groups (3.5 and later) in its own order, with a key share
# for X25519 alone ("*"; "?" skips a group this OpenSSL lacks).
KEY_SHARE_GROUPS = (
    b"?X25519MLKEM768:?*X25519:?secp256r1:?X448:?secp384r1:?secp521r1"
    b":?ffdhe2048:?ffdhe3072"
)

# The first OpenSSL with post-quantum hybrid groups, and with "?" and "*" in
# a groups list.
_OPENSSL_3_5 = 0x30500000


def shareOneKey(context: SSL.Context) -> bool:
    """
    Make ``context`` send one key share (X25519) in its ClientHello, not two.

    OpenSSL 3.5 and later generate a hybrid post-quantum X25519MLKEM768 share
    and an X25519 one for every connection, and keep both until the
    connection ends: the hybrid key is about 9 KiB of every idle connection
    (and 1.2 KB of every ClientHello), even when the server picks X25519, as
    a server without post-quantum support does. The same groups are still
    offered in the same order, so a server that prefers the hybrid group asks
    for it with a HelloRetryRequest (one round trip more) and gets it.
    Earlier OpenSSL releases send one share already; nothing is changed.

    :returns: whether the groups were set.
    """
    if SSL.OPENSSL_VERSION_NUMBER < _OPENSSL_3_5:
        return False
    # pyOpenSSL has no call for the groups list; this is the one place that
    # uses its cffi binding and the context's pointer, as Twisted's
    # CertificateOptions does on OpenSSL 1.0.2 (test_tls fails if they go).
    from OpenSSL._util import lib

    setGroups = getattr(lib, "SSL_CTX_set1_curves_list", None)
    if setGroups is None:
        # Older cryptography wheels do not bind it: keep OpenSSL's default.
        return False
    if setGroups(context._context, KEY_SHARE_GROUPS) == 1:
        return True
    # A list this OpenSSL refuses leaves its default, and an error queued
    # that the next call would otherwise report as its own.
    lib.ERR_clear_error()
    return False


def loadTrustRoot(caFile: str | None) -> Any:
    """
    The CAs to trust: every certificate in ``caFile``, or the platform's.

    :raises ConfigurationError: if the file cannot be read or holds no
        certificate.
    """
    if caFile is None:
        return platformTrust()
    try:
        with open(caFile, "rb") as pemFile:
            pem = pemFile.read()
    except OSError as e:
        raise ConfigurationError(
            f"cannot read the CA file {caFile}: {e.strerror or e}"
        ) from None
    marker = b"-----END CERTIFICATE-----"
    blocks = [b + marker for b in pem.split(marker) if b.strip()]
    try:
        certificates = [Certificate.loadPEM(b) for b in blocks]
    except Exception:
        certificates = []
    if not certificates:
        raise ConfigurationError(f"the CA file {caFile} holds no PEM certificate")
    return trustRootFromCertificates(certificates)


class _Connection(SSL.Connection):
    """
    An ``SSL.Connection`` that carries what its verification needs and
    found: the reference identities, and the first chain error.
    """

    referenceIdentities: tuple[str, ...] = ()
    verifyError: int | None = None


def _recordVerifyError(
    connection: _Connection, certificate: crypto.X509, errno: int, depth: int, ok: int
) -> bool:
    # OpenSSL decides (ok); this only remembers the first reason it gave.
    if not ok and connection.verifyError is None:
        connection.verifyError = errno
    return bool(ok)


def _verifyIdentities(connection: _Connection, where: int, ret: int) -> None:
    """
    Once the handshake is done, the certificate must name every reference
    identity; otherwise the connection fails before any byte is read, as
    Twisted's ``ClientTLSOptions`` does it.
    """
    if not where & SSL.SSL_CB_HANDSHAKE_DONE:
        return
    try:
        for identity in connection.referenceIdentities:
            if _isIPAddress(identity):
                verify_ip_address(connection, identity)
            else:
                verify_hostname(connection, identity)
    except VerificationError:
        connection.get_app_data().failVerification(Failure())


def _isIPAddress(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class TLSContexts:
    """
    The process's TLS client contexts: one per trust root, built on first
    use and shared by every connection that trusts the same CAs.
    """

    def __init__(self) -> None:
        self._contexts: dict[str | None, SSL.Context] = {}

    def contextFor(self, caFile: str | None) -> SSL.Context:
        """
        The shared context trusting ``caFile`` (``None``: the system store).

        :raises ConfigurationError: if the CA file is unusable.
        """
        context = self._contexts.get(caFile)
        if context is None:
            options = CertificateOptions(trustRoot=loadTrustRoot(caFile))
            context = options.getContext()
            context.set_verify(
                SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _recordVerifyError
            )
            context.set_info_callback(_verifyIdentities)
            shareOneKey(context)
            self._contexts[caFile] = context
        return context

    def connectorFor(
        self, host: str, caFile: str | None, alsoVerify: tuple[str, ...] = ()
    ) -> VerifyingConnector:
        """
        A connection creator for one attempt to ``host``: the certificate
        must name ``host`` and every name in ``alsoVerify``.
        """
        identities = (host, *(h for h in alsoVerify if h != host))
        return VerifyingConnector(self.contextFor(caFile), host, identities)


@implementer(IOpenSSLClientConnectionCreator)
class VerifyingConnector:
    """
    Makes the TLS connection of one attempt (direct TLS, or after STARTTLS).

    :ivar host: the host dialled; sent as SNI.
    :ivar referenceIdentities: every name the certificate must carry.
    """

    def __init__(
        self, context: SSL.Context, host: str, referenceIdentities: tuple[str, ...]
    ) -> None:
        self.context = context
        self.host = host
        self.referenceIdentities = referenceIdentities
        self._connection: _Connection | None = None

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = _Connection(self.context, None)
        connection.referenceIdentities = self.referenceIdentities
        connection.set_app_data(tlsProtocol)
        if not _isIPAddress(self.host):
            connection.set_tlsext_host_name(self.host.encode("idna"))
        self._connection = connection
        return connection

    def verifyProblem(self) -> str | None:
        """Why OpenSSL refused the chain, in words; ``None`` if it did not."""
        errno = None if self._connection is None else self._connection.verifyError
        if errno is None:
            return None
        return _VERIFY_ERRORS.get(errno, f"certificate verification error {errno}")

    def __repr__(self) -> str:
        return f"<VerifyingConnector for {', '.join(self.referenceIdentities)}>"
