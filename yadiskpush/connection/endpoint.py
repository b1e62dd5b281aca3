"""
Where the next connection goes: the STARTTLS port, or the direct-TLS port
when the first cannot be reached, or a redirect target.

The vendor's page says: port 5222 with STARTTLS; if it is not available,
port 443 with TLS from the first byte. :class:`Dialer` plans the
:class:`~yadiskpush.connection.attempt.Attempt` list for each connection
(each attempt built with its own TLS verifier, before it dials) and connects
them in turn. It remembers which port worked last, can be told to prefer the
TLS port (a middlebox may be stripping STARTTLS, or stalling it), and sends
exactly the next connection to a ``see-other-host`` target.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet import error as netError
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol

from yadiskpush.connection.attempt import DIRECT_TLS, STARTTLS, Attempt
from yadiskpush.connection.tls import TLSContexts
from yadiskpush.errors import ConnectFailed
from yadiskpush.logs import Logger
from yadiskpush.secret import Secret
from yadiskpush.settings import Settings

__all__ = ["DIRECT_TLS", "STARTTLS", "Dialer", "hostnameEndpoint"]

# Failures that mean "this port is not reachable", where the other port may
# still be: refused, timed out, no route, reset while connecting.
_UNREACHABLE = (netError.ConnectError, netError.TimeoutError)

#: Makes the endpoint an attempt dials (injectable, for tests and for
#: applications that route connections their own way).
EndpointFactory = Callable[[Any, Attempt, float], IStreamClientEndpoint]


def hostnameEndpoint(reactor: Any, attempt: Attempt, timeout: float) -> Any:
    """The default: TCP via ``HostnameEndpoint``, TLS first for direct TLS."""
    plain = HostnameEndpoint(reactor, attempt.host, attempt.port, timeout=timeout)
    if attempt.tlsFromFirstByte:
        return wrapClientTLS(attempt.tls, plain)
    return plain


class _AttemptFactory(Factory):
    """Builds the one stream of one attempt, handing it the attempt."""

    noisy = False

    def __init__(self, buildStream: Callable[[Attempt], Protocol], attempt: Attempt):
        self.buildStream = buildStream
        self.attempt = attempt

    def buildProtocol(self, addr: Any) -> Protocol:
        return self.buildStream(self.attempt)


class Dialer:
    """
    Plans and dials the attempts of each connection.

    :ivar lastMode: :data:`STARTTLS` or :data:`DIRECT_TLS`, whichever
        connected to ``--host`` last (``None`` before the first connection).
    :ivar preferDirectTLS: start with the direct-TLS port next time.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        settings: Settings,
        tlsContexts: TLSContexts,
        endpointFactory: EndpointFactory = hostnameEndpoint,
        log: Logger | None = None,
    ) -> None:
        self.reactor = reactor
        self.settings = settings
        self.tlsContexts = tlsContexts
        self.endpointFactory = endpointFactory
        self.lastMode: str | None = None
        self.preferDirectTLS = False
        self._redirect: tuple[str, int] | None = None
        if log is not None:
            self._log = log

    def redirect(self, host: str, port: int) -> None:
        """
        Send the next connection (only) to ``host:port`` with STARTTLS, for a
        server's ``see-other-host``. Its certificate must name both ``host``
        and ``--host`` (RFC 6120 §4.9.3.19: the same reference identity as
        the original connection).
        """
        self._redirect = (host, port)

    def plan(self, token: Secret) -> list[Attempt]:
        """The attempts of the next connection, in the order to try them."""
        settings = self.settings
        if self._redirect is not None:
            host, port = self._redirect
            self._redirect = None
            tls = self.tlsContexts.connectorFor(
                host, settings.caFile, alsoVerify=(settings.host,)
            )
            return [Attempt(host, port, STARTTLS, tls, token, redirected=True)]
        tls = self.tlsContexts.connectorFor(settings.host, settings.caFile)
        attempts = [Attempt(settings.host, settings.port, STARTTLS, tls, token)]
        if settings.tlsPort:
            direct = self.tlsContexts.connectorFor(settings.host, settings.caFile)
            attempts.append(
                Attempt(settings.host, settings.tlsPort, DIRECT_TLS, direct, token)
            )
            if self.preferDirectTLS:
                attempts.reverse()
        return attempts

    @defer.inlineCallbacks
    def connect(
        self, attempts: list[Attempt], buildStream: Callable[[Attempt], Protocol]
    ) -> Any:
        """
        Try each attempt in turn; fire with the protocol of the first that
        connects (built by ``buildStream(attempt)``).

        :raises ConnectFailed: naming every port tried and why it failed.
        """
        problems = []
        for attempt in attempts:
            self._log.debug("Connecting to {attempt}", attempt=str(attempt))
            endpoint = self.endpointFactory(
                self.reactor, attempt, self.settings.connectTimeout
            )
            factory: IProtocolFactory = _AttemptFactory(buildStream, attempt)
            try:
                protocol = yield endpoint.connect(factory)
            except _UNREACHABLE as e:
                reason = _describeConnectError(e)
                self._log.debug(
                    "Cannot reach {attempt}: {reason}",
                    attempt=str(attempt),
                    reason=reason,
                )
                problems.append(f"{attempt.host}:{attempt.port}: {reason}")
                continue
            except netError.DNSLookupError:
                raise ConnectFailed(
                    f"cannot resolve the host name {attempt.host!r}"
                ) from None
            self._log.debug("Connected to {attempt}", attempt=str(attempt))
            if not attempt.redirected:
                self.lastMode = attempt.mode
                self.preferDirectTLS = attempt.mode == DIRECT_TLS
            return protocol
        raise ConnectFailed(f"cannot connect ({'; '.join(problems)})")

    def __repr__(self) -> str:
        s = self.settings
        ports = f"{s.port}, {s.tlsPort}" if s.tlsPort else str(s.port)
        return f"<{s.host} ports {ports}>"


def _describeConnectError(e: Exception) -> str:
    if isinstance(e, netError.ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, netError.TimeoutError):
        return "timed out"
    if isinstance(e, netError.NoRouteError):
        return "no route to host"
    return str(e) or type(e).__name__
