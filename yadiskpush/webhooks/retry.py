"""
When to try a webhook delivery again: what an HTTP status means for the
push, the backoff between attempts, and the receiver's ``Retry-After``.

Exponential backoff with full jitter (a random delay between 0 and the
exponential bound, as in AWS's "Exponential Backoff and Jitter"): many
processes whose endpoint came back at once do not retry in step.
"""

from __future__ import annotations

import email.utils
import random as _random
from collections.abc import Callable
from datetime import UTC
from enum import Enum


class Outcome(Enum):
    """What an answer (or its absence) means for the push that was sent."""

    #: 2xx: the receiver has it.
    ACCEPTED = "accepted"
    #: 5xx, 408, 429, a redirect, a timeout, no connection: try again.
    RETRY = "retry"
    #: Any other 4xx: the receiver will not take this push; trying again
    #: cannot help.
    REJECTED = "rejected"
    #: 410 Gone: the receiver asks for no more deliveries at all.
    GONE = "gone"


def classifyStatus(status: int) -> Outcome:
    """
    The outcome of an HTTP answer with ``status``.

    A redirect (3xx) is not followed (the signature and the push would go
    wherever a receiver points) and counts as a failure to retry: it is a
    misconfigured URL, and dropping pushes for it would lose them silently.
    """
    if 200 <= status < 300:
        return Outcome.ACCEPTED
    if status == 410:
        return Outcome.GONE
    if status in (408, 429):
        return Outcome.RETRY
    if 400 <= status < 500:
        return Outcome.REJECTED
    return Outcome.RETRY


def parseRetryAfter(value: str | None, now: float) -> float | None:
    """
    Seconds to wait that a ``Retry-After`` header asks for: a number of
    seconds, or an HTTP-date (RFC 9110 §10.2.3) counted from ``now``.

    :returns: ``None`` for a missing or unreadable value; ``0`` for a date
        in the past.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


class RetryPolicy:
    """
    The delay before the next attempt at one push.

    :param initialDelay: the bound of the first delay, in seconds.
    :param maxDelay: the bound never grows past this.
    :param maxRetryAfter: a receiver's ``Retry-After`` is honoured up to
        this many seconds (a receiver asking for a day must not stop
        delivery for a day).
    :param random: returns a float in [0, 1); fixed in tests.
    """

    def __init__(
        self,
        initialDelay: float = 1.0,
        maxDelay: float = 60.0,
        maxRetryAfter: float = 300.0,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self.initialDelay = initialDelay
        self.maxDelay = maxDelay
        self.maxRetryAfter = maxRetryAfter
        self.random = random

    def bound(self, failures: int) -> float:
        """The largest delay after ``failures`` failed attempts in a row."""
        # The exponent is capped: 2 ** 1100 would overflow a float.
        return min(self.maxDelay, self.initialDelay * 2.0 ** min(failures - 1, 64))

    def delay(self, failures: int, retryAfter: float | None = None) -> float:
        """
        Seconds to wait after the ``failures``-th failed attempt in a row
        (1 for the first): ``retryAfter`` if the receiver gave one (capped
        at ``maxRetryAfter``), else a random delay up to :meth:`bound`.
        """
        if retryAfter is not None:
            return min(max(retryAfter, 0.0), self.maxRetryAfter)
        return self.random() * self.bound(max(failures, 1))
