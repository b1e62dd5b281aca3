"""Tests for yadiskpush.connection.authenticator: what a connection keeps."""

from __future__ import annotations

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.words.protocols.jabber import xmlstream
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.protocols.jabber.ijabber import IIQResponseTracker
from wokkel.generic import parseXml

from tests.support import SERVER_HEADER, connectedStream
from yadiskpush.connection.attempt import STARTTLS, Attempt
from yadiskpush.connection.authenticator import (
    CONNECTION_FAILED_EVENT,
    BindInitializer,
    PushXmlStreamFactory,
)
from yadiskpush.connection.stream import PushXmlStream
from yadiskpush.connection.tls import TLSContexts
from yadiskpush.errors import ConnectionStalled
from yadiskpush.localserver.ca import CertificateAuthority
from yadiskpush.secret import Secret
from yadiskpush.settings import Settings

_BIND_ANSWER = (
    "<iq type='result' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
    "<jid>%s</jid></bind></iq>"
)


class _Factory:
    """A stream factory for one test, with a real CA behind its attempts."""

    def __init__(self, testCase: SynchronousTestCase) -> None:
        caFile = testCase.mktemp()
        CertificateAuthority.generate().writeCACertificate(caFile)
        self.clock = Clock()
        self.settings = Settings(
            login="test",
            token=Secret("c4181a7c2cf4521964a72ff57a34a07"),
            host="localhost",
            caFile=caFile,
            resource="r",
            handshakeTimeout=30,
        )
        self.tls = TLSContexts()
        self.factory = PushXmlStreamFactory(self.settings, self.clock)

    def stream(self) -> PushXmlStream:
        """A stream of a new attempt, connected, the server's header read."""
        connector = self.tls.connectorFor("localhost", self.settings.caFile)
        token = self.settings.token
        attempt = Attempt("localhost", 5222, STARTTLS, connector, token)
        xs = self.factory.buildStream(attempt)
        xs.makeConnection(StringTransport())
        xs.dataReceived(SERVER_HEADER)
        return xs


class SessionOpenTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.factory = _Factory(self)
        self.xs = self.factory.stream()

    def test_handshakeTimerGoesWithTheHandshake(self) -> None:
        """An open session has no handshake timer left on the clock."""
        self.assertEqual(len(self.factory.clock.getDelayedCalls()), 1)
        self.xs.dispatch(self.xs, xmlstream.STREAM_AUTHD_EVENT)
        self.assertEqual(self.factory.clock.getDelayedCalls(), [])

    def test_featuresDropped(self) -> None:
        """The last stream features are not kept once the session is open."""
        self.xs.dataReceived(
            b"<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>"
            b"</stream:features>"
        )
        self.assertTrue(self.xs.features)
        self.xs.dispatch(self.xs, xmlstream.STREAM_AUTHD_EVENT)
        self.assertEqual(self.xs.features, {})

    def test_handshakeObserversGone(self) -> None:
        """
        After the session opened, a late initialization failure no longer
        reaches the authenticator: its handshake-only observers are gone.
        """
        self.xs.dispatch(self.xs, xmlstream.STREAM_AUTHD_EVENT)
        self.xs.dispatch(Failure(RuntimeError("late")), xmlstream.INIT_FAILED_EVENT)
        self.assertIsNone(self.xs.authenticator.failure)
        self.assertTrue(self.xs.authenticator.sessionOpen)

    def test_stillEndsOnConnectionFailure(self) -> None:
        """An open session still records and acts on a connection failure."""
        self.xs.dispatch(self.xs, xmlstream.STREAM_AUTHD_EVENT)
        stalled = ConnectionStalled(110)
        self.xs.dispatch(stalled, CONNECTION_FAILED_EVENT)
        self.assertIs(self.xs.authenticator.failure, stalled)

    def test_oneJIDPerFactory(self) -> None:
        """Every stream of a factory asks for the same JID, made once."""
        other = self.factory.stream()
        self.assertIs(self.xs.authenticator.jid, other.authenticator.jid)
        self.assertEqual(self.xs.authenticator.jid.full(), "test@ya.ru/r")


class HandshakeIQTests(SynchronousTestCase):
    """Twisted's IQ.send works during the handshake; nothing stays after it."""

    def setUp(self) -> None:
        self.factory = _Factory(self)
        self.xs = self.factory.stream()

    def _answer(self, iq: xmlstream.IQ, kind: str = "result") -> None:
        self.xs.dataReceived(
            b"<iq type='%s' id='%s'/>" % (kind.encode(), iq["id"].encode())
        )

    def test_answered(self) -> None:
        """A handshake IQ's result fires its Deferred."""
        iq = xmlstream.IQ(self.xs, "set")
        answers: list[object] = []
        iq.send().addCallback(answers.append)
        self._answer(iq)
        [answer] = answers
        self.assertEqual(answer["id"], iq["id"])

    def test_errorAnswer(self) -> None:
        """An error answer fails it with Twisted's StanzaError."""
        iq = xmlstream.IQ(self.xs, "set")
        d = iq.send()
        self._answer(iq, "error")
        self.failureResultOf(d, StanzaError)

    def test_lostConnection(self) -> None:
        """A handshake IQ still waiting when the stream ends fails."""
        d = xmlstream.IQ(self.xs, "set").send()
        self.xs.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(d, ConnectionLost)

    def test_notTrackedOnceOpen(self) -> None:
        """An open session no longer tracks IQs; a later IQ.send still works."""
        bind = xmlstream.IQ(self.xs, "set")
        bind.send()
        self._answer(bind)
        self.xs.dispatch(self.xs, xmlstream.STREAM_AUTHD_EVENT)
        self.assertFalse(IIQResponseTracker.providedBy(self.xs))
        iq = xmlstream.IQ(self.xs, "get")
        answers: list[object] = []
        iq.send().addCallback(answers.append)
        self._answer(iq)
        self.assertEqual(len(answers), 1)


class BootstrapTests(SynchronousTestCase):
    def test_oncePerStreamBootstrapsDoNotStay(self) -> None:
        """A bootstrap of a once-per-stream event runs once and is dropped."""
        factory = _Factory(self)
        calls: list[object] = []
        factory.factory.addBootstrap(xmlstream.STREAM_AUTHD_EVENT, calls.append)
        xs = factory.stream()
        xs.dispatch(xs, xmlstream.STREAM_AUTHD_EVENT)
        xs.dispatch(xs, xmlstream.STREAM_AUTHD_EVENT)
        self.assertEqual(calls, [xs])

    def test_otherBootstrapsStay(self) -> None:
        """A bootstrap of any other event stays for the stream's life."""
        factory = _Factory(self)
        calls: list[object] = []
        factory.factory.addBootstrap("//event/test", calls.append)
        xs = factory.stream()
        xs.dispatch(1, "//event/test")
        xs.dispatch(2, "//event/test")
        self.assertEqual(calls, [1, 2])


class BindTests(SynchronousTestCase):
    def test_sameJIDKept(self) -> None:
        """The JID asked for, assigned as asked, is kept (not parsed again)."""
        xs, _ = connectedStream()
        ours = xs.authenticator.jid
        BindInitializer(xs).onBind(parseXml(_BIND_ANSWER % ours.full()))
        self.assertIs(xs.authenticator.jid, ours)

    def test_assignedJIDTaken(self) -> None:
        """A JID the server assigns otherwise replaces ours."""
        xs, _ = connectedStream()
        BindInitializer(xs).onBind(parseXml(_BIND_ANSWER % "test@ya.ru/other"))
        self.assertEqual(xs.authenticator.jid.full(), "test@ya.ru/other")
