"""
Where the client connects: the STARTTLS port, or the direct-TLS port when the
first cannot be reached, and the TLS options both use.

The vendor's page says: port 5222 with STARTTLS; if it is not available,
port 443 with TLS from the first byte. :class:`FallbackEndpoint` is one
``IStreamClientEndpoint`` with that choice behind it, so ``ClientService``
owns the whole connection. It remembers which port worked last and starts
there next time, and a server that stops offering STARTTLS makes it prefer
the TLS port (a middlebox may be stripping STARTTLS).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet import error as netError
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import (
    Certificate,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.logger import Logger
from zope.interface import implementer

from yadiskpush.errors import ConfigurationError, ConnectFailed
from yadiskpush.settings import Settings

STARTTLS = "STARTTLS"
DIRECT_TLS = "direct TLS"

# Failures that mean "this port is not reachable", where the other port may
# still be: refused, timed out, no route, reset while connecting.
_UNREACHABLE = (
    netError.ConnectError,
    netError.TimeoutError,
)


def loadTrustRoot(caFile: str | None) -> Any:
    """
    The CAs to trust: every certificate in ``caFile``, or the platform's.

    :raises ConfigurationError: if the file cannot be read or holds no
        certificate.
    """
    if caFile is None:
        return platformTrust()
    try:
        with open(caFile, "rb") as pemFile:
            pem = pemFile.read()
    except OSError as e:
        raise ConfigurationError(
            f"cannot read the CA file {caFile}: {e.strerror or e}"
        ) from None
    marker = b"-----END CERTIFICATE-----"
    blocks = [b + marker for b in pem.split(marker) if b.strip()]
    try:
        certificates = [Certificate.loadPEM(b) for b in blocks]
    except Exception:
        certificates = []
    if not certificates:
        raise ConfigurationError(f"the CA file {caFile} holds no PEM certificate")
    return trustRootFromCertificates(certificates)


def tlsOptionsFor(settings: Settings, host: str | None = None) -> Any:
    """
    TLS client options that verify the certificate against the host dialled
    (not the XMPP domain, which differs: ``push.xmpp.yandex.ru`` vs ``ya.ru``).
    """
    return optionsForClientTLS(
        host or settings.host, trustRoot=loadTrustRoot(settings.caFile)
    )


@implementer(IStreamClientEndpoint)
class FallbackEndpoint:
    """
    Connects to the STARTTLS port, falling back to the direct-TLS port.

    :ivar lastMode: :data:`STARTTLS` or :data:`DIRECT_TLS`, whichever
        connected last (``None`` before the first connection).
    :ivar preferDirectTLS: start with the direct-TLS port next time.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        settings: Settings,
        tlsOptions: Any,
        log: Logger | None = None,
    ) -> None:
        self.reactor = reactor
        self.host = settings.host
        self.port = settings.port
        self.tlsPort = settings.tlsPort
        self.connectTimeout = settings.connectTimeout
        self.tlsOptions = tlsOptions
        self.lastMode: str | None = None
        self.preferDirectTLS = False
        self.onConnectFailed: Callable[[ConnectFailed], None] | None = None
        self._redirect: tuple[str, int, Any] | None = None
        self.connectedHost = self.host
        self.connectedTLSOptions = tlsOptions
        if log is not None:
            self._log = log

    def redirect(self, host: str, port: int, tlsOptions: Any) -> None:
        """
        Make the next connection (only) go to ``host:port`` with STARTTLS,
        for a server's ``see-other-host``; the certificate is then checked
        against ``host`` by ``tlsOptions``.
        """
        self._redirect = (host, port, tlsOptions)

    def _plain(self, port: int, host: str | None = None) -> HostnameEndpoint:
        return HostnameEndpoint(
            self.reactor, host or self.host, port, timeout=self.connectTimeout
        )

    def _attempts(self) -> list[tuple[str, str, int, Any, Any]]:
        if self._redirect is not None:
            host, port, options = self._redirect
            self._redirect = None
            return [(STARTTLS, host, port, self._plain(port, host), options)]
        attempts = [
            (STARTTLS, self.host, self.port, self._plain(self.port), self.tlsOptions)
        ]
        if self.tlsPort:
            direct = wrapClientTLS(self.tlsOptions, self._plain(self.tlsPort))
            attempts.append(
                (DIRECT_TLS, self.host, self.tlsPort, direct, self.tlsOptions)
            )
            if self.preferDirectTLS:
                attempts.reverse()
        return attempts

    @defer.inlineCallbacks
    def connect(self, protocolFactory: Any) -> Any:
        """
        Try each port in turn; fire with the protocol of the first that
        connects.

        :raises ConnectFailed: naming every port tried and why it failed.
        """
        problems = []
        for mode, host, port, endpoint, options in self._attempts():
            self._log.info(
                "Connecting to {host}:{port} ({mode})",
                host=host,
                port=port,
                mode=mode,
            )
            try:
                protocol = yield endpoint.connect(protocolFactory)
            except _UNREACHABLE as e:
                reason = _describeConnectError(e)
                self._log.info(
                    "Cannot reach {host}:{port}: {reason}",
                    host=host,
                    port=port,
                    reason=reason,
                )
                problems.append(f"{host}:{port}: {reason}")
                continue
            except netError.DNSLookupError:
                raise self._failed(
                    ConnectFailed(f"cannot resolve the host name {host!r}")
                ) from None
            self._log.info(
                "Connected to {host}:{port} ({mode})",
                host=host,
                port=port,
                mode=mode,
            )
            self.connectedHost = host
            self.connectedTLSOptions = options
            if host == self.host:
                self.lastMode = mode
                self.preferDirectTLS = mode == DIRECT_TLS
            return protocol
        raise self._failed(ConnectFailed(f"cannot connect ({'; '.join(problems)})"))

    def _failed(self, reason: ConnectFailed) -> ConnectFailed:
        if self.onConnectFailed is not None:
            self.onConnectFailed(reason)
        return reason

    def __repr__(self) -> str:
        ports = f"{self.port}, {self.tlsPort}" if self.tlsPort else str(self.port)
        return f"<{self.host} ports {ports}>"


def _describeConnectError(e: Exception) -> str:
    if isinstance(e, netError.ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, netError.TimeoutError):
        return "timed out"
    if isinstance(e, netError.NoRouteError):
        return "no route to host"
    return str(e) or type(e).__name__
