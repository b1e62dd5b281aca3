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
from collections.abc import Sequence
from typing import Any

from twisted.application import service
from twisted.internet import defer

from yadiskpush.accounts import AccountsFileError, readAccounts
from yadiskpush.delivery.pipeline import fanOut
from yadiskpush.delivery.sinks import Sink
from yadiskpush.errors import ServiceStopped, YaDiskPushError
from yadiskpush.fleet import PushFleet
from yadiskpush.logs import Logger
from yadiskpush.service import PushService

#: ``EX_CONFIG`` from ``sysexits.h``: the configuration needs a fix.
EXIT_CONFIG = 78


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
    leaves the running accounts as they are.
    """

    _log = Logger()

    def __init__(
        self,
        push: PushService | PushFleet,
        sinks: Sequence[Sink],
        reactor: Any = None,
        exitStatus: ExitStatus | None = None,
        accountsFile: str | None = None,
    ) -> None:
        self.push = push
        self.accountsFile = accountsFile
        self.sinks = list(sinks)
        self.reactor = reactor
        self.exitStatus = exitStatus
        self._deliverers = [s.deliver for s in self.sinks]
        self._previousHangup: Any = None
        push.addNotificationObserver(self.deliver)

    def deliver(self, notification: Any) -> Any:
        """Hand one notification to every sink; done when all have it."""
        return fanOut(self._deliverers, notification)

    def reopen(self) -> None:
        """SIGHUP: reopen output files, re-read the token or accounts file."""
        self._log.info(
            "SIGHUP: reopening outputs and re-reading the {what} file",
            what="token" if self.accountsFile is None else "accounts",
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
        change = self.push.apply(accounts)
        self._log.info("Accounts file re-read: {change}", change=str(change))

    def startService(self) -> None:
        service.Service.startService(self)
        for sink in self.sinks:
            start = getattr(sink, "start", None)
            if start is not None:
                start()
        if self.reactor is not None:
            self._installHangupHandler()
            self.push.whenGaveUp().addCallbacks(self._gaveUp, self._stopped)
        self.push.startService()

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        service.Service.stopService(self)
        self._restoreHangupHandler()
        yield self.push.stopService()
        for sink in self.sinks:
            try:
                yield sink.close()
            except Exception:
                self._log.failure("Closing {sink} failed", sink=sink)

    def _gaveUp(self, error: YaDiskPushError) -> None:
        if self.exitStatus is not None:
            self.exitStatus.code = EXIT_CONFIG
        self._log.error(
            "Exiting with status 78 (EX_CONFIG): {problem}", problem=error.message
        )
        if self.reactor.running:
            self.reactor.stop()

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
