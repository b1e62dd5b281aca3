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
from twisted.trial.unittest import TestCase

from yadiskpush.localserver import LocalServer
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

    def startClient(self, settings: Settings) -> PushService:
        """Start a PushService; stopped (cleanly) on cleanup."""
        service = PushService(settings, reactor=reactor)
        service.startService()
        self.addCleanup(_stopIfRunning, service)
        return service


def _stopIfRunning(service: PushService) -> defer.Deferred[None] | None:
    if service.running:
        return service.stopService()
    return service.clientService.stopService()


def _removeTree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
