"""Tests for yadiskpush.handlers: version, ping, push, subscription, keepalive."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from wokkel.generic import FallbackHandler

from tests.support import connectedStream, sentElements
from yadiskpush.errors import ConnectionStalled, SubscriptionFailed
from yadiskpush.handlers.keepalive import KeepaliveHandler
from yadiskpush.handlers.ping import PingHandler
from yadiskpush.handlers.push import PushHandler
from yadiskpush.handlers.subscription import SubscriptionHandler
from yadiskpush.handlers.version import VersionHandler

VERSION_QUERY = (
    b"<iq from='ya.ru' type='get' to='test@ya.ru/r' id='ask_version'>"
    b"<query xmlns='jabber:iq:version'/></iq>"
)
PING = (
    b"<iq from='ya.ru' type='get' to='test@ya.ru/r' id='ping_1'>"
    b"<ping xmlns='urn:xmpp:ping'/></iq>"
)


def attach(*handlers):  # type: ignore[no-untyped-def]
    xs, transport = connectedStream()
    for handler in handlers:
        handler.makeConnection(xs)
        handler.connectionInitialized()
    return xs, transport


class VersionTests(SynchronousTestCase):
    def test_answerFieldByField(self) -> None:
        """The version query gets name, version and os, to the asker, same id."""
        xs, transport = attach(VersionHandler("yadiskpush", "1.2", os="Linux 6"))
        xs.dataReceived(VERSION_QUERY)
        [reply] = sentElements(transport.value())
        self.assertEqual(reply["type"], "result")
        self.assertEqual(reply["id"], "ask_version")
        self.assertEqual(reply["to"], "ya.ru")
        query = reply.query
        self.assertEqual(query.uri, "jabber:iq:version")
        fields = {child.name: str(child) for child in query.elements()}
        self.assertEqual(
            fields, {"name": "yadiskpush", "version": "1.2", "os": "Linux 6"}
        )

    def test_defaultOS(self) -> None:
        """Without an explicit OS the platform's name is reported."""
        import platform

        self.assertIn(platform.system(), VersionHandler("n", "1").os)


class PingTests(SynchronousTestCase):
    def test_resultSameId(self) -> None:
        """A ping gets an empty result with the same id, back to the sender."""
        xs, transport = attach(PingHandler())
        xs.dataReceived(PING)
        [reply] = sentElements(transport.value())
        self.assertEqual(
            (reply["type"], reply["id"], reply["to"]), ("result", "ping_1", "ya.ru")
        )
        self.assertEqual(list(reply.elements()), [])


class FallbackTests(SynchronousTestCase):
    def test_unknownGetServiceUnavailable(self) -> None:
        """An IQ get nobody handles is answered with service-unavailable."""
        xs, transport = attach(PingHandler(), FallbackHandler())
        xs.dataReceived(
            b"<iq from='ya.ru' type='get' id='x1'><query xmlns='jabber:iq:roster'/>"
            b"</iq>"
        )
        [reply] = sentElements(transport.value())
        self.assertEqual((reply["type"], reply["id"]), ("error", "x1"))
        self.assertEqual(reply.error.firstChildElement().name, "service-unavailable")

    def test_handledPingNotAlsoRefused(self) -> None:
        """A ping is answered once, with a result and no error."""
        xs, transport = attach(PingHandler(), FallbackHandler())
        xs.dataReceived(PING)
        self.assertEqual(
            [e["type"] for e in sentElements(transport.value())], ["result"]
        )


def pushStanza(n: int, extra: bytes = b"") -> bytes:
    return (
        b"<iq type='set' from='test@ya.ru' to='test@ya.ru/r' id='push-%d'>"
        b"<query xmlns='yandex:push:disk' t='diff' uid='1' new='%d' odd='keep'>"
        b"%s</query></iq>" % (n, n, extra)
    )


