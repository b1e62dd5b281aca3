"""
The process-wide limit on handshakes in flight.

A handshake (TCP connect, TLS, SASL, bind, session) costs the client a few
milliseconds of CPU and the server more. Ten thousand accounts starting at
once, or dropped at once by the server, would otherwise all handshake in the
same second. Each connection attempt takes a slot of the
:class:`HandshakeGate` before it dials and gives it back once its session is
open, or when it fails; the others wait in line, first come first served.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from twisted.internet import defer

#: The default limit: enough to bring 10,000 accounts up in well under a
#: minute on loopback, few enough not to look like a flood to the server.
DEFAULT_MAX_HANDSHAKES = 50

Release = Callable[[], None]


class HandshakeGate:
    """
    At most ``limit`` holders at once; the rest wait in order.

    :meth:`acquire` returns a Deferred that fires with a ``release``
    function once a slot is free. Calling ``release`` more than once is
    harmless, so every way an attempt can end may call it. Cancelling the
    Deferred before it fires leaves the line.

    :ivar inFlight: slots held now.
    :ivar mostInFlight: the most slots ever held at once.
    """

    def __init__(self, limit: int = DEFAULT_MAX_HANDSHAKES) -> None:
        if limit < 1:
            raise ValueError("the handshake limit must be at least 1")
        self.limit = limit
        self.inFlight = 0
        self.mostInFlight = 0
        self._waiting: deque[defer.Deferred[Release]] = deque()

    @property
    def waiting(self) -> int:
        """Attempts waiting for a slot."""
        return len(self._waiting)

    def acquire(self) -> defer.Deferred[Release]:
        """Fire with a ``release`` function once a slot is free."""
        if self.inFlight < self.limit and not self._waiting:
            return defer.succeed(self._take())
        d: defer.Deferred[Release] = defer.Deferred(self._leaveLine)
        self._waiting.append(d)
        return d

    def _leaveLine(self, d: defer.Deferred[Release]) -> None:
        try:
            self._waiting.remove(d)
        except ValueError:
            pass

    def _take(self) -> Release:
        self.inFlight += 1
        if self.inFlight > self.mostInFlight:
            self.mostInFlight = self.inFlight
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self.inFlight -= 1
            self._admit()

        return release

    def _admit(self) -> None:
        while self._waiting and self.inFlight < self.limit:
            self._waiting.popleft().callback(self._take())
