"""
How long to wait before reconnecting.

The policy counts failed connections itself and resets the count only once
a session reaches the subscription (RFC 6120 §3.3: a client that connects,
fails and reconnects at once would hammer the server). Delays grow
exponentially and are spread by full jitter: a random point of the whole
window, not a second of noise on top of a fixed value, so that thousands
of clients dropped at once by a ``system-shutdown`` do not come back in the
same instant. A floor for a condition (a resource ``conflict``, a
``system-shutdown``, see :mod:`yadiskpush.failures`) shifts the window; it
does not collapse it.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from yadiskpush.failures import Action, Decision

#: A session that stayed up this long resets the count of conflicts in a
#: row. Longer than the conflict floor, so that two clients taking the
#: resource from each other (each session lasting about that floor) are
#: still counted as a run, while a rare conflict weeks apart never adds up
#: to a stop.
CONFLICT_RESET_SECONDS = 600.0

#: A redirect is followed almost at once (spread over this window).
REDIRECT_WINDOW = 1.0


class ReconnectPolicy:
    """
    Decides the delay before each reconnect.

    Call :meth:`subscribed` when a session reaches the subscription,
    :meth:`sessionEnded` when a connection ends (with how long its session
    lasted, if one opened), and :meth:`delayAfter` with the decision about
    the failure for the delay before the next attempt.

    :param initialDelay: the window after the first failure, in seconds.
    :param maxDelay: the largest window.
    :param random: returns a float in [0, 1); injectable for tests.
    :param minimumWindow: returns the smallest window, in seconds; a
        :class:`~yadiskpush.fleet.PushFleet` makes it grow with the number
        of its accounts, so that all of them dropped at once come back
        spread over a window the server can take.
    :ivar failures: failed connections since the last subscription.
    :ivar consecutiveConflicts: resource conflicts in a row.
    """

    def __init__(
        self,
        initialDelay: float = 1.0,
        maxDelay: float = 300.0,
        random: Callable[[], float] = random.random,
        minimumWindow: Callable[[], float] | None = None,
    ) -> None:
        self.initialDelay = initialDelay
        self.maxDelay = maxDelay
        self.random = random
        self.minimumWindow = minimumWindow
        self.failures = 0
        self.consecutiveConflicts = 0

    def subscribed(self) -> None:
        """A session reached the subscription: the backoff starts over."""
        self.failures = 0

    def sessionEnded(self, lasted: float | None) -> None:
        """A connection ended; ``lasted`` is its session's age, or ``None``."""
        if lasted is not None and lasted >= CONFLICT_RESET_SECONDS:
            self.consecutiveConflicts = 0

    def window(self, failures: int) -> float:
        """The backoff window after ``failures`` failures in a row."""
        # The exponent is capped: 2.0 ** 1024 overflows, and a days-long
        # outage must not end the reconnect loop with an OverflowError.
        exponent = min(max(0, failures - 1), 64)
        return min(self.maxDelay, self.initialDelay * 2.0**exponent)

    def delayAfter(self, decision: Decision) -> float:
        """The delay before the next attempt, in seconds."""
        if decision.conflict:
            self.consecutiveConflicts += 1
        else:
            self.consecutiveConflicts = 0
        if decision.action is Action.REDIRECT:
            return self.random() * REDIRECT_WINDOW
        self.failures += 1
        window = max(self.window(self.failures), decision.floor)
        if self.minimumWindow is not None:
            window = max(window, self.minimumWindow())
        return decision.floor + self.random() * window
