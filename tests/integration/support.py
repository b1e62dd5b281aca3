"""
End-to-end helpers: a local server on loopback and a client pointed at it.

Everything here is real: TCP on 127.0.0.1, TLS with a CA made for the test,
the client's whole initializer chain. Tests wait on the server's events and
the service's Deferreds, never on time.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from typing import Any

from twisted.internet import defer, reactor
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from yadiskpush.failures import Decision
from yadiskpush.localserver import LocalServer
from yadiskpush.reconnect import ReconnectPolicy
from yadiskpush.secret import Secret
from yadiskpush.service import PushService
from yadiskpush.settings import Settings

LOGIN = "test"


def closedPort() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LocalServerTestCase(TestCase):
    """A trial test case that can start local servers and clients for them."""

    timeout = 30

    def setUp(self) -> None:
        self.token = "y0_" + secrets.token_urlsafe(32)
        self.directory = tempfile.mkdtemp(prefix="yadiskpush-test-")
        self.addCleanup(_removeTree, self.directory)

    @defer.inlineCallbacks
    def startServer(self, **kwargs: Any) -> Any:
        """Start a LocalServer for ``LOGIN``/``self.token``; stopped on cleanup."""
        kwargs.setdefault("accounts", {LOGIN: self.token})
        server = LocalServer(reactor=reactor, **kwargs)
        yield server.start()
        self.addCleanup(server.stop)
        return server

    def caFile(self, server: LocalServer) -> str:
        path = os.path.join(self.directory, f"ca-{id(server)}.pem")
        return str(server.writeCACertificate(path))

    def settingsFor(self, server: LocalServer, **overrides: Any) -> Settings:
        """Client settings that point at ``server`` and trust its CA."""
        values: dict[str, Any] = {
            "login": LOGIN,
            "token": Secret(self.token),
            "host": "localhost",
            "port": server.starttlsPort,
            "tlsPort": server.tlsPort,
            "caFile": self.caFile(server),
            "domain": server.domain,
            "resource": "yadiskpush-test",
        }
        values.update(overrides)
        return Settings(**values)

    @defer.inlineCallbacks
    def readySession(self, server: LocalServer, service: PushService) -> Any:
        """Wait for the client's next subscribed session; return the server's."""
        yield service.whenReady()
        [session] = server.openSessions(LOGIN)
        self.assertTrue(session.subscribed)
        return session

    def startClient(self, settings: Settings) -> PushService:
        """Start a PushService; stopped (cleanly) on cleanup."""
        service = PushService(settings, reactor=reactor)
        service.startService()
        self.addCleanup(_stopIfRunning, service)
        return service

    def startFastClient(
        self, settings: Settings, observer: Any = None
    ) -> tuple[PushService, CompressedTimePolicy]:
        """
        Like :meth:`startClient`, with a :class:`CompressedTimePolicy` (and
        ``observer`` for notifications): for tests that reconnect many times.
        """
        policy = CompressedTimePolicy()
        service = PushService(settings, reactor=reactor, reconnectPolicy=policy)
        if observer is not None:
            service.addNotificationObserver(observer)
        service.startService()
        self.addCleanup(_stopIfRunning, service)
        return service, policy

    def captureLogs(self) -> LogCapture:
        """Record every log event until the test ends."""
        capture = LogCapture()
        globalLogPublisher.addObserver(capture)
        self.addCleanup(globalLogPublisher.removeObserver, capture)
        return capture


#: How many times faster than asked a :class:`CompressedTimePolicy` waits.
TIME_SCALE = 100.0


class CompressedTimePolicy(ReconnectPolicy):
    """
    The service's real reconnect policy (floors per stream error, redirects,
    the conflict count) with the jitter fixed at the start of each window,
    so that a delay is exactly its floor (0 when there is none), and every
    wait passes :data:`TIME_SCALE` times faster. Tests assert the delay the
    policy asked for (``requested``) instead of waiting a minute for it.

    :ivar requested: every delay the policy decided on, in seconds, in order.
    """

    def __init__(self) -> None:
        super().__init__(initialDelay=1.0, maxDelay=1.0, random=lambda: 0.0)
        self.requested: list[float] = []

    def delayAfter(self, decision: Decision) -> float:
        delay = super().delayAfter(decision)
        self.requested.append(delay)
        return delay / TIME_SCALE


class LogCapture:
    """A log observer that keeps every event, for assertions on the log."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def messages(self, level: LogLevel | None = None) -> list[str]:
        """Every event formatted as a person reads it (of ``level``, if given)."""
        return [
            formatEvent(e)
            for e in self.events
            if level is None or e.get("log_level") == level
        ]

    def clientMessages(self, level: LogLevel | None = None) -> list[str]:
        """Like :meth:`messages`, only the client account's own log lines."""
        return [
            formatEvent(e)
            for e in self.events
            if str(e.get("log_namespace", "")).startswith("yadiskpush.account.")
            and (level is None or e.get("log_level") == level)
        ]


def _stopIfRunning(service: PushService) -> defer.Deferred[None] | None:
    # A service that gave up has stopped its ClientService already.
    if service.running:
        return service.stopService()
    return None


def _removeTree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
