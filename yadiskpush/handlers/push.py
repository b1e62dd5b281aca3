"""Receives Disk pushes and hands them to the delivery pipeline of the stream."""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish
from wokkel.subprotocols import XMPPHandler

from yadiskpush.delivery.pipeline import (
    DEFAULT_DELIVERY_TIMEOUT,
    DEFAULT_MAX_WAITING,
    Deliver,
    DeliveryPipeline,
    PipelineObserver,
    errorAnswer,
)
from yadiskpush.handlers.guard import answersExactlyOnce, sendAnswer
from yadiskpush.logs import Logger
from yadiskpush.notification import NS_DISK_PUSH, Notification

IQ_SET = "/iq[@type='set']"

NotificationCallback = Deliver


class PushHandler(XMPPHandler):
    """
    Takes every IQ set carrying a ``yandex:push:disk`` payload, turns it into
    a :class:`~yadiskpush.notification.Notification` and hands it to
    ``onNotification`` through a
    :class:`~yadiskpush.delivery.pipeline.DeliveryPipeline`: one at a time,
    in order; acknowledged with a result only once the callback (or its
    Deferred) succeeded; refused with an error when it failed or took longer
    than ``deliveryTimeout``. A new pipeline serves each stream, so nothing
    waiting on a stream that ended is ever answered on the next one.

    A push that claims to come from another account is refused: pushes may
    start commands (``--exec``). Every notification is tagged with ``login``,
    the account this handler serves, so that a consumer of many accounts can
    tell them apart.

    Usable on its own in any wokkel ``StreamManager``. ``pipelineObserver``
    (metrics) is given to the pipeline of each stream, and to the current
    one when set with :meth:`setPipelineObserver`.
    """

    _log = Logger()

    def __init__(
        self,
        onNotification: NotificationCallback,
        clock: IReactorTime | None = None,
        log: Logger | None = None,
        deliveryTimeout: float = DEFAULT_DELIVERY_TIMEOUT,
        maxWaiting: int = DEFAULT_MAX_WAITING,
        *,
        login: str = "",
        pipelineObserver: PipelineObserver | None = None,
    ) -> None:
        super().__init__()
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[assignment]
        self.onNotification = onNotification
        self.clock = clock
        self.deliveryTimeout = deliveryTimeout
        self.maxWaiting = maxWaiting
        self.login = login
        self.pipelineObserver = pipelineObserver
        self.pipeline: DeliveryPipeline | None = None
        self._accepted: tuple[str, ...] = ()
        if log is not None:
            self._log = log

    def connectionInitialized(self) -> None:
        xs = self.xmlstream
        self.pipeline = DeliveryPipeline(
            self.onNotification,
            lambda iq, xml: sendAnswer(xs, iq, xml),
            self.clock,
            self._log,
            timeout=self.deliveryTimeout,
            maxWaiting=self.maxWaiting,
            observer=self.pipelineObserver,
        )
        self._accepted = _acceptedSenders(xs)
        # Pushes are nearly all the traffic: on our stream they skip the
        # XPath observers. The observer still takes a push whose payload is
        # not the first child, and any push on a plain XmlStream.
        routeStanzas = getattr(xs, "routeStanzas", None)
        if routeStanzas is not None:
            routeStanzas("iq", "set", NS_DISK_PUSH, self.onIQSet)
        xs.addObserver(IQ_SET, self.onIQSet)

    def setPipelineObserver(self, observer: PipelineObserver | None) -> None:
        """Tell ``observer`` of the pushes of this stream and every next one."""
        self.pipelineObserver = observer
        if self.pipeline is not None:
            self.pipeline.observer = observer

    def connectionLost(self, reason: object) -> None:
        if self.pipeline is not None:
            self.pipeline.close()
            self.pipeline = None

    @answersExactlyOnce
    def onIQSet(self, iq: domish.Element) -> None:
        # iq.elements() checks an interface per child; the children of a
        # parsed stanza are elements or text.
        for child in iq.children:
            if not isinstance(child, str) and child.uri == NS_DISK_PUSH:
                break
        else:
            return
        iq.handled = True
        sender = iq.attributes.get("from")
        if not self._fromOurServer(sender):
            self._log.warn(
                "Refused a Disk push from {sender}: pushes come only from the "
                "server or your own account",
                sender=sender,
            )
            sendAnswer(self.xmlstream, iq, errorAnswer(iq, "service-unavailable"))
            return
        # A payload that cannot be read raises: the guard answers it with
        # internal-server-error and one log line.
        notification = Notification.fromStanza(iq, self.clock.seconds(), self.login)
        if self.pipeline is not None:
            self.pipeline.receive(iq, notification)

    def _fromOurServer(self, sender: str | None) -> bool:
        """
        Whether the push comes from no one in particular (the server), the
        server's domain, or our own account, as RFC 6120 (section 10.3) lets
        a client trust. Compared as strings first (the common case costs no
        stringprep); only an unusual spelling is parsed as a JID.
        """
        if not sender or not self._accepted:
            return True
        bare = sender.partition("/")[0]
        if bare in self._accepted:
            return True
        try:
            parsed = JID(sender)
        except Exception:
            return False
        return parsed.userhost() in self._accepted


def _acceptedSenders(xs: Any) -> tuple[str, ...]:
    """Our bare JID and our server's domain; empty if the stream has no JID."""
    ours = getattr(getattr(xs, "authenticator", None), "jid", None)
    if ours is None:
        return ()
    return (ours.userhost(), ours.host)
