"""
``python -m yadiskpush.localserver`` as a person runs it: a child process on
real loopback sockets, and a real :class:`PushService` for a client.

Each wait is on the child's output or on the client's Deferreds (subscribed,
connection failed), never on time; the class timeout bounds them all.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any
from unittest import SkipTest

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

    def clientFor(
        self,
        server: RunningServer,
        caFile: str,
        login: str = LOGIN,
        token: str | None = None,
    ) -> Any:
        settings = Settings(
            login=login,
            token=Secret(token or self.token),
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
        self,
        server: RunningServer,
        received: list[Notification],
        command: str = "push new=1",
    ) -> Steps:
        """One push through the command line, acked by the client."""
        before = len(received)
        server.pushes += 1
        pushId = server.pushIds[:-1] + str(server.pushes)
        server.command(command)
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

    @defer.inlineCallbacks
    def test_pushWithChanges(self) -> Steps:
        """push with TYPE:PATH words sends a <diff> the client reads as
        changes; sample sends realistic ones."""
        server = yield self.startServer()
        service, received = self.clientFor(server, server.caFile)
        yield service.whenReady()
        yield self.pushAndReceive(
            server,
            received,
            "push new:/Docs/a.txt deleted:/Old/ 'moved:/x y.txt->/z.txt'",
        )
        changes = received[-1].changes
        self.assertEqual(
            [(c.type, c.path, c.fromPath) for c in changes],
            [
                ("new", "/Docs/a.txt", None),
                ("deleted", "/Old", None),
                ("moved", "/z.txt", "/x y.txt"),
            ],
        )
        self.assertEqual(
            (received[-1].attributes["old"], received[-1].attributes["new"]),
            ("0", "1"),
        )
        yield self.pushAndReceive(server, received, "sample")
        self.assertTrue(received[-1].changes)
        self.assertEqual(received[-1].attributes["new"], "2")
        server.command("push nothing:")
        yield server.process.whenLine("error: 'nothing:' is not a change")
        server.command("quit")
        yield server.process.ended

    @defer.inlineCallbacks
    def test_oauthStandIn(self) -> Steps:
        """--oauth-port: yadiskpush token gets a token through the stand-in
        (the code approved with the approve command), and a client with it
        is accepted by the XMPP server."""
        script = Path(sys.executable).parent / "yadiskpush"
        if not script.exists():
            raise SkipTest(f"no yadiskpush script next to {sys.executable}")
        server = yield self.startServer("--oauth-port", "0")
        url = server.process.lineWith("OAuth and Disk API URL: ")
        client = server.process.lineWith("OAuth client: ")
        assert url is not None and client is not None, server.process.text()
        url = url.split(": ", 1)[1]
        clientId, secretFile = client.split(": ", 1)[1].split(", secret in ")
        self.assertEqual(os.stat(secretFile).st_mode & 0o777, 0o600)
        out = os.path.join(self.directory, "token.json")
        token = TwistdProcess()
        argv = [str(script), "token", "--client-id", clientId]
        argv += ["--client-secret-file", secretFile, "--out", out]
        argv += ["--oauth-url", url, "--api-url", url, "--ca-file", server.caFile]
        transport = reactor.spawnProcess(
            token, str(script), argv, env=self.environment, path=self.directory
        )
        self.addCleanup(reapChild, token, transport)
        line = yield token.whenLine("enter the code: ")
        code = line.rsplit(" ", 1)[1]
        server.command("codes")
        yield server.process.whenLine(code)
        server.command(f"approve {code} alice")
        yield server.process.whenLine(f"approved {code}")
        yield token.ended
        self.assertEqual(token.exitCode, 0, token.text())
        with open(out, encoding="utf-8") as f:
            saved = json.load(f)
        self.assertEqual(saved["login"], "alice")
        service, _received = self.clientFor(
            server, server.caFile, login="alice", token=saved["access_token"]
        )
        yield service.whenReady()
        server.command("deny NOSUCH")
        yield server.process.whenLine("error: no code 'NOSUCH'")
        server.command("quit")
        yield server.process.ended
