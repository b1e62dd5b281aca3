"""Subscribes to Disk pushes once each session is open."""

from __future__ import annotations

from typing import Any

from twisted.python.failure import Failure
from twisted.words.protocols.jabber import error as jabberError
from twisted.words.protocols.jabber import xmlstream
from twisted.words.xish import domish
from wokkel.generic import Request
from wokkel.subprotocols import XMPPHandler

from yadiskpush.connection.authenticator import (
    CONNECTION_FAILED_EVENT,
    SUBSCRIBED_EVENT,
)
from yadiskpush.errors import SubscriptionFailed
from yadiskpush.logs import Logger
from yadiskpush.notification import NS_DISK_PUSH

__all__ = ["SUBSCRIBED_EVENT", "SubscribeRequest", "SubscriptionHandler"]


class SubscribeRequest(Request):
    """
    ``<iq type='set' to='BARE-JID'><s xmlns='yandex:push:disk'/></iq>``.

    Addressed by a string, not a ``JID``: the bare JID comes from the JID of
    the session, already prepared, and parsing it again would run stringprep
    once more for every connection (about 90 µs).

    :param to: the bare JID of the account.
    """

    stanzaType = "set"

    def __init__(self, to: str) -> None:
        Request.__init__(self)
        self.to = to

    def toElement(self) -> domish.Element:
        element = Request.toElement(self)
        element["to"] = self.to
        element.addElement((NS_DISK_PUSH, "s"))
        return element


class SubscriptionHandler(XMPPHandler):
    """
    Subscribes after every new session (a subscription lasts only as long as
    its stream), through wokkel's ``request()``, which tracks the answer,
    the timeout and the loss of the stream.

    A ``result`` dispatches :data:`SUBSCRIBED_EVENT` on the stream. An error
    answer or no answer within ``timeout`` seconds ends the connection with
    :class:`SubscriptionFailed`: no pushes would come on this stream, so the
    service reconnects.
    """

    _log = Logger()

    def __init__(self, timeout: float = 30.0, log: Logger | None = None) -> None:
        super().__init__()
        self.timeout = timeout
        if log is not None:
            self._log = log

    def connectionInitialized(self) -> None:
        xs = self.xmlstream
        request = SubscribeRequest(xs.authenticator.jid.userhost())
        request.timeout = self.timeout
        self.request(request).addCallbacks(
            self._subscribed, self._refused, callbackArgs=(xs,), errbackArgs=(xs,)
        )

    def _subscribed(self, answer: domish.Element, xs: Any) -> None:
        self._log.info("Subscribed to Disk pushes")
        xs.dispatch(xs, SUBSCRIBED_EVENT)

    def _refused(self, reason: Failure, xs: Any) -> None:
        if reason.check(jabberError.StanzaError):
            condition: str | None = reason.value.condition
        elif reason.check(xmlstream.TimeoutError):
            condition = f"no answer within {self.timeout:g} s"
        else:
            # The stream ended first: its own outcome says why.
            return
        xs.dispatch(SubscriptionFailed(condition), CONNECTION_FAILED_EVENT)
