"""
One connection to Redis kept open: connect (TLS verifying the host dialled,
when asked), ``AUTH``, ``SELECT``, ``PING``, hand the connection to its user,
and after a failure or a loss try again, with exponential backoff and full
jitter on the reactor's clock.

It is quiet: the first failure of an outage is one warning and the end of
the outage one info line; the retries in between log nothing unless the
reason changes (say, from "connection refused" to "WRONGPASS").
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from typing import Any

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from yadiskpush.connection.tls import TLSContexts, VerifyingConnector
from yadiskpush.logs import Logger
from yadiskpush.redis.address import RedisAddress
from yadiskpush.redis.protocol import RedisProtocol
from yadiskpush.secret import Secret

#: The first backoff window, in seconds.
INITIAL_DELAY = 0.5

#: The largest backoff window, in seconds.
MAX_DELAY = 30.0

#: Seconds a TCP connect may take.
CONNECT_TIMEOUT = 10.0


def backoffDelay(
    failures: int,
    random: Callable[[], float] = _random.random,
    initialDelay: float = INITIAL_DELAY,
    maxDelay: float = MAX_DELAY,
) -> float:
    """
    The wait before the next attempt after ``failures`` failures in a row:
    a random point of a window that doubles up to ``maxDelay`` (full
    jitter), so that many clients dropped at once do not come back at once.
    """
    exponent = min(max(0, failures - 1), 64)
    return random() * min(maxDelay, initialDelay * 2.0**exponent)


class _Factory(Factory):
    def __init__(self, build: Callable[[], RedisProtocol]) -> None:
        self.build = build

    def buildProtocol(self, addr: Any) -> RedisProtocol:
        return self.build()


class RedisConnection:
    """
    Keeps one ready connection to the Redis at ``address``.

    :param onReady: called with each new connection once it is
        authenticated and has its database selected; it may return a
        Deferred (its own preparation): the connection counts as ready when
        that fires, and as failed if it fails.
    :param onLost: called when a ready connection ends.
    :param password: sent with ``AUTH`` (and the address's user name).
    :param caFile: the CAs trusted for ``rediss://``; the system's if
        ``None``.
    :param endpoint: makes the endpoint of each attempt; by default TCP (and
        TLS for ``rediss://``) to the address.
    :raises ConfigurationError: if the CA file is unusable.
    """

    _log = Logger()

    def __init__(
        self,
        address: RedisAddress,
        reactor: Any,
        onReady: Callable[[RedisProtocol], defer.Deferred[Any] | None],
        onLost: Callable[[], None],
        password: Secret | None = None,
        caFile: str | None = None,
        tlsContexts: TLSContexts | None = None,
        replyTimeout: float = 30.0,
        random: Callable[[], float] = _random.random,
        endpoint: Callable[[], IStreamClientEndpoint] | None = None,
        log: Logger | None = None,
    ) -> None:
        self.address = address
        self.reactor = reactor
        self.onReady = onReady
        self.onLost = onLost
        self._password = password
        self.caFile = caFile
        self.replyTimeout = replyTimeout
        self.random = random
        if log is not None:
            self._log = log
        self._tlsContexts = tlsContexts or TLSContexts()
        if address.tls:
            # An unusable CA file is a ConfigurationError now, not a retry loop.
            self._tlsContexts.contextFor(caFile)
        self._makeEndpoint = endpoint or self._defaultEndpoint
        self._connector: VerifyingConnector | None = None
        self.protocol: RedisProtocol | None = None
        self.ready = False
        self.failures = 0
        self._stopping = False
        self._started = False
        self._retry: IDelayedCall | None = None
        self._attempt: defer.Deferred[Any] | None = None
        self._outageSince: float | None = None
        self._loggedReason: str | None = None
        self._everReady = False

    def start(self) -> None:
        """Connect now, and keep reconnecting until :meth:`stop`."""
        if self._started:
            return
        self._started = True
        self._connect()

    def stop(self) -> defer.Deferred[None]:
        """Stop reconnecting and close the connection; never fails."""
        self._stopping = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._attempt is not None:
            self._attempt.cancel()
        protocol = self.protocol
        if protocol is None or protocol.lost or protocol.transport is None:
            return defer.succeed(None)
        done: defer.Deferred[None] = defer.Deferred()
        protocol.whenLost.addBoth(lambda _: done.callback(None))
        protocol.transport.loseConnection()
        return done

    def _defaultEndpoint(self) -> IStreamClientEndpoint:
        address = self.address
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            self.reactor, address.host, address.port, timeout=CONNECT_TIMEOUT
        )
        if address.tls:
            self._connector = self._tlsContexts.connectorFor(address.host, self.caFile)
            endpoint = wrapClientTLS(self._connector, endpoint)
        return endpoint

    def _connect(self) -> None:
        self._retry = None
        if self._stopping:
            return
        factory = _Factory(lambda: RedisProtocol(self.reactor, self.replyTimeout))
        self._connector = None
        d = self._makeEndpoint().connect(factory)
        self._attempt = d
        d.addCallback(self._prepare)
        d.addCallbacks(self._ready, self._failed)

    @defer.inlineCallbacks
    def _prepare(self, protocol: RedisProtocol) -> Any:
        self.protocol = protocol
        protocol.whenLost.addBoth(self._lost, protocol)
        if self._password is not None:
            if self.address.username:
                yield protocol.execute(
                    "AUTH", self.address.username, self._password.reveal()
                )
            else:
                yield protocol.execute("AUTH", self._password.reveal())
        if self.address.db:
            yield protocol.execute("SELECT", self.address.db)
        yield protocol.execute("PING")
        yield self.onReady(protocol)
        return protocol

    def _ready(self, protocol: RedisProtocol) -> None:
        self._attempt = None
        if protocol.lost:
            # Lost during onReady's work: _lost has scheduled the retry.
            return
        self.ready = True
        self.failures = 0
        self._loggedReason = None
        if self._outageSince is not None:
            self._log.info(
                "Redis at {address} is back after {seconds:.1f} s",
                address=str(self.address),
                seconds=self.reactor.seconds() - self._outageSince,
            )
        elif not self._everReady:
            self._log.info("Connected to Redis at {address}", address=str(self.address))
        self._outageSince = None
        self._everReady = True

    def _failed(self, failure: Failure) -> None:
        self._attempt = None
        if self._stopping:
            return
        protocol = self.protocol
        if protocol is not None and protocol.lostFailure is not None:
            # Why the connection ended says more than "lost before the reply".
            failure = protocol.lostFailure
        self._noteFailure(self._reason(failure))
        if protocol is not None and not protocol.lost:
            # AUTH or onReady failed on an open connection: close it; _lost
            # schedules the retry once it is gone.
            assert protocol.transport is not None
            protocol.transport.abortConnection()  # type: ignore[attr-defined]
        else:
            self._scheduleRetry()

    def _lost(self, reason: Failure, protocol: RedisProtocol) -> None:
        if protocol is not self.protocol:
            return
        wasReady = self.ready
        self.ready = False
        self.protocol = None
        if wasReady:
            why = protocol.lostBecause or self._reason(reason)
            self._noteFailure(f"the connection was lost ({why})")
            self.onLost()
        self._scheduleRetry()

    def _reason(self, failure: Failure) -> str:
        host = self.address.host
        problem = self._connector.verifyProblem() if self._connector else None
        if problem is not None:
            return f"TLS with {host} failed: {problem}"
        if failure.check(VerificationError):
            return (
                f"TLS with {host} failed: the certificate is not valid for the "
                "host name dialled (check the host of --redis)"
            )
        message = failure.getErrorMessage() or failure.type.__name__
        if failure.check(SSL.Error):
            return f"TLS with {host} failed: {message}"
        return message

    def _noteFailure(self, reason: str) -> None:
        if self._stopping:
            return
        if self._outageSince is None:
            self._outageSince = self.reactor.seconds()
        if reason != self._loggedReason:
            self._loggedReason = reason
            self._log.warn(
                "Redis at {address} is unavailable: {reason}; pushes are held "
                "(not acknowledged) until it is back",
                address=str(self.address),
                reason=reason,
            )

    def _scheduleRetry(self) -> None:
        if self._stopping or self._retry is not None:
            return
        self.failures += 1
        delay = backoffDelay(self.failures, self.random)
        self._retry = self.reactor.callLater(delay, self._connect)
