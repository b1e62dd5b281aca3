"""Drops a connection whose server stopped reading what the client sends."""

from __future__ import annotations

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from wokkel.subprotocols import XMPPHandler
from zope.interface import implementer

from yadiskpush.connection.authenticator import CONNECTION_FAILED_EVENT
from yadiskpush.connection.stream import STREAM_CLOSING_EVENT
from yadiskpush.errors import ServerStoppedReading
from yadiskpush.logs import Logger


@implementer(IPushProducer)
class WriteStallHandler(XMPPHandler):
    """
    A server that stops reading while it keeps sending (pings, pushes) makes
    the client's answers pile up in the outgoing buffer, without bound, and
    the keepalive never notices: data keeps arriving.

    This handler registers itself as the transport's producer, so the
    transport tells it when its buffer is full (``pauseProducing``) and
    when it drained (``resumeProducing``), Twisted's own flow control. While
    the buffer is full the client stops reading too (nothing more to
    answer, nothing more buffered); if it stays full for ``stallTimeout``
    seconds, the connection ends with :class:`ServerStoppedReading`.
    """

    _log = Logger()

    def __init__(
        self, clock: IReactorTime, stallTimeout: float, log: Logger | None = None
    ) -> None:
        super().__init__()
        self.clock = clock
        self.stallTimeout = stallTimeout
        self.paused = False
        self._timer: IDelayedCall | None = None
        if log is not None:
            self._log = log

    def connectionInitialized(self) -> None:
        self.paused = False
        self.xmlstream.transport.registerProducer(self, True)
        self.xmlstream.addObserver(STREAM_CLOSING_EVENT, self._closing)

    def _closing(self, xs: object) -> None:
        # TLS does not shut down while a producer is registered: let go.
        self._cancel()
        transport = self.xmlstream.transport if self.xmlstream else None
        if transport is not None:
            transport.unregisterProducer()

    def connectionLost(self, reason: object) -> None:
        self._cancel()
        self.paused = False

    def pauseProducing(self) -> None:
        if self.paused:
            return
        self.paused = True
        self._log.debug("The server is not reading; holding back")
        transport = self.xmlstream.transport if self.xmlstream else None
        if transport is not None:
            transport.pauseProducing()
        self._timer = self.clock.callLater(self.stallTimeout, self._stalled)

    def resumeProducing(self) -> None:
        if not self.paused:
            return
        self.paused = False
        self._cancel()
        transport = self.xmlstream.transport if self.xmlstream else None
        if transport is not None:
            transport.resumeProducing()

    def stopProducing(self) -> None:
        self._cancel()

    def _stalled(self) -> None:
        self._timer = None
        xs = self.xmlstream
        if xs is None or xs.transport is None:
            return
        xs.dispatch(ServerStoppedReading(self.stallTimeout), CONNECTION_FAILED_EVENT)
        xs.transport.abortConnection()

    def _cancel(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
