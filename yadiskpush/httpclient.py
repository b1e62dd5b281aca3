"""
The pieces of an HTTP client that the OAuth client and the webhook sender
share: TLS verified against the host dialled, a connection pool that does
not log every connection, and a request body written at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.ssl import optionsForClientTLS
from twisted.web.client import HTTPConnectionPool
from twisted.web.iweb import IBodyProducer, IPolicyForHTTPS
from zope.interface import implementer


@implementer(IPolicyForHTTPS)
class VerifyingPolicy:
    """
    TLS for the agent: the certificate must chain to ``trustRoot`` and name
    the host dialled (Twisted's ``optionsForClientTLS``).
    """

    def __init__(self, trustRoot: Any) -> None:
        self._trustRoot = trustRoot

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return optionsForClientTLS(hostname.decode("ascii"), trustRoot=self._trustRoot)


class QuietPool(HTTPConnectionPool):
    """
    A pool whose connection factory does not log "Starting factory" and
    "Stopping factory" at info for every request (the daemon refreshes
    tokens and posts webhooks in the background; those lines would be its
    only noise). ``_factory`` is
    Twisted's private hook for the factory class: if it goes away, the lines
    come back and nothing else changes.
    """

    class _factory(HTTPConnectionPool._factory):  # type: ignore[name-defined,misc]
        noisy = False


@implementer(IBodyProducer)
class ImmediateBody:
    """
    A small request body written at once: treq's default producer writes
    through the global cooperator, off the injected reactor.
    """

    def __init__(self, data: str | bytes) -> None:
        self._data = data.encode("ascii") if isinstance(data, str) else data
        self.length = len(self._data)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        consumer.write(self._data)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def cancelAfter(d: Deferred[Any], seconds: float, reactor: Any) -> Callable[[], bool]:
    """
    Cancel ``d`` if it has not fired within ``seconds``.

    :returns: a function telling whether the time ran out, so that the
        caller's errback can tell a timeout from another failure. Not
        ``Deferred.addTimeout``: the agent reports a cancelled request as
        ``ResponseNeverReceived``, not as the ``CancelledError`` that
        ``addTimeout`` recognises.
    """
    timedOut: list[bool] = []

    def timeUp() -> None:
        timedOut.append(True)
        d.cancel()

    timer = reactor.callLater(seconds, timeUp)

    def stopTimer(result: object) -> object:
        if timer.active():
            timer.cancel()
        return result

    d.addBoth(stopTimer)
    return lambda: bool(timedOut)


__all__ = ["ImmediateBody", "QuietPool", "VerifyingPolicy", "cancelAfter"]