class PushTests(SynchronousTestCase):
    def test_ackAfterDelivery(self) -> None:
        """A push is acked only when the callback's Deferred fires."""
        pending: list[defer.Deferred[None]] = []
        received = []

        def onNotification(n):  # type: ignore[no-untyped-def]
            received.append(n)
            pending.append(defer.Deferred())
            return pending[-1]

        xs, transport = attach(PushHandler(onNotification, clock=Clock()))
        xs.dataReceived(pushStanza(1, b"<unknown xmlns='urn:x' a='b'>t</unknown>"))
        self.assertEqual(transport.value(), b"")
        [n] = received
        self.assertEqual(n.stanzaId, "push-1")
        self.assertEqual(n.attributes["odd"], "keep")
        self.assertEqual(n.children[0].name, "unknown")
        self.assertEqual(n.children[0].attributes["a"], "b")
        self.assertIn("urn:x", n.rawXml)
        pending[0].callback(None)
        [ack] = sentElements(transport.value())
        self.assertEqual(
            (ack["type"], ack["id"], ack["to"]), ("result", "push-1", "test@ya.ru")
        )

    def test_inOrderOneAtATime(self) -> None:
        """The second push waits for the first delivery; acks keep the order."""
        pending: list[defer.Deferred[None]] = []
        received = []

        def onNotification(n):  # type: ignore[no-untyped-def]
            received.append(n.stanzaId)
            pending.append(defer.Deferred())
            return pending[-1]

        xs, transport = attach(PushHandler(onNotification, clock=Clock()))
        xs.dataReceived(pushStanza(1) + pushStanza(2))
        self.assertEqual(received, ["push-1"])
        pending[0].callback(None)
        self.assertEqual(received, ["push-1", "push-2"])
        pending[1].callback(None)
        self.assertEqual(
            [e["id"] for e in sentElements(transport.value())], ["push-1", "push-2"]
        )

    def test_failedDeliveryNotAcked(self) -> None:
        """A callback that fails gets the push answered with an error, not acked."""

        def onNotification(n):  # type: ignore[no-untyped-def]
            raise OSError("disk full")

        xs, transport = attach(PushHandler(onNotification, clock=Clock()))
        xs.dataReceived(pushStanza(1))
        [reply] = sentElements(transport.value())
        self.assertEqual(reply["type"], "error")
        self.flushLoggedErrors(OSError)

    def test_receivedTime(self) -> None:
        """The notification carries the clock's time of arrival."""
        clock = Clock()
        clock.advance(1234.5)
        received = []
        xs, _ = attach(PushHandler(received.append, clock=clock))
        xs.dataReceived(pushStanza(1))
        self.assertEqual(received[0].receivedAt, 1234.5)


class SubscriptionTests(SynchronousTestCase):
    def _handler(self, clock: Clock):  # type: ignore[no-untyped-def]
        events: list[object] = []
        handler = SubscriptionHandler(
            lambda: "test@ya.ru",
            lambda: events.append("subscribed"),
            events.append,
            clock,
            timeout=30,
        )
        xs, transport = attach(handler)
        return xs, transport, events

    def test_sendsToBareJID(self) -> None:
        """The subscription is an IQ set with <s xmlns='yandex:push:disk'/>."""
        xs, transport, events = self._handler(Clock())
        [iq] = sentElements(transport.value())
        self.assertEqual((iq["type"], iq["to"]), ("set", "test@ya.ru"))
        self.assertEqual((iq.s.uri, iq.s.name), ("yandex:push:disk", "s"))
        xs.dataReceived(b"<iq type='result' id='%s'/>" % iq["id"].encode())
        self.assertEqual(events, ["subscribed"])

    def test_errorReported(self) -> None:
        """An error answer is reported as SubscriptionFailed with the condition."""
        xs, transport, events = self._handler(Clock())
        [iq] = sentElements(transport.value())
        xs.dataReceived(
            b"<iq type='error' id='%s'><error type='cancel'><not-allowed "
            b"xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
            % iq["id"].encode()
        )
        [failure] = events
        self.assertIsInstance(failure, SubscriptionFailed)
        self.assertEqual(failure.condition, "not-allowed")

    def test_timeout(self) -> None:
        """No answer within the timeout is reported too."""
        clock = Clock()
        xs, transport, events = self._handler(clock)
        clock.advance(29)
        self.assertEqual(events, [])
        clock.advance(1)
        self.assertIsInstance(events[0], SubscriptionFailed)


