"""Tests for yadiskpush.handlers.push and yadiskpush.delivery.pipeline."""

from __future__ import annotations

from typing import Any
from xml.sax.saxutils import quoteattr

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import Logger, capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from wokkel.generic import parseXml

from tests.support import connectedStream, sentElements
from yadiskpush.delivery.pipeline import DeliveryPipeline, _quoteAttribute, fanOut
from yadiskpush.handlers.push import PushHandler
from yadiskpush.notification import Notification


def attach(*handlers):  # type: ignore[no-untyped-def]
    xs, transport = connectedStream()
    for handler in handlers:
        handler.makeConnection(xs)
        handler.connectionInitialized()
    return xs, transport


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

    def test_notificationNamesItsAccount(self) -> None:
        """Every notification carries the login the handler was made for."""
        received: list[Notification] = []
        handler = PushHandler(received.append, clock=Clock(), login="test")
        xs, _ = attach(handler)
        xs.dataReceived(pushStanza(1) + pushStanza(2))
        self.assertEqual([n.login for n in received], ["test", "test"])

    def test_loginEmptyByDefault(self) -> None:
        """A handler made without a login tags its notifications with ""."""
        received: list[Notification] = []
        xs, _ = attach(PushHandler(received.append, clock=Clock()))
        xs.dataReceived(pushStanza(1))
        self.assertEqual(received[0].login, "")


class PushRouteTests(SynchronousTestCase):
    """On our stream, pushes skip the XPath observers but not the keepalive."""

    def test_observersOfEveryStanzaSeePushes(self) -> None:
        """A "/*" observer (the keepalive's sign of life) sees every push."""
        received: list[Notification] = []
        xs, transport = attach(PushHandler(received.append, clock=Clock()))
        seen: list[str] = []
        xs.addObserver("/*", lambda e: seen.append(e["id"]), 100)
        xs.dataReceived(pushStanza(1) + b"<iq type='get' id='other'/>")
        self.assertEqual(seen, ["push-1", "other"])
        self.assertEqual([n.stanzaId for n in received], ["push-1"])
        self.assertEqual(xs.stanzasReceived, 2)

    def test_pushesGoStraightToTheHandler(self) -> None:
        """Other observers of IQ sets do not see a push; the handler acks it."""
        received: list[Notification] = []
        xs, transport = attach(PushHandler(received.append, clock=Clock()))
        others: list[object] = []
        xs.addObserver("/iq[@type='set']", others.append, 10)
        xs.dataReceived(pushStanza(1))
        self.assertEqual((len(received), others), (1, []))
        [ack] = sentElements(transport.value())
        self.assertEqual((ack["type"], ack["id"]), ("result", "push-1"))

    def test_payloadAfterAnotherChild(self) -> None:
        """A push whose payload is not the first child still arrives."""
        received: list[Notification] = []
        xs, transport = attach(PushHandler(received.append, clock=Clock()))
        xs.dataReceived(
            b"<iq type='set' id='p' from='ya.ru'><x xmlns='urn:x'/>"
            b"<query xmlns='yandex:push:disk' t='1'/></iq>"
        )
        self.assertEqual([n.attributes["t"] for n in received], ["1"])
        self.assertEqual(sentElements(transport.value())[0]["type"], "result")


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


def notification(n: int) -> tuple[Any, Notification]:
    iq = parseXml(pushStanza(n))
    return iq, Notification.fromStanza(iq, 0.0)


