"""Tests for yadiskpush.connection.compression: the zlib layer and the initializer."""

from __future__ import annotations

import zlib

from twisted.trial.unittest import SynchronousTestCase
from twisted.words.protocols.jabber.xmlstream import Reset
from twisted.words.xish import domish

from tests.support import SERVER_HEADER, connectedStream, sentElements
from yadiskpush.connection.compression import (
    NS_COMPRESS_FEATURE,
    CompressingTransport,
    CompressionInitiatingInitializer,
    Deflater,
    Inflater,
)


def zlibFeature(*methods: str) -> domish.Element:
    feature = domish.Element((NS_COMPRESS_FEATURE, "compression"))
    for method in methods:
        feature.addElement("method", content=method)
    return feature


class LayerTests(SynchronousTestCase):
    def test_roundTripByteByByte(self) -> None:
        """Data deflated in writes and fed back one byte at a time is intact."""
        deflater, inflater = Deflater(), Inflater()
        original = [b"<iq id='%d'>%s</iq>" % (i, b"x" * i) for i in range(50)]
        wire = b"".join(deflater.deflate(chunk) for chunk in original)
        out = b"".join(
            b"".join(inflater.inflate(wire[i : i + 1])) for i in range(len(wire))
        )
        self.assertEqual(out, b"".join(original))

    def test_syncFlushPerWrite(self) -> None:
        """Each write is decodable on its own: nothing waits in zlib's buffer."""
        deflater, inflater = Deflater(), Inflater()
        first = deflater.deflate(b"<a/>")
        self.assertEqual(b"".join(inflater.inflate(first)), b"<a/>")

    def test_smallWindowStillCompressesPushes(self) -> None:
        """
        The deflate state is small (a 1 KiB window, said in the zlib header)
        and a push after a similar push still shrinks to under a quarter.
        """
        push = (
            b"<iq type='set' id='%d' from='ya.ru'><query xmlns='yandex:push:disk'"
            b" t='diff' uid='123456789' old='%d' new='%d'><op type='new' "
            b"key='/disk/photos/IMG_%04d.jpg' resource_type='file' size='%d'/>"
            b"</query></iq>"
        )
        deflater = Deflater()
        first = deflater.deflate(push % (1, 1, 2, 1, 1000))
        self.assertEqual(first[0] >> 4, 10 - 8)
        second = push % (2, 2, 3, 2, 2000)
        self.assertLess(len(deflater.deflate(second)), len(second) / 4)

    def test_inflateIsBounded(self) -> None:
        """A small compressed bomb comes out in bounded pieces, not at once."""
        bomb = zlib.compress(b"a" * (10 * 1024 * 1024))
        sizes = [len(p) for p in Inflater().inflate(bomb)]
        self.assertEqual(sum(sizes), 10 * 1024 * 1024)
        self.assertLessEqual(max(sizes), 64 * 1024)

    def test_corruptInputRaises(self) -> None:
        """Garbage raises zlib.error for the stream to turn into a stream error."""
        with self.assertRaises(zlib.error):
            list(Inflater().inflate(b"not zlib at all"))

    def test_transportWrapperDelegates(self) -> None:
        """The compressing transport deflates writes and passes the rest on."""
        from twisted.internet.testing import StringTransport

        inner = StringTransport()
        wrapper = CompressingTransport(inner)
        wrapper.write(b"<a/>")
        wrapper.writeSequence([b"<b/>", b"<c/>"])
        self.assertEqual(b"".join(Inflater().inflate(inner.value())), b"<a/><b/><c/>")
        wrapper.loseConnection()
        self.assertTrue(inner.disconnecting)


