"""Tests for yadiskpush.connection.stream: restricted XML, size limits, redaction."""

from __future__ import annotations

from typing import Any

from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from twisted.words.xish import domish

from tests.support import SERVER_HEADER, connectedStream, watchedStream
from yadiskpush.connection.stream import PushXmlStream, redactTraffic
from yadiskpush.errors import ProtocolViolation


def feed(data: bytes, maxStanzaSize: int = 4096):  # type: ignore[no-untyped-def]
    """A fresh client stream fed ``data``; returns (stream, transport, errors)."""
    xs, transport, errors = watchedStream(maxStanzaSize)
    xs.dataReceived(data)
    return xs, transport, errors


class HostileInputTests(SynchronousTestCase):
    def assertViolation(self, data: bytes, condition: str, **kw: int) -> None:
        xs, transport, errors = feed(data, **kw)
        self.assertIsInstance(xs.violation, ProtocolViolation)
        self.assertEqual(xs.violation.condition, condition)
        [failure] = errors
        self.assertIsInstance(failure.value, ProtocolViolation)
        sent = transport.value()
        self.assertIn(condition.encode(), sent)
        self.assertIn(b"urn:ietf:params:xml:ns:xmpp-streams", sent)
        self.assertTrue(sent.endswith(b"</stream:stream>"), sent)
        self.assertTrue(transport.disconnecting)

    def test_doctypeRefused(self) -> None:
        """A DOCTYPE is refused with restricted-xml before any entity expands."""
        self.assertViolation(
            b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'aaaaaaaaaa'>"
            b"<!ENTITY b '&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;'>]>" + SERVER_HEADER,
            "restricted-xml",
        )

    def test_entityInsideStreamRefused(self) -> None:
        """An undefined entity reference is malformed XML, not an expansion."""
        self.assertViolation(SERVER_HEADER + b"<iq>&xxe;</iq>", "not-well-formed")

    def test_processingInstructionRefused(self) -> None:
        """A processing instruction inside the stream is restricted XML."""
        self.assertViolation(SERVER_HEADER + b"<?evil x?>", "restricted-xml")

    def test_commentRefused(self) -> None:
        """RFC 6120 forbids comments in the stream."""
        self.assertViolation(SERVER_HEADER + b"<!-- hi -->", "restricted-xml")

    def test_malformed(self) -> None:
        """Mismatched tags close the stream with not-well-formed."""
        self.assertViolation(SERVER_HEADER + b"<iq></message>", "not-well-formed")

    def test_invalidUTF8(self) -> None:
        """Bytes that are not UTF-8 close the stream with not-well-formed."""
        self.assertViolation(SERVER_HEADER + b"<iq id='\xff\xfe'/>", "not-well-formed")

    def test_oversizedStanza(self) -> None:
        """A stanza over the limit closes the stream with policy-violation."""
        self.assertViolation(
            SERVER_HEADER + b"<iq>" + b"x" * 5000 + b"</iq>", "policy-violation"
        )

    def test_endlessElement(self) -> None:
        """An element that never ends is cut off at the limit, fed in pieces."""
        xs, transport, errors = feed(SERVER_HEADER + b"<iq>")
        for _ in range(10):
            xs.dataReceived(b"<a>" * 100)
        self.assertEqual(xs.violation.condition, "policy-violation")

    def test_endlessHeader(self) -> None:
        """A stream header with endless attributes is cut off too."""
        xs, transport, errors = feed(b"<stream:stream a='" + b"x" * 5000)
        self.assertEqual(xs.violation.condition, "policy-violation")

    def test_inputIgnoredAfterViolation(self) -> None:
        """After a violation nothing more is parsed or dispatched."""
        xs, transport, errors = feed(SERVER_HEADER + b"<iq></message>")
        seen: list[object] = []
        xs.addObserver("/iq", seen.append)
        xs.dataReceived(b"<iq/>")
        self.assertEqual((seen, len(errors)), ([], 1))

    def test_manySmallStanzasFine(self) -> None:
        """The limit is per stanza: many small stanzas pass."""
        xs, transport, errors = feed(SERVER_HEADER)
        seen: list[object] = []
        xs.addObserver("/iq", seen.append)
        for i in range(200):
            xs.dataReceived(b"<iq id='%d'>%s</iq>" % (i, b"y" * 100))
        self.assertEqual((len(seen), errors), (200, []))

    def test_serverCloseAnsweredOnce(self) -> None:
        """The server's </stream:stream> is answered with one of ours."""
        xs, transport = connectedStream()
        xs.sendFooter()
        xs.dataReceived(b"</stream:stream>")
        self.assertEqual(transport.value().count(b"</stream:stream>"), 1)
        self.assertTrue(transport.disconnecting)