class PipelineTests(SynchronousTestCase):
    def _pipeline(self, deliver, clock=None, **kwargs):  # type: ignore[no-untyped-def]
        sent: list[str] = []
        pipeline = DeliveryPipeline(
            deliver,
            lambda iq, xml: sent.append(xml),
            clock or Clock(),
            Logger(),
            **kwargs,
        )
        return pipeline, sent

    def test_timeoutRefusesAndGoesOn(self) -> None:
        """A hand-off that never finishes is refused at the timeout; the next runs."""
        clock = Clock()
        calls: list[str] = []

        def deliver(n: Notification) -> Any:
            calls.append(n.stanzaId)
            return defer.Deferred() if n.stanzaId == "push-1" else None

        pipeline, sent = self._pipeline(deliver, clock, timeout=60)
        with capturedLogs() as events:
            pipeline.receive(*notification(1))
            pipeline.receive(*notification(2))
            self.assertEqual((calls, sent), (["push-1"], []))
            clock.advance(60)
        self.assertEqual(calls, ["push-1", "push-2"])
        answers = [parseXml(x) for x in sent]
        self.assertEqual(
            [(a["type"], a["id"]) for a in answers],
            [("error", "push-1"), ("result", "push-2")],
        )
        [line] = [e for e in events if "push-1" in str(e.get("id"))]
        self.assertIn("within 60 s", line["problem"])

    def test_lateResultIgnored(self) -> None:
        """A delivery that fires after its timeout sends no second answer."""
        clock = Clock()
        pending: list[defer.Deferred[None]] = []

        def deliver(n: Notification) -> Any:
            pending.append(defer.Deferred())
            return pending[-1]

        pipeline, sent = self._pipeline(deliver, clock, timeout=5)
        pipeline.receive(*notification(1))
        clock.advance(5)
        pending[0].callback(None)
        self.assertEqual([parseXml(x)["type"] for x in sent], ["error"])

    def test_failingSendDoesNotPoisonTheNext(self) -> None:
        """An exception while answering one push does not refuse the next."""
        sent: list[str] = []

        def send(iq: object, xml: str) -> None:
            if not sent:
                sent.append("boom")
                raise RuntimeError("transport gone mad")
            sent.append(xml)

        pipeline = DeliveryPipeline(lambda n: None, send, Clock(), Logger())
        pipeline.receive(*notification(1))
        pipeline.receive(*notification(2))
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual(parseXml(sent[1])["type"], "result")
        self.assertEqual(parseXml(sent[1])["id"], "push-2")

    def test_closeDropsWaiting(self) -> None:
        """After close nothing is answered, neither the current nor the waiting."""
        pending: list[defer.Deferred[None]] = []

        def deliver(n: Notification) -> Any:
            pending.append(defer.Deferred())
            return pending[-1]

        pipeline, sent = self._pipeline(deliver)
        pipeline.receive(*notification(1))
        pipeline.receive(*notification(2))
        pipeline.close()
        pending[0].callback(None)
        self.assertEqual((sent, len(pending)), ([], 1))

    def test_beyondTheBoundRefused(self) -> None:
        """Pushes beyond maxWaiting are refused at once with resource-constraint."""
        pipeline, sent = self._pipeline(lambda n: defer.Deferred(), maxWaiting=2)
        for n in range(1, 5):
            pipeline.receive(*notification(n))
        answers = [parseXml(x) for x in sent]
        self.assertEqual([a["id"] for a in answers], ["push-4"])
        self.assertEqual(
            answers[0].error.firstChildElement().name, "resource-constraint"
        )
        self.assertEqual(pipeline.waiting, 3)

    def test_manySynchronousHandOffsDoNotRecurse(self) -> None:
        """Thousands of pushes queued behind one slow one drain without recursion."""
        first: defer.Deferred[None] = defer.Deferred()
        pipeline, sent = self._pipeline(
            lambda n: first if n.stanzaId == "push-0" else None, maxWaiting=5000
        )
        iq, n = notification(0)
        pipeline.receive(iq, n)
        for i in range(1, 5000):
            pipeline.receive(*notification(i))
        first.callback(None)
        self.assertEqual(len(sent), 5000)

    def test_resultAnswerEscapes(self) -> None:
        """The result template escapes ids and addresses."""
        pipeline, sent = self._pipeline(lambda n: None)
        iq = parseXml(
            "<iq type='set' id='a&apos;&lt;b' from='test@ya.ru/x&amp;y'>"
            "<query xmlns='yandex:push:disk'/></iq>"
        )
        pipeline.receive(iq, Notification.fromStanza(iq, 0.0))
        [answer] = [parseXml(x) for x in sent]
        self.assertEqual((answer["id"], answer["to"]), ("a'<b", "test@ya.ru/x&y"))

    @given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"])))
    def test_answerQuotesAsQuoteattr(self, value: str) -> None:
        """Ids and addresses are quoted exactly as quoteattr quotes them."""
        self.assertEqual(_quoteAttribute(value), quoteattr(value))

    def test_deliverMayAnswerWithNone(self) -> None:
        """A receiver that returns None has taken the push: it is acked."""
        pipeline, sent = self._pipeline(lambda n: None)
        pipeline.receive(*notification(1))
        self.assertEqual([parseXml(x)["type"] for x in sent], ["result"])
        self.assertEqual(pipeline.waiting, 0)


class FanOutTests(SynchronousTestCase):
    def test_oneReceiverNoDeferred(self) -> None:
        """With one receiver its own result is returned as it is."""
        self.assertIsNone(fanOut([lambda n: None], notification(1)[1]))

    def test_allSynchronous(self) -> None:
        """Receivers that all take it at once give None."""
        seen: list[str] = []
        self.assertIsNone(fanOut([seen.append, seen.append], "n"))  # type: ignore[list-item]
        self.assertEqual(seen, ["n", "n"])

    def test_oneFailingFailsAll(self) -> None:
        """A receiver that raises fails the whole hand-off."""

        def boom(n: object) -> None:
            raise OSError("disk full")

        d = fanOut([lambda n: None, boom], notification(1)[1])
        self.failureResultOf(d, OSError)
