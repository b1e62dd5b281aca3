"""
Tests for yadiskpush.systemd: the sd_notify datagrams on a real socket, the
watchdog on a Clock, and the credentials systemd passes.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import tempfile

from twisted.internet import task
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from yadiskpush.cli.options import Options
from yadiskpush.errors import ConfigurationError
from yadiskpush.systemd import (
    SystemdNotifier,
    credentialDefaults,
    notifyAddress,
    watchdogInterval,
)


class DatagramListener:
    """A real AF_UNIX datagram socket standing in for systemd's."""

    def __init__(self, case: SynchronousTestCase, abstract: bool = False) -> None:
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        case.addCleanup(self.socket.close)
        if abstract:
            name = "yadiskpush-test-" + secrets.token_hex(8)
            self.socket.bind("\0" + name)
            self.variable = "@" + name
        else:
            directory = tempfile.mkdtemp(prefix="yadiskpush-notify-")
            case.addCleanup(shutil.rmtree, directory, True)
            self.variable = os.path.join(directory, "notify")
            self.socket.bind(self.variable)
        self.socket.setblocking(False)

    def messages(self) -> list[str]:
        """Every datagram received so far (sends on AF_UNIX are synchronous)."""
        received = []
        while True:
            try:
                received.append(self.socket.recv(4096).decode())
            except BlockingIOError:
                return received


class AddressTests(SynchronousTestCase):
    def test_path(self) -> None:
        """An absolute path is the socket file's address."""
        self.assertEqual(notifyAddress("/run/systemd/notify"), b"/run/systemd/notify")

    def test_abstract(self) -> None:
        """@name is an abstract address: a NUL byte, then the name."""
        self.assertEqual(notifyAddress("@name/1"), b"\0name/1")

    def test_unusable(self) -> None:
        """A relative path, a bare @ or an empty value is not an address."""
        for value in ("notify", "@", "", "vsock:2:1"):
            self.assertIsNone(notifyAddress(value), value)


class WatchdogIntervalTests(SynchronousTestCase):
    def test_microseconds(self) -> None:
        """WATCHDOG_USEC is read in microseconds."""
        self.assertEqual(watchdogInterval({"WATCHDOG_USEC": "30000000"}), 30.0)

    def test_ourPid(self) -> None:
        """A WATCHDOG_PID naming this process keeps the watchdog."""
        environ = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
        self.assertEqual(watchdogInterval(environ), 2.0)

    def test_otherPid(self) -> None:
        """A WATCHDOG_PID naming another process (a parent's) means none."""
        environ = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}
        self.assertIsNone(watchdogInterval(environ, pid=4242))

    def test_unusable(self) -> None:
        """No value, zero, negative or garbage: no watchdog."""
        for value in ("", "0", "-5", "30s", " "):
            self.assertIsNone(watchdogInterval({"WATCHDOG_USEC": value}), value)
        self.assertIsNone(watchdogInterval({}))
        self.assertIsNone(
            watchdogInterval({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "x"})
        )


