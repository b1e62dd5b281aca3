"""
What ``twistd yadiskpush`` runs: the accounts (a
:class:`~yadiskpush.fleet.PushFleet`, or one :class:`PushService`) and their
sinks, started and stopped in the right order, and the process-level
conventions users rely on: SIGHUP reopens outputs and re-reads the token
file or the accounts file (logrotate), and a give-up of every account exits
with status 78 (``EX_CONFIG`` of ``sysexits.h``), so that systemd's
``RestartPreventExitStatus=78`` and every monitor see it.

``MultiService`` stops its children concurrently, so it cannot promise that
the stream is closed (no more pushes can arrive) before the sinks are
closed. :class:`PushApplication` does that ordering itself.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application import service
from twisted.internet import defer

from yadiskpush.accounts import AccountsFileError, readAccounts
from yadiskpush.delivery.pipeline import fanOut
from yadiskpush.delivery.sinks import Sink
from yadiskpush.errors import ServiceStopped, YaDiskPushError
from yadiskpush.fleet import PushFleet, describeGiveUp
from yadiskpush.logs import Logger
from yadiskpush.service import PushService
from yadiskpush.shards import Shard
from yadiskpush.systemd import SystemdNotifier

#: ``EX_CONFIG`` from ``sysexits.h``: the configuration needs a fix.
EXIT_CONFIG = 78

#: ``EX_SOFTWARE`` from ``sysexits.h``: an internal error, not the user's.
EXIT_SOFTWARE = 70


class ExitStatus:
    """
    The status the process exits with. twistd always exits 0 after the
    reactor stops; the status is set from an ``atexit`` hook registered
    first, so it runs last, once everything else has been flushed.
    """

    def __init__(self) -> None:
        self.code = 0
        self._registered = False

    def register(self) -> None:
        if not self._registered:
            self._registered = True
            atexit.register(self._exit)

    def _exit(self) -> None:
        if self.code:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:
                    pass
            os._exit(self.code)


class PushApplication(service.Service):
    """
    Runs a push service (one account's, or a fleet's) whose notifications
    go to ``sinks``, each push acknowledged once every sink has taken it.

    On start: start the sinks that need it (the ``--exec`` journal replays
    what a crash left). On stop: close the streams first (no new pushes),
    then close the sinks in order, each in bounded time. With ``reactor``
    given, SIGHUP is handled and a give-up (of every account) stops the
    reactor with ``exitStatus`` set to 78. With ``accountsFile``, SIGHUP
    re-reads it and the fleet takes the changes; a file that cannot be used
    leaves the running accounts as they are. With ``shard``, the fleet holds
    only that shard's accounts of the file, at start (the caller's
    selection) and after each re-read.

    ``notifier`` tells systemd (``Type=notify``): ``READY=1`` once every
    account has subscribed or given up, a ``STATUS=`` line whenever the
    counts change, ``RELOADING=1`` around SIGHUP, ``STOPPING=1`` at stop,
    the reason of an exit 78, and ``WATCHDOG=1`` pings while running.

    ``onFirstSubscription(login)`` is called once per account, after its
    first subscription in this process (``--exec-on-start``), since what
    changed while it was not running was never pushed. Not after a
    reconnect: a full sync at every reconnect of thousands of accounts
    would cost more than the seconds of a reconnect are worth. An account
    SIGHUP adds (or removes and adds back) gets its call after its own
    first subscription.
    """

    _log = Logger()

    def __init__(
        self,
        push: PushService | PushFleet,
        sinks: Sequence[Sink],
        reactor: Any = None,
        exitStatus: ExitStatus | None = None,
        accountsFile: str | None = None,
        notifier: SystemdNotifier | None = None,
        onFirstSubscription: Callable[[str], object] | None = None,
        shard: Shard | None = None,
    ) -> None:
        self.push = push
        self.shard = shard
        self.onFirstSubscription = onFirstSubscription
        # Logins whose first subscription has been reported.
        self._subscribedOnce: set[str] = set()
        # systemd's view of the service (Type=notify); a no-op without it.
        self.notifier = notifier if notifier is not None else SystemdNotifier(None)
        self._lastStatus = ""
        self._readySent = False
        self._exiting = False
        self.accountsFile = accountsFile
        self.sinks = list(sinks)
        self.reactor = reactor
        self.exitStatus = exitStatus
        self._deliverers = [s.deliver for s in self.sinks]
        self._previousHangup: Any = None
        push.addNotificationObserver(self.deliver)
        if isinstance(push, PushFleet):
            push.addCountObserver(lambda fleet: self._countsChanged())
        else:
            push.addStateObserver(lambda service: self._countsChanged())
        if onFirstSubscription is not None:
            if isinstance(push, PushFleet):
                push.addSubscriptionObserver(self._subscribed)
            else:
                push.addStateObserver(self._serviceChanged)

    def deliver(self, notification: Any) -> Any:
        """Hand one notification to every sink; done when all have it."""
        return fanOut(self._deliverers, notification)

    def reopen(self) -> None:
        """SIGHUP: reopen output files, re-read the token or accounts file."""
        self._log.info(
            "SIGHUP: reopening outputs and re-reading the {what} file",
            what="token" if self.accountsFile is None else "accounts",
        )
        # Before the first READY=1 a reload must not end systemd's start.
        reloading = self._readySent
        if reloading:
            self.notifier.reloading()
        self._sendStatus(
            f"Re-reading the {'token' if self.accountsFile is None else 'accounts'}"
            " file"
        )
        for sink in self.sinks:
            reopen = getattr(sink, "reopen", None)
            if reopen is not None:
                try:
                    reopen()
                except Exception:
                    self._log.failure("Reopening {sink} failed", sink=sink)
        if self.accountsFile is not None:
            self.reloadAccounts()
        self.push.tokenChanged()
        if reloading:
            self._lastStatus = self.statusLine()
            self.notifier.ready(self._lastStatus)
        else:
            self._countsChanged(force=True)

    def reloadAccounts(self) -> None:
        """Make the fleet hold the accounts of the file, as it reads now."""
        assert isinstance(self.push, PushFleet) and self.accountsFile is not None
        try:
            accounts = readAccounts(self.accountsFile)
        except AccountsFileError as e:
            self._log.error(
                "{problem}; keeping the {count:,} accounts running",
                problem=e.message,
                count=len(self.push),
            )
            return
        inFile = len(accounts)
        if self.shard is not None:
            accounts = self.shard.select(accounts)
        change = self.push.apply(accounts)
        # An account added back later has missed its changes meanwhile.
        self._subscribedOnce.difference_update(change.removed)
        if self.shard is None:
            self._log.info("Accounts file re-read: {change}", change=str(change))
        else:
            self._log.info(
                "Accounts file re-read (shard {shard}: {kept:,} of {count:,} "
                "accounts): {change}",
                shard=str(self.shard),
                kept=len(accounts),
                count=inFile,
                change=str(change),
            )

    def startService(self) -> None:
        service.Service.startService(self)
        for sink in self.sinks:
            start = getattr(sink, "start", None)
            if start is not None:
                start()
        if self.reactor is not None:
            self._installHangupHandler()
            self.push.whenGaveUp().addCallbacks(self._gaveUp, self._stopped)
        self.notifier.startWatchdog()
        self._countsChanged(force=True)
        self.push.startService()

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        service.Service.stopService(self)
        self._restoreHangupHandler()
        self.notifier.stopWatchdog()
        # After an exit 78 the last STATUS= keeps saying why.
        self.notifier.stopping(None if self._exiting else "Stopping")
        yield self.push.stopService()
        for sink in self.sinks:
            try:
                yield sink.close()
            except Exception:
                self._log.failure("Closing {sink} failed", sink=sink)

    def _serviceChanged(self, push: PushService) -> None:
        if push.ready:
            self._subscribed(push.settings.login)

    def _subscribed(self, login: str) -> None:
        if login in self._subscribedOnce or self.onFirstSubscription is None:
            return
        self._subscribedOnce.add(login)
        try:
            self.onFirstSubscription(login)
        except Exception:
            self._log.failure(
                "The first-subscription hook failed for {login}", login=login
            )

    def _gaveUp(self, error: YaDiskPushError) -> None:
        if self.exitStatus is not None:
            self.exitStatus.code = EXIT_CONFIG
        self._log.error(
            "Exiting with status 78 (EX_CONFIG): {problem}", problem=error.message
        )
        self._exiting = True
        self.notifier.status(f"Exiting with status 78 (EX_CONFIG): {error.message}")
        if self.reactor.running:
            self.reactor.stop()

    def _counts(self) -> tuple[int, int, list[YaDiskPushError]]:
        """Accounts in all, subscribed, and the errors of those that gave up."""
        if isinstance(self.push, PushFleet):
            return len(self.push), self.push.subscribed, list(self.push.gaveUp.values())
        gaveUp = self.push.gaveUp
        return 1, int(self.push.ready), [] if gaveUp is None else [gaveUp]

    def settled(self) -> bool:
        """Every account has subscribed or given up (``whenAllSettled``)."""
        total, subscribed, gaveUp = self._counts()
        return subscribed + len(gaveUp) >= total

    def statusLine(self) -> str:
        """
        What ``systemctl status`` shows: "Connecting: 0/50 subscribed",
        "Subscribed: 3/3 accounts", "2/3 subscribed; 1 gave up: rejected
        token".
        """
        total, subscribed, gaveUp = self._counts()
        if total == 0:
            return "No accounts"
        if subscribed == total:
            return f"Subscribed: {total:,}/{total:,} account{'s' * (total != 1)}"
        line = f"{subscribed:,}/{total:,} subscribed"
        if gaveUp:
            reasons: dict[str, int] = {}
            for error in gaveUp:
                reason = describeGiveUp(error)
                reasons[reason] = reasons.get(reason, 0) + 1
            line += f"; {len(gaveUp):,} gave up: " + ", ".join(
                reason if count == 1 else f"{reason} ({count:,})"
                for reason, count in sorted(reasons.items())
            )
        if subscribed + len(gaveUp) < total:
            line = "Connecting: " + line
        return line

    def _countsChanged(self, force: bool = False) -> None:
        # READY=1 once every account has subscribed or given up; STATUS=
        # whenever the line changes.
        if not self.running or self._exiting:
            return
        line = self.statusLine()
        if not self._readySent and self.settled():
            self._readySent = True
            self._lastStatus = line
            self.notifier.ready(line)
        elif force or line != self._lastStatus:
            self._sendStatus(line)

    def _sendStatus(self, line: str) -> None:
        self._lastStatus = line
        self.notifier.status(line)

    def _stopped(self, reason: Any) -> None:
        reason.trap(ServiceStopped)

    def _installHangupHandler(self) -> None:
        # The handler only schedules: the work runs in the reactor thread.
        def onHangup(signum: int, frame: Any) -> None:
            self.reactor.callFromThread(self.reopen)

        try:
            self._previousHangup = signal.signal(signal.SIGHUP, onHangup)
        except ValueError:
            # Not the main thread (an embedding application): no handler.
            self._previousHangup = None

    def _restoreHangupHandler(self) -> None:
        if self._previousHangup is not None:
            try:
                signal.signal(signal.SIGHUP, self._previousHangup)
            except ValueError:
                pass
            self._previousHangup = None
