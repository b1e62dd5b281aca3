"""
XEP-0138 stream compression: the zlib layer and the client's initializer.

The layer is used by both ends (the client and the local server). Outgoing
data is compressed with ``Z_SYNC_FLUSH`` after every write, so each stanza
reaches the peer at once; incoming data is inflated in bounded pieces, so a
small compressed chunk cannot expand into unbounded memory before the
parser's stanza size limit sees it. Once compression is on, it stays on
across later stream restarts (after SASL), as XEP-0138 requires.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any

from twisted.internet import defer
from twisted.words.protocols.jabber import xmlstream
from twisted.words.xish import domish

NS_COMPRESS_FEATURE = "http://jabber.org/features/compress"
NS_COMPRESS_PROTOCOL = "http://jabber.org/protocol/compress"
ZLIB_METHOD = "zlib"

# How much inflated data one step may produce; the parser's size limit then
# applies before the next step runs.
INFLATE_STEP = 64 * 1024


# Our own deflate state: a 1 KiB window and a small hash table, about 12 KiB
# per connection, where zlib's defaults take about 260 KiB (and a 4 KiB window
# with memLevel 5, 38 KiB). Stanzas are short and flushed one by one, and the
# one before is what the next repeats: acks, pings and pushes compress as
# well as with the defaults (a push after a push to about a tenth); a 512-byte
# window would lose the previous push. Any inflater reads this (the window
# size is in the zlib header).
DEFLATE_WINDOW_BITS = 10
DEFLATE_MEMORY_LEVEL = 2


class Deflater:
    """Compresses a stream of writes, flushing after each one."""

    def __init__(self) -> None:
        self._compressor = zlib.compressobj(
            6, zlib.DEFLATED, DEFLATE_WINDOW_BITS, DEFLATE_MEMORY_LEVEL
        )

    def deflate(self, data: bytes) -> bytes:
        return self._compressor.compress(data) + self._compressor.flush(
            zlib.Z_SYNC_FLUSH
        )


class Inflater:
    """
    Decompresses a zlib stream that arrives in arbitrary pieces.

    :raises zlib.error: on corrupt input (from :meth:`inflate`).
    """

    def __init__(self) -> None:
        self._decompressor = zlib.decompressobj()

    def inflate(self, data: bytes) -> Iterator[bytes]:
        """Yield the plain data in pieces of at most ``INFLATE_STEP`` bytes."""
        pending = data
        while True:
            piece = self._decompressor.decompress(pending, INFLATE_STEP)
            if piece:
                yield piece
            pending = self._decompressor.unconsumed_tail
            if not pending:
                return


class CompressingTransport:
    """
    A transport wrapper that deflates every write and passes everything else
    (``loseConnection``, ``getPeer``, ``abortConnection``...) through.
    """

    def __init__(self, transport: Any, deflater: Deflater | None = None) -> None:
        self.wrappedTransport = transport
        self._deflater = deflater or Deflater()

    def write(self, data: bytes) -> None:
        self.wrappedTransport.write(self._deflater.deflate(data))

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrappedTransport, name)


def startCompression(xs: xmlstream.XmlStream) -> None:
    """
    Switch an XML stream to zlib in both directions and reset its parser.

    The stream must read ``xs.inflater`` in ``dataReceived`` (see
    :class:`yadiskpush.connection.stream.PushXmlStream`); both ends call this.
    """
    xs.transport = CompressingTransport(xs.transport)
    xs.inflater = Inflater()
    xs.reset()


def offersZlib(feature: domish.Element) -> bool:
    """Whether a ``<compression/>`` stream feature lists the zlib method."""
    return any(
        e.name == "method" and str(e).strip() == ZLIB_METHOD for e in feature.elements()
    )


class CompressionFailed(Exception):
    """The server answered ``<compress/>`` with ``<failure/>``."""

    def __init__(self, condition: str | None) -> None:
        super().__init__(f"the server refused compression ({condition})")
        self.condition = condition


class CompressionInitiatingInitializer(xmlstream.BaseFeatureInitiatingInitializer):
    """
    Negotiates zlib compression when the server offers it.

    Modelled on Twisted's ``TLSInitiatingInitializer``: send the request,
    wait for ``<compressed/>``, restart the stream over the new layer and
    return ``Reset``. It is placed both before and after SASL in the
    initializer list, because the vendor offers compression before
    authentication and XEP-0170 servers only after; whichever runs first
    wins, the other sees it is already on. A ``<failure/>`` is not fatal:
    the stream goes on uncompressed.
    """

    feature = (NS_COMPRESS_FEATURE, "compression")

    def __init__(self, xs: xmlstream.XmlStream, wanted: bool) -> None:
        super().__init__(xs, required=False)
        self.wanted = wanted
        self._deferred: defer.Deferred[object] | None = None

    def start(self) -> defer.Deferred[object] | None:
        xs = self.xmlstream
        if not self.wanted or getattr(xs, "inflater", None) is not None:
            return None
        if not offersZlib(xs.features[self.feature]):
            return None
        self._deferred = defer.Deferred()
        xs.addOnetimeObserver(
            f"/compressed[@xmlns='{NS_COMPRESS_PROTOCOL}']", self._onCompressed
        )
        xs.addOnetimeObserver(
            f"/failure[@xmlns='{NS_COMPRESS_PROTOCOL}']", self._onFailure
        )
        request = domish.Element((NS_COMPRESS_PROTOCOL, "compress"))
        request.addElement("method", content=ZLIB_METHOD)
        xs.send(request)
        return self._deferred

    def _removeObservers(self) -> None:
        xs = self.xmlstream
        xs.removeObserver(
            f"/compressed[@xmlns='{NS_COMPRESS_PROTOCOL}']", self._onCompressed
        )
        xs.removeObserver(f"/failure[@xmlns='{NS_COMPRESS_PROTOCOL}']", self._onFailure)

    def _onCompressed(self, element: domish.Element) -> None:
        self._removeObservers()
        startCompression(self.xmlstream)
        self.xmlstream.dispatch(self.xmlstream, COMPRESSION_STARTED_EVENT)
        self.xmlstream.sendHeader()
        assert self._deferred is not None
        self._deferred.callback(xmlstream.Reset)

    def _onFailure(self, element: domish.Element) -> None:
        self._removeObservers()
        child = element.firstChildElement()
        self.xmlstream.dispatch(
            CompressionFailed(child.name if child is not None else None),
            COMPRESSION_REFUSED_EVENT,
        )
        assert self._deferred is not None
        self._deferred.callback(None)


COMPRESSION_STARTED_EVENT = "//event/yadiskpush/compression-started"
COMPRESSION_REFUSED_EVENT = "//event/yadiskpush/compression-refused"
