"""Tests for yadiskpush.reconnect and yadiskpush.failures: decisions and delays."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from yadiskpush.connection.attempt import DIRECT_TLS, STARTTLS, Attempt
from yadiskpush.errors import (
    AuthenticationFailed,
    ConnectFailed,
    HandshakeTimeout,
    StartTLSNotOffered,
    StreamErrorReceived,
)
from yadiskpush.failures import (
    MAX_CONSECUTIVE_CONFLICTS,
    Action,
    Decision,
    decide,
)
from yadiskpush.reconnect import ReconnectPolicy
from yadiskpush.secret import Secret


def attempt(mode: str = STARTTLS) -> Attempt:
    return Attempt("push.example", 5222, mode, None, Secret("t"))  # type: ignore[arg-type]


RETRY = Decision(Action.RETRY, ConnectFailed("x"))


class ReconnectPolicyTests(SynchronousTestCase):
    def test_windowDoubles(self) -> None:
        """The window doubles per failure up to the maximum."""
        policy = ReconnectPolicy(initialDelay=1, maxDelay=8, random=lambda: 1.0)
        self.assertEqual([policy.delayAfter(RETRY) for _ in range(5)], [1, 2, 4, 8, 8])

    def test_windowAfterDaysOfFailures(self) -> None:
        """Thousands of failures in a row (days of outage at the longest
        delay) keep the window at the longest delay; 2.0 ** 1024 would
        overflow and end the reconnect loop."""
        policy = ReconnectPolicy(initialDelay=1, maxDelay=300, random=lambda: 1.0)
        for failures in (1025, 5000, 10**9):
            self.assertEqual(policy.window(failures), 300)

    def test_fullJitter(self) -> None:
        """The delay is a random point of the whole window, not a fixed value."""
        draws = iter([0.0, 0.5, 0.999])
        policy = ReconnectPolicy(initialDelay=4, maxDelay=4, random=lambda: next(draws))
        self.assertEqual(
            [policy.delayAfter(RETRY) for _ in range(3)], [0.0, 2.0, 3.996]
        )

    def test_subscriptionResets(self) -> None:
        """A session that reached the subscription resets the backoff."""
        policy = ReconnectPolicy(initialDelay=1, maxDelay=300, random=lambda: 1.0)
        for _ in range(4):
            policy.delayAfter(RETRY)
        policy.subscribed()
        self.assertEqual(policy.delayAfter(RETRY), 1.0)

    def test_floorShiftsTheWindow(self) -> None:
        """A floor is added to a jittered window, so clients stay spread."""
        shutdown = decide(StreamErrorReceived("system-shutdown"), attempt())
        low = ReconnectPolicy(random=lambda: 0.0).delayAfter(shutdown)
        high = ReconnectPolicy(random=lambda: 0.999).delayAfter(shutdown)
        self.assertEqual(low, 5.0)
        self.assertGreater(high, 9.9)

    def test_redirectAtOnce(self) -> None:
        """A redirect is followed within a second and does not count a failure."""
        policy = ReconnectPolicy(random=lambda: 0.5)
        redirect = decide(
            StreamErrorReceived("see-other-host"),
            attempt(),
            redirectTarget="other.example:5223",
        )
        self.assertEqual(policy.delayAfter(redirect), 0.5)
        self.assertEqual(policy.failures, 0)


class DecideTests(SynchronousTestCase):
    def test_fatalSASLConditions(self) -> None:
        """The four fatal SASL conditions give up; others retry."""
        for condition in (
            "not-authorized",
            "credentials-expired",
            "account-disabled",
            "invalid-mechanism",
        ):
            error = AuthenticationFailed("test", condition)
            self.assertIs(decide(error, attempt()).action, Action.GIVE_UP, condition)
        for condition in ("temporary-auth-failure", "aborted", "malformed-request"):
            error = AuthenticationFailed("test", condition)
            self.assertIs(decide(error, attempt()).action, Action.RETRY, condition)
            self.assertIn("trying again later", str(error))

    def test_streamErrorBeforeTLSNeverFatal(self) -> None:
        """Before TLS a stream error only makes the next attempt prefer TLS."""
        for condition in ("host-unknown", "see-other-host", "conflict"):
            error = StreamErrorReceived(condition, encrypted=False)
            decision = decide(error, attempt(), redirectTarget="evil.example")
            self.assertIs(decision.action, Action.RETRY)
            self.assertTrue(decision.preferDirectTLS)
            self.assertIsNone(decision.redirectTo)

    def test_hostUnknownOverTLSGivesUp(self) -> None:
        """Over TLS, host-unknown names --domain and gives up."""
        decision = decide(StreamErrorReceived("host-unknown"), attempt(), domain="x")
        self.assertIs(decision.action, Action.GIVE_UP)
        self.assertIn("--domain", str(decision.error))

    def test_redirectOverTLS(self) -> None:
        """see-other-host over TLS redirects to the target (default port)."""
        decision = decide(
            StreamErrorReceived("see-other-host"),
            attempt(),
            redirectTarget="[::1]",
            port=5222,
        )
        self.assertEqual(
            (decision.action, decision.redirectTo), (Action.REDIRECT, ("::1", 5222))
        )

    def test_conflictsRunOut(self) -> None:
        """Conflicts in a row are retried after a floor, then the client stops."""
        first = decide(StreamErrorReceived("conflict"), attempt())
        self.assertEqual((first.action, first.floor), (Action.RETRY, 60.0))
        last = decide(
            StreamErrorReceived("conflict"),
            attempt(),
            consecutiveConflicts=MAX_CONSECUTIVE_CONFLICTS - 1,
            resource="r",
        )
        self.assertIs(last.action, Action.GIVE_UP)
        self.assertIn("--resource", str(last.error))

    def test_stalledStartTLSPrefersTheTLSPort(self) -> None:
        """A handshake stalled on the STARTTLS port prefers the TLS port next."""
        stalled = HandshakeTimeout(30, "STARTTLS")
        self.assertTrue(decide(stalled, attempt(STARTTLS)).preferDirectTLS)
        self.assertFalse(decide(stalled, attempt(DIRECT_TLS)).preferDirectTLS)
        missing = StartTLSNotOffered("h", 5222)
        self.assertTrue(decide(missing, attempt()).preferDirectTLS)
