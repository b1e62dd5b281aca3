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

    An idle connection costs one timer and no observer: the timer fires every
    half ``idleTimeout`` and compares the stream's count of stanzas
    (``stanzasReceived``) with the count it saw before. So the ping goes out
    after ``idleTimeout`` to 1.5 × ``idleTimeout`` seconds of silence
    (exactly ``idleTimeout`` on a connection that never spoke), and nothing
    at all is done per stanza.
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
        self._seen = 0
        self._silentChecks = 0
        self._pinging = False
        self._timer: IDelayedCall | None = None
        self._dueAt = 0.0
        if log is not None:
            self._log = log

    @property
    def _step(self) -> float:
        return self.idleTimeout / 2

    def connectionInitialized(self) -> None:
        self._seen = self.xmlstream.stanzasReceived
        self._silentChecks = 0
        self._pinging = False
        self._dueAt = self.clock.seconds()
        self._arm(self._step)

    def connectionLost(self, reason: object) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _arm(self, delay: float) -> None:
        # From when the last check was due, not from when it ran, so a late
        # timer does not push every later check back; but never in the past:
        # after a long stall the reactor reads what arrived before the next
        # check looks.
        now = self.clock.seconds()
        self._dueAt = max(self._dueAt + delay, now)
        self._timer = self.clock.callLater(self._dueAt - now, self._check)

    def _check(self) -> None:
        self._timer = None
        xs = self.xmlstream
        received = xs.stanzasReceived
        heard, self._seen = received != self._seen, received
        if self._pinging:
            self._pinging = False
            if not heard:
                xs.dispatch(
                    ConnectionStalled(self.idleTimeout + self.pingTimeout),
                    CONNECTION_FAILED_EVENT,
                )
                transport = xs.transport
                if transport is not None:
                    getattr(transport, "abortConnection", transport.loseConnection)()
                return
            self._log.debug("The server answered the keepalive ping")
            self._silentChecks = 0
        elif heard:
            self._silentChecks = 0
        else:
            self._silentChecks += 1
            if self._silentChecks >= 2:
                self._silentChecks = 0
                self._ping()
                return
        self._arm(self._step)

    def _ping(self) -> None:
        iq = domish.Element((None, "iq"))
        iq["type"] = "get"
        iq["to"] = self.domain()
        iq["id"] = "yadiskpush-keepalive-" + secrets.token_hex(4)
        iq.addElement((NS_PING, "ping"))
        self._log.debug(
            "No data for {idle:g} s; pinging the server", idle=self.idleTimeout
        )
        self._pinging = True
        self.xmlstream.send(iq)
        self._arm(self.pingTimeout)
