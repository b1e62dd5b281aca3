"""
``python -m yadiskpush.localserver`` as a person runs it: a child process on
real loopback sockets, and a real :class:`PushService` for a client.

Each wait is on the child's output or on the client's Deferreds (subscribed,
connection failed), never on time; the class timeout bounds them all.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor

from tests.integration.support import LOGIN, LocalServerTestCase
from tests.integration.test_plugin import REPOSITORY, Steps, TwistdProcess, reapChild
from yadiskpush.errors import StreamErrorReceived
from yadiskpush.notification import Notification
from yadiskpush.secret import Secret
from yadiskpush.settings import Settings


class RunningServer:
    """A ``python -m yadiskpush.localserver`` child and what it printed."""

    def __init__(self, process: TwistdProcess, transport: Any) -> None:
        self.process = process
        self.transport = transport
        self.starttlsPort = 0
        self.tlsPort = 0
        self.caFile = ""
        self.pushIds = ""
        self.pushes = 0

    @defer.inlineCallbacks
    def readBanner(self) -> Steps:
        """Wait for the lines that say where the server is."""
        yield self.process.whenLine("commands:")

        def value(prefix: str) -> str:
            found = [x for x in self.process.lines if x.startswith(prefix)]
            assert len(found) == 1, self.process.text()
            return found[0][len(prefix) :]

        self.starttlsPort = int(value("STARTTLS port: "))
        self.tlsPort = int(value("TLS port: "))
        self.caFile = value("CA certificate: ")
        self.pushIds = value("Push ids: ")

    def command(self, line: str) -> None:
        self.transport.write(line.encode("utf-8") + b"\n")


class LocalServerCommandLineTests(LocalServerTestCase):
    timeout = 60

    def setUp(self) -> None:
        super().setUp()
        self.accountsFile = os.path.join(self.directory, "accounts")
        with open(self.accountsFile, "w") as f:
            f.write(f"{LOGIN}:{self.token}\n")
        os.chmod(self.accountsFile, 0o600)
        self.stateDir = os.path.join(self.directory, "state")
        self.environment = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(REPOSITORY),
            "HOME": self.directory,
            "LANG": "C.UTF-8",
        }

    def spawnServer(self, *args: str) -> RunningServer:
        process = TwistdProcess()
        argv = [sys.executable, "-m", "yadiskpush.localserver"]
        argv += ["--accounts-file", self.accountsFile, *args]
        transport = reactor.spawnProcess(
            process, sys.executable, argv, env=self.environment, path=self.directory
        )
        self.addCleanup(reapChild, process, transport)
        return RunningServer(process, transport)

    @defer.inlineCallbacks
    def startServer(self, *args: str) -> Any:  # type: ignore[override]
        server = self.spawnServer(*args)
        yield server.readBanner()
        return server

    def clientFor(self, server: RunningServer, caFile: str) -> Any:
        settings = Settings(
            login=LOGIN,
            token=Secret(self.token),
            host="localhost",
            port=server.starttlsPort,
            tlsPort=server.tlsPort,
            caFile=caFile,
            domain="ya.ru",
            resource="yadiskpush-test",
        )
        received: list[Notification] = []
        service, _policy = self.startFastClient(settings, received.append)
        return service, received

    @defer.inlineCallbacks
    def pushAndReceive(
        self, server: RunningServer, received: list[Notification]
    ) -> Steps:
        """One push through the command line, acked by the client."""
        before = len(received)
        server.pushes += 1
        pushId = server.pushIds[:-1] + str(server.pushes)
        server.command("push new=1")
        yield server.process.whenLine(f"{pushId}: result")
        self.assertEqual(len(received), before + 1)
        self.assertEqual(received[-1].stanzaId, pushId)
        return pushId

    @defer.inlineCallbacks
    def stopWithSignal(self, server: RunningServer, name: str) -> Steps:
        server.transport.signalProcess(name)
        yield server.process.ended
        self.assertEqual(server.process.exitCode, 0, server.process.text())
        self.assertNotIn("Traceback", server.process.text())

    @defer.inlineCallbacks
    def test_stateDirKeepsTheCAAcrossARestart(self) -> Steps:
        """With --state-dir, the restarted server has the same CA and ports,
        the client (given DIR/ca.pem once) reconnects by itself, and push ids
        differ between the two starts."""
        first = yield self.startServer("--state-dir", self.stateDir)
        caFile = os.path.join(self.stateDir, "ca.pem")
        self.assertEqual(first.caFile, caFile)
        caBefore = Path(caFile).read_bytes()
        self.assertEqual(os.stat(self.stateDir).st_mode & 0o777, 0o700)
        for key in ("ca-key.pem", "server-key.pem"):
            mode = os.stat(os.path.join(self.stateDir, key)).st_mode & 0o777
            self.assertEqual(mode, 0o600, key)

        service, received = self.clientFor(first, caFile)
        yield service.whenReady()
        firstId = yield self.pushAndReceive(first, received)

        failed = service.whenConnectionFailed()
        yield self.stopWithSignal(first, "TERM")
        error = yield failed
        # The clean close a real server going down sends.
        self.assertIsInstance(error, StreamErrorReceived)
        self.assertEqual(error.condition, "system-shutdown")

        second = yield self.startServer("--state-dir", self.stateDir)
        self.assertEqual(Path(caFile).read_bytes(), caBefore)
        self.assertEqual(
            (second.starttlsPort, second.tlsPort), (first.starttlsPort, first.tlsPort)
        )
        yield service.whenReady()
        secondId = yield self.pushAndReceive(second, received)
        self.assertNotEqual(firstId, secondId)
        self.assertEqual((first.pushIds, second.pushIds), ("push-1-N", "push-2-N"))
        self.assertEqual(secondId, "push-2-1")

    @defer.inlineCallbacks
    def test_pushIdsDifferWithoutStateDir(self) -> Steps:
        """Without --state-dir each start has its own push id prefix."""
        first = yield self.startServer()
        second = yield self.startServer()
        self.assertRegex(first.pushIds, r"^push-[0-9a-f]{6}-N$")
        self.assertNotEqual(first.pushIds, second.pushIds)
        for server in (first, second):
            server.command("quit")
            yield server.process.ended

    @defer.inlineCallbacks
    def test_sigintClosesTheStreams(self) -> Steps:
        """SIGINT, like SIGTERM, ends each stream with system-shutdown."""
        server = yield self.startServer()
        service, _received = self.clientFor(server, server.caFile)
        yield service.whenReady()
        failed = service.whenConnectionFailed()
        yield self.stopWithSignal(server, "INT")
        error = yield failed
        self.assertIsInstance(error, StreamErrorReceived)
        self.assertEqual(error.condition, "system-shutdown")

    @defer.inlineCallbacks
    def test_dropMakesTheClientReconnect(self) -> Steps:
        """drop resets the connection without a closing tag; the client
        reconnects and takes pushes again."""
        server = yield self.startServer()
        service, received = self.clientFor(server, server.caFile)
        yield service.whenReady()
        failed = service.whenConnectionFailed()
        server.command(f"drop {LOGIN}")
        yield server.process.whenLine("drop: #1")
        error = yield failed
        self.assertNotIsInstance(error, StreamErrorReceived)
        yield service.whenReady()
        yield self.pushAndReceive(server, received)
        server.command("drop nobody")
        yield server.process.whenLine("drop: no session")
        server.command("quit")
        yield server.process.ended

    @defer.inlineCallbacks
    def test_closeEndsTheStreamCleanly(self) -> Steps:
        """close sends </stream:stream>; the client reconnects."""
        server = yield self.startServer()
        service, received = self.clientFor(server, server.caFile)
        yield service.whenReady()
        failed = service.whenConnectionFailed()
        server.command("close")
        yield server.process.whenLine("close: #1")
        yield failed
        yield service.whenReady()
        yield self.pushAndReceive(server, received)
        server.command("quit")
        yield server.process.ended

    @defer.inlineCallbacks
    def test_brokenStateDirIsOneSentence(self) -> Steps:
        """A CA certificate without its key: one line naming both, exit 1."""
        os.makedirs(self.stateDir, mode=0o700)
        Path(self.stateDir, "ca.pem").write_text("kept\n")
        server = self.spawnServer("--state-dir", self.stateDir)
        yield server.process.ended
        output = server.process.text()
        self.assertEqual(server.process.exitCode, 1, output)
        self.assertNotIn("Traceback", output)
        [line] = [x for x in server.process.lines if "--state-dir" in x]
        self.assertIn("ca-key.pem is not", line)
        self.assertIn("remove", line)
