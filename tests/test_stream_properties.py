"""
Property-based tests: random and mutated byte streams fed to the client's
stream parsing never raise out of ``dataReceived`` and never buffer more than
the stanza limit allows.
"""

from __future__ import annotations

import zlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from tests.support import SERVER_HEADER, watchedStream
from yadiskpush.connection.compression import Deflater, Inflater
from yadiskpush.connection.stream import PushXmlStream

LIMIT = 8192

VALID = (
    SERVER_HEADER
    + b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
    b"<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/></stream:features>"
    b"<iq type='get' id='ping_1' from='ya.ru'><ping xmlns='urn:xmpp:ping'/></iq>"
    b"<iq type='set' id='p' from='t@ya.ru'><query xmlns='yandex:push:disk' "
    b"t='diff' uid='1'><op kind='new'>/a &amp; b</op></query></iq>"
    b"</stream:stream>"
)


def newStream() -> tuple[PushXmlStream, StringTransport, list[object]]:
    return watchedStream(LIMIT)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


def assertBounded(test: SynchronousTestCase, xs: PushXmlStream) -> None:
    """Buffered, unparsed input stays within one stanza limit plus a slice."""
    stream = xs.stream
    if stream is not None and xs.violation is None:
        test.assertLessEqual(stream.stanzaSize, LIMIT + 4096)


mutations = st.lists(
    st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=20
)


class StreamPropertyTests(SynchronousTestCase):
    @settings(
        max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(
        data=st.binary(max_size=4096), cuts=st.lists(st.integers(0, 5000), max_size=30)
    )
    def test_randomBytes(self, data: bytes, cuts: list[int]) -> None:
        """Random bytes after a valid header: no exception, bounded buffer."""
        xs, transport, errors = newStream()
        for piece in chunked(SERVER_HEADER + data, cuts):
            xs.dataReceived(piece)
            assertBounded(self, xs)
        if xs.violation is not None:
            self.assertEqual(len(errors), 1)
            self.assertTrue(transport.disconnecting)

    @settings(max_examples=300, deadline=None)
    @given(changes=mutations, cuts=st.lists(st.integers(0, 2000), max_size=30))
    def test_mutatedStream(
        self, changes: list[tuple[int, int]], cuts: list[int]
    ) -> None:
        """A valid stream with bytes flipped: no exception, at most one error."""
        data = bytearray(VALID)
        for index, value in changes:
            data[index] = value
        xs, transport, errors = newStream()
        for piece in chunked(bytes(data), cuts):
            xs.dataReceived(piece)
            assertBounded(self, xs)
        self.assertLessEqual(len(errors), 1)

    @settings(max_examples=100, deadline=None)
    @given(
        size=st.integers(LIMIT + 5000, 4 * LIMIT),
        cuts=st.lists(st.integers(0, 10**6), max_size=20),
    )
    def test_oversizedAlwaysCaught(self, size: int, cuts: list[int]) -> None:
        """A stanza well over the limit is refused however it is split."""
        xs, transport, errors = newStream()
        data = SERVER_HEADER + b"<iq>" + b"a" * size + b"</iq>"
        for piece in chunked(data, cuts):
            xs.dataReceived(piece)
        self.assertEqual(xs.violation.condition, "policy-violation")

    @settings(max_examples=100, deadline=None)
    @given(changes=mutations, cuts=st.lists(st.integers(0, 2000), max_size=20))
    def test_mutatedCompressedStream(
        self, changes: list[tuple[int, int]], cuts: list[int]
    ) -> None:
        """Corrupt zlib input ends in a stream error, never an exception."""
        wire = bytearray(Deflater().deflate(VALID))
        for index, value in changes:
            wire[index % len(wire)] = value
        xs, transport, errors = newStream()
        xs.inflater = Inflater()
        for piece in chunked(bytes(wire), cuts):
            xs.dataReceived(piece)
            assertBounded(self, xs)
        self.assertLessEqual(len(errors), 1)

    def test_compressionBombBounded(self) -> None:
        """A tiny zlib bomb is cut off at the stanza limit, not inflated whole."""
        xs, transport, errors = newStream()
        xs.dataReceived(SERVER_HEADER)
        xs.inflater = Inflater()
        bomb = zlib.compress(b"<iq>" + b"a" * (50 * 1024 * 1024))
        xs.dataReceived(bomb)
        self.assertEqual(xs.violation.condition, "policy-violation")