class NotifierTests(SynchronousTestCase):
    def notifierFor(
        self, listener: DatagramListener, reactor: object = None, **extra: str
    ) -> SystemdNotifier:
        environ = {"NOTIFY_SOCKET": listener.variable, **extra}
        notifier = SystemdNotifier.fromEnvironment(environ, reactor)
        self.addCleanup(notifier.close)
        return notifier

    def test_pathSocket(self) -> None:
        """Each call is one datagram of KEY=value lines on a socket file."""
        listener = DatagramListener(self)
        notifier = self.notifierFor(listener)
        self.assertTrue(notifier.enabled)
        notifier.ready("Subscribed: 1/1 account")
        notifier.status("Connecting: 0/2 subscribed")
        notifier.stopping()
        notifier.watchdog()
        self.assertEqual(
            listener.messages(),
            [
                "READY=1\nSTATUS=Subscribed: 1/1 account",
                "STATUS=Connecting: 0/2 subscribed",
                "STOPPING=1",
                "WATCHDOG=1",
            ],
        )

    def test_abstractSocket(self) -> None:
        """An @name address reaches a socket in the abstract namespace."""
        listener = DatagramListener(self, abstract=True)
        self.notifierFor(listener).ready()
        self.assertEqual(listener.messages(), ["READY=1"])

    def test_statusIsOneLine(self) -> None:
        """A line break in a status cannot start another assignment."""
        listener = DatagramListener(self)
        self.notifierFor(listener).status("bad\nREADY=1")
        self.assertEqual(listener.messages(), ["STATUS=bad READY=1"])

    def test_reloading(self) -> None:
        """RELOADING=1 carries MONOTONIC_USEC, as Type=notify-reload wants."""
        listener = DatagramListener(self)
        self.notifierFor(listener).reloading()
        [message] = listener.messages()
        reloading, monotonic = message.split("\n")
        self.assertEqual(reloading, "RELOADING=1")
        self.assertTrue(monotonic.startswith("MONOTONIC_USEC="), monotonic)
        self.assertGreater(int(monotonic.split("=")[1]), 0)

    def test_withoutSystemd(self) -> None:
        """Without NOTIFY_SOCKET every method does nothing, and opens nothing."""
        notifier = SystemdNotifier.fromEnvironment({"WATCHDOG_USEC": "1000000"})
        self.assertFalse(notifier.enabled)
        self.assertIsNone(notifier.watchdogInterval)
        notifier.ready("x")
        notifier.status("x")
        notifier.reloading()
        notifier.stopping()
        notifier.startWatchdog()
        notifier.stopWatchdog()
        self.assertIsNone(notifier._socket)

    def test_failedSendsAreLoggedOnce(self) -> None:
        """A socket nobody listens on: sends never raise; one warning, then
        debug lines only."""
        events: list[dict[str, object]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        directory = tempfile.mkdtemp(prefix="yadiskpush-notify-")
        self.addCleanup(shutil.rmtree, directory, True)
        notifier = SystemdNotifier.fromEnvironment(
            {"NOTIFY_SOCKET": os.path.join(directory, "gone")}
        )
        self.addCleanup(notifier.close)
        for _ in range(3):
            notifier.watchdog()
        mine = [e for e in events if "systemd" in str(e.get("log_format", ""))]
        levels = [e["log_level"] for e in mine]
        self.assertEqual(levels, [LogLevel.warn, LogLevel.debug, LogLevel.debug])

    def test_unusableVariableIsIgnored(self) -> None:
        """A NOTIFY_SOCKET that is not an address gives a no-op notifier."""
        notifier = SystemdNotifier.fromEnvironment({"NOTIFY_SOCKET": "relative"})
        self.assertFalse(notifier.enabled)

    def test_watchdogEveryHalfInterval(self) -> None:
        """WATCHDOG=1 at once, then every half WATCHDOG_USEC on the clock,
        until stopped."""
        listener = DatagramListener(self)
        clock = task.Clock()
        notifier = self.notifierFor(listener, clock, WATCHDOG_USEC="10000000")
        notifier.startWatchdog()
        self.assertEqual(listener.messages(), ["WATCHDOG=1"])
        clock.advance(4.9)
        self.assertEqual(listener.messages(), [])
        clock.advance(0.1)
        self.assertEqual(listener.messages(), ["WATCHDOG=1"])
        clock.advance(5)
        clock.advance(5)
        self.assertEqual(listener.messages(), ["WATCHDOG=1", "WATCHDOG=1"])
        notifier.stopWatchdog()
        clock.advance(60)
        self.assertEqual(listener.messages(), [])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_noWatchdogWithoutUsec(self) -> None:
        """Without WATCHDOG_USEC nothing is scheduled."""
        listener = DatagramListener(self)
        clock = task.Clock()
        self.notifierFor(listener, clock).startWatchdog()
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(listener.messages(), [])


class CredentialTests(SynchronousTestCase):
    """--token-file and --accounts default to systemd's credentials."""

    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="yadiskpush-credentials-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.environ = {"CREDENTIALS_DIRECTORY": self.directory}

    def credential(self, name: str, text: str) -> str:
        """A credential as systemd leaves it: mode 0400."""
        path = os.path.join(self.directory, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o400)
        return path

    def test_tokenFile(self) -> None:
        """The token-file credential is the default --token-file."""
        path = self.credential("token-file", "y0_token\n")
        self.assertEqual(
            credentialDefaults(self.environ, None, None, "alice"), (path, None)
        )

    def test_tokenName(self) -> None:
        """A credential named token is accepted too."""
        path = self.credential("token", "y0_token\n")
        self.assertEqual(
            credentialDefaults(self.environ, None, None, None), (path, None)
        )

    def test_accounts(self) -> None:
        """The accounts credential is the default --accounts."""
        path = self.credential("accounts", "alice:y0_a\n")
        self.assertEqual(
            credentialDefaults(self.environ, None, None, None), (None, path)
        )

    def test_explicitOptionsWin(self) -> None:
        """A --token-file or --accounts given takes no credential at all."""
        self.credential("token-file", "y0_token\n")
        self.credential("accounts", "alice:y0_a\n")
        self.assertEqual(
            credentialDefaults(self.environ, "/etc/t", None, None), ("/etc/t", None)
        )
        self.assertEqual(
            credentialDefaults(self.environ, None, "/etc/a", None), (None, "/etc/a")
        )

    def test_loginPicksTheToken(self) -> None:
        """With --login, both credentials present: the token one is used."""
        token = self.credential("token-file", "y0_token\n")
        self.credential("accounts", "alice:y0_a\n")
        self.assertEqual(
            credentialDefaults(self.environ, None, None, "alice"), (token, None)
        )

    def test_bothAndNothingChosen(self) -> None:
        """Both credentials and no option: an error naming the two ways."""
        self.credential("token-file", "y0_token\n")
        self.credential("accounts", "alice:y0_a\n")
        with self.assertRaises(ConfigurationError) as caught:
            credentialDefaults(self.environ, None, None, None)
        message = str(caught.exception)
        self.assertIn("--login LOGIN", message)
        self.assertIn("--accounts", message)
        self.assertNotIn("y0_", message)

    def test_noDirectory(self) -> None:
        """Without CREDENTIALS_DIRECTORY, or with it empty, nothing changes."""
        self.assertEqual(credentialDefaults({}, None, None, None), (None, None))
        self.assertEqual(
            credentialDefaults(self.environ, None, None, None), (None, None)
        )

    def parse(self, *args: str) -> Options:
        options = Options()
        options.environ = dict(self.environ)
        options.parseOptions(list(args))
        return options

    def test_optionsTakeTheTokenCredential(self) -> None:
        """twistd yadiskpush --login reads the token credential; mode 0400
        gives no "readable by others" warning."""
        path = self.credential("token-file", "y0_credential_token\n")
        options = self.parse("--login", "alice")
        self.assertEqual(options["token-file"], path)
        assert options.settings is not None
        self.assertEqual(options.settings.token.reveal(), "y0_credential_token")
        self.assertEqual(options.settings.tokenFile, path)
        self.assertEqual(options.warnings, [])

    def test_optionsTakeTheAccountsCredential(self) -> None:
        """twistd yadiskpush with no option reads the accounts credential
        (mode 0400 is accepted)."""
        path = self.credential("accounts", "alice:y0_a\nbob:y0_b\n")
        options = self.parse()
        self.assertEqual(options["accounts"], path)
        self.assertEqual(list(options.accounts), ["alice", "bob"])

    def test_optionsBothIsAUsageError(self) -> None:
        """Both credentials and no option: a usage error."""
        from twisted.python import usage

        self.credential("token", "y0_token\n")
        self.credential("accounts", "alice:y0_a\n")
        with self.assertRaises(usage.UsageError) as caught:
            self.parse()
        self.assertIn("both a token and an accounts credential", str(caught.exception))

    def test_helpSaysSo(self) -> None:
        """--help names the credentials."""
        self.assertIn("CREDENTIALS_DIRECTORY", str(Options()))
