"""
Many accounts in one process: :class:`PushFleet`.

Each account is a :class:`~yadiskpush.service.PushService` with its own
connection, backoff, subscription and failure; what they share is one
:class:`~yadiskpush.connection.context.ConnectionContext`: one TLS context
per trust root, one handshake gate (at most ``maxHandshakes`` connections
between TCP connect and open session, process-wide), one DNS resolution per
host, one clock. One account's failure never touches another; the fleet
gives up only when every account has.

Accounts are added, removed and given new tokens by login, one at a time
or all at once from a mapping (:meth:`PushFleet.apply`, what a reload of the
accounts file does). The log stays readable at 10,000 accounts: handshake
steps are at debug level, each account's state changes at info, and the
fleet logs a one-line summary whenever the counts changed, at most once per
``summaryInterval``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.application import service
from twisted.internet import defer, task

from yadiskpush.accounts import AccountsChange, compareAccounts
from yadiskpush.connection.context import ConnectionContext
from yadiskpush.connection.handshakes import DEFAULT_MAX_HANDSHAKES, HandshakeGate
from yadiskpush.delivery.pipeline import PipelineObserver
from yadiskpush.errors import (
    AuthenticationFailed,
    ConfigurationError,
    ServiceStopped,
    StreamErrorReceived,
    YaDiskPushError,
)
from yadiskpush.logs import Logger
from yadiskpush.notification import Notification
from yadiskpush.oauth.refresh import TokenRefresher
from yadiskpush.reconnect import ReconnectPolicy
from yadiskpush.secret import Secret
from yadiskpush.service import (
    NotificationObserver,
    PushService,
    _Waiters,
    notifyObservers,
)
from yadiskpush.settings import Settings

#: Reconnects per second the fleet spreads a mass reconnect over: 10,000
#: accounts dropped at once come back over 50 s, one account within 1 s.
DEFAULT_RECONNECT_RATE = 200.0

#: Seconds between summary lines (only when something changed).
DEFAULT_SUMMARY_INTERVAL = 60.0


def describeGiveUp(error: YaDiskPushError) -> str:
    """A short reason for the summary line: "rejected token", and so on."""
    if isinstance(error, AuthenticationFailed):
        return "rejected token"
    if isinstance(error, StreamErrorReceived):
        return f"stream error {error.condition}"
    if isinstance(error, ConfigurationError):
        return "configuration"
    return type(error).__name__


class PushFleet(service.MultiService):
    """
    Holds the push connections of many accounts, sharing one connection
    context.

    Use it as a :class:`~yadiskpush.service.PushService` is used: add it to
    an ``Application`` or ``MultiService``, add notification observers, and
    every push of every account reaches them as a
    :class:`~yadiskpush.notification.Notification` whose ``login`` names
    the account; a push is acknowledged once the observers have taken it.

    :param reactor: the reactor (and clock); the global one if omitted.
        Ignored when ``context`` is given.
    :param context: the connection context to share; a new one, with a
        handshake gate of ``maxHandshakes``, if omitted.
    :param maxHandshakes: connections between TCP connect and open session
        at once, process-wide (only when ``context`` is omitted).
    :param reconnectRate: accounts per second a mass reconnect is spread
        over (full jitter over ``len(fleet) / reconnectRate`` seconds at
        least).
    :param summaryInterval: seconds between summary lines.
    :param settings: every :class:`~yadiskpush.settings.Settings` field but
        ``login`` and ``token`` (host, port, caFile, ...), the same for all
        accounts.
    :raises yadiskpush.errors.ConfigurationError: for a bad setting.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any = None,
        *,
        context: ConnectionContext | None = None,
        maxHandshakes: int = DEFAULT_MAX_HANDSHAKES,
        reconnectRate: float = DEFAULT_RECONNECT_RATE,
        summaryInterval: float = DEFAULT_SUMMARY_INTERVAL,
        **settings: Any,
    ) -> None:
        super().__init__()
        if context is None:
            if reactor is None:
                from twisted.internet import reactor as globalReactor

                reactor = globalReactor
            if maxHandshakes < 1:
                raise ConfigurationError("the handshake limit must be at least 1")
            context = ConnectionContext(
                reactor, handshakes=HandshakeGate(maxHandshakes)
            )
        for name in ("login", "token"):
            if name in settings:
                raise ConfigurationError(
                    f"{name} is given per account (PushFleet.add), not to the fleet"
                )
        try:
            probe = Settings(login="probe", token=Secret("probe"), **settings)
        except TypeError as e:
            raise ConfigurationError(f"unknown setting: {e}") from None
        # Fails now, with a clear message, if the CA file is unusable.
        context.tlsContexts.contextFor(probe.caFile)
        self.context = context
        self.reactor = context.reactor
        self.reconnectRate = reconnectRate
        self.summaryInterval = summaryInterval
        self._settings = settings
        self._accounts: dict[str, PushService] = {}
        self._tokens: dict[str, Secret] = {}
        self._observers: list[NotificationObserver] = []
        self._countObservers: list[Callable[[PushFleet], None]] = []
        self._subscriptionObservers: list[Callable[[str], None]] = []
        self._attemptObservers: list[Callable[[str], None]] = []
        self._reconnectObservers: list[Callable[[str, YaDiskPushError], None]] = []
        self._pipelineObserver: PipelineObserver | None = None
        self._subscribed: set[str] = set()
        self._gaveUp: dict[str, YaDiskPushError] = {}
        self._settledWaiters = _Waiters()
        self._allGaveUp = _Waiters()
        self._summaryLoop: task.LoopingCall | None = None
        self._lastSummary = ""
        self._settledOnce = False

    # -- accounts -----------------------------------------------------------

    def add(
        self,
        login: str,
        token: Secret,
        *,
        tokenFile: str | None = None,
        tokenRefresher: TokenRefresher | None = None,
    ) -> PushService:
        """
        Add an account (started at once if the fleet is running).

        :param tokenFile: a file to re-read the token from at every attempt.
        :param tokenRefresher: refreshes that file's token when it nears
            expiry, or once when the server rejects it (see
            :class:`~yadiskpush.service.PushService`).
        :raises ValueError: if ``login`` is in the fleet already.
        :raises yadiskpush.errors.ConfigurationError: for a bad login.
        """
        if login in self._accounts:
            raise ValueError(f"{login} is in the fleet already")
        settings = Settings(
            login=login, token=token, tokenFile=tokenFile, **self._settings
        )
        push = PushService(
            settings,
            context=self.context,
            reconnectPolicy=ReconnectPolicy(minimumWindow=self._reconnectWindow),
            tokenRefresher=tokenRefresher,
            pipelineObserver=self._pipelineObserver,
        )
        push.addNotificationObserver(self._deliver)
        push.addStateObserver(self._accountChanged)
        push.addAttemptObserver(self._attemptStarted)
        push.addReconnectObserver(self._reconnecting)
        self._accounts[login] = push
        self._tokens[login] = token
        push.setServiceParent(self)
        self._countsChanged()
        return push

    def remove(self, login: str) -> defer.Deferred[None]:
        """
        Remove an account; its stream is closed cleanly
        (``</stream:stream>``). Fires once it is.

        :raises KeyError: if ``login`` is not in the fleet.
        """
        push = self._accounts.pop(login)
        del self._tokens[login]
        self._subscribed.discard(login)
        self._gaveUp.pop(login, None)
        d = push.disownServiceParent()
        self._checkSettled()
        self._countsChanged()
        return d if d is not None else defer.succeed(None)

    def update(self, login: str, token: Secret) -> None:
        """
        Give an account a new token, used from its next connection attempt
        (the session open now goes on). An account that gave up on a
        rejected token connects again.

        :raises KeyError: if ``login`` is not in the fleet.
        """
        push = self._accounts[login]
        self._tokens[login] = token
        push.updateToken(token)

    def apply(self, accounts: Mapping[str, Secret]) -> AccountsChange:
        """
        Make the fleet hold exactly ``accounts`` (login -> token): add the new
        ones, remove the missing ones, update changed tokens; accounts whose
        token is unchanged are not touched.
        """
        change = compareAccounts(self._tokens, accounts)
        for login in change.removed:
            self.remove(login)
        for login in change.tokensChanged:
            self.update(login, accounts[login])
        for login in change.added:
            self.add(login, accounts[login])
        return change

    def tokenChanged(self) -> None:
        """Every account re-reads its token file, if it has one (SIGHUP)."""
        for push in self._accounts.values():
            push.tokenChanged()

    def __getitem__(self, login: str) -> PushService:
        return self._accounts[login]

    def __contains__(self, login: object) -> bool:
        return login in self._accounts

    def __len__(self) -> int:
        return len(self._accounts)

    def logins(self) -> list[str]:
        """The logins of the fleet, in the order they were added."""
        return list(self._accounts)

    # -- notifications --------------------------------------------------------

    def addNotificationObserver(self, observer: NotificationObserver) -> None:
        """Call ``observer(notification)`` for every push of every account."""
        self._observers.append(observer)

    def removeNotificationObserver(self, observer: NotificationObserver) -> None:
        self._observers.remove(observer)

    def _deliver(self, notification: Notification) -> Any:
        return notifyObservers(self._observers, notification, self._log)

    # -- state ----------------------------------------------------------------

    @property
    def subscribed(self) -> int:
        """Accounts whose session is open and subscribed."""
        return len(self._subscribed)

    @property
    def gaveUp(self) -> Mapping[str, YaDiskPushError]:
        """Accounts that gave up, and why."""
        return dict(self._gaveUp)

    def _accountChanged(self, push: PushService) -> None:
        login = push.settings.login
        if self._accounts.get(login) is not push:
            return
        newlySubscribed = push.ready and login not in self._subscribed
        if push.ready:
            self._subscribed.add(login)
        else:
            self._subscribed.discard(login)
        if push.gaveUp is not None:
            self._gaveUp[login] = push.gaveUp
        else:
            self._gaveUp.pop(login, None)
        self._checkSettled()
        self._countsChanged()
        if newlySubscribed:
            for observer in list(self._subscriptionObservers):
                observer(login)
        if self._gaveUp and len(self._gaveUp) == len(self._accounts):
            self._allGaveUp.fire(self._giveUpError())

    def addCountObserver(self, observer: Callable[[PushFleet], None]) -> None:
        """
        Call ``observer(fleet)`` whenever an account is added, removed, or
        changes state (subscribed, lost, gave up), so that a status shown
        elsewhere (systemd's ``STATUS=``) follows the counts without polling.
        """
        self._countObservers.append(observer)

    def addSubscriptionObserver(self, observer: Callable[[str], None]) -> None:
        """
        Call ``observer(login)`` each time an account's session becomes
        subscribed: after its first connection and after every reconnect
        (``--exec-on-start`` keeps the first of each login).
        """
        self._subscriptionObservers.append(observer)

    def addAttemptObserver(self, observer: Callable[[str], None]) -> None:
        """
        Call ``observer(login)`` each time an account's connection attempt
        starts (see :meth:`PushService.addAttemptObserver
        <yadiskpush.service.PushService.addAttemptObserver>`).
        """
        self._attemptObservers.append(observer)

    def addReconnectObserver(
        self, observer: Callable[[str, YaDiskPushError], None]
    ) -> None:
        """
        Call ``observer(login, error)`` each time ``error`` ended an
        account's connection and it is going to connect again (see
        :meth:`PushService.addReconnectObserver
        <yadiskpush.service.PushService.addReconnectObserver>`).
        """
        self._reconnectObservers.append(observer)

    def setPipelineObserver(self, observer: PipelineObserver | None) -> None:
        """
        Tell ``observer`` of every push of every account (received,
        acknowledged, refused), for the accounts there now and those added
        later (see :meth:`PushService.setPipelineObserver
        <yadiskpush.service.PushService.setPipelineObserver>`).
        """
        self._pipelineObserver = observer
        for push in self._accounts.values():
            push.setPipelineObserver(observer)

    def _attemptStarted(self, push: PushService) -> None:
        for observer in self._attemptObservers:
            observer(push.settings.login)

    def _reconnecting(self, push: PushService, error: YaDiskPushError) -> None:
        for observer in self._reconnectObservers:
            observer(push.settings.login, error)

    def _countsChanged(self) -> None:
        for observer in list(self._countObservers):
            observer(self)

    def _giveUpError(self) -> YaDiskPushError:
        if len(self._gaveUp) == 1:
            return next(iter(self._gaveUp.values()))
        return YaDiskPushError(
            f"every account gave up ({self._gaveUpSummary()}); fix them in the "
            "accounts file and start again"
        )

    def _checkSettled(self) -> None:
        if len(self._subscribed) + len(self._gaveUp) >= len(self._accounts):
            if self.running and not self._settledOnce:
                # The first time everything is up (or given up), say so at
                # once rather than at the next periodic summary.
                self._settledOnce = True
                self._logSummary()
            self._settledWaiters.fire(None)

    def whenAllSettled(self) -> defer.Deferred[None]:
        """Fire once every account is subscribed or has given up (now, if so)."""
        if len(self._subscribed) + len(self._gaveUp) >= len(self._accounts):
            return defer.succeed(None)
        return self._settledWaiters.add()

    def whenGaveUp(self) -> defer.Deferred[YaDiskPushError]:
        """
        Fire once every account has given up, with the one error (one
        account) or an error naming the reasons. Fails with
        :class:`~yadiskpush.errors.ServiceStopped` if the fleet is stopped
        first.
        """
        if self._accounts and len(self._gaveUp) == len(self._accounts):
            return defer.succeed(self._giveUpError())
        return self._allGaveUp.add()

    def _gaveUpSummary(self) -> str:
        reasons: dict[str, int] = {}
        for error in self._gaveUp.values():
            reason = describeGiveUp(error)
            reasons[reason] = reasons.get(reason, 0) + 1
        return ", ".join(
            f"{reason}" if count == 1 else f"{reason} ({count:,})"
            for reason, count in sorted(reasons.items())
        )

    def summary(self) -> str:
        """One log line: "9,998/10,000 subscribed; 2 gave up: rejected token"."""
        total = len(self._accounts)
        line = f"{len(self._subscribed):,}/{total:,} subscribed"
        if self._gaveUp:
            line += f"; {len(self._gaveUp):,} gave up: {self._gaveUpSummary()}"
        gate = self.context.handshakes
        if gate.inFlight or gate.waiting:
            line += f"; {gate.inFlight:,} handshaking, {gate.waiting:,} waiting"
        return line

    def _logSummary(self) -> None:
        line = self.summary()
        if line != self._lastSummary:
            self._lastSummary = line
            self._log.info("{summary}", summary=line)

    def _reconnectWindow(self) -> float:
        return len(self._accounts) / self.reconnectRate

    # -- lifetime ---------------------------------------------------------------

    def startService(self) -> None:
        count = len(self._accounts)
        self._log.info(
            "Starting {count:,} {accounts}",
            count=count,
            accounts="account" if count == 1 else "accounts",
        )
        super().startService()
        loop = task.LoopingCall(self._logSummary)
        loop.clock = self.reactor
        loop.start(self.summaryInterval, now=False)
        self._summaryLoop = loop

    def stopService(self) -> defer.Deferred[None]:
        """Close every account's stream cleanly, at the same time."""
        if self._summaryLoop is not None and self._summaryLoop.running:
            self._summaryLoop.stop()
        self._summaryLoop = None
        stopped = ServiceStopped()
        self._settledWaiters.fail(stopped)
        self._allGaveUp.fail(stopped)
        count = len(self._accounts)
        self._log.info(
            "Closing the streams of {count:,} {accounts}",
            count=count,
            accounts="account" if count == 1 else "accounts",
        )
        d = defer.maybeDeferred(super().stopService)
        d.addCallback(lambda _: self._log.info("Push client stopped"))
        return d
