"""
Tests for yadiskpush.webhooks.retry: what a status means, the backoff, and
Retry-After.
"""

from __future__ import annotations

from email.utils import formatdate

from twisted.trial.unittest import SynchronousTestCase

from yadiskpush.webhooks.retry import (
    Outcome,
    RetryPolicy,
    classifyStatus,
    parseRetryAfter,
)


class ClassifyTests(SynchronousTestCase):
    def test_statuses(self) -> None:
        """2xx accepted; 410 gone; 408, 429, 3xx, 5xx retried; other 4xx rejected."""
        expected = {
            200: Outcome.ACCEPTED,
            204: Outcome.ACCEPTED,
            299: Outcome.ACCEPTED,
            301: Outcome.RETRY,
            307: Outcome.RETRY,
            400: Outcome.REJECTED,
            401: Outcome.REJECTED,
            404: Outcome.REJECTED,
            408: Outcome.RETRY,
            410: Outcome.GONE,
            413: Outcome.REJECTED,
            429: Outcome.RETRY,
            500: Outcome.RETRY,
            503: Outcome.RETRY,
            100: Outcome.RETRY,
        }
        self.assertEqual({s: classifyStatus(s) for s in expected}, expected)


class RetryAfterTests(SynchronousTestCase):
    def test_seconds(self) -> None:
        """A number is seconds."""
        self.assertEqual(parseRetryAfter(" 120 ", now=0), 120.0)

    def test_httpDate(self) -> None:
        """An HTTP-date counts from now; one in the past means at once."""
        now = 1_700_000_000.0
        self.assertEqual(parseRetryAfter(formatdate(now + 90, usegmt=True), now), 90.0)
        self.assertEqual(parseRetryAfter(formatdate(now - 90, usegmt=True), now), 0.0)

    def test_unreadable(self) -> None:
        """Missing, negative or garbled values are ignored."""
        for value in (None, "", "-5", "soon", "1.5", "٣"):
            self.assertIsNone(parseRetryAfter(value, now=0), value)


class PolicyTests(SynchronousTestCase):
    def test_fullJitterDoubling(self) -> None:
        """The bound doubles per failure up to maxDelay; the delay is a share of it."""
        policy = RetryPolicy(initialDelay=1.0, maxDelay=60.0, random=lambda: 0.5)
        self.assertEqual([policy.bound(n) for n in (1, 2, 3, 7, 8)], [1, 2, 4, 60, 60])
        self.assertEqual(policy.delay(3), 2.0)

    def test_noOverflow(self) -> None:
        """A thousand failures in a row still give a delay (no OverflowError)."""
        policy = RetryPolicy(maxDelay=60.0, random=lambda: 0.999)
        self.assertAlmostEqual(policy.delay(5000), 59.94)

    def test_retryAfterHonouredAndCapped(self) -> None:
        """Retry-After replaces the jitter, capped at maxRetryAfter."""
        policy = RetryPolicy(maxRetryAfter=300.0, random=lambda: 0.0)
        self.assertEqual(policy.delay(1, retryAfter=42.0), 42.0)
        self.assertEqual(policy.delay(1, retryAfter=86400.0), 300.0)
