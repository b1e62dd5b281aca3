"""
The contract every sink keeps: what ``deliver`` and ``close`` promise.

A sink is where a received notification is handed. The client acknowledges a
push to the server only once ``deliver`` has returned (or its Deferred has
fired), so a sink fires only when it has really taken the notification, and
fails (without raising) when it could not.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from twisted.internet.defer import Deferred

from yadiskpush.errors import YaDiskPushError
from yadiskpush.notification import Notification


@runtime_checkable
class Sink(Protocol):
    """
    Something a notification is handed to.

    ``deliver`` returns ``None`` or a Deferred that fires once the
    notification is safely taken (written and flushed, queued for a
    command...). An expected failure (disk full, sink closed) is a failed
    Deferred carrying :class:`DeliveryFailed`, never an exception raised out
    of ``deliver``: the caller then does not acknowledge the push.

    ``close`` is called once on service stop, after the last ``deliver``; its
    Deferred fires when the sink has finished its work and released its
    resources. It does not fail.
    """

    def deliver(self, notification: Notification) -> Deferred[None] | None: ...

    def close(self) -> Deferred[None]: ...


class DeliveryFailed(YaDiskPushError):
    """
    A sink could not take a notification; the push is not acknowledged.

    :ivar stanzaId: the id of the push that was refused.
    """

    def __init__(self, stanzaId: str, reason: str) -> None:
        super().__init__(f"could not deliver push {stanzaId!r}: {reason}")
        self.stanzaId = stanzaId
        self.reason = reason
