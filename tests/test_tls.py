"""Tests for yadiskpush.connection.tls: the shared context and what it sends."""

from __future__ import annotations

from OpenSSL import SSL
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from yadiskpush.connection import tls
from yadiskpush.connection.tls import TLSContexts, shareOneKey
from yadiskpush.localserver.ca import CertificateAuthority

# An X25519MLKEM768 key share alone is 1,216 bytes; a ClientHello with one
# X25519 share is about 300.
_MAX_ONE_SHARE_HELLO = 700

_HYBRID = "X25519MLKEM768"


class _TLSProtocol:
    """What the verifying connector calls back: the app data of a connection."""

    def __init__(self) -> None:
        self.failures: list[Failure] = []

    def failVerification(self, reason: Failure) -> None:
        self.failures.append(reason)


def _pump(source: SSL.Connection, target: SSL.Connection) -> int:
    moved = 0
    while True:
        try:
            data = source.bio_read(65536)
        except SSL.WantReadError:
            return moved
        target.bio_write(data)
        moved += len(data)


def _groupName(connection: SSL.Connection) -> str | None:
    """The group the handshake used, where pyOpenSSL's binding can say."""
    from OpenSSL._util import ffi, lib

    if not hasattr(lib, "SSL_get0_group_name"):
        return None
    name = lib.SSL_get0_group_name(connection._ssl)
    return None if name == ffi.NULL else ffi.string(name).decode()


def _groupsBinding() -> bool:
    from OpenSSL._util import lib

    return hasattr(lib, "SSL_CTX_set1_curves_list")


class SharedContextTests(SynchronousTestCase):
    # The lowest cryptography setup.cfg allows binds no groups call: the
    # client then keeps OpenSSL's default key shares (tested by the newest).
    if not _groupsBinding():
        skip = "this cryptography binds no call to set the key-share groups"

    def setUp(self) -> None:
        self.ca = CertificateAuthority.generate()
        self.caFile = self.mktemp()
        self.ca.writeCACertificate(self.caFile)
        self.serverCertificate = self.ca.issueServerCertificate(["localhost"])

    def _client(self, contexts: TLSContexts) -> SSL.Connection:
        connector = contexts.connectorFor("localhost", self.caFile)
        client = connector.clientConnectionForTLS(_TLSProtocol())
        client.set_connect_state()
        return client

    def _server(self, groups: bytes | None = None) -> SSL.Connection:
        context = self.serverCertificate.serverOptions().getContext()
        if groups is not None:
            from OpenSSL._util import lib

            self.assertEqual(lib.SSL_CTX_set1_curves_list(context._context, groups), 1)
        server = SSL.Connection(context, None)
        server.set_accept_state()
        return server

    def _handshake(self, server: SSL.Connection) -> SSL.Connection:
        """Run a whole handshake over memory; return the client's end."""
        client = self._client(TLSContexts())
        for _ in range(5):
            for end in (client, server):
                try:
                    end.do_handshake()
                except SSL.WantReadError:
                    pass
            _pump(client, server)
            _pump(server, client)
        client.do_handshake()
        return client

    def _clientHello(self) -> bytes:
        client = self._client(TLSContexts())
        with self.assertRaises(SSL.WantReadError):
            client.do_handshake()
        return client.bio_read(65536)

    def test_releaseBuffers(self) -> None:
        """The shared context keeps SSL_MODE_RELEASE_BUFFERS: no idle buffers."""
        context = TLSContexts().contextFor(self.caFile)
        self.assertTrue(context.set_mode(0) & SSL.MODE_RELEASE_BUFFERS)

    def test_oneKeyShare(self) -> None:
        """The ClientHello carries one small key share, not the 1.2 KB hybrid one."""
        self.assertLess(len(self._clientHello()), _MAX_ONE_SHARE_HELLO)

    def test_classicalServer(self) -> None:
        """A server without post-quantum groups uses the X25519 share at once."""
        client = self._handshake(self._server(b"X25519:secp256r1"))
        name = _groupName(client)
        if name is not None:
            self.assertEqual(name.lower(), "x25519")

    def test_hybridServerStillGetsIt(self) -> None:
        """A server that prefers the hybrid group asks for it and gets it."""
        if SSL.OPENSSL_VERSION_NUMBER < 0x30500000:
            raise self.skipTest("this OpenSSL has no post-quantum hybrid group")
        client = self._handshake(self._server(_HYBRID.encode()))
        name = _groupName(client)
        if name is not None:
            self.assertEqual(name, _HYBRID)

    def test_privateBindingStillThere(self) -> None:
        """
        The names shareOneKey borrows from pyOpenSSL still exist: if this
        fails, the groups list is set nowhere and idle connections grow.
        """
        if SSL.OPENSSL_VERSION_NUMBER < 0x30500000:
            raise self.skipTest("the groups are left alone before OpenSSL 3.5")
        from OpenSSL._util import lib

        self.assertTrue(hasattr(lib, "SSL_CTX_set1_curves_list"))
        self.assertTrue(hasattr(lib, "ERR_clear_error"))
        self.assertTrue(shareOneKey(SSL.Context(SSL.TLS_CLIENT_METHOD)))

    def test_refusedListLeavesNoError(self) -> None:
        """A groups list OpenSSL refuses leaves its default and no queued error."""
        if SSL.OPENSSL_VERSION_NUMBER < 0x30500000:
            raise self.skipTest("the groups are left alone before OpenSSL 3.5")
        self.patch(tls, "KEY_SHARE_GROUPS", b"no-such-group")
        self.assertFalse(shareOneKey(SSL.Context(SSL.TLS_CLIENT_METHOD)))
        from OpenSSL._util import lib

        self.assertEqual(lib.ERR_peek_error(), 0)
        # The shared context, made the same way, still connects.
        client = self._handshake(self._server())
        self.assertTrue(client.get_peer_certificate())
