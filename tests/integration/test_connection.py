"""
The whole vendor sequence, end to end: the real client against the local
server over loopback TCP and TLS, and the specific error for each failure.
"""

from __future__ import annotations

import platform

from twisted.internet import defer

from tests.integration.support import LOGIN, LocalServerTestCase, closedPort
from yadiskpush import __version__
from yadiskpush.connection.endpoint import DIRECT_TLS, STARTTLS
from yadiskpush.errors import (
    AuthenticationFailed,
    CertificateError,
    ConnectionClosedDuringHandshake,
    StartTLSNotOffered,
)
from yadiskpush.localserver import VERSION_QUERY_ID, CertificateAuthority, Faults
from yadiskpush.localserver.session import STARTTLS_PORT, TLS_PORT


def position(server: object, kind: str) -> int:
    """Where the only event of ``kind`` stands in the server's event order."""
    kinds = [e.kind for e in server.events.events]  # type: ignore[attr-defined]
    assert kinds.count(kind) == 1, (kind, kinds)
    return kinds.index(kind)


def fields(answer: object) -> dict[str, str]:
    query = answer.firstChildElement()  # type: ignore[attr-defined]
    return {child.name: str(child) for child in query.elements()}


class SequenceTests(LocalServerTestCase):
    @defer.inlineCallbacks
    def assertFullSequence(self, server: object, service: object) -> object:
        jid = yield service.whenReady()  # type: ignore[attr-defined]
        self.assertEqual(jid.full(), f"{LOGIN}@ya.ru/yadiskpush-test")
        [session] = server.openSessions(LOGIN)  # type: ignore[attr-defined]
        self.assertTrue(session.encrypted)
        self.assertTrue(session.subscribed)
        self.assertEqual(server.plaintextAuthAttempts, 0)  # type: ignore[attr-defined]
        answer = yield session.whenAnswered(VERSION_QUERY_ID)
        self.assertEqual(answer["type"], "result")
        self.assertEqual(answer["id"], VERSION_QUERY_ID)
        self.assertEqual(answer["to"], "ya.ru")
        self.assertEqual(answer.firstChildElement().uri, "jabber:iq:version")
        version = fields(answer)
        self.assertEqual(version["name"], "yadiskpush")
        self.assertEqual(version["version"], __version__)
        self.assertIn(platform.system(), version["os"])
        pong = yield session.ping()
        self.assertEqual(pong["type"], "result")
        self.assertEqual(pong["id"], f"ping_{1}")
        self.assertEqual(pong["to"], "ya.ru")
        return session

    @defer.inlineCallbacks
    def test_startTLSWithoutCompression(self) -> None:
        """STARTTLS, auth, bind, session, version, ping, and a clean close."""
        server = yield self.startServer()
        service = self.startClient(self.settingsFor(server))
        session = yield self.assertFullSequence(server, service)
        self.assertEqual(session.port, STARTTLS_PORT)
        self.assertFalse(session.compressed)
        self.assertEqual(service.dialer.lastMode, STARTTLS)
        yield service.stopService()
        yield session.whenClosed()
        self.assertTrue(session.clientClosed)
        self.assertEqual(server.eventsOf("data-after-close"), [])

    @defer.inlineCallbacks
    def test_compressionBeforeAuth(self) -> None:
        """With --compress, zlib is negotiated where the vendor offers it."""
        server = yield self.startServer()
        service = self.startClient(self.settingsFor(server, compress=True))
        session = yield self.assertFullSequence(server, service)
        self.assertTrue(session.compressed)
        self.assertLess(position(server, "compressed"), position(server, "auth"))
        answer = yield server.push(LOGIN, {"t": "diff"})
        self.assertEqual(answer["type"], "result")
        yield service.stopService()
        yield session.whenClosed()
        self.assertTrue(session.clientClosed)

    @defer.inlineCallbacks
    def test_compressionAfterAuth(self) -> None:
        """A server offering zlib only after SASL (XEP-0170) gets it there."""
        server = yield self.startServer(compressionAfterAuth=True)
        service = self.startClient(self.settingsFor(server, compress=True))
        session = yield self.assertFullSequence(server, service)
        self.assertTrue(session.compressed)
        self.assertGreater(
            position(server, "compressed"), position(server, "auth-success")
        )

    @defer.inlineCallbacks
    def test_noCompressionUnlessAsked(self) -> None:
        """Without --compress nothing is requested although zlib is offered."""
        server = yield self.startServer()
        service = self.startClient(self.settingsFor(server))
        yield service.whenReady()
        self.assertEqual(server.eventsOf("compress"), [])

    @defer.inlineCallbacks
    def test_directTLSFallback(self) -> None:
        """With the STARTTLS port closed, the TLS port gets the same sequence."""
        server = yield self.startServer()
        service = self.startClient(self.settingsFor(server, port=closedPort()))
        session = yield self.assertFullSequence(server, service)
        self.assertEqual(session.port, TLS_PORT)
        self.assertEqual(server.eventsOf("starttls"), [])
        self.assertEqual(service.dialer.lastMode, DIRECT_TLS)
        yield service.stopService()
        yield session.whenClosed()
        self.assertTrue(session.clientClosed)

    @defer.inlineCallbacks
    def test_directTLSFallbackWithCompression(self) -> None:
        """Compression works over the direct-TLS port too."""
        server = yield self.startServer()
        service = self.startClient(
            self.settingsFor(server, port=closedPort(), compress=True)
        )
        session = yield self.assertFullSequence(server, service)
        self.assertTrue(session.compressed)

    @defer.inlineCallbacks
    def test_serverAssignedJIDKept(self) -> None:
        """The JID the server returns from bind is the one the client uses."""
        server = yield self.startServer()
        service = self.startClient(self.settingsFor(server, resource="laptop"))
        jid = yield service.whenReady()
        [session] = server.openSessions(LOGIN)
        self.assertEqual(jid, session.jid)
        self.assertEqual(service.jid.resource, "laptop")


