"""Notices a dead connection: pings the server after silence, drops on none."""

from __future__ import annotations

import secrets
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.words.xish import domish
from wokkel.subprotocols import XMPPHandler

from yadiskpush.connection.authenticator import CONNECTION_FAILED_EVENT
from yadiskpush.errors import ConnectionStalled
from yadiskpush.handlers.ping import NS_PING
from yadiskpush.logs import Logger


class KeepaliveHandler(XMPPHandler):
    """
    A connection can die silently (no FIN, no RST: a NAT drops its entry, a
    laptop sleeps). After ``idleTimeout`` seconds without a single stanza from
    the server, this sends an XEP-0199 ping to the server; if nothing at all
    arrives within ``pingTimeout`` more seconds, it ends the connection with
    :class:`ConnectionStalled` so the service reconnects. Any stanza counts as
    a sign of life, so a healthy server that pings us itself is never pinged
    back.

    Each stanza only stamps the time; one timer per connection checks the
    stamp when it fires, instead of a timer cancelled and re-armed per
    stanza.
    """

    _log = Logger()

    def __init__(
        self,
        domain: Callable[[], str],
        clock: IReactorTime,
        idleTimeout: float,
        pingTimeout: float,
        log: Logger | None = None,
    ) -> None:
        super().__init__()
        self.domain = domain
        self.clock = clock
        self.idleTimeout = idleTimeout
        self.pingTimeout = pingTimeout
        self.lastActivity = 0.0
        self._pingSentAt: float | None = None
        self._timer: IDelayedCall | None = None
        if log is not None:
            self._log = log

    def connectionInitialized(self) -> None:
        # Highest priority, so every stanza is stamped first.
        self.xmlstream.addObserver("/*", self._onActivity, 100)
        self.lastActivity = self.clock.seconds()
        self._pingSentAt = None
        self._arm(self.idleTimeout)

    def connectionLost(self, reason: object) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _arm(self, delay: float) -> None:
        self._timer = self.clock.callLater(delay, self._check)

    def _onActivity(self, element: domish.Element) -> None:
        self.lastActivity = self.clock.seconds()

    def _check(self) -> None:
        self._timer = None
        now = self.clock.seconds()
        if self._pingSentAt is not None:
            if self.lastActivity >= self._pingSentAt:
                self._log.debug("The server answered the keepalive ping")
                self._pingSentAt = None
            else:
                self.xmlstream.dispatch(
                    ConnectionStalled(self.idleTimeout + self.pingTimeout),
                    CONNECTION_FAILED_EVENT,
                )
                transport = self.xmlstream.transport
                if transport is not None:
                    getattr(transport, "abortConnection", transport.loseConnection)()
                return
        idle = now - self.lastActivity
        if idle < self.idleTimeout:
            self._arm(self.idleTimeout - idle)
            return
        self._ping(now)

    def _ping(self, now: float) -> None:
        iq = domish.Element((None, "iq"))
        iq["type"] = "get"
        iq["to"] = self.domain()
        iq["id"] = "yadiskpush-keepalive-" + secrets.token_hex(4)
        iq.addElement((NS_PING, "ping"))
        self._log.debug(
            "No data for {idle:g} s; pinging the server", idle=self.idleTimeout
        )
        self._pingSentAt = now
        self.xmlstream.send(iq)
        self._arm(self.pingTimeout)
