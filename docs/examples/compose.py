"""
Disk push notifications inside your own Twisted application.

Each Yandex account gets its own PushService; all of them run in one
MultiService, and every change is appended to a journal file. A push is
acknowledged to the server only once its line is in the journal.

Run it (Ctrl-C stops it cleanly)::

    install -m 600 /dev/null alice.token && echo 'OAUTH-TOKEN' > alice.token
    DISK_ACCOUNTS='alice=alice.token bob=bob.token' python compose.py

or under twistd, with a file ``disk.tac`` that holds these two lines::

    from compose import makeApplication
    application = makeApplication()
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.application import service
from twisted.internet import defer, task, threads

from yadiskpush import Notification, PushService, Secret, ServiceStopped, Settings

#: ``LOGIN=TOKEN_FILE`` pairs, separated by spaces.
ACCOUNTS_VARIABLE = "DISK_ACCOUNTS"
#: Where the journal goes (``disk-changes.jsonl`` by default).
JOURNAL_VARIABLE = "DISK_JOURNAL"

NotificationCallback = Callable[[str, Notification], "defer.Deferred[Any] | None"]


class ChangeJournal:
    """
    Appends one JSON line per change to a file.

    :meth:`record` returns a Deferred that fires once the line is written
    and flushed (the write runs in a thread, off the reactor): the
    PushService waits for it before it acknowledges the push.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def record(self, login: str, notification: Notification) -> defer.Deferred[None]:
        line = json.dumps({"login": login, **notification.toJSON()}) + "\n"
        return threads.deferToThread(self._append, line)

    def _append(self, line: str) -> None:
        with open(self.path, "a", encoding="utf-8") as journal:
            journal.write(line)
            journal.flush()
            os.fsync(journal.fileno())


def makeServices(
    settingsList: Sequence[Settings],
    onNotification: NotificationCallback,
    reactor: Any = None,
) -> service.MultiService:
    """
    One :class:`PushService` per account, in one ``MultiService``.

    ``onNotification(login, notification)`` is called for every change; if it
    returns a Deferred, the push is acknowledged when that fires.
    """
    services = service.MultiService()
    for settings in settingsList:
        push = PushService(settings, reactor=reactor)

        def observer(
            notification: Notification, login: str = settings.login
        ) -> defer.Deferred[Any] | None:
            return onNotification(login, notification)

        push.addNotificationObserver(observer)
        # A rejected token stops that account only; the others go on. On a
        # normal stop the Deferred fails with ServiceStopped instead.
        push.whenGaveUp().addCallbacks(
            lambda error, login=settings.login: print(
                f"{login}: gave up: {error}", file=sys.stderr
            ),
            lambda stopped: stopped.trap(ServiceStopped),
        )
        push.setServiceParent(services)
    return services


def settingsFromEnvironment(environ: Mapping[str, str]) -> list[Settings]:
    """The accounts named in ``DISK_ACCOUNTS``, each with its token file."""
    settingsList = []
    for pair in environ.get(ACCOUNTS_VARIABLE, "").split():
        login, _, tokenFile = pair.partition("=")
        token, warnings = Secret.fromFile(tokenFile)
        for warning in warnings:
            print(warning, file=sys.stderr)
        settingsList.append(Settings(login=login, token=token))
    if not settingsList:
        raise SystemExit(f"set {ACCOUNTS_VARIABLE}='LOGIN=TOKEN_FILE ...'")
    return settingsList


def makeApplication(environ: Mapping[str, str] = os.environ) -> service.Application:
    """The same services, as the ``application`` of a ``.tac`` file."""
    journal = ChangeJournal(environ.get(JOURNAL_VARIABLE, "disk-changes.jsonl"))
    application = service.Application("disk-journal")
    makeServices(settingsFromEnvironment(environ), journal.record).setServiceParent(
        application
    )
    return application


def main(reactor: Any) -> defer.Deferred[None]:
    """Run until Ctrl-C, then close every stream cleanly."""
    from twisted.logger import globalLogBeginner, textFileLogObserver

    settingsList = settingsFromEnvironment(os.environ)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    journal = ChangeJournal(os.environ.get(JOURNAL_VARIABLE, "disk-changes.jsonl"))
    services = makeServices(settingsList, journal.record, reactor)
    services.startService()
    reactor.addSystemEventTrigger("before", "shutdown", services.stopService)
    return defer.Deferred()  # never fires: run until the reactor stops


if __name__ == "__main__":
    task.react(main)
