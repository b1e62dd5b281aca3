"""
The initializer chain of one connection, and the client factory.

The order follows the vendor's page: stream header, STARTTLS (required unless
TLS began with the first byte), optional zlib, ``X-YANDEX-OAUTH``, optional
zlib again (for servers that offer it only after SASL, XEP-0170), resource
bind, session. The authenticator also keeps the per-connection facts the
service needs: whether the stream is encrypted, which step is running, and
the specific error that ended the attempt.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.words.protocols.jabber import client, xmlstream
from twisted.words.protocols.jabber.jid import JID
from zope.interface import providedBy

from yadiskpush.connection.compression import CompressionInitiatingInitializer
from yadiskpush.connection.sasl import YandexOAuthInitializer
from yadiskpush.connection.stream import PushXmlStream, PushXmlStreamFactory
from yadiskpush.errors import HandshakeTimeout, StartTLSNotOffered, YaDiskPushError
from yadiskpush.failures import describeFailure
from yadiskpush.settings import Settings


def transportIsEncrypted(transport: Any) -> bool:
    """
    Whether TLS is already under this transport: a direct-TLS connection is
    wrapped in ``TLSMemoryBIOProtocol``; after STARTTLS, Twisted marks the
    TCP transport with ``ISSLTransport``.
    """
    from twisted.internet.interfaces import ISSLTransport

    inner = getattr(transport, "wrappedTransport", transport)
    return isinstance(inner, TLSMemoryBIOProtocol) or ISSLTransport in providedBy(inner)


class RequiredTLSInitializer(xmlstream.TLSInitiatingInitializer):
    """
    STARTTLS that is never optional: if the stream is not encrypted yet and
    the server does not offer ``<starttls/>``, fail with
    :class:`StartTLSNotOffered` before anything else is sent.
    """

    def initialize(self) -> defer.Deferred[object] | None:
        authenticator = self.xmlstream.authenticator
        if authenticator.encrypted:
            return None
        if self.feature not in self.xmlstream.features:
            raise StartTLSNotOffered(authenticator.host, authenticator.connectedPort)
        authenticator.step = "STARTTLS"
        # The options for the host actually dialled (it may be a redirect).
        self._configurationForTLS = authenticator.tlsOptions
        return self.start()

    def onProceed(self, obj: object) -> None:
        authenticator = self.xmlstream.authenticator
        authenticator.encrypted = True
        authenticator.step = "TLS handshake"
        authenticator._log.info(
            "STARTTLS accepted; TLS handshake with {host}", host=authenticator.host
        )
        super().onProceed(obj)


class _Step:
    """Names the step an initializer performs, for logs and errors."""

    def __init__(self, name: str, initializer: Any) -> None:
        self.name = name
        self.initializer = initializer

    def initialize(self) -> object:
        self.initializer.xmlstream.authenticator.step = self.name
        return self.initializer.initialize()


class YandexAuthenticator(xmlstream.ConnectAuthenticator):
    """
    Initializes one connection to the push server as the configured account.

    One authenticator serves every connection of a service, one at a time;
    :meth:`connectionMade` resets the per-connection state.

    :ivar jid: the JID; after bind, the one the server assigned.
    :ivar encrypted: whether TLS is established (or being established).
    :ivar step: the handshake step in progress, for error messages.
    :ivar failureReason: the specific error that ended this attempt, if any.
    :ivar sessionOpen: whether bind and session completed.
    """

    namespace = "jabber:client"
    _log = Logger()

    def __init__(
        self,
        settings: Settings,
        tlsOptions: Any,
        clock: IReactorTime,
        log: Logger | None = None,
    ) -> None:
        xmlstream.ConnectAuthenticator.__init__(self, settings.domain)
        self.settings = settings
        self.login = settings.login
        self.token = settings.token
        self.host = settings.host
        self.tlsOptions = tlsOptions
        self.clock = clock
        if log is not None:
            self._log = log
        self.jid = JID(tuple=(settings.login, settings.domain, settings.resource))
        self.encrypted = False
        self.step = "connecting"
        self.connectedPort = settings.port
        self.failureReason: YaDiskPushError | None = None
        self.redirectTarget: str | None = None
        self.sessionOpen = False
        self._tlsReported = False
        self._handshakeTimer: IDelayedCall | None = None
        self.onFailure: Callable[[YaDiskPushError], None] | None = None

    def associateWithStream(self, xs: PushXmlStream) -> None:
        xmlstream.ConnectAuthenticator.associateWithStream(self, xs)
        compress = self.settings.compress
        xs.initializers = [
            _Step("stream negotiation", client.CheckVersionInitializer(xs)),
            RequiredTLSInitializer(
                xs, required=True, configurationForTLS=self.tlsOptions
            ),
            _Step("compression", CompressionInitiatingInitializer(xs, compress)),
            _Step("authentication", YandexOAuthInitializer(xs, required=True)),
            _Step("compression", CompressionInitiatingInitializer(xs, compress)),
            _Step("resource binding", client.BindInitializer(xs, required=True)),
            _Step("session", client.SessionInitializer(xs, required=False)),
        ]
        xs.addObserver(xmlstream.INIT_FAILED_EVENT, self._initializationFailed)
        xs.addObserver(xmlstream.STREAM_ERROR_EVENT, self._streamError)
        xs.addObserver(xmlstream.STREAM_AUTHD_EVENT, self._sessionOpened)
        xs.addObserver(xmlstream.STREAM_END_EVENT, self._connectionEnded)
        xs.addObserver(
            f"/error[@xmlns='{xmlstream.NS_STREAMS}']", self._readRedirect, 1
        )

    def connectionMade(self) -> None:
        xs = self.xmlstream
        self.encrypted = transportIsEncrypted(xs.transport)
        self.failureReason = None
        self.redirectTarget = None
        self.sessionOpen = False
        self._tlsReported = False
        self.jid = JID(
            tuple=(self.settings.login, self.settings.domain, self.settings.resource)
        )
        peer = xs.transport.getPeer()
        self.connectedPort = getattr(peer, "port", self.settings.port)
        self.step = "stream header"
        self._handshakeTimer = self.clock.callLater(
            self.settings.handshakeTimeout, self._handshakeTimedOut
        )
        xmlstream.ConnectAuthenticator.connectionMade(self)

    def streamStarted(self, rootElement: Any) -> None:
        if self.encrypted and not self._tlsReported:
            # Data arrived through TLS, so the certificate passed verification
            # (after STARTTLS, or on the direct-TLS port).
            self._tlsReported = True
            self._log.info(
                "TLS established; certificate verified for {host}", host=self.host
            )
        xmlstream.ConnectAuthenticator.streamStarted(self, rootElement)

    def fail(self, reason: YaDiskPushError) -> None:
        """Record why this attempt ends (first reason wins) and close."""
        if self.failureReason is None:
            self.failureReason = reason
            if self.onFailure is not None:
                self.onFailure(reason)
        xs = self.xmlstream
        if xs is not None and xs.transport is not None:
            xs.sendFooter()
            xs.transport.loseConnection()

    def _initializationFailed(self, reason: Failure) -> None:
        self._cancelHandshakeTimer()
        self.fail(describeFailure(reason, self.host, self.step))

    def _streamError(self, reason: Failure) -> None:
        if self.failureReason is None:
            self.failureReason = describeFailure(reason, self.host, self.step)
            if self.onFailure is not None:
                self.onFailure(self.failureReason)

    def _readRedirect(self, element: Any) -> None:
        """
        Keep the target of ``see-other-host`` (Twisted's StreamError drops
        the element's content). Honoured only over TLS: before that, anyone
        on the path could send us elsewhere.
        """
        for child in element.elements():
            if child.name == "see-other-host" and self.encrypted:
                self.redirectTarget = str(child).strip() or None

    def _sessionOpened(self, xs: PushXmlStream) -> None:
        self._cancelHandshakeTimer()
        self.sessionOpen = True
        self.step = "session"

    def _connectionEnded(self, reason: Failure) -> None:
        self._cancelHandshakeTimer()
        if self.failureReason is None and not self.sessionOpen:
            self.failureReason = describeFailure(reason, self.host, self.step)
            if self.onFailure is not None:
                self.onFailure(self.failureReason)

    def _handshakeTimedOut(self) -> None:
        self._handshakeTimer = None
        self.fail(HandshakeTimeout(self.settings.handshakeTimeout, self.step))
        transport = self.xmlstream.transport if self.xmlstream else None
        if transport is not None and hasattr(transport, "abortConnection"):
            transport.abortConnection()

    def _cancelHandshakeTimer(self) -> None:
        if self._handshakeTimer is not None and self._handshakeTimer.active():
            self._handshakeTimer.cancel()
        self._handshakeTimer = None


def makeClientFactory(authenticator: YandexAuthenticator) -> PushXmlStreamFactory:
    """The stream factory for a service, like Twisted's ``XMPPClientFactory``."""
    return PushXmlStreamFactory(authenticator, authenticator.settings.maxStanzaSize)
