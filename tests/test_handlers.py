"""
Tests for yadiskpush.handlers: version, ping, the fallback answer, and the
guard that answers every IQ request exactly once.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from twisted.words.protocols.jabber.xmlstream import XmlStream, toResponse
from twisted.words.xish import domish
from wokkel.generic import FallbackHandler, parseXml
from wokkel.subprotocols import XMPPHandler

from tests.support import (
    SERVER_HEADER,
    FakeAuthenticator,
    connectedStream,
    sentElements,
)
from yadiskpush.handlers.guard import answersExactlyOnce, errorAnswer, sendAnswer
from yadiskpush.handlers.ping import PingHandler
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

    def test_plainXmlStream(self) -> None:
        """On a stream without routes (Twisted's own) pings are still answered."""
        xs = XmlStream(FakeAuthenticator())
        transport = StringTransport()
        xs.makeConnection(transport)
        xs.dataReceived(SERVER_HEADER)
        transport.clear()
        for handler in (PingHandler(), VersionHandler("n", "1", os="Linux 6")):
            handler.makeConnection(xs)
            handler.connectionInitialized()
        xs.dataReceived(PING + VERSION_QUERY)
        replies = sentElements(transport.value())
        self.assertEqual(
            [(r["type"], r["id"]) for r in replies],
            [("result", "ping_1"), ("result", "ask_version")],
        )

    def test_payloadNotFirstAnsweredByFallback(self) -> None:
        """A ping payload after another child is not taken: the fallback refuses."""
        xs, transport = attach(PingHandler(), FallbackHandler())
        xs.dataReceived(
            b"<iq from='ya.ru' type='get' id='p2'><x xmlns='urn:example'/>"
            b"<ping xmlns='urn:xmpp:ping'/></iq>"
        )
        [reply] = sentElements(transport.value())
        self.assertEqual((reply["type"], reply["id"]), ("error", "p2"))


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


PROBE = b"<iq from='ya.ru' type='get' to='test@ya.ru/r' id='probe_1'><probe/></iq>"


class Probed(XMPPHandler):
    """
    Observes IQ gets carrying ``<probe/>``: answers first if asked to, then
    raises, or returns ``result`` (a Deferred) if one is given.
    """

    def __init__(
        self, answerFirst: bool = False, result: defer.Deferred[None] | None = None
    ) -> None:
        super().__init__()
        self.answerFirst = answerFirst
        self.result = result
        self.requests: list[domish.Element] = []

    def connectionInitialized(self) -> None:
        self.xmlstream.addObserver("/iq[@type='get']/probe", self.onProbe)

    @answersExactlyOnce
    def onProbe(self, iq: domish.Element) -> defer.Deferred[None] | None:
        self.requests.append(iq)
        if self.answerFirst:
            sendAnswer(self.xmlstream, iq, toResponse(iq, "result"))
        if self.result is not None:
            iq.handled = True
            return self.result
        raise ValueError("broken\nhandler")


class GuardTests(SynchronousTestCase):
    """Every IQ request gets exactly one answer, whatever its handler does."""

    def assertOneErrorAnswer(self, data: bytes, requestId: str) -> domish.Element:
        [reply] = sentElements(data)
        self.assertEqual(
            (reply["type"], reply["id"], reply["to"]), ("error", requestId, "ya.ru")
        )
        [error] = reply.elements()
        self.assertEqual(error.name, "error")
        self.assertEqual(error.firstChildElement().name, "internal-server-error")
        return reply

    def assertOneLogLine(self, events: list[dict[str, object]], *words: str) -> str:
        [event] = events
        self.assertEqual(event["log_level"], LogLevel.error)
        self.assertNotIn("log_failure", event)
        line = formatEvent(event)
        self.assertNotIn("\n", line)
        for word in words:
            self.assertIn(word, line)
        return line

    def test_raisingHandlerAnsweredWithError(self) -> None:
        """A handler that raises: one internal-server-error and one log line."""
        xs, transport = attach(Probed(), FallbackHandler())
        with capturedLogs() as events:
            xs.dataReceived(PROBE)
        self.assertOneErrorAnswer(transport.value(), "probe_1")
        self.assertOneLogLine(
            events, "Probed", "probe_1", "ValueError: broken handler", "onProbe"
        )

    def test_answeredThenRaisedNoSecondAnswer(self) -> None:
        """A handler that answered and then raised: no second answer."""
        xs, transport = attach(Probed(answerFirst=True), FallbackHandler())
        with capturedLogs() as events:
            xs.dataReceived(PROBE)
        self.assertEqual(
            [(e["type"], e["id"]) for e in sentElements(transport.value())],
            [("result", "probe_1")],
        )
        self.assertOneLogLine(events, "after answering", "ValueError")

    def test_failedDeferredAnsweredWithError(self) -> None:
        """A returned Deferred that fails gets the request an error answer then."""
        result: defer.Deferred[None] = defer.Deferred()
        xs, transport = attach(Probed(result=result), FallbackHandler())
        xs.dataReceived(PROBE)
        self.assertEqual(transport.value(), b"")
        with capturedLogs() as events:
            result.errback(KeyError("lost"))
        self.assertOneErrorAnswer(transport.value(), "probe_1")
        self.assertOneLogLine(events, "KeyError")

    def test_noLateAnswerAfterError(self) -> None:
        """An answer attempted after the error answer is not sent."""
        handler = Probed()
        xs, transport = attach(handler)
        with capturedLogs():
            xs.dataReceived(PROBE)
        transport.clear()
        [iq] = handler.requests
        self.assertFalse(sendAnswer(xs, iq, toResponse(iq, "result")))
        self.assertEqual(transport.value(), b"")

    def test_sendAnswerOnce(self) -> None:
        """sendAnswer sends the first answer only, and marks the request handled."""
        xs, transport = attach()
        iq = parseXml(PING)
        self.assertTrue(sendAnswer(xs, iq, toResponse(iq, "result")))
        self.assertFalse(sendAnswer(xs, iq, toResponse(iq, "error")))
        self.assertEqual(
            [e["type"] for e in sentElements(transport.value())], ["result"]
        )
        self.assertTrue(iq.handled)

    def test_sendAnswerText(self) -> None:
        """An answer given as XML text counts as the one answer too."""
        xs, transport = attach()
        iq = parseXml(PING)
        self.assertTrue(sendAnswer(xs, iq, "<iq type='result' id='ping_1'/>"))
        self.assertFalse(sendAnswer(xs, iq, toResponse(iq, "result")))
        self.assertEqual(
            [(e["type"], e["id"]) for e in sentElements(transport.value())],
            [("result", "ping_1")],
        )

    def test_nothingAfterFooter(self) -> None:
        """After our </stream:stream> no answer is sent."""
        xs, transport = attach()
        xs.sendFooter()
        transport.clear()
        iq = parseXml(PING)
        self.assertFalse(sendAnswer(xs, iq, toResponse(iq, "result")))
        self.assertEqual(transport.value(), b"")

    def test_childNamedLikeTheFlag(self) -> None:
        """A request whose child is named like the guard's flag is still answered."""
        xs, transport = attach(Probed())
        with capturedLogs():
            xs.dataReceived(
                b"<iq from='ya.ru' type='get' id='probe_2'><probe/>"
                b"<_yadiskpushAnswered/></iq>"
            )
        self.assertOneErrorAnswer(transport.value(), "probe_2")

    def test_deepRequestErrorWithoutEcho(self) -> None:
        """A 5,000-deep request is refused without echoing its payload."""
        xs, transport = attach(Probed(), FallbackHandler())
        deep = b"<a>" * 5000 + b"</a>" * 5000
        with capturedLogs() as events:
            xs.dataReceived(
                b"<iq from='ya.ru' type='get' id='probe_3'><probe>%s</probe></iq>"
                % deep
            )
        self.assertOneErrorAnswer(transport.value(), "probe_3")
        self.assertLess(len(transport.value()), 500)
        self.assertOneLogLine(events, "ValueError")

    def test_errorAnswerCarriesNoPayload(self) -> None:
        """errorAnswer addresses the answer back and holds only the error."""
        iq = parseXml(PING)
        reply = errorAnswer(iq, "internal-server-error")
        self.assertEqual(
            (reply["type"], reply["id"], reply["to"], reply["from"]),
            ("error", "ping_1", "ya.ru", "test@ya.ru/r"),
        )
        [error] = reply.elements()
        self.assertEqual(error["type"], "wait")
        self.assertIsNone(reply.ping)

    def test_versionThatCannotBeSentRefused(self) -> None:
        """A version answer that cannot be serialized becomes one error answer."""
        handler = VersionHandler("yadiskpush", 3, os="Linux 6")  # type: ignore[arg-type]
        xs, transport = attach(handler, FallbackHandler())
        with capturedLogs() as events:
            xs.dataReceived(VERSION_QUERY)
        self.assertOneErrorAnswer(transport.value(), "ask_version")
        self.assertOneLogLine(events, "VersionHandler", "ask_version")

    def test_pingWhoseAnswerFailsRefused(self) -> None:
        """A ping whose answer fails to send gets one error answer instead."""
        xs, transport = attach(PingHandler(), FallbackHandler())
        send = xs.send
        calls: list[object] = []

        def failOnce(obj: object) -> None:
            calls.append(obj)
            if len(calls) == 1:
                raise OSError("no buffer space")
            send(obj)

        self.patch(xs, "send", failOnce)
        with capturedLogs() as events:
            xs.dataReceived(PING)
        self.assertOneErrorAnswer(transport.value(), "ping_1")
        self.assertOneLogLine(events, "PingHandler", "OSError: no buffer space")
