"""
Disk push notifications of many accounts inside your own Twisted application.

One PushFleet holds every account of an accounts file (one ``LOGIN:TOKEN``
per line, mode 600): one connection per account, sharing TLS contexts, a
limit on handshakes in flight and the DNS look-up. Every change is appended
to a journal file, and a push is acknowledged to the server only once its
line is in the journal. SIGHUP re-reads the accounts file: new accounts
start, removed ones close cleanly, the others are not touched.

Run it (Ctrl-C stops it cleanly)::

    install -m 600 /dev/null accounts && echo 'alice:OAUTH-TOKEN' >> accounts
    DISK_ACCOUNTS=accounts python compose.py

or under twistd, with a file ``disk.tac`` that holds these two lines::

    from compose import makeApplication
    application = makeApplication()
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application import service
from twisted.internet import defer, task, threads

from yadiskpush import (
    ConfigurationError,
    Notification,
    PushFleet,
    Secret,
    ServiceStopped,
    readAccounts,
)

#: The path of the accounts file.
ACCOUNTS_VARIABLE = "DISK_ACCOUNTS"
#: Where the journal goes (``disk-changes.jsonl`` by default).
JOURNAL_VARIABLE = "DISK_JOURNAL"

NotificationCallback = Callable[[Notification], "defer.Deferred[Any] | None"]


class ChangeJournal:
    """
    Appends one JSON line per change to a file.

    :meth:`record` returns a Deferred that fires once the line is written
    and flushed (the write runs in a thread, off the reactor): the fleet
    waits for it before it acknowledges the push.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def record(self, notification: Notification) -> defer.Deferred[None]:
        # toJSON() starts with "login": the account the change happened in.
        line = json.dumps(notification.toJSON()) + "\n"
        return threads.deferToThread(self._append, line)

    def _append(self, line: str) -> None:
        with open(self.path, "a", encoding="utf-8") as journal:
            journal.write(line)
            journal.flush()
            os.fsync(journal.fileno())


def makeFleet(
    accounts: Mapping[str, Secret],
    onNotification: NotificationCallback,
    reactor: Any = None,
    **settings: Any,
) -> PushFleet:
    """
    One :class:`PushFleet` holding ``accounts`` (login -> token).

    ``onNotification(notification)`` is called for every change of every
    account (``notification.login`` says which); if it returns a Deferred,
    the push is acknowledged when that fires. ``settings`` are the
    connection settings shared by all accounts (host, caFile, ...).
    """
    fleet = PushFleet(reactor, maxHandshakes=50, **settings)
    fleet.addNotificationObserver(onNotification)
    fleet.apply(accounts)
    # A rejected token stops that account only; this fires once every
    # account has given up. On a normal stop it fails with ServiceStopped.
    fleet.whenGaveUp().addCallbacks(
        lambda error: print(f"every account gave up: {error}", file=sys.stderr),
        lambda stopped: stopped.trap(ServiceStopped),
    )
    return fleet


def accountsFromEnvironment(environ: Mapping[str, str]) -> dict[str, Secret]:
    """The accounts of the file named by ``DISK_ACCOUNTS``."""
    path = environ.get(ACCOUNTS_VARIABLE)
    if not path:
        raise SystemExit(f"set {ACCOUNTS_VARIABLE} to an accounts file (LOGIN:TOKEN)")
    try:
        return readAccounts(path)
    except ConfigurationError as e:
        raise SystemExit(str(e)) from None


def reloadOnHangup(fleet: PushFleet, path: str, reactor: Any) -> None:
    """On SIGHUP, make the fleet hold the accounts the file holds now."""

    def reload() -> None:
        try:
            change = fleet.apply(readAccounts(path))
        except ConfigurationError as e:
            print(f"{e}; keeping the accounts running", file=sys.stderr)
            return
        print(f"accounts reloaded: {change}", file=sys.stderr)

    signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(reload))


def makeApplication(environ: Mapping[str, str] = os.environ) -> service.Application:
    """The same fleet, as the ``application`` of a ``.tac`` file."""
    journal = ChangeJournal(environ.get(JOURNAL_VARIABLE, "disk-changes.jsonl"))
    application = service.Application("disk-journal")
    makeFleet(accountsFromEnvironment(environ), journal.record).setServiceParent(
        application
    )
    return application


def main(reactor: Any) -> defer.Deferred[None]:
    """Run until Ctrl-C, then close every stream cleanly."""
    from twisted.logger import globalLogBeginner, textFileLogObserver

    accounts = accountsFromEnvironment(os.environ)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    journal = ChangeJournal(os.environ.get(JOURNAL_VARIABLE, "disk-changes.jsonl"))
    fleet = makeFleet(accounts, journal.record, reactor)
    reloadOnHangup(fleet, os.environ[ACCOUNTS_VARIABLE], reactor)
    fleet.startService()
    reactor.addSystemEventTrigger("before", "shutdown", fleet.stopService)
    return defer.Deferred()  # never fires: run until the reactor stops


if __name__ == "__main__":
    task.react(main)