class InitializerTests(SynchronousTestCase):
    def _negotiate(self):  # type: ignore[no-untyped-def]
        xs, transport = connectedStream()
        xs.features = {(NS_COMPRESS_FEATURE, "compression"): zlibFeature("zlib")}
        d = CompressionInitiatingInitializer(xs, wanted=True).initialize()
        [request] = sentElements(transport.value())
        self.assertEqual(request.name, "compress")
        self.assertEqual(str(request.method), "zlib")
        transport.clear()
        xs.dataReceived(b"<compressed xmlns='http://jabber.org/protocol/compress'/>")
        self.assertIs(self.successResultOf(d), Reset)
        return xs, transport

    def test_notWantedNotRequested(self) -> None:
        """Without --compress nothing is sent even when the server offers zlib."""
        xs, transport = connectedStream()
        xs.features = {(NS_COMPRESS_FEATURE, "compression"): zlibFeature("zlib")}
        self.assertIsNone(CompressionInitiatingInitializer(xs, False).initialize())
        self.assertEqual(transport.value(), b"")

    def test_otherMethodsOnly(self) -> None:
        """A server offering only lzw gets no request."""
        xs, transport = connectedStream()
        xs.features = {(NS_COMPRESS_FEATURE, "compression"): zlibFeature("lzw")}
        self.assertIsNone(CompressionInitiatingInitializer(xs, True).initialize())
        self.assertEqual(transport.value(), b"")

    def test_headerResentCompressed(self) -> None:
        """After <compressed/> the new stream header goes out deflated."""
        xs, transport = self._negotiate()
        plain = b"".join(Inflater().inflate(transport.value()))
        self.assertTrue(plain.startswith(b"<stream:stream"), plain)

    def test_compressedInputSplitAcrossReads(self) -> None:
        """A compressed stanza split across reads is parsed once, whole."""
        xs, transport = self._negotiate()
        received = []
        xs.addObserver("/iq", received.append)
        deflater = Deflater()
        wire = deflater.deflate(SERVER_HEADER) + deflater.deflate(
            b"<iq type='get' id='ping_1'><ping xmlns='urn:xmpp:ping'/></iq>"
        )
        for i in range(len(wire)):
            xs.dataReceived(wire[i : i + 1])
        self.assertEqual([iq["id"] for iq in received], ["ping_1"])

    def test_trafficLogShowsXMLNotZlib(self) -> None:
        """With compression on, the traffic log gets the inflated XML."""
        xs, transport = self._negotiate()
        logged: list[bytes] = []
        xs.rawDataInFn = logged.append
        deflater = Deflater()
        stanza = b"<iq type='get' id='ping_1'><ping xmlns='urn:xmpp:ping'/></iq>"
        xs.dataReceived(deflater.deflate(SERVER_HEADER) + deflater.deflate(stanza))
        self.assertEqual(b"".join(logged), SERVER_HEADER + stanza)

    def test_surviveStreamRestart(self) -> None:
        """After a later stream restart (SASL) zlib goes on in both directions."""
        xs, transport = self._negotiate()
        deflater = Deflater()
        xs.dataReceived(deflater.deflate(SERVER_HEADER))
        # The SASL success restart: same zlib contexts, new XML document.
        xs.reset()
        xs.sendHeader()
        xs.dataReceived(deflater.deflate(SERVER_HEADER))
        received = []
        xs.addObserver("/iq", received.append)
        xs.dataReceived(deflater.deflate(b"<iq type='result' id='bind_1'/>"))
        self.assertEqual([iq["id"] for iq in received], ["bind_1"])
        plain = b"".join(Inflater().inflate(transport.value()))
        self.assertEqual(plain.count(b"<stream:stream"), 2)

    def test_alreadyCompressedIsNoop(self) -> None:
        """The second initializer (after SASL) does nothing if zlib is on."""
        xs, transport = self._negotiate()
        transport.clear()
        xs.features = {(NS_COMPRESS_FEATURE, "compression"): zlibFeature("zlib")}
        self.assertIsNone(CompressionInitiatingInitializer(xs, True).initialize())
        self.assertEqual(transport.value(), b"")

    def test_failureContinuesUncompressed(self) -> None:
        """A <failure/> answer lets the chain go on without compression."""
        xs, transport = connectedStream()
        xs.features = {(NS_COMPRESS_FEATURE, "compression"): zlibFeature("zlib")}
        d = CompressionInitiatingInitializer(xs, wanted=True).initialize()
        xs.dataReceived(
            b"<failure xmlns='http://jabber.org/protocol/compress'>"
            b"<setup-failed/></failure>"
        )
        self.assertIsNone(self.successResultOf(d))
        self.assertIsNone(xs.inflater)
