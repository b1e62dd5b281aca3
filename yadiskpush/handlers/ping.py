"""Answers the server's XEP-0199 pings."""

from __future__ import annotations

from twisted.words.protocols.jabber.xmlstream import toResponse
from twisted.words.xish import domish
from wokkel.subprotocols import XMPPHandler

from yadiskpush.handlers.guard import answersExactlyOnce, sendAnswer
from yadiskpush.logs import Logger

NS_PING = "urn:xmpp:ping"
PING_REQUEST = f"/iq[@type='get']/ping[@xmlns='{NS_PING}']"


class PingHandler(XMPPHandler):
    """
    Answers pings with a result carrying the same ``id``, addressed back to
    the sender. A copy of ``wokkel.ping.PingHandler``'s behaviour, since that
    module cannot be imported on current Twisted (see the package docstring).

    Each answer is logged at debug level (a handshake-like step: at 10,000
    accounts, even one line per session would bury the log). Every ping is
    answered exactly once (see :mod:`yadiskpush.handlers.guard`).

    On our own stream pings are routed straight here
    (:meth:`~yadiskpush.connection.stream.PushXmlStream.routeStanzas`): the
    server pings every idle connection, and matching each ping against every
    XPath observer of the stream, and keeping an observer per connection,
    cost more than the answer. A ``get`` whose ``urn:xmpp:ping`` payload is
    not its first child is then not taken here; wokkel's ``FallbackHandler``
    answers it with an error.
    """

    _log = Logger()

    def __init__(self, log: Logger | None = None) -> None:
        super().__init__()
        self.answered = 0
        if log is not None:
            self._log = log

    def connectionInitialized(self) -> None:
        self.answered = 0
        routeStanzas = getattr(self.xmlstream, "routeStanzas", None)
        if routeStanzas is not None:
            routeStanzas("iq", "get", NS_PING, self.onPing)
        else:
            self.xmlstream.addObserver(PING_REQUEST, self.onPing)

    @answersExactlyOnce
    def onPing(self, iq: domish.Element) -> None:
        sendAnswer(self.xmlstream, iq, toResponse(iq, "result"))
        self.answered += 1
        self._log.debug(
            "Answered a ping from {sender}",
            sender=iq.getAttribute("from", "the server"),
        )
