"""Receives Disk pushes, hands them on, and acknowledges them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.protocols.jabber import error as jabberError
from twisted.words.protocols.jabber.jid import JID
from twisted.words.protocols.jabber.xmlstream import toResponse
from twisted.words.xish import domish
from wokkel.subprotocols import XMPPHandler

from yadiskpush.errors import YaDiskPushError
from yadiskpush.notification import NS_DISK_PUSH, Notification

IQ_SET = "/iq[@type='set']"

NotificationCallback = Callable[[Notification], "defer.Deferred[Any] | None"]


class PushHandler(XMPPHandler):
    """
    Takes every IQ set carrying a ``yandex:push:disk`` payload, turns it into a
    :class:`~yadiskpush.notification.Notification`, hands it to
    ``onNotification`` and only then acknowledges it with a result.

    Notifications are handed on one at a time, in the order they arrived: a
    callback returning a Deferred holds back the next one until it fires. If
    the callback fails, the push is answered with ``internal-server-error``
    instead of a result, so the server does not count it as delivered. If
    the stream is gone by the time delivery completes, nothing is sent: the
    push was delivered but not acknowledged, never the reverse.

    Usable on its own in any wokkel ``StreamManager``.
    """

    _log = Logger()

    def __init__(
        self,
        onNotification: NotificationCallback,
        clock: IReactorTime | None = None,
        log: Logger | None = None,
    ) -> None:
        super().__init__()
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[assignment]
        self.onNotification = onNotification
        self.clock = clock
        self._queue: defer.Deferred[None] = defer.succeed(None)
        if log is not None:
            self._log = log

    def connectionInitialized(self) -> None:
        self.xmlstream.addObserver(IQ_SET, self.onIQSet)

    def onIQSet(self, iq: domish.Element) -> None:
        if not any(child.uri == NS_DISK_PUSH for child in iq.elements()):
            return
        iq.handled = True
        if not self._fromOurServer(iq):
            # Pushes may start commands (--exec): one that claims to come
            # from another account is refused, not delivered.
            self._log.warn(
                "Refused a Disk push from {sender}: pushes come only from the "
                "server or your own account",
                sender=iq.getAttribute("from"),
            )
            self._answer(
                self.xmlstream,
                jabberError.StanzaError("service-unavailable").toResponse(iq),
            )
            return
        notification = Notification.fromStanza(iq, self.clock.seconds())
        xs = self.xmlstream

        def deliver(_: object) -> defer.Deferred[Any]:
            return defer.maybeDeferred(self.onNotification, notification)

        def acknowledge(_: object) -> None:
            self._answer(xs, toResponse(iq, "result"))

        def refuse(reason: Failure) -> None:
            reason = _unwrap(reason)
            if isinstance(reason.value, YaDiskPushError):
                # Expected (disk full, queue full): one line, no traceback.
                self._log.error(
                    "Could not deliver push {id}: {problem}; answering with an "
                    "error so the server does not count it as delivered",
                    id=notification.stanzaId,
                    problem=str(reason.value),
                )
            else:
                self._log.failure(
                    "Could not deliver push {id}; answering with an error so "
                    "the server does not count it as delivered",
                    reason,
                    id=notification.stanzaId,
                )
            self._answer(
                xs, jabberError.StanzaError("internal-server-error").toResponse(iq)
            )

        self._queue = self._queue.addCallback(deliver)
        self._queue.addCallbacks(acknowledge, refuse)

    def _fromOurServer(self, iq: domish.Element) -> bool:
        """
        Whether the push comes from no one in particular (the server), the
        server's domain, or our own account, as RFC 6120 (section 10.3)
        lets a client trust. Without a known JID (a foreign authenticator),
        everything is accepted.
        """
        sender = iq.getAttribute("from")
        ours = getattr(getattr(self.xmlstream, "authenticator", None), "jid", None)
        if not sender or ours is None:
            return True
        try:
            sender = JID(sender)
        except Exception:
            return False
        return sender.userhost() in (ours.userhost(), ours.host)

    def _answer(self, xs: Any, response: domish.Element) -> None:
        # After our </stream:stream> nothing may be sent: a push delivered
        # while the client was closing stays unacknowledged (the server will
        # send it again), never acknowledged into the void.
        if (
            xs is not None
            and xs.transport is not None
            and xs.stream is not None
            and not getattr(xs, "closing", False)
        ):
            xs.send(response)


def _unwrap(reason: Failure) -> Failure:
    """The original failure inside ``gatherResults``' ``FirstError`` layers."""
    while isinstance(reason.value, defer.FirstError):
        reason = reason.value.subFailure
    return reason
