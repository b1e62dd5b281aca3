"""
Failure semantics users rely on, end to end over loopback TLS: exit 78 on a
give-up, SIGHUP that never kills, token rotation without a restart, and
credentials only for a host whose certificate names the host dialled, also
around a ``see-other-host`` redirect.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Generator
from typing import Any

from twisted.internet import defer, reactor

from tests.integration.support import LOGIN, LocalServerTestCase
from tests.integration.test_plugin import TwistdTestCase
from yadiskpush.errors import AuthenticationFailed, CertificateError, ServiceStopped
from yadiskpush.localserver import LocalServer

Steps = Generator[defer.Deferred[Any], Any, None]


class TwistdExitTests(TwistdTestCase):
    """The real ``twistd yadiskpush`` child: exit status and SIGHUP."""

    @defer.inlineCallbacks
    def _serverAndArgs(self, token: str) -> Any:
        server = LocalServer({LOGIN: "the-right-token"}, reactor=reactor)
        yield server.start()
        self.addCleanup(server.stop)
        ca = str(server.writeCACertificate(os.path.join(self.directory, "ca.pem")))
        tokenFile = os.path.join(self.directory, "token")
        with open(os.open(tokenFile, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(token + "\n")
        args = [
            "--nodaemon",
            "--pidfile=",
            "--logfile=-",
            "yadiskpush",
            "--host=localhost",
            f"--port={server.starttlsPort}",
            f"--tls-port={server.tlsPort}",
            f"--ca-file={ca}",
            f"--login={LOGIN}",
            f"--token-file={tokenFile}",
        ]
        return server, args, tokenFile

    @defer.inlineCallbacks
    def test_rejectedTokenExits78(self) -> Steps:
        """A rejected token ends twistd with status 78 and one line naming the fix."""
        server, args, _ = yield self._serverAndArgs("a-wrong-token")
        process, _ = self.spawnTwistd(*args)
        yield process.ended
        self.assertEqual(process.exitCode, 78, process.text())
        line = process.lineWith("Exiting with status 78 (EX_CONFIG)")
        self.assertIsNotNone(line, process.text())
        self.assertIn("get a new OAuth token", line)
        self.assertNotIn("a-wrong-token", process.text())
        self.assertEqual(len(server.eventsOf("auth")), 1)

    @defer.inlineCallbacks
    def test_sighupDoesNotKill(self) -> Steps:
        """SIGHUP re-reads the token and reopens outputs; the client keeps going."""
        server, args, tokenFile = yield self._serverAndArgs("the-right-token")
        out = os.path.join(self.directory, "out.jsonl")
        process, transport = self.spawnTwistd(*args, f"--json-out={out}")
        yield server.whenSubscribed(1)
        os.rename(out, out + ".1")
        transport.signalProcess("HUP")
        yield process.whenLine("SIGHUP: reopening outputs")
        self.assertFalse(process.ended.called)
        answer = yield server.push(LOGIN, {"t": "diff"})
        self.assertEqual(answer["type"], "result")
        lines = yield self.whenLines(process, out, 1)
        self.assertEqual(lines[0]["id"], answer["id"])
        yield self.stopCleanly(process, transport)


class TokenRotationTests(LocalServerTestCase):
    @defer.inlineCallbacks
    def test_newTokenUsedWithoutRestart(self) -> Steps:
        """A token file rewritten while running is used at the next attempt."""
        server = yield self.startServer()
        tokenFile = os.path.join(self.directory, "token")
        with open(os.open(tokenFile, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(self.token + "\n")
        service, policy = self.startFastClient(
            self.settingsFor(server, tokenFile=tokenFile)
        )
        session = yield self.readySession(server, service)
        rotated = self.token + "-rotated"
        server.accounts[LOGIN] = rotated
        with open(tokenFile + ".new", "w") as f:
            f.write(rotated + "\n")
        os.chmod(tokenFile + ".new", 0o600)
        os.replace(tokenFile + ".new", tokenFile)
        session.drop()
        yield server.whenSubscribed(2)
        self.assertIsNone(service.gaveUp)
        self.assertEqual(len(server.eventsOf("auth-failure")), 0)

    @defer.inlineCallbacks
    def test_rejectedTokenNotRetriedOnRestart(self) -> Steps:
        """Starting again after a rejected token does not send that token again."""
        server = yield self.startServer(accounts={LOGIN: "the-right-token"})
        service = self.startClient(self.settingsFor(server))
        error = yield service.whenGaveUp()
        self.assertIsInstance(error, AuthenticationFailed)
        yield service.stopService()
        service.startService()
        for _ in range(3):
            yield defer.succeed(None)
        self.assertEqual(len(server.eventsOf("auth")), 1)
        self.assertEqual(len(server.sessions), 1)
        self.assertIsNotNone(service.gaveUp)


class RedirectIdentityTests(LocalServerTestCase):
    """RFC 6120 §4.9.3.19: a redirect changes where, not whom, we trust."""

    @defer.inlineCallbacks
    def test_redirectTargetMustAlsoNameHost(self) -> Steps:
        """A redirect target whose certificate does not name --host gets no <auth>."""
        server = yield self.startServer()
        target = yield self.startServer(ca=server.ca, hostNames=["127.0.0.1"])
        service, policy = self.startFastClient(self.settingsFor(server))
        session = yield self.readySession(server, service)
        failed = service.whenConnectionFailed()
        session.sendStreamError(
            "see-other-host", host=f"127.0.0.1:{target.starttlsPort}"
        )
        yield failed
        error = yield service.whenConnectionFailed()
        self.assertIsInstance(error, CertificateError)
        self.assertIn("localhost", str(error))
        self.assertEqual(target.eventsOf("auth"), [])
        self.assertEqual(target.eventsOf("auth-before-tls"), [])
        # Back to --host afterwards, verified against --host alone.
        yield server.whenSubscribed(2)

    @defer.inlineCallbacks
    def test_afterRedirectHostVerifiedAgainstItself(self) -> Steps:
        """
        After a redirect, --host presenting a certificate that names only the
        redirect target is refused: no state of the previous attempt is used.
        """
        server = yield self.startServer()
        target = yield self.startServer(
            ca=server.ca, hostNames=["127.0.0.1", "localhost"]
        )
        service, policy = self.startFastClient(self.settingsFor(server))
        session = yield self.readySession(server, service)
        session.sendStreamError(
            "see-other-host", host=f"127.0.0.1:{target.starttlsPort}"
        )
        moved = yield target.whenSubscribed(1)
        # --host now presents the redirect target's certificate only.
        server.tlsOptions = server.ca.issueServerCertificate(
            ["127.0.0.1"]
        ).serverOptions()
        authsBefore = len(server.eventsOf("auth"))
        failed = service.whenConnectionFailed()
        moved.drop()
        yield failed
        error = yield service.whenConnectionFailed()
        self.assertIsInstance(error, CertificateError)
        self.assertIn("'localhost'", str(error))
        self.assertEqual(len(server.eventsOf("auth")), authsBefore)


class CertificateMessageTests(LocalServerTestCase):
    @defer.inlineCallbacks
    def test_expiredCertificateSaysSo(self) -> Steps:
        """An expired certificate is reported as expired, and gets no <auth>."""
        server = yield self.startServer()
        past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=2)
        server.tlsOptions = server.ca.issueServerCertificate(
            ["localhost"],
            notValidBefore=past - datetime.timedelta(days=30),
            notValidAfter=past,
        ).serverOptions()
        service, policy = self.startFastClient(self.settingsFor(server, tlsPort=0))
        error = yield service.whenConnectionFailed()
        self.assertIsInstance(error, CertificateError)
        self.assertIn("has expired", str(error))
        self.assertEqual(server.eventsOf("auth"), [])


class WaiterTests(LocalServerTestCase):
    @defer.inlineCallbacks
    def test_waitersFailOnStop(self) -> Steps:
        """whenReady, whenConnectionFailed, whenGaveUp fail when the service stops."""
        server = yield self.startServer(accounts={})
        service = self.startClient(self.settingsFor(server, port=1, tlsPort=0))
        waiters = [
            service.whenReady(),
            service.whenConnectionFailed(),
            service.whenGaveUp(),
        ]
        yield service.stopService()
        for d in waiters:
            self.failureResultOf(d, ServiceStopped)

    @defer.inlineCallbacks
    def test_stopFromFailureCallbackStops(self) -> Steps:
        """stopService() called by a whenConnectionFailed() callback stops it."""
        server = yield self.startServer()
        service, policy = self.startFastClient(self.settingsFor(server))
        session = yield self.readySession(server, service)
        failed = service.whenConnectionFailed()
        failed.addCallback(lambda _: service.stopService())
        session.drop()
        yield failed
        self.assertFalse(service.retrying)
        self.assertEqual(len(server.sessions), 1)
        self.assertEqual(policy.requested, [])
