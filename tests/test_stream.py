"""Tests for yadiskpush.connection.stream: restricted XML, size limits, redaction."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.support import SERVER_HEADER, connectedStream, watchedStream
from yadiskpush.connection.stream import redactTraffic
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