class FailureTests(LocalServerTestCase):
    @defer.inlineCallbacks
    def test_wrongToken(self) -> None:
        """A rejected token stops the client with a message; no retry."""
        server = yield self.startServer(accounts={LOGIN: "the-right-token"})
        service = self.startClient(self.settingsFor(server))
        error = yield service.whenGaveUp()
        self.assertIsInstance(error, AuthenticationFailed)
        self.assertEqual(error.condition, "not-authorized")
        self.assertIn("new OAuth token", str(error))
        self.assertNotIn(self.token, str(error))
        [session] = server.sessions
        yield session.whenClosed()
        self.assertEqual(len(server.eventsOf("auth")), 1)
        self.assertEqual(len(server.sessions), 1)
        self.assertFalse(service.retrying)

    @defer.inlineCallbacks
    def test_noStartTLSOffered(self) -> None:
        """Without STARTTLS on offer the client stops before sending the token."""
        server = yield self.startServer(faults=Faults(offerStartTLS=False))
        service = self.startClient(self.settingsFor(server, tlsPort=0))
        error = yield service.whenConnectionFailed()
        self.assertIsInstance(error, StartTLSNotOffered)
        self.assertIn("did not offer STARTTLS", str(error))
        self.assertEqual(server.plaintextAuthAttempts, 0)
        self.assertEqual(server.eventsOf("auth"), [])

    @defer.inlineCallbacks
    def test_noStartTLSPrefersTLSPort(self) -> None:
        """A stripped STARTTLS sends the next attempt to the TLS port."""
        server = yield self.startServer(faults=Faults(offerStartTLS=False))
        service = self.startClient(self.settingsFor(server))
        error = yield service.whenConnectionFailed()
        self.assertIsInstance(error, StartTLSNotOffered)
        yield service.whenReady()
        [session] = server.openSessions(LOGIN)
        self.assertEqual(session.port, TLS_PORT)
        self.assertEqual(server.plaintextAuthAttempts, 0)

    @defer.inlineCallbacks
    def test_certificateForAnotherHost(self) -> None:
        """A certificate that does not name the dialled host is refused."""
        ca = CertificateAuthority.generate()
        server = yield self.startServer(
            ca=ca, certificate=ca.issueServerCertificate(["wrong.example"])
        )
        service = self.startClient(self.settingsFor(server, tlsPort=0))
        error = yield service.whenConnectionFailed()
        self.assertIsInstance(error, CertificateError)
        self.assertIn("not valid for 'localhost'", str(error))
        self.assertEqual(server.eventsOf("auth"), [])

    @defer.inlineCallbacks
    def test_untrustedCA(self) -> None:
        """A certificate from a CA the client does not trust is refused."""
        other = CertificateAuthority.generate("someone else's CA")
        server = yield self.startServer(
            certificate=other.issueServerCertificate(["localhost", "127.0.0.1"])
        )
        service = self.startClient(self.settingsFor(server, tlsPort=0))
        error = yield service.whenConnectionFailed()
        self.assertIsInstance(error, CertificateError)
        self.assertIn("not signed by a trusted CA", str(error))
        self.assertEqual(server.eventsOf("auth"), [])

    @defer.inlineCallbacks
    def test_untrustedCAOnTLSPort(self) -> None:
        """The direct-TLS port verifies the certificate just the same."""
        other = CertificateAuthority.generate("someone else's CA")
        server = yield self.startServer(
            certificate=other.issueServerCertificate(["localhost", "127.0.0.1"])
        )
        service = self.startClient(self.settingsFor(server, port=closedPort()))
        error = yield service.whenConnectionFailed()
        self.assertIsInstance(error, CertificateError)
        self.assertEqual(server.eventsOf("auth"), [])

    @defer.inlineCallbacks
    def test_closedMidHandshake(self) -> None:
        """A server that closes during SASL yields an error naming that step."""
        server = yield self.startServer()
        server.faultNextConnection(Faults(closeAt="auth"))
        service = self.startClient(self.settingsFor(server))
        error = yield service.whenConnectionFailed()
        self.assertIsInstance(error, ConnectionClosedDuringHandshake)
        self.assertEqual(error.step, "authentication")
        self.assertIn("during authentication", str(error))
        # And it recovers on the next attempt.
        yield service.whenReady()

    @defer.inlineCallbacks
    def test_closedAfterHeader(self) -> None:
        """A close right after the stream header names the first step."""
        server = yield self.startServer()
        server.faultNextConnection(Faults(closeAt="header"))
        service = self.startClient(self.settingsFor(server))
        error = yield service.whenConnectionFailed()
        self.assertIsInstance(error, ConnectionClosedDuringHandshake)
        self.assertEqual(error.step, "stream header")
