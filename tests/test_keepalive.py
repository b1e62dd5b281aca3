"""Tests for yadiskpush.handlers.keepalive and .writestall: dead links."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.handlerstubs import managedStream
from tests.support import sentElements
from yadiskpush.errors import ConnectionStalled, ServerStoppedReading
from yadiskpush.handlers.keepalive import KeepaliveHandler
from yadiskpush.handlers.writestall import WriteStallHandler

PING = (
    b"<iq from='ya.ru' type='get' to='test@ya.ru/r' id='ping_1'>"
    b"<ping xmlns='urn:xmpp:ping'/></iq>"
)


class KeepaliveTests(SynchronousTestCase):
    def _stream(self, clock: Clock):  # type: ignore[no-untyped-def]
        handler = KeepaliveHandler(lambda: "ya.ru", clock, 90, 20)
        xs, transport, dead = managedStream(clock, handler)
        return xs, transport, dead

    def test_pingsAfterIdle(self) -> None:
        """After the idle time a ping goes to the domain; an answer keeps it up."""
        clock = Clock()
        xs, transport, dead = self._stream(clock)
        clock.advance(89)
        self.assertEqual(transport.value(), b"")
        clock.advance(1)
        [ping] = sentElements(transport.value())
        self.assertEqual((ping["type"], ping["to"]), ("get", "ya.ru"))
        self.assertEqual(ping.ping.uri, "urn:xmpp:ping")
        xs.dataReceived(b"<iq type='result' id='%s'/>" % ping["id"].encode())
        clock.advance(60)
        self.assertEqual(dead, [])
        self.assertFalse(transport.disconnecting)

    def test_deadAfterNoAnswer(self) -> None:
        """No answer to the ping within its timeout ends a stalled link."""
        clock = Clock()
        xs, transport, dead = self._stream(clock)
        clock.advance(90)
        clock.advance(19)
        self.assertEqual(dead, [])
        clock.advance(1)
        [error] = dead
        self.assertIsInstance(error, ConnectionStalled)
        self.assertTrue(transport.disconnecting)

    def test_trafficPostponesPing(self) -> None:
        """Any stanza from the server counts as life: no ping is sent."""
        clock = Clock()
        xs, transport, dead = self._stream(clock)
        for _ in range(10):
            clock.advance(60)
            xs.dataReceived(PING)
        self.assertEqual(transport.value(), b"")

    def test_pingWithinOneAndAHalfIdleTimes(self) -> None:
        """After the last stanza, the ping comes within 90 to 135 s of silence."""
        clock = Clock()
        xs, transport, dead = self._stream(clock)
        clock.advance(1)
        xs.dataReceived(PING)
        transport.clear()
        clock.advance(89)
        self.assertEqual(transport.value(), b"")
        clock.advance(45)
        [ping] = sentElements(transport.value())
        self.assertEqual(ping.ping.uri, "urn:xmpp:ping")

    def test_oneTimerWhileBusy(self) -> None:
        """Stanzas do not schedule timers: one stays pending however busy."""
        clock = Clock()
        xs, transport, dead = self._stream(clock)
        for _ in range(100):
            xs.dataReceived(PING)
        self.assertEqual(len(clock.getDelayedCalls()), 1)


class WriteStallTests(SynchronousTestCase):
    def _stream(self, clock: Clock):  # type: ignore[no-untyped-def]
        handler = WriteStallHandler(clock, 20)
        xs, transport, failures = managedStream(clock, handler)
        return handler, xs, transport, failures

    def test_registersAsProducer(self) -> None:
        """The handler is the transport's streaming producer."""
        handler, xs, transport, failures = self._stream(Clock())
        self.assertIs(transport.producer, handler)
        self.assertTrue(transport.streaming)

    def test_stuckBufferEndsTheConnection(self) -> None:
        """A buffer full past the timeout ends the link; reading stops meanwhile."""
        clock = Clock()
        handler, xs, transport, failures = self._stream(clock)
        handler.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        clock.advance(19)
        self.assertEqual(failures, [])
        clock.advance(1)
        [error] = failures
        self.assertIsInstance(error, ServerStoppedReading)

    def test_drainedBufferKeepsTheConnection(self) -> None:
        """A buffer that drains in time resumes reading and ends nothing."""
        clock = Clock()
        handler, xs, transport, failures = self._stream(clock)
        handler.pauseProducing()
        clock.advance(10)
        handler.resumeProducing()
        clock.advance(60)
        self.assertEqual(failures, [])
        self.assertEqual(transport.producerState, "producing")
