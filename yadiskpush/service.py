"""
The public service: one account's push connection, from start to clean stop.

:class:`PushService` is what an application adds to its ``Application`` or
``MultiService`` (the twistd plugin does exactly that). It runs the
connection loop itself: the :class:`~yadiskpush.connection.endpoint.Dialer`
plans each connection's attempts, every attempt's stream gets its own
authenticator, and when a connection ends, its one outcome goes to
:func:`yadiskpush.failures.decide`, whose decision (give up, retry after a
delay, follow a redirect, prefer the TLS port) is applied here. wokkel's
``StreamManager`` routes stanzas to the handlers.

Twisted's ``ClientService`` is not used: it resets its attempt count on every
TCP connect, reconnects when stopped from inside a failure callback, and
hides which attempt a connection belongs to.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure
from twisted.words.protocols.jabber import xmlstream
from twisted.words.protocols.jabber.jid import JID
from wokkel.generic import FallbackHandler
from wokkel.subprotocols import StreamManager, XMPPHandler

from yadiskpush.connection.authenticator import PushXmlStreamFactory
from yadiskpush.connection.compression import (
    COMPRESSION_REFUSED_EVENT,
    COMPRESSION_STARTED_EVENT,
)
from yadiskpush.connection.context import ConnectionContext
from yadiskpush.connection.endpoint import Dialer
from yadiskpush.connection.stream import PushXmlStream, redactTraffic, secretForms
from yadiskpush.delivery.pipeline import PipelineObserver, fanOut
from yadiskpush.errors import (
    AuthenticationFailed,
    ConfigurationError,
    ConnectionLostError,
    ServiceStopped,
    YaDiskPushError,
)
from yadiskpush.failures import Action, Decision, decide
from yadiskpush.handlers.keepalive import KeepaliveHandler
from yadiskpush.handlers.ping import PingHandler
from yadiskpush.handlers.push import PushHandler
from yadiskpush.handlers.subscription import SUBSCRIBED_EVENT, SubscriptionHandler
from yadiskpush.handlers.version import VersionHandler
from yadiskpush.handlers.writestall import WriteStallHandler
from yadiskpush.logs import Logger
from yadiskpush.notification import Notification
from yadiskpush.oauth.refresh import RejectedAndNotRefreshed, TokenRefresher
from yadiskpush.reconnect import ReconnectPolicy
from yadiskpush.secret import Secret
from yadiskpush.settings import Settings

NotificationObserver = Callable[[Notification], "defer.Deferred[Any] | None"]

#: ``observer(service)``: a connection attempt starts (a handshake slot is held).
AttemptObserver = Callable[["PushService"], None]

#: ``observer(service, error)``: ``error`` ended a connection or an attempt,
#: and the service is going to connect again.
ReconnectObserver = Callable[["PushService", YaDiskPushError], None]


def notifyObservers(
    observers: list[NotificationObserver], notification: Notification, log: Logger
) -> Any:
    """
    Hand ``notification`` to ``observers`` (one costs no list copy and no
    Deferred); with none, log it as one line so that it is not lost silently.
    """
    if len(observers) == 1:
        return observers[0](notification)
    if not observers:
        log.info("{summary}", summary=notification.summary())
        return None
    return fanOut(list(observers), notification)


class _Waiters:
    """Deferreds waiting for one kind of event; each fires once."""

    def __init__(self) -> None:
        self._waiting: list[defer.Deferred[Any]] = []

    def add(self) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self._waiting.append(d)
        return d

    def take(self) -> _Waiters:
        """The waiters so far, as a set of their own; this one is empty."""
        taken = _Waiters()
        taken._waiting, self._waiting = self._waiting, []
        return taken

    def fire(self, result: Any) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(result)

    def fail(self, error: Exception) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(error)


class PushService(service.Service):
    """
    Holds one account's connection to the push server and hands every Disk
    notification to the observers.

    Receive notifications either by :meth:`addNotificationObserver` or by
    overriding :meth:`notificationReceived`. A push is acknowledged to the
    server only after the observers have taken it (a returned Deferred is
    waited for, up to ``settings.deliveryTimeout``), one notification at a
    time, in order; a failure refuses it, and the server sends it again.

    Failures are logged as one line each. A rejected token is fatal: the
    service stops connecting and :meth:`whenGaveUp` fires; starting the
    service again tries only a token that differs from the rejected one.
    Anything else (network, TLS, stream errors, a dead link) leads to a
    reconnect with exponential backoff and full jitter.

    :param settings: the account and connection settings.
    :param reactor: the reactor (and clock); the global one if omitted.
        Ignored when ``context`` is given.
    :param context: what this service shares with others (reactor, TLS
        contexts, endpoint factory); a new one if omitted.
    :param reconnectPolicy: the delay before each reconnect.
    :param tokenRefresher: keeps the token file's token fresh: checked at
        start and every 12 hours, and asked once for a new token when the
        server rejects one, before giving up (see
        :class:`~yadiskpush.oauth.refresh.TokenRefresher`).
    :param pipelineObserver: told of every push received, acknowledged and
        refused (metrics); see :meth:`setPipelineObserver`.
    :raises yadiskpush.errors.ConfigurationError: if the CA file is unusable.
    """

    def __init__(
        self,
        settings: Settings,
        reactor: Any = None,
        *,
        context: ConnectionContext | None = None,
        reconnectPolicy: ReconnectPolicy | None = None,
        tokenRefresher: TokenRefresher | None = None,
        pipelineObserver: PipelineObserver | None = None,
    ) -> None:
        if context is None:
            if reactor is None:
                from twisted.internet import reactor as globalReactor

                reactor = globalReactor
            context = ConnectionContext(reactor)
        from yadiskpush import __version__

        self.settings = settings
        self.context = context
        self.reactor = context.reactor
        self.reconnectPolicy = reconnectPolicy or ReconnectPolicy()
        self.log = Logger(namespace=f"yadiskpush.account.{settings.login}")
        self.setName(f"yadiskpush-{settings.login}")
        self.gaveUp: YaDiskPushError | None = None
        self.ready = False
        self._observers: list[NotificationObserver] = []
        self._stateObservers: list[Callable[[PushService], None]] = []
        self._attemptObservers: list[AttemptObserver] = []
        self._reconnectObservers: list[ReconnectObserver] = []
        self._readyWaiters = _Waiters()
        self._failureWaiters = _Waiters()
        self._gaveUpWaiters = _Waiters()
        self._closedWaiters = _Waiters()
        self._stopping = False
        self._stream: PushXmlStream | None = None
        self._jid: JID | None = None
        self._sessionStartedAt: float | None = None
        self._nextConnect: IDelayedCall | None = None
        self._dialling: defer.Deferred[Any] | None = None
        self._token = settings.token
        self._tokenWarningsShown: set[str] = set()
        self._rejectedToken: Secret | None = None
        self.tokenRefresher = tokenRefresher
        # The refresh after a rejection: under way, for which rejected
        # token, and the token it gave until a session subscribes with it
        # (that one rejected too means a refresh cannot help: no loop).
        self._refreshing: defer.Deferred[Secret] | None = None
        self._refreshedFor: Secret | None = None
        self._unprovenToken: Secret | None = None
        self._handshakeSlot: Callable[[], None] | None = None

        # Fails now, with a clear message, if the CA file is unusable.
        context.tlsContexts.contextFor(settings.caFile)
        self.dialer = Dialer(
            self.reactor,
            settings,
            context.tlsContexts,
            context.endpointFactory,
            log=self.log,
        )
        self.factory = PushXmlStreamFactory(settings, self.reactor, log=self.log)
        self.factory.addBootstrap(xmlstream.STREAM_CONNECTED_EVENT, self._connected)
        self.factory.addBootstrap(xmlstream.STREAM_AUTHD_EVENT, self._sessionOpened)
        self.factory.addBootstrap(SUBSCRIBED_EVENT, self._subscribed)
        self.streamManager = StreamManager(self.factory, self.reactor)
        self._pushHandler = PushHandler(
            self.notificationReceived,
            clock=self.reactor,
            log=self.log,
            deliveryTimeout=settings.deliveryTimeout,
            login=settings.login,
            pipelineObserver=pipelineObserver,
        )
        for handler in (
            VersionHandler("yadiskpush", __version__, log=self.log),
            PingHandler(log=self.log),
            SubscriptionHandler(log=self.log),
            self._pushHandler,
            KeepaliveHandler(
                lambda: self.settings.domain,
                self.reactor,
                settings.idleTimeout,
                settings.pingTimeout,
                log=self.log,
            ),
            WriteStallHandler(self.reactor, settings.pingTimeout, log=self.log),
            FallbackHandler(),
        ):
            handler.setHandlerParent(self.streamManager)

    # -- public API -------------------------------------------------------

    def addNotificationObserver(self, observer: NotificationObserver) -> None:
        """Call ``observer(notification)`` for every push, in order."""
        self._observers.append(observer)

    def removeNotificationObserver(self, observer: NotificationObserver) -> None:
        self._observers.remove(observer)

    def addStateObserver(self, observer: Callable[[PushService], None]) -> None:
        """
        Call ``observer(service)`` whenever :attr:`ready` or :attr:`gaveUp`
        may have changed (subscribed, connection ended, gave up, started
        again, stopped): how a fleet keeps its counts without polling.
        """
        self._stateObservers.append(observer)

    def addAttemptObserver(self, observer: AttemptObserver) -> None:
        """
        Call ``observer(service)`` each time a connection attempt starts
        (after the handshake gate let it through, before dialling).
        """
        self._attemptObservers.append(observer)

    def addReconnectObserver(self, observer: ReconnectObserver) -> None:
        """
        Call ``observer(service, error)`` each time ``error`` ended a
        connection or an attempt and the service is going to connect again
        (not when it gives up): how metrics count reconnects by reason.
        """
        self._reconnectObservers.append(observer)

    def setPipelineObserver(self, observer: PipelineObserver | None) -> None:
        """
        Tell ``observer`` of every push received, acknowledged and refused,
        on the current stream and every next one (``None``: no one).
        """
        self._pushHandler.setPipelineObserver(observer)

    def _reconnecting(self, error: YaDiskPushError) -> None:
        for observer in self._reconnectObservers:
            observer(self, error)

    def _stateChanged(self) -> None:
        for observer in self._stateObservers:
            observer(self)

    def addHandler(self, handler: XMPPHandler) -> None:
        """Add a wokkel handler of your own to this connection's stream."""
        handler.setHandlerParent(self.streamManager)

    def notificationReceived(self, notification: Notification) -> Any:
        """
        Hand one notification to every observer; the push is acknowledged
        when the result (``None``, or a Deferred once it fires) says all
        took it, and refused if one failed. Override to receive
        notifications in a subclass.
        """
        return notifyObservers(self._observers, notification, self.log)

    @property
    def jid(self) -> JID:
        """The JID of the current session (the one the server assigned)."""
        if self._stream is not None:
            return self._stream.authenticator.jid
        if self._jid is not None:
            return self._jid
        s = self.settings
        return JID(tuple=(s.login, s.domain, s.resource))

    @property
    def retrying(self) -> bool:
        """Whether the service is connected or will connect again."""
        return self.running and self.gaveUp is None and not self._stopping

    def whenReady(self) -> defer.Deferred[JID]:
        """
        Fire with the JID once a session is open and subscribed (now, if
        so). Fails with the error if the service gives up, and with
        :class:`~yadiskpush.errors.ServiceStopped` if it is stopped first.
        """
        if self.ready:
            return defer.succeed(self.jid)
        if self.gaveUp is not None:
            return defer.fail(self.gaveUp)
        return self._readyWaiters.add()

    def whenConnectionFailed(self) -> defer.Deferred[YaDiskPushError]:
        """
        Fire with the error that ends the next failed attempt or session.
        Fails with :class:`~yadiskpush.errors.ServiceStopped` if the service
        is stopped first.
        """
        return self._failureWaiters.add()

    def whenGaveUp(self) -> defer.Deferred[YaDiskPushError]:
        """
        Fire with the fatal error once the service stops trying for good.
        Fails with :class:`~yadiskpush.errors.ServiceStopped` if the service
        is stopped first.
        """
        if self.gaveUp is not None:
            return defer.succeed(self.gaveUp)
        return self._gaveUpWaiters.add()

    def startService(self) -> None:
        service.Service.startService(self)
        self._stopping = False
        if self.gaveUp is not None:
            rejected = self._rejectedToken
            if rejected is not None and self._readToken() == rejected:
                self.log.error(
                    "Not connecting: the server rejected this OAuth token before; "
                    "put a new token in place and start again"
                )
                return
            self.gaveUp = None
            self._stateChanged()
        if self.tokenRefresher is not None:
            self.tokenRefresher.startChecking(self.updateToken)
        self.log.debug(
            "Starting push client for {login} ({host}, XMPP domain {domain})",
            login=self.settings.login,
            host=self.settings.host,
            domain=self.settings.domain,
        )
        self._connectLater(0)

    def stopService(self) -> defer.Deferred[None]:
        """
        Close cleanly: send ``</stream:stream>``, wait up to ``closeTimeout``
        for the server to close, then drop the connection. Waiters still
        waiting fail with :class:`~yadiskpush.errors.ServiceStopped`.
        """
        service.Service.stopService(self)
        self._stopping = True
        self._cancelNextConnect()
        if self._dialling is not None:
            self._dialling.cancel()
        if self.tokenRefresher is not None:
            self.tokenRefresher.stopChecking()
        refreshing, self._refreshing = self._refreshing, None
        if refreshing is not None:
            # Only our wait ends; the refresh itself still rewrites the file.
            refreshing.cancel()
        self._releaseHandshake()
        stopped = ServiceStopped()
        self._readyWaiters.fail(stopped)
        self._failureWaiters.fail(stopped)
        self._gaveUpWaiters.fail(stopped)
        d = self._closeStream()
        # Fire one reactor turn later: callers may stop other services from
        # our callbacks, and the stream's own teardown is still running.
        d.addCallback(lambda _: task.deferLater(self.reactor, 0, lambda: None))
        d.addCallback(lambda _: self.log.debug("Push client stopped"))
        return d

    def tokenChanged(self) -> bool:
        """
        Re-read the token file (on SIGHUP, say); if the service gave up on a
        rejected token and the file now holds another, start again.

        :returns: whether the service was restarted.
        """
        return self._retryWith(self._readToken())

    def updateToken(self, token: Secret) -> bool:
        """
        Use ``token`` from the next connection attempt on (the current
        session, if any, goes on); if the service gave up on a rejected
        token and this one differs, start again.

        :returns: whether the service was restarted.
        """
        self._token = token
        return self._retryWith(token)

    def _retryWith(self, token: Secret) -> bool:
        if (
            self.running
            and self.gaveUp is not None
            and self._rejectedToken is not None
            and token != self._rejectedToken
        ):
            self.log.info("The token changed; connecting again")
            self.gaveUp = None
            self._stateChanged()
            self._connectLater(0)
            return True
        return False

    # -- the connection loop ------------------------------------------------

    def _readToken(self) -> Secret:
        """The token for the next attempt: the file's, re-read each time."""
        path = self.settings.tokenFile
        if path is None:
            return self._token
        try:
            token, warnings = Secret.fromFile(path)
        except ConfigurationError as e:
            self.log.warn("{problem}; using the token read before", problem=e.message)
            return self._token
        for warning in warnings:
            if warning not in self._tokenWarningsShown:
                self._tokenWarningsShown.add(warning)
                self.log.warn("{warning}", warning=warning)
        if self.tokenRefresher is not None:
            # A refreshed token the file could not take is kept there.
            token = self.tokenRefresher.currentToken(token)
        self._token = token
        return token

    def _connectLater(self, delay: float) -> None:
        self._cancelNextConnect()
        self._nextConnect = self.reactor.callLater(delay, self._connect)

    def _cancelNextConnect(self) -> None:
        if self._nextConnect is not None and self._nextConnect.active():
            self._nextConnect.cancel()
        self._nextConnect = None

    def _connect(self) -> None:
        self._nextConnect = None
        if not self.retrying:
            return
        token = self._readToken()
        if token == self._rejectedToken:
            self._giveUp(
                AuthenticationFailed(
                    self.settings.login,
                    "not-authorized",
                    "this token was rejected before; put a new one in place",
                )
            )
            return
        # Wait for a handshake slot (shared by every service of the
        # context), then dial; the slot is given back once the session is
        # open, or when this connection fails.
        self._dialling = d = self.context.handshakes.acquire()
        d.addCallback(self._dialWithSlot, token)
        d.addCallbacks(self._dialled, self._dialFailed)

    def _dialWithSlot(self, release: Callable[[], None], token: Secret) -> Any:
        self._handshakeSlot = release
        for observer in self._attemptObservers:
            observer(self)
        attempts = self.dialer.plan(token)
        return self.dialer.connect(attempts, self.factory.buildStream)

    def _releaseHandshake(self) -> None:
        release, self._handshakeSlot = self._handshakeSlot, None
        if release is not None:
            release()

    def _dialled(self, xs: PushXmlStream) -> None:
        self._dialling = None

    def _dialFailed(self, reason: Failure) -> None:
        self._dialling = None
        self._releaseHandshake()
        if reason.check(defer.CancelledError):
            return
        error = reason.value
        if not isinstance(error, YaDiskPushError):
            error = YaDiskPushError(f"cannot connect: {error}")
        self._apply(decide(error, None))

    def _connected(self, xs: PushXmlStream) -> None:
        self.ready = False
        self._stream = xs
        xs.addObserver(
            xmlstream.STREAM_END_EVENT, lambda reason: self._connectionEnded(xs, reason)
        )
        if self.settings.logTraffic:
            secrets = secretForms(self.settings.login, xs.authenticator.token)

            def logIn(data: bytes) -> None:
                self.log.debug("RECV {data}", data=redactTraffic(data, secrets))

            def logOut(data: bytes) -> None:
                self.log.debug("SEND {data}", data=redactTraffic(data, secrets))

            xs.rawDataInFn = logIn
            xs.rawDataOutFn = logOut
        if not self.settings.compress:
            # Observers cost memory on every idle connection of a fleet.
            return
        xs.addObserver(
            COMPRESSION_STARTED_EVENT,
            lambda _: self.log.debug("Compression enabled (zlib)"),
        )
        xs.addObserver(
            COMPRESSION_REFUSED_EVENT,
            lambda refusal: self.log.warn(
                "{problem}; going on without compression", problem=str(refusal)
            ),
        )

    def _sessionOpened(self, xs: PushXmlStream) -> None:
        self._sessionStartedAt = self.reactor.seconds()
        self._jid = xs.authenticator.jid
        if xs is self._stream:
            self._releaseHandshake()
        self.log.debug("Session open as {jid}", jid=self._jid.full())

    def _subscribed(self, xs: PushXmlStream) -> None:
        if xs is not self._stream:
            return
        self._unprovenToken = None
        self.ready = True
        self.reconnectPolicy.subscribed()
        ready = self._readyWaiters.take()
        self._stateChanged()
        ready.fire(self.jid)

    def _connectionEnded(self, xs: PushXmlStream, reason: Failure) -> None:
        wasReady = self.ready
        self.ready = False
        if xs is self._stream:
            self._stream = None
            self._releaseHandshake()
        startedAt, self._sessionStartedAt = self._sessionStartedAt, None
        self.reconnectPolicy.sessionEnded(
            None if startedAt is None else self.reactor.seconds() - startedAt
        )
        self._closedWaiters.fire(None)
        if not self.retrying:
            return
        authenticator = xs.authenticator
        error = authenticator.outcome(reason)
        if isinstance(error, ConnectionLostError) and not wasReady:
            error = ConnectionLostError(
                error.detail + ", before the subscription was answered"
            )
        self._apply(
            decide(
                error,
                authenticator.attempt,
                redirectTarget=authenticator.redirectTarget,
                consecutiveConflicts=self.reconnectPolicy.consecutiveConflicts,
                resource=self.settings.resource,
                domain=self.settings.domain,
                port=self.settings.port,
            ),
            authenticator.attempt.token,
        )

    def _apply(self, decision: Decision, token: Secret | None = None) -> None:
        """Carry out what :func:`~yadiskpush.failures.decide` said."""
        self.ready = False
        error = decision.error
        if decision.preferDirectTLS and self.settings.tlsPort:
            self.dialer.preferDirectTLS = True
        if (
            decision.action is Action.GIVE_UP
            and isinstance(error, AuthenticationFailed)
            and self._mayRefresh(token)
        ):
            assert token is not None
            self._refreshAfterRejection(error, token)
            return
        # Not "message": the legacy log bridge overwrites a field of that
        # name with () in the shared event, for every observer after it.
        if decision.action is Action.GIVE_UP:
            if isinstance(error, AuthenticationFailed):
                self._rejectedToken = token
            self.log.error("{problem}", problem=error.message)
        else:
            self.log.warn("{problem}", problem=error.message)
        if decision.action is Action.GIVE_UP:
            self._giveUp(error)
        else:
            self._stateChanged()
        self._failureWaiters.fire(error)
        if decision.action is Action.GIVE_UP:
            return
        if not self.retrying:
            # Stopped (or given up) by a failure waiter.
            return
        if decision.action is Action.REDIRECT:
            assert decision.redirectTo is not None
            self.dialer.redirect(*decision.redirectTo)
        delay = self.reconnectPolicy.delayAfter(decision)
        self._reconnecting(error)
        self.log.info(
            "Reconnecting in {delay:.1f} s (attempt {attempt})",
            delay=delay,
            attempt=self.reconnectPolicy.failures,
        )
        self._connectLater(delay)

    def _mayRefresh(self, token: Secret | None) -> bool:
        """Whether a rejection of ``token`` calls for a refresh first."""
        return (
            self.tokenRefresher is not None
            and token is not None
            and token != self._refreshedFor
            and token != self._unprovenToken
        )

    def _refreshAfterRejection(
        self, error: AuthenticationFailed, token: Secret
    ) -> None:
        """
        Ask the refresher for a new token once, then connect with it; give up
        (saying both why) if that fails. Neither ready nor given up while
        the refresh is under way.
        """
        assert self.tokenRefresher is not None
        # Refreshed meanwhile (by the periodic check), the file holds a new
        # token already: connect with that one, no second refresh.
        current = self._readToken()
        self.log.warn(
            "{problem}; {action}",
            problem=error.message.split(";")[0],
            action="the token file holds a newer token"
            if current != token
            else f"refreshing the token with the refresh token in "
            f"{self.tokenRefresher.path}",
        )
        self._refreshedFor = token
        self._stateChanged()
        self._failureWaiters.fire(error)
        if not self.retrying:
            # Stopped (or given up) by a failure waiter.
            return
        if current != token:
            self._connectWith(current, error)
            return
        self._refreshing = d = self.tokenRefresher.refresh()

        def refreshed(newToken: Secret) -> None:
            self._refreshing = None
            self._connectWith(newToken, error)

        def failed(reason: Failure) -> None:
            if reason.check(defer.CancelledError):
                return
            self._refreshing = None
            refreshError = reason.value
            if not isinstance(refreshError, YaDiskPushError):
                refreshError = YaDiskPushError(str(refreshError))
            combined = RejectedAndNotRefreshed(error, refreshError)
            self._rejectedToken = token
            self.log.error("{problem}", problem=combined.message)
            self._giveUp(combined)

        d.addCallbacks(refreshed, failed)

    def _connectWith(
        self, refreshedToken: Secret, rejection: AuthenticationFailed
    ) -> None:
        """Connect again at once with a token refreshed after a rejection."""
        self._unprovenToken = refreshedToken
        self.updateToken(refreshedToken)
        if self.retrying:
            self._reconnecting(rejection)
            self.log.info("Connecting again with the refreshed token")
            self._connectLater(0)

    def _giveUp(self, reason: YaDiskPushError) -> None:
        if self.gaveUp is not None:
            return
        self.gaveUp = reason
        self._cancelNextConnect()
        self.log.error("Giving up; the client will not reconnect")
        # State observers first (a fleet's counts), then the waiters of this
        # give-up only: an observer may start the service again (a new
        # token), and what it waits for then is the next attempt.
        ready, gaveUp = self._readyWaiters.take(), self._gaveUpWaiters.take()
        self._stateChanged()
        ready.fail(reason)
        gaveUp.fire(reason)

    def _closeStream(self) -> defer.Deferred[None]:
        xs = self._stream
        if xs is None or xs.transport is None:
            return defer.succeed(None)
        self.log.debug("Closing the stream")
        closed = self._closedWaiters.add()
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


def _abort(transport: Any) -> None:
    abort = getattr(transport, "abortConnection", None)
    (abort or transport.loseConnection)()