class KeepaliveTests(SynchronousTestCase):
    def _handler(self, clock: Clock):  # type: ignore[no-untyped-def]
        dead: list[object] = []
        handler = KeepaliveHandler(lambda: "ya.ru", dead.append, clock, 90, 20)
        xs, transport = attach(handler)
        return xs, transport, dead

    def test_pingsAfterIdle(self) -> None:
        """After the idle time a ping goes to the domain; an answer keeps it up."""
        clock = Clock()
        xs, transport, dead = self._handler(clock)
        clock.advance(89)
        self.assertEqual(transport.value(), b"")
        clock.advance(1)
        [ping] = sentElements(transport.value())
        self.assertEqual((ping["type"], ping["to"]), ("get", "ya.ru"))
        self.assertEqual(ping.ping.uri, "urn:xmpp:ping")
        xs.dataReceived(b"<iq type='result' id='%s'/>" % ping["id"].encode())
        clock.advance(60)
        self.assertEqual(dead, [])

    def test_deadAfterNoAnswer(self) -> None:
        """No answer to the ping within its timeout reports a stalled link."""
        clock = Clock()
        xs, transport, dead = self._handler(clock)
        clock.advance(90)
        clock.advance(19)
        self.assertEqual(dead, [])
        clock.advance(1)
        self.assertIsInstance(dead[0], ConnectionStalled)

    def test_trafficPostponesPing(self) -> None:
        """Any stanza from the server counts as life: no ping is sent."""
        clock = Clock()
        xs, transport, dead = self._handler(clock)
        for _ in range(10):
            clock.advance(60)
            xs.dataReceived(PING)
        self.assertEqual(transport.value(), b"")


class PushWhileClosingTests(SynchronousTestCase):
    def test_noAckAfterFooter(self) -> None:
        """A delivery that completes after our </stream:stream> is not acked."""
        pending: list[defer.Deferred[None]] = []

        def onNotification(n):  # type: ignore[no-untyped-def]
            pending.append(defer.Deferred())
            return pending[-1]

        xs, transport = attach(PushHandler(onNotification, clock=Clock()))
        xs.dataReceived(pushStanza(1))
        xs.sendFooter()
        transport.clear()
        pending[0].callback(None)
        self.assertEqual(transport.value(), b"")


class PushSenderTests(SynchronousTestCase):
    def test_pushFromAnotherAccountRefused(self) -> None:
        """A push claiming to come from another account is refused, not delivered."""
        received: list[object] = []
        xs, transport = attach(PushHandler(received.append, clock=Clock()))
        xs.dataReceived(
            b"<iq type='set' from='mallory@evil.example/x' id='spoof'>"
            b"<query xmlns='yandex:push:disk' t='diff'/></iq>"
        )
        [reply] = sentElements(transport.value())
        self.assertEqual((reply["type"], reply["id"]), ("error", "spoof"))
        self.assertEqual(received, [])

    def test_pushFromServerOrSelfAccepted(self) -> None:
        """Pushes from the domain, our bare JID, or with no sender are delivered."""
        received: list[object] = []
        xs, transport = attach(PushHandler(received.append, clock=Clock()))
        for sender in (b" from='ya.ru'", b" from='test@ya.ru'", b""):
            xs.dataReceived(
                b"<iq type='set'%s id='p'><query xmlns='yandex:push:disk'/></iq>"
                % sender
            )
        self.assertEqual(len(received), 3)
        self.assertEqual(
            [e["type"] for e in sentElements(transport.value())], ["result"] * 3
        )
