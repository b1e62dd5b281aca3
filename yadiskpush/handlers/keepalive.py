"""Notices a dead connection: pings the server after silence, drops on none."""

from __future__ import annotations

import secrets
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.words.xish import domish
from wokkel.subprotocols import XMPPHandler

from yadiskpush.errors import ConnectionStalled, YaDiskPushError
from yadiskpush.handlers.ping import NS_PING


class KeepaliveHandler(XMPPHandler):
    """
    A connection can die silently (no FIN, no RST: a NAT drops its entry, a
    laptop sleeps). After ``idleTimeout`` seconds without a single stanza from
    the server, this sends an XEP-0199 ping to the server; if nothing at all
    arrives within ``pingTimeout`` more seconds, it reports
    :class:`ConnectionStalled` and aborts the connection so the service
    reconnects. Any stanza counts as a sign of life, so a healthy server that
    pings us itself is never pinged back.
    """

    _log = Logger()

    def __init__(
        self,
        domain: Callable[[], str],
        onDead: Callable[[YaDiskPushError], None],
        clock: IReactorTime,
        idleTimeout: float,
        pingTimeout: float,
        log: Logger | None = None,
    ) -> None:
        super().__init__()
        self.domain = domain
        self.onDead = onDead
        self.clock = clock
        self.idleTimeout = idleTimeout
        self.pingTimeout = pingTimeout
        self._timer: IDelayedCall | None = None
        self._pinging = False
        if log is not None:
            self._log = log

    def connectionInitialized(self) -> None:
        # Highest priority, so every stanza resets the timer first.
        self.xmlstream.addObserver("/*", self._onActivity, 100)
        self._pinging = False
        self._arm(self.idleTimeout, self._onIdle)

    def connectionLost(self, reason: object) -> None:
        self._disarm()

    def _arm(self, delay: float, call: Callable[[], None]) -> None:
        self._disarm()
        self._timer = self.clock.callLater(delay, call)

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _onActivity(self, element: domish.Element) -> None:
        if self._pinging and element.name == "iq":
            self._log.debug("The server answered the keepalive ping")
        self._pinging = False
        self._arm(self.idleTimeout, self._onIdle)

    def _onIdle(self) -> None:
        self._timer = None
        self._pinging = True
        iq = domish.Element((None, "iq"))
        iq["type"] = "get"
        iq["to"] = self.domain()
        iq["id"] = "yadiskpush-keepalive-" + secrets.token_hex(4)
        iq.addElement((NS_PING, "ping"))
        self._log.debug(
            "No data for {idle:g} s; pinging the server", idle=self.idleTimeout
        )
        self.xmlstream.send(iq)
        self._arm(self.pingTimeout, self._onDead)

    def _onDead(self) -> None:
        self._timer = None
        self.onDead(ConnectionStalled(self.idleTimeout + self.pingTimeout))
