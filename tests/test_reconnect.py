"""Tests for yadiskpush.reconnect: backoff per failed session, floors, resets."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from yadiskpush.errors import ConnectFailed, StreamErrorReceived
from yadiskpush.reconnect import (
    HEALTHY_SESSION_SECONDS,
    MAX_CONSECUTIVE_CONFLICTS,
    ReconnectPolicy,
)


def doubling(attempt: int) -> float:
    return float(2 ** (attempt - 1))


class ReconnectPolicyTests(SynchronousTestCase):
    def test_ignoresClientServiceCount(self) -> None:
        """Delays grow per failed session even though ClientService says 1."""
        policy = ReconnectPolicy(backoff=doubling)
        self.assertEqual([policy(1) for _ in range(4)], [1.0, 2.0, 4.0, 8.0])

    def test_healthySessionResets(self) -> None:
        """A session that lasted long enough resets the backoff."""
        policy = ReconnectPolicy(backoff=doubling)
        policy(1), policy(1), policy(1)
        policy.sessionEnded(HEALTHY_SESSION_SECONDS)
        self.assertEqual(policy(1), 1.0)

    def test_shortSessionDoesNotReset(self) -> None:
        """A session that dropped at once still counts as a failure."""
        policy = ReconnectPolicy(backoff=doubling)
        policy(1), policy(1)
        policy.sessionEnded(1.0)
        self.assertEqual(policy(1), 4.0)

    def test_conflictFloor(self) -> None:
        """After a conflict the next delay is at least a minute, once."""
        policy = ReconnectPolicy(backoff=doubling)
        policy.recordFailure(StreamErrorReceived("conflict"))
        self.assertEqual(policy(1), 60.0)
        self.assertEqual(policy(1), 2.0)

    def test_conflictsExhausted(self) -> None:
        """Conflicts in a row are counted until the limit."""
        policy = ReconnectPolicy(backoff=doubling)
        for _ in range(MAX_CONSECUTIVE_CONFLICTS - 1):
            policy.recordFailure(StreamErrorReceived("conflict"))
        self.assertFalse(policy.conflictsExhausted)
        policy.recordFailure(StreamErrorReceived("conflict"))
        self.assertTrue(policy.conflictsExhausted)

    def test_otherErrorBreaksConflictRun(self) -> None:
        """Another error between conflicts starts the count again."""
        policy = ReconnectPolicy(backoff=doubling)
        policy.recordFailure(StreamErrorReceived("conflict"))
        policy.recordFailure(ConnectFailed("down"))
        policy.recordFailure(StreamErrorReceived("system-shutdown"))
        policy.recordFailure(StreamErrorReceived("conflict"))
        self.assertEqual(policy.consecutiveConflicts, 1)

    def test_redirectImmediate(self) -> None:
        """A redirect is followed at once, without counting as a failure."""
        policy = ReconnectPolicy(backoff=doubling)
        policy(1)
        policy.recordRedirect()
        self.assertLess(policy(1), 1.0)
        self.assertEqual(policy.failures, 1)

    def test_defaultHasJitterAndCap(self) -> None:
        """The default backoff is capped at five minutes."""
        policy = ReconnectPolicy()
        delays = [policy(1) for _ in range(30)]
        self.assertLessEqual(max(delays), 300.0 + 1.0)
        self.assertGreater(delays[5], delays[0])


class ConflictRunTests(SynchronousTestCase):
    def test_fightingClientsCounted(self) -> None:
        """Two clients taking the resource every minute or so still add up."""
        policy = ReconnectPolicy(backoff=doubling)
        for _ in range(MAX_CONSECUTIVE_CONFLICTS):
            policy.recordFailure(StreamErrorReceived("conflict"))
            policy.sessionEnded(90.0)
        self.assertTrue(policy.conflictsExhausted)

    def test_rareConflictsNeverStop(self) -> None:
        """Conflicts that each end a long healthy session never add up."""
        policy = ReconnectPolicy(backoff=doubling)
        for _ in range(MAX_CONSECUTIVE_CONFLICTS * 3):
            policy.recordFailure(StreamErrorReceived("conflict"))
            policy.sessionEnded(3600.0)
        self.assertFalse(policy.conflictsExhausted)
