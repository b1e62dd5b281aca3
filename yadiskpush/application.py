"""
What ``twistd yadiskpush`` runs: one :class:`PushService` and its sinks,
stopped in the right order.

``MultiService`` stops its children concurrently, so it cannot promise that
the stream is closed (no more pushes can arrive) before the sinks are
flushed and closed. :class:`PushApplication` does that ordering itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from yadiskpush.delivery.sinks import Sink
from yadiskpush.notification import Notification
from yadiskpush.service import PushService


class PushApplication(service.Service):
    """
    Runs a push service whose notifications go to ``sinks``, each push
    acknowledged once every sink has taken it.

    On stop: close the stream first (no new pushes), then close the sinks in
    order (an ``--exec`` run in progress is waited for).
    """

    _log = Logger()

    def __init__(self, push: PushService, sinks: Sequence[Sink]) -> None:
        self.push = push
        self.sinks = list(sinks)
        push.addNotificationObserver(self.deliver)

    def deliver(self, notification: Notification) -> defer.Deferred[Any]:
        """Hand one notification to every sink; fire when all have it."""
        return defer.gatherResults(
            [defer.maybeDeferred(s.deliver, notification) for s in self.sinks],
            consumeErrors=True,
        )

    def startService(self) -> None:
        service.Service.startService(self)
        self.push.startService()

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        service.Service.stopService(self)
        yield self.push.stopService()
        for sink in self.sinks:
            try:
                yield sink.close()
            except Exception:
                self._log.failure("Closing {sink} failed", sink=sink)
