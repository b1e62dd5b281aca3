"""
How long to wait before reconnecting, and when to stop trying.

``ClientService`` asks for a delay after every failed or lost connection, but
resets its own attempt count on every TCP connect, so a server that accepts
TCP and then fails the handshake would be retried at full speed. This policy
counts failed *sessions* itself: exponential backoff with jitter, reset only
after a session stayed healthy for a while, and a floor for errors that a
fast retry would only repeat (a resource ``conflict`` ping-pong, a
``policy-violation``).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.application.internet import backoffPolicy

from yadiskpush.errors import StreamErrorReceived, YaDiskPushError

# A session that stayed up this long resets the backoff.
HEALTHY_SESSION_SECONDS = 60.0

# A session that stayed up this long resets the count of conflicts in a row.
# Longer than the conflict floor, so that two clients taking the resource
# from each other (each session lasting about that floor) are still counted
# as a run, while a rare conflict weeks apart never adds up to a stop.
CONFLICT_RESET_SECONDS = 600.0

# Minimum delays for stream errors where retrying at once cannot help.
MINIMUM_DELAY_BY_CONDITION = {
    # Another client holds our resource; coming straight back would kick it
    # off, and it would kick us off again.
    "conflict": 60.0,
    "policy-violation": 30.0,
    "system-shutdown": 5.0,
}

# A redirect is followed at once.
REDIRECT_DELAY = 0.1

# After this many conflicts in a row, stop instead of fighting the other
# client for the resource forever.
MAX_CONSECUTIVE_CONFLICTS = 3


class ReconnectPolicy:
    """
    Decides the delay before each reconnect.

    Call :meth:`sessionEnded` when a connection ends (with how long its
    session lasted, if one opened) and :meth:`recordFailure` with the error
    that ended it; ``ClientService`` then calls the policy for the delay.
    """

    def __init__(
        self,
        initialDelay: float = 1.0,
        maxDelay: float = 300.0,
        backoff: Callable[[int], float] | None = None,
    ) -> None:
        self._backoff = backoff or backoffPolicy(
            initialDelay=initialDelay, maxDelay=maxDelay, factor=2.0
        )
        self.failures = 0
        self.consecutiveConflicts = 0
        self._floor = 0.0
        self._redirected = False

    def sessionEnded(self, lasted: float | None) -> None:
        """A connection ended; ``lasted`` is its session's age, or ``None``."""
        if lasted is not None and lasted >= HEALTHY_SESSION_SECONDS:
            self.failures = 0
        if lasted is not None and lasted >= CONFLICT_RESET_SECONDS:
            self.consecutiveConflicts = 0

    def recordFailure(self, reason: YaDiskPushError) -> None:
        """Note the error that ended the attempt, for the next delay."""
        condition = getattr(reason, "condition", None)
        if isinstance(reason, StreamErrorReceived):
            self._floor = MINIMUM_DELAY_BY_CONDITION.get(condition or "", 0.0)
            if condition == "conflict":
                self.consecutiveConflicts += 1
            else:
                self.consecutiveConflicts = 0

    def recordRedirect(self) -> None:
        """The server sent ``see-other-host``: go there without waiting."""
        self._redirected = True

    @property
    def conflictsExhausted(self) -> bool:
        return self.consecutiveConflicts >= MAX_CONSECUTIVE_CONFLICTS

    def __call__(self, attempt: int) -> float:
        """The delay before the next attempt (``attempt`` is ignored)."""
        if self._redirected:
            self._redirected = False
            self._floor = 0.0
            return REDIRECT_DELAY
        self.failures += 1
        delay = max(self._backoff(self.failures), self._floor)
        self._floor = 0.0
        return delay
