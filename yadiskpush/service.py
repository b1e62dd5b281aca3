"""
The public service: one account's push connection, from start to clean stop.

:class:`PushService` is what an application adds to its ``Application`` or
``MultiService`` (the twistd plugin does exactly that). Inside, Twisted's
``ClientService`` owns the connection and its reconnects, behind the
STARTTLS/direct-TLS :class:`~yadiskpush.connection.endpoint.FallbackEndpoint`; wokkel's
``StreamManager`` routes stanzas to the handlers.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from OpenSSL import SSL
from twisted.application import service
from twisted.application.internet import ClientService
from twisted.internet import defer, task
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)
from twisted.python.failure import Failure
from twisted.words.protocols.jabber import xmlstream
from twisted.words.protocols.jabber.jid import JID
from wokkel.generic import FallbackHandler
from wokkel.subprotocols import StreamManager, XMPPHandler

from yadiskpush.connection.authenticator import YandexAuthenticator, makeClientFactory
from yadiskpush.connection.compression import (
    COMPRESSION_REFUSED_EVENT,
    COMPRESSION_STARTED_EVENT,
)
from yadiskpush.connection.endpoint import FallbackEndpoint, tlsOptionsFor
from yadiskpush.connection.sasl import oauthPayload
from yadiskpush.connection.stream import PushXmlStream, redactTraffic
from yadiskpush.errors import (
    ConfigurationError,
    ConnectionLostError,
    StartTLSNotOffered,
    StreamErrorReceived,
    YaDiskPushError,
)
from yadiskpush.failures import describeSSLError
from yadiskpush.handlers.keepalive import KeepaliveHandler
from yadiskpush.handlers.ping import PingHandler
from yadiskpush.handlers.push import PushHandler
from yadiskpush.handlers.subscription import SubscriptionHandler
from yadiskpush.handlers.version import VersionHandler
from yadiskpush.notification import Notification
from yadiskpush.reconnect import ReconnectPolicy
from yadiskpush.settings import Settings

NotificationObserver = Callable[[Notification], "defer.Deferred[Any] | None"]


class _QuietClientService(ClientService):
    """
    ``ClientService`` logs "Scheduling retry N to connect <endpoint>" at info
    level, with its own attempt count (reset on every TCP connect) that
    contradicts ours; :meth:`PushService._retryDelay` says it better. Only
    its warnings and errors get through.
    """

    _log = Logger(
        namespace="yadiskpush.clientservice",
        observer=FilteringLogObserver(
            globalLogPublisher, [LogLevelFilterPredicate(LogLevel.warn)]
        ),
    )


class PushService(service.Service):
    """
    Holds one account's connection to the push server and hands every Disk
    notification to the observers.

    Receive notifications either by :meth:`addNotificationObserver` or by
    overriding :meth:`notificationReceived`. A push is acknowledged to the
    server only after the observers have taken it (a returned Deferred is
    waited for), one notification at a time, in order.

    Failures are logged as one line each. A rejected token is fatal: the
    service stops connecting and :meth:`whenGaveUp` fires. Anything else
    (network, TLS, stream errors, a dead link) leads to a reconnect with
    exponential backoff and jitter.

    :param settings: the account and connection settings.
    :param reactor: the reactor (and clock) to use; the global one if omitted.
    :raises yadiskpush.errors.ConfigurationError: if the CA file is unusable.
    """

    def __init__(self, settings: Settings, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor
        from yadiskpush import __version__

        self.settings = settings
        self.reactor = reactor
        self.log = Logger(namespace=f"yadiskpush.account.{settings.login}")
        self.setName(f"yadiskpush-{settings.login}")
        self._observers: list[NotificationObserver] = []
        self._readyWaiters: list[defer.Deferred[JID]] = []
        self._failureWaiters: list[defer.Deferred[YaDiskPushError]] = []
        self._gaveUpWaiters: list[defer.Deferred[YaDiskPushError]] = []
        self._closedWaiters: list[defer.Deferred[None]] = []
        self.gaveUp: YaDiskPushError | None = None
        self.ready = False
        self._stopping = False
        self._sessionStartedAt: float | None = None
        self.reconnectPolicy = ReconnectPolicy()

        tlsOptions = tlsOptionsFor(settings)
        self.authenticator = YandexAuthenticator(
            settings, tlsOptions, reactor, log=self.log
        )
        self.authenticator.onFailure = self._attemptFailed
        self.factory = makeClientFactory(self.authenticator)
        self.factory.addBootstrap(xmlstream.STREAM_CONNECTED_EVENT, self._connected)
        self.factory.addBootstrap(xmlstream.STREAM_AUTHD_EVENT, self._sessionOpened)
        self.factory.addBootstrap(xmlstream.STREAM_END_EVENT, self._disconnected)
        self.streamManager = StreamManager(self.factory, reactor)

        for handler in (
            VersionHandler("yadiskpush", __version__, log=self.log),
            PingHandler(log=self.log),
            SubscriptionHandler(
                lambda: self.authenticator.jid.userhost(),
                self._subscribed,
                self._sessionBroken,
                reactor,
                log=self.log,
            ),
            PushHandler(self.notificationReceived, clock=reactor, log=self.log),
            KeepaliveHandler(
                lambda: self.settings.domain,
                self._sessionBroken,
                reactor,
                settings.idleTimeout,
                settings.pingTimeout,
                log=self.log,
            ),
            FallbackHandler(),
        ):
            handler.setHandlerParent(self.streamManager)

        self.endpoint = FallbackEndpoint(reactor, settings, tlsOptions, log=self.log)
        self.endpoint.onConnectFailed = self._attemptFailed
        self.clientService = _QuietClientService(
            self.endpoint, self.factory, retryPolicy=self._retryDelay, clock=reactor
        )

    # -- public API -------------------------------------------------------

    def addNotificationObserver(self, observer: NotificationObserver) -> None:
        """Call ``observer(notification)`` for every push, in order."""
        self._observers.append(observer)

    def removeNotificationObserver(self, observer: NotificationObserver) -> None:
        self._observers.remove(observer)

    def addHandler(self, handler: XMPPHandler) -> None:
        """Add a wokkel handler of your own to this connection's stream."""
        handler.setHandlerParent(self.streamManager)

    def notificationReceived(self, notification: Notification) -> defer.Deferred[Any]:
        """
        Hand one notification to every observer; the push is acknowledged
        when the returned Deferred fires, and refused if it fails.
        Override to receive notifications in a subclass.
        """
        results = [defer.maybeDeferred(o, notification) for o in list(self._observers)]
        if not self._observers:
            self.log.info("{summary}", summary=notification.summary())
        return defer.gatherResults(results, consumeErrors=True)

    @property
    def jid(self) -> JID:
        """The JID of the current session (the one the server assigned)."""
        return self.authenticator.jid

    def whenReady(self) -> defer.Deferred[JID]:
        """Fire with the JID once a session is open and subscribed (now, if so)."""
        if self.ready:
            return defer.succeed(self.jid)
        d: defer.Deferred[JID] = defer.Deferred()
        self._readyWaiters.append(d)
        return d

    def whenConnectionFailed(self) -> defer.Deferred[YaDiskPushError]:
        """Fire with the error that ends the next failed attempt or session."""
        d: defer.Deferred[YaDiskPushError] = defer.Deferred()
        self._failureWaiters.append(d)
        return d

    def whenGaveUp(self) -> defer.Deferred[YaDiskPushError]:
        """Fire with the fatal error once the service stops trying for good."""
        if self.gaveUp is not None:
            return defer.succeed(self.gaveUp)
        d: defer.Deferred[YaDiskPushError] = defer.Deferred()
        self._gaveUpWaiters.append(d)
        return d

    def startService(self) -> None:
        service.Service.startService(self)
        self._stopping = False
        self.log.info(
            "Starting push client for {login} ({host}, XMPP domain {domain})",
            login=self.settings.login,
            host=self.settings.host,
            domain=self.settings.domain,
        )
        self.clientService.startService()

    def stopService(self) -> defer.Deferred[None]:
        """
        Close cleanly: send ``</stream:stream>``, wait up to ``closeTimeout``
        for the server to close, then drop the connection and stop.
        """
        service.Service.stopService(self)
        self._stopping = True
        d = self._closeStream()
        d.addCallback(lambda _: self.clientService.stopService())
        # ClientService fires that from inside a transition of its state
        # machine, which is not reentrant: a caller stopping it again from
        # our Deferred's callbacks would get a RuntimeError. Fire one
        # reactor turn later, once the machine has settled.
        d.addCallback(lambda _: task.deferLater(self.reactor, 0, lambda: None))
        d.addCallback(lambda _: self.log.info("Push client stopped"))
        return d

    # -- connection life cycle -------------------------------------------

    def _closeStream(self) -> defer.Deferred[None]:
        xs: PushXmlStream | None = self.streamManager.xmlstream
        if xs is None or xs.transport is None:
            return defer.succeed(None)
        self.log.info("Closing the stream")
        closed: defer.Deferred[None] = defer.Deferred()
        self._closedWaiters.append(closed)
        transport = xs.transport
        xs.sendFooter()
        timer: IDelayedCall = self.reactor.callLater(
            self.settings.closeTimeout, _abort, transport
        )

        def cancelTimer(result: None) -> None:
            if timer.active():
                timer.cancel()

        closed.addCallback(cancelTimer)
        return closed

    def _connected(self, xs: PushXmlStream) -> None:
        self.ready = False
        # The host actually dialled (a see-other-host redirect may differ).
        self.authenticator.host = self.endpoint.connectedHost
        self.authenticator.tlsOptions = self.endpoint.connectedTLSOptions
        if self.settings.logTraffic:
            secrets = _secretForms(self.settings)

            def logIn(data: bytes) -> None:
                self.log.debug("RECV {data}", data=redactTraffic(data, secrets))

            def logOut(data: bytes) -> None:
                self.log.debug("SEND {data}", data=redactTraffic(data, secrets))

            xs.rawDataInFn = logIn
            xs.rawDataOutFn = logOut
        xs.addObserver(
            COMPRESSION_STARTED_EVENT,
            lambda _: self.log.info("Compression enabled (zlib)"),
        )
        xs.addObserver(
            COMPRESSION_REFUSED_EVENT,
            lambda refusal: self.log.warn(
                "{problem}; going on without compression", problem=str(refusal)
            ),
        )

    def _sessionOpened(self, xs: PushXmlStream) -> None:
        self._sessionStartedAt = self.reactor.seconds()
        self.log.info("Session open as {jid}", jid=self.jid.full())

    def _subscribed(self) -> None:
        self.ready = True
        waiters, self._readyWaiters = self._readyWaiters, []
        for d in waiters:
            d.callback(self.jid)

    def _sessionBroken(self, reason: YaDiskPushError) -> None:
        """An open session cannot go on (no subscription, dead link)."""
        self.authenticator.fail(reason)
        xs = self.streamManager.xmlstream
        if xs is not None and xs.transport is not None:
            _abort(xs.transport)

    def _attemptFailed(self, reason: YaDiskPushError) -> None:
        # Not ready from here on, so a whenReady() called by a failure waiter
        # waits for the next session.
        self.ready = False
        if isinstance(reason, StartTLSNotOffered) and self.settings.tlsPort:
            self.endpoint.preferDirectTLS = True
        self.reconnectPolicy.recordFailure(reason)
        if isinstance(reason, StreamErrorReceived):
            reason = self._streamErrorTreatment(reason)
        # Not "message": the legacy log bridge overwrites a field of that
        # name with () in the shared event, for every observer after it.
        if reason.fatal:
            self.log.error("{problem}", problem=reason.message)
            self._giveUp(reason)
        elif not self._stopping:
            self.log.warn("{problem}", problem=reason.message)
        waiters, self._failureWaiters = self._failureWaiters, []
        for d in waiters:
            d.callback(reason)

    def _streamErrorTreatment(self, reason: StreamErrorReceived) -> YaDiskPushError:
        """
        The right response to each stream error (see the troubleshooting
        page): some are fatal, one is a redirect, the rest reconnect later.
        """
        condition = reason.condition
        if condition == "conflict":
            if self.reconnectPolicy.conflictsExhausted:
                return ConfigurationError(
                    "another client keeps taking over the resource "
                    f"{self.settings.resource!r} of this login; stopping so the two "
                    "do not fight over it (give each client its own --resource)"
                )
            return StreamErrorReceived(
                condition,
                "another client connected with the same resource "
                f"{self.settings.resource!r}; reconnecting in a minute",
            )
        if condition == "see-other-host":
            target = self.authenticator.redirectTarget
            if target:
                host, port = _splitHostPort(target, self.settings.port)
                self.endpoint.redirect(
                    host, port, tlsOptionsFor(self.settings, host=host)
                )
                self.reconnectPolicy.recordRedirect()
                return StreamErrorReceived(
                    condition, f"the server redirects to {host}:{port}"
                )
        if condition in ("host-unknown", "host-gone"):
            return ConfigurationError(
                f"the server does not serve the XMPP domain {self.settings.domain!r}"
                f" ({condition}); check --domain"
            )
        if condition == "system-shutdown":
            return StreamErrorReceived(
                condition, "the server is shutting down; reconnecting"
            )
        return reason

    def _disconnected(self, reason: Failure) -> None:
        wasReady = self.ready
        self.ready = False
        startedAt, self._sessionStartedAt = self._sessionStartedAt, None
        self.reconnectPolicy.sessionEnded(
            None if startedAt is None else self.reactor.seconds() - startedAt
        )
        waiters, self._closedWaiters = self._closedWaiters, []
        for d in waiters:
            d.callback(None)
        if self._stopping or self.gaveUp is not None:
            return
        if startedAt is not None and self.authenticator.failureReason is None:
            self._attemptFailed(ConnectionLostError(_lossDetail(reason, wasReady)))

    def _giveUp(self, reason: YaDiskPushError) -> None:
        if self.gaveUp is not None:
            return
        self.gaveUp = reason
        self.log.error("Giving up; the client will not reconnect")
        self.clientService.stopService()
        waiters, self._gaveUpWaiters = self._gaveUpWaiters, []
        for d in waiters:
            d.callback(reason)

    def _retryDelay(self, attempt: int) -> float:
        # ClientService's own count resets on every TCP connect; the policy
        # counts failed sessions (see yadiskpush.reconnect).
        delay = self.reconnectPolicy(attempt)
        if not self._stopping and self.gaveUp is None:
            self.log.info(
                "Reconnecting in {delay:.1f} s (attempt {attempt})",
                delay=delay,
                attempt=self.reconnectPolicy.failures,
            )
        return delay


def _splitHostPort(target: str, defaultPort: int) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port`` from a see-other-host."""
    if target.startswith("["):
        host, _, rest = target[1:].partition("]")
        port = rest.lstrip(":")
    elif target.count(":") == 1:
        host, _, port = target.partition(":")
    else:
        host, port = target, ""
    return host, int(port) if port.isdigit() else defaultPort


def _lossDetail(reason: Failure, subscribed: bool) -> str:
    if reason.check(ConnectionDone):
        detail = "the server closed the connection"
    elif reason.check(SSL.Error):
        # Not OpenSSL's list of tuples: its reasons, readable.
        detail = "TLS error: " + describeSSLError(reason.value)
    else:
        detail = str(reason.value) or type(reason.value).__name__
    return detail if subscribed else detail + ", before the subscription was answered"


def _abort(transport: Any) -> None:
    abort = getattr(transport, "abortConnection", None)
    (abort or transport.loseConnection)()


def _secretForms(settings: Settings) -> list[bytes]:
    """The token as it could appear on the wire: plain and in the SASL payload."""
    token = settings.token.reveal().encode("utf-8")
    payload = oauthPayload(settings.login, settings.token)
    return [token, base64.b64encode(payload), base64.b64encode(token)]
