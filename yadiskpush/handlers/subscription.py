"""Subscribes to Disk pushes once each session is open."""

from __future__ import annotations

import secrets
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.words.protocols.jabber import error as jabberError
from twisted.words.xish import domish
from wokkel.subprotocols import XMPPHandler

from yadiskpush.errors import SubscriptionFailed, YaDiskPushError
from yadiskpush.notification import NS_DISK_PUSH


class SubscriptionHandler(XMPPHandler):
    """
    Sends ``<iq type='set' to='BARE-JID'><s xmlns='yandex:push:disk'/></iq>``
    after every new session (a subscription lasts only as long as its
    stream) and reports the answer.

    :param onSubscribed: called once the server answers ``result``.
    :param onRefused: called with :class:`SubscriptionFailed` for an error
        answer or no answer within ``timeout`` seconds; no pushes would come
        on this stream, so the service then reconnects.
    """

    _log = Logger()

    def __init__(
        self,
        bareJID: Callable[[], str],
        onSubscribed: Callable[[], None],
        onRefused: Callable[[YaDiskPushError], None],
        clock: IReactorTime,
        timeout: float = 30.0,
        log: Logger | None = None,
    ) -> None:
        super().__init__()
        self.bareJID = bareJID
        self.onSubscribed = onSubscribed
        self.onRefused = onRefused
        self.clock = clock
        self.timeout = timeout
        self._timer: IDelayedCall | None = None
        self._query: str | None = None
        if log is not None:
            self._log = log

    def connectionInitialized(self) -> None:
        iq = domish.Element((None, "iq"))
        iq["type"] = "set"
        iq["to"] = self.bareJID()
        iq["id"] = "yadiskpush-subscribe-" + secrets.token_hex(4)
        iq.addElement((NS_DISK_PUSH, "s"))
        self._query = f"/iq[@id='{iq['id']}']"
        self.xmlstream.addOnetimeObserver(self._query, self._onAnswer)
        self._timer = self.clock.callLater(self.timeout, self._onTimeout)
        self.xmlstream.send(iq)

    def connectionLost(self, reason: object) -> None:
        self._stopWaiting()

    def _stopWaiting(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._query is not None and self.xmlstream is not None:
            self.xmlstream.removeObserver(self._query, self._onAnswer)
        self._query = None

    def _onAnswer(self, iq: domish.Element) -> None:
        iq.handled = True
        self._stopWaiting()
        if iq.getAttribute("type") == "result":
            self._log.info("Subscribed to Disk pushes")
            self.onSubscribed()
            return
        try:
            condition = jabberError.exceptionFromStanza(iq).condition
        except Exception:
            condition = None
        self.onRefused(SubscriptionFailed(condition))

    def _onTimeout(self) -> None:
        self._timer = None
        self._stopWaiting()
        self.onRefused(SubscriptionFailed(f"no answer within {self.timeout:g} s"))