class RedactionTests(SynchronousTestCase):
    def test_authPayloadHidden(self) -> None:
        """The SASL auth payload is replaced in traffic logs."""
        line = redactTraffic(
            b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' "
            b"mechanism='X-YANDEX-OAUTH'>dGVzdABzZWNyZXQ=</auth>"
        )
        self.assertNotIn("dGVzdABzZWNyZXQ", line)
        self.assertIn("[redacted]", line)
        self.assertIn("X-YANDEX-OAUTH", line)

    def test_secretAnywhereHidden(self) -> None:
        """A secret echoed anywhere in the data is replaced too."""
        line = redactTraffic(b"<message>token=s3cr3t</message>", [b"s3cr3t"])
        self.assertNotIn("s3cr3t", line)


def resettingOnProceed():  # type: ignore[no-untyped-def]
    """A stream that resets at <proceed/>, as STARTTLS does, and what it sees."""
    xs, transport = connectedStream()
    seen: list[object] = []
    xs.addObserver("/iq", seen.append)
    xs.addOnetimeObserver("/proceed", lambda _: xs.reset())
    return xs, seen


class StartTLSInjectionTests(SynchronousTestCase):
    def test_bytesAfterResetDropped(self) -> None:
        """Stanzas sent in clear after <proceed/> in the same read are ignored."""
        xs, seen = resettingOnProceed()
        xs.dataReceived(
            b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
            b"<iq type='set' id='injected'/>"
        )
        xs.dataReceived(SERVER_HEADER + b"<iq type='get' id='real'/>")
        self.assertEqual([iq["id"] for iq in seen], ["real"])

    def test_largeReadAfterResetDropped(self) -> None:
        """The rest of a read longer than one parse slice is dropped too."""
        xs, seen = resettingOnProceed()
        xs.dataReceived(
            b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
            + b" " * 100000
            + SERVER_HEADER
            + b"<iq type='set' id='injected'/>"
        )
        self.assertEqual(seen, [])


PUSH = (
    b"<iq type='set' id='p1' from='ya.ru'><query xmlns='yandex:push:disk' t='1'/></iq>"
)


