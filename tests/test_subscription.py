"""Tests for yadiskpush.handlers.subscription: subscribe once per session."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.handlerstubs import managedStream
from tests.support import sentElements
from yadiskpush.errors import SubscriptionFailed
from yadiskpush.handlers.subscription import SUBSCRIBED_EVENT, SubscriptionHandler


class SubscriptionTests(SynchronousTestCase):
    def _stream(self, clock: Clock):  # type: ignore[no-untyped-def]
        xs, transport, failures = managedStream(clock, SubscriptionHandler(timeout=30))
        subscribed: list[object] = []
        xs.addObserver(SUBSCRIBED_EVENT, subscribed.append)
        [iq] = sentElements(transport.value())
        return xs, iq, subscribed, failures

    def test_sendsToBareJID(self) -> None:
        """The subscription is an IQ set with <s xmlns='yandex:push:disk'/>."""
        xs, iq, subscribed, failures = self._stream(Clock())
        self.assertEqual((iq["type"], iq["to"]), ("set", "test@ya.ru"))
        self.assertEqual((iq.s.uri, iq.s.name), ("yandex:push:disk", "s"))
        xs.dataReceived(b"<iq type='result' id='%s'/>" % iq["id"].encode())
        self.assertEqual((subscribed, failures), ([xs], []))

    def test_errorEndsTheConnection(self) -> None:
        """An error answer ends the connection with SubscriptionFailed."""
        xs, iq, subscribed, failures = self._stream(Clock())
        xs.dataReceived(
            b"<iq type='error' id='%s'><error type='cancel'><not-allowed "
            b"xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
            % iq["id"].encode()
        )
        [failure] = failures
        self.assertIsInstance(failure, SubscriptionFailed)
        self.assertEqual(failure.condition, "not-allowed")
        self.assertEqual(subscribed, [])

    def test_timeout(self) -> None:
        """No answer within the timeout ends the connection too."""
        clock = Clock()
        xs, iq, subscribed, failures = self._stream(clock)
        clock.advance(29)
        self.assertEqual(failures, [])
        clock.advance(1)
        [failure] = failures
        self.assertIsInstance(failure, SubscriptionFailed)
        self.assertIn("no answer within 30 s", str(failure))
