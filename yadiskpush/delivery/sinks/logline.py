"""
Logs each notification as one readable line: the sink used when no other is
configured.
"""

from __future__ import annotations

from twisted.internet import defer

from yadiskpush.logs import Logger
from yadiskpush.notification import Notification


class LogSink:
    """
    Logs ``notification.summary()`` at info level, one line per push.

    Logging cannot fail in a way the push could be refused for, so
    ``deliver`` returns ``None`` and the push is acknowledged at once.
    """

    _log = Logger()

    def __repr__(self) -> str:
        return "<LogSink>"

    def deliver(self, notification: Notification) -> None:
        """Log the notification's one-line summary."""
        self._log.info("{summary}", summary=notification.summary())

    def close(self) -> defer.Deferred[None]:
        """Nothing to release."""
        return defer.succeed(None)