class RouteTests(SynchronousTestCase):
    """routeStanzas: one kind of stanza straight to one handler."""

    def routed(self) -> tuple[PushXmlStream, list[Any], list[Any]]:
        """A stream routing pushes to a list, with an IQ-set observer beside."""
        xs, transport = connectedStream()
        routed: list[Any] = []
        observed: list[Any] = []
        xs.routeStanzas("iq", "set", "yandex:push:disk", routed.append)
        xs.addObserver("/iq[@type='set']", observed.append)
        return xs, routed, observed

    def test_routedNotDispatched(self) -> None:
        """A push goes to its route and to no XPath observer of its kind."""
        xs, routed, observed = self.routed()
        xs.dataReceived(PUSH)
        self.assertEqual(([e["id"] for e in routed], observed), (["p1"], []))

    def test_otherKindsDispatched(self) -> None:
        """Another type, another payload or no payload is dispatched as before."""
        xs, routed, observed = self.routed()
        xs.dataReceived(
            b"<iq type='get' id='g'><query xmlns='yandex:push:disk'/></iq>"
            b"<iq type='set' id='s'><x xmlns='urn:x'/></iq>"
            b"<iq type='set' id='e'/>"
        )
        self.assertEqual(([e["id"] for e in observed], routed), (["s", "e"], []))

    def test_firstChildElementDecides(self) -> None:
        """Text before the payload does not hide it from the route."""
        xs, routed, observed = self.routed()
        xs.dataReceived(
            b"<iq type='set' id='t'> <query xmlns='yandex:push:disk'/></iq>"
        )
        self.assertEqual([e["id"] for e in routed], ["t"])

    def test_everyStanzaObserversFirst(self) -> None:
        """Observers of every stanza see a routed one, by priority, first."""
        xs, routed, observed = self.routed()
        order: list[str] = []
        xs.addObserver("/*", lambda e, tag: order.append(tag), -5, "low")
        xs.addObserver("/*", lambda e, tag: order.append(tag), 100, tag="high")
        xs.routeStanzas(
            "iq", "set", "yandex:push:disk", lambda e: order.append("route")
        )
        xs.dataReceived(PUSH)
        self.assertEqual(order, ["high", "low", "route"])

    def test_removedObserverNoLongerSees(self) -> None:
        """removeObserver takes an every-stanza observer off routed stanzas too."""
        xs, routed, observed = self.routed()
        seen: list[Any] = []
        xs.addObserver("/*", seen.append)
        xs.removeObserver("/*", seen.append)
        xs.dataReceived(PUSH)
        self.assertEqual((seen, len(routed)), ([], 1))

    def test_failingRouteLogged(self) -> None:
        """A route that raises is logged; the stream reads on."""
        xs, transport = connectedStream()

        def boom(element: Any) -> None:
            raise ValueError("bad push")

        xs.routeStanzas("iq", "set", "yandex:push:disk", boom)
        seen: list[Any] = []
        xs.addObserver("/iq[@type='get']", seen.append)
        with capturedLogs() as events:
            xs.dataReceived(PUSH + b"<iq type='get' id='after'/>")
        self.assertEqual([e["id"] for e in seen], ["after"])
        [event] = [e for e in events if e.get("log_failure") is not None]
        event["log_failure"].trap(ValueError)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_countsEveryStanza(self) -> None:
        """stanzasReceived counts routed and dispatched stanzas alike."""
        xs, routed, observed = self.routed()
        xs.dataReceived(PUSH + b"<iq type='result' id='r'/>" + PUSH)
        self.assertEqual(xs.stanzasReceived, 3)

    def test_injectedPushAfterResetDropped(self) -> None:
        """A push injected in clear after <proceed/> never reaches its route."""
        xs, seen = resettingOnProceed()
        routed: list[Any] = []
        xs.routeStanzas("iq", "set", "yandex:push:disk", routed.append)
        xs.dataReceived(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>" + PUSH)
        self.assertEqual(routed, [])


class SendTests(SynchronousTestCase):
    """send() writes text as it is, and elements as Twisted does."""

    def test_textSentAsUTF8AndLogged(self) -> None:
        """Text goes to the transport as UTF-8, and to the traffic log."""
        xs, transport = connectedStream()
        logged: list[bytes] = []
        xs.rawDataOutFn = logged.append
        xs.send("<iq type='result' id='ф'/>")
        self.assertEqual(transport.value(), "<iq type='result' id='ф'/>".encode())
        self.assertEqual(logged, [transport.value()])

    def test_elementSerializedAsBefore(self) -> None:
        """An element is serialized in the stream's namespace, as Twisted does."""
        xs, transport = connectedStream()
        element = domish.Element(("jabber:client", "iq"))
        element["type"] = "get"
        xs.send(element)
        self.assertEqual(transport.value(), b"<iq type='get'/>")
