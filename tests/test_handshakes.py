"""Tests for yadiskpush.connection.handshakes: the process-wide handshake limit."""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from yadiskpush.connection.handshakes import HandshakeGate


class HandshakeGateTests(SynchronousTestCase):
    def test_limit(self) -> None:
        """No more than the limit hold a slot; the rest wait."""
        gate = HandshakeGate(2)
        got = [gate.acquire() for _ in range(5)]
        fired = [d for d in got if d.called]
        self.assertEqual(len(fired), 2)
        self.assertEqual((gate.inFlight, gate.waiting), (2, 3))

    def test_firstComeFirstServed(self) -> None:
        """A released slot goes to the one that waited longest."""
        gate = HandshakeGate(1)
        order: list[int] = []
        releases = []
        for n in range(4):
            d = gate.acquire()
            d.addCallback(
                lambda release, n=n: (order.append(n), releases.append(release))
            )
        for _ in range(3):
            releases[len(order) - 1]()
        self.assertEqual(order, [0, 1, 2, 3])
        self.assertEqual(gate.mostInFlight, 1)

    def test_releaseTwiceIsHarmless(self) -> None:
        """A second release of the same slot frees nothing more."""
        gate = HandshakeGate(1)
        release = self.successResultOf(gate.acquire())
        waiting = [gate.acquire(), gate.acquire()]
        release()
        release()
        self.assertEqual([d.called for d in waiting], [True, False])
        self.assertEqual(gate.inFlight, 1)

    def test_cancelLeavesTheLine(self) -> None:
        """A cancelled wait neither holds nor receives a slot."""
        gate = HandshakeGate(1)
        release = self.successResultOf(gate.acquire())
        cancelled = gate.acquire()
        after = gate.acquire()
        cancelled.cancel()
        self.failureResultOf(cancelled, defer.CancelledError)
        release()
        self.assertTrue(after.called)
        self.assertEqual((gate.inFlight, gate.waiting), (1, 0))

    def test_limitAtLeastOne(self) -> None:
        """A limit below 1 is refused."""
        self.assertRaises(ValueError, HandshakeGate, 0)
