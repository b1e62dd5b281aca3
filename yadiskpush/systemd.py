"""
Telling systemd how the service is doing: the ``sd_notify`` protocol.

A ``Type=notify`` unit gives its main process ``$NOTIFY_SOCKET``, the address
of a datagram socket, and waits for ``READY=1`` on it before it counts the
service as started; ``STATUS=`` is the line ``systemctl status`` shows,
``STOPPING=1`` and ``RELOADING=1`` say what the process is doing, and with
``WatchdogSec=`` systemd passes ``$WATCHDOG_USEC`` and restarts a process
that does not send ``WATCHDOG=1`` within that time. The protocol is one
``AF_UNIX``/``SOCK_DGRAM`` datagram of ``KEY=value`` lines per message, so it
is written here rather than taken from a new dependency (the
``sd_notify(3)`` and ``systemd.service(5)`` manual pages describe it).

Nothing here may ever stop the push client: a send that fails (systemd
gone, socket full) is logged once and otherwise ignored, and without
``$NOTIFY_SOCKET`` (not run by systemd) every method does nothing.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

from twisted.internet import task

from yadiskpush.errors import ConfigurationError
from yadiskpush.logs import Logger

#: The variable systemd sets to the notification socket's address.
NOTIFY_SOCKET_VARIABLE = "NOTIFY_SOCKET"
#: The watchdog interval in microseconds (``WatchdogSec=``).
WATCHDOG_USEC_VARIABLE = "WATCHDOG_USEC"
#: The process the watchdog interval is meant for, when set.
WATCHDOG_PID_VARIABLE = "WATCHDOG_PID"
#: The directory of the unit's credentials (``LoadCredential=``).
CREDENTIALS_DIRECTORY_VARIABLE = "CREDENTIALS_DIRECTORY"
#: Credential names ``--token-file`` defaults to, the first one present.
TOKEN_CREDENTIALS = ("token-file", "token")
#: The credential name ``--accounts`` defaults to.
ACCOUNTS_CREDENTIAL = "accounts"


def credentialDefaults(
    environ: Mapping[str, str],
    tokenFile: str | None,
    accounts: str | None,
    login: str | None,
) -> tuple[str | None, str | None]:
    """
    ``--token-file`` and ``--accounts`` with systemd's credentials as their
    defaults: ``$CREDENTIALS_DIRECTORY/token-file`` (or ``token``) and
    ``$CREDENTIALS_DIRECTORY/accounts``, where they exist. An option given
    on the command line always wins, and then no default is taken: one
    account and many accounts exclude each other. ``--login`` means one
    account, so it picks the token credential.

    :returns: the ``(tokenFile, accounts)`` to use.
    :raises ConfigurationError: if both credentials exist and nothing says
        which one to use.
    """
    directory = environ.get(CREDENTIALS_DIRECTORY_VARIABLE, "")
    if not directory or tokenFile is not None or accounts is not None:
        return tokenFile, accounts

    def present(name: str) -> str | None:
        path = os.path.join(directory, name)
        return path if os.path.isfile(path) else None

    tokenCredential = next(
        (p for p in map(present, TOKEN_CREDENTIALS) if p is not None), None
    )
    accountsCredential = present(ACCOUNTS_CREDENTIAL) if login is None else None
    if tokenCredential is not None and accountsCredential is not None:
        raise ConfigurationError(
            "the unit passes both a token and an accounts credential: give "
            f"--login LOGIN to use {tokenCredential}, or --accounts "
            f"{accountsCredential} for every account of the accounts file"
        )
    return tokenCredential, accountsCredential


def notifyAddress(value: str) -> bytes | None:
    """
    The socket address of a ``$NOTIFY_SOCKET`` value, or ``None`` if unusable.

    An absolute path is a socket file; a leading ``@`` names a socket in
    Linux's abstract namespace, whose address starts with a NUL byte instead.
    """
    if value.startswith("@") and len(value) > 1:
        return b"\0" + os.fsencode(value[1:])
    if value.startswith("/"):
        return os.fsencode(value)
    return None


def watchdogInterval(
    environ: Mapping[str, str], pid: int | None = None
) -> float | None:
    """
    The watchdog interval in seconds that systemd asks of this process, or
    ``None``: no ``$WATCHDOG_USEC``, a value that is not a positive number,
    or a ``$WATCHDOG_PID`` naming another process (a child that inherited
    the variables must not ping on its parent's behalf).
    """
    usec = environ.get(WATCHDOG_USEC_VARIABLE, "").strip()
    if not usec:
        return None
    expectedPid = environ.get(WATCHDOG_PID_VARIABLE, "").strip()
    if expectedPid:
        try:
            if int(expectedPid) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    try:
        microseconds = int(usec)
    except ValueError:
        return None
    if microseconds <= 0:
        return None
    return microseconds / 1_000_000


class SystemdNotifier:
    """
    Sends state changes to systemd, and ``WATCHDOG=1`` while the reactor runs.

    Built by :meth:`fromEnvironment` from the variables systemd sets. With
    no address every method is a no-op, so callers never check whether the
    process runs under systemd. Sends never block and never raise.

    :param address: the notification socket's address (see
        :func:`notifyAddress`), or ``None`` for a notifier that does nothing.
    :param reactor: the reactor whose clock drives the watchdog: the pings
        stop when the reactor stops turning, which is what the watchdog is
        for.
    :param watchdogInterval: systemd's watchdog interval in seconds, or
        ``None``; a ping goes out every half of it.
    """

    _log = Logger()

    def __init__(
        self,
        address: bytes | None,
        reactor: Any = None,
        watchdogInterval: float | None = None,
    ) -> None:
        self.address = address
        self.reactor = reactor
        self.watchdogInterval = watchdogInterval if address is not None else None
        self._socket: socket.socket | None = None
        self._failed = False
        self._watchdog: task.LoopingCall | None = None

    @classmethod
    def fromEnvironment(
        cls, environ: Mapping[str, str] | None = None, reactor: Any = None
    ) -> SystemdNotifier:
        """
        A notifier for the socket in ``$NOTIFY_SOCKET`` of ``environ`` (the
        process environment if omitted), with the watchdog of
        ``$WATCHDOG_USEC``; a no-op notifier when the variable is missing.
        """
        if environ is None:
            environ = os.environ
        value = environ.get(NOTIFY_SOCKET_VARIABLE, "")
        address = notifyAddress(value) if value else None
        if value and address is None:
            cls._log.warn(
                "Ignoring ${name}={value!r}: not an absolute path or @name",
                name=NOTIFY_SOCKET_VARIABLE,
                value=value,
            )
        return cls(address, reactor, watchdogInterval(environ))

    @property
    def enabled(self) -> bool:
        """Whether messages go anywhere (``$NOTIFY_SOCKET`` was usable)."""
        return self.address is not None

    def notify(self, *assignments: str) -> None:
        """
        Send one message of ``KEY=value`` lines, e.g.
        ``notify("READY=1", "STATUS=Subscribed")``. Never raises.
        """
        if self.address is None or not assignments:
            return
        message = "\n".join(a.replace("\n", " ") for a in assignments).encode()
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
                self._socket.setblocking(False)
            self._socket.sendto(message, self.address)
        except OSError as e:
            self._sendFailed(e)

    def _sendFailed(self, e: OSError) -> None:
        # Once as a warning, then at debug: a systemd that went away must
        # not fill the log once per watchdog ping.
        reason = os.strerror(e.errno) if e.errno else str(e)
        if e.errno == errno.EAGAIN:
            reason = "its queue is full"
        if self._failed:
            self._log.debug("systemd notification not sent: {reason}", reason=reason)
        else:
            self._failed = True
            self._log.warn(
                "Cannot notify systemd (${name}): {reason}; carrying on without",
                name=NOTIFY_SOCKET_VARIABLE,
                reason=reason,
            )

    def ready(self, status: str | None = None) -> None:
        """The service is up: systemd finishes ``systemctl start``."""
        self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> None:
        """The line ``systemctl status`` shows under the unit."""
        self.notify(f"STATUS={text}")

    def reloading(self) -> None:
        """
        A reload (SIGHUP) started; :meth:`ready` ends it. ``MONOTONIC_USEC``
        goes with it, as ``Type=notify-reload`` (systemd 253) requires.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self, status: str | None = None) -> None:
        """The service is stopping."""
        self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> None:
        """Tell the watchdog that the process is alive."""
        self.notify("WATCHDOG=1")

    def startWatchdog(self) -> None:
        """
        Ping the watchdog now and then every half interval, on the
        reactor's clock; nothing when systemd asked for no watchdog.
        """
        if self.watchdogInterval is None or self._watchdog is not None:
            return
        loop = task.LoopingCall(self.watchdog)
        if self.reactor is not None:
            loop.clock = self.reactor
        loop.start(self.watchdogInterval / 2, now=True)
        self._watchdog = loop

    def stopWatchdog(self) -> None:
        """Stop the pings (at stop; systemd stops watching with STOPPING=1)."""
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        self._watchdog = None

    def close(self) -> None:
        """Stop the watchdog and close the socket."""
        self.stopWatchdog()
        if self._socket is not None:
            self._socket.close()
            self._socket = None
