"""
The token flow end to end over real loopback TLS: the OAuth stand-in served
with a certificate from a throwaway CA, the OAuth client and the
``yadiskpush`` console script (a child process) talking to it.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any

from treq.client import HTTPClient
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from tests.integration.test_plugin import TwistdProcess, reapChild
from yadiskpush.connection.tls import loadTrustRoot
from yadiskpush.httpclient import VerifyingPolicy
from yadiskpush.localserver.ca import CertificateAuthority
from yadiskpush.localserver.oauth import OAuthStandIn, listenOAuth
from yadiskpush.oauth.client import OAuthClient, OAuthError
from yadiskpush.oauth.tokenfile import readTokenFile
from yadiskpush.secret import Secret

REPOSITORY = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).parent / "yadiskpush"
CLIENT_ID = "test-client"
CLIENT_SECRET = "test-client-secret"

Steps = Any


class StandInCase(TestCase):
    """A stand-in on loopback TLS; its clock is ``self.clock`` unless real."""

    timeout = 60

    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="yadiskpush-token-test-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.ca = CertificateAuthority.generate()
        self.caFile = os.path.join(self.directory, "ca.pem")
        self.ca.writeCACertificate(self.caFile)
        self.accounts: dict[str, str] = {"bob": "bobs-old-token"}

    @defer.inlineCallbacks
    def serve(self, names: list[str], clock: Any = None) -> Steps:
        """Serve a stand-in with a certificate for ``names``; return its URL."""
        self.standIn = OAuthStandIn(
            self.accounts, {CLIENT_ID: CLIENT_SECRET}, clock or reactor, interval=1
        )
        options = self.ca.issueServerCertificate(names).serverOptions()
        port = yield listenOAuth(reactor, self.standIn, options)
        self.addCleanup(port.stopListening)
        return f"https://127.0.0.1:{port.getHost().port}"

    def client(self, url: str, caFile: str | None = None) -> OAuthClient:
        return OAuthClient(url, url, caFile=caFile or self.caFile, timeout=20)


class ClientOverTLSTests(StandInCase):
    @defer.inlineCallbacks
    def test_wholeFlow(self) -> Steps:
        """Device code, pending, slow_down, approval, token, login, refresh."""
        clock = Clock()
        url = yield self.serve(["localhost", "127.0.0.1"], clock)
        client = self.client(url)
        secret = Secret(CLIENT_SECRET)
        code = yield client.requestDeviceCode(CLIENT_ID, "test device")
        self.assertTrue(code.verificationUrl.startswith(url))
        clock.advance(1)
        pending = yield self.assertFailure(
            client.exchangeDeviceCode(code, CLIENT_ID, secret), OAuthError
        )
        self.assertEqual(pending.code, "authorization_pending")
        tooSoon = yield self.assertFailure(
            client.exchangeDeviceCode(code, CLIENT_ID, secret), OAuthError
        )
        self.assertEqual(tooSoon.code, "slow_down")
        self.standIn.approve(code.userCode, "alice")
        clock.advance(6)
        grant = yield client.exchangeDeviceCode(code, CLIENT_ID, secret)
        self.assertEqual(self.accounts["alice"], grant.accessToken.reveal())
        login = yield client.fetchLogin(grant.accessToken)
        self.assertEqual(login, "alice")
        renewed = yield client.refresh(grant.refreshToken, CLIENT_ID, secret)
        self.assertEqual(self.accounts["alice"], renewed.accessToken.reveal())
        self.assertEqual(self.accounts["bob"], "bobs-old-token")

    @defer.inlineCallbacks
    def test_wrongNameRefused(self) -> Steps:
        """A certificate for another host name is refused, as a tls error."""
        url = yield self.serve(["wrong.example"])
        error = yield self.assertFailure(
            self.client(url).requestDeviceCode(CLIENT_ID), OAuthError
        )
        self.assertEqual(error.code, "tls")
        self.assertIn("does not name 127.0.0.1", error.message)
        self.assertEqual(self.standIn.counts["device_code"], 0)

    @defer.inlineCallbacks
    def test_untrustedCARefused(self) -> Steps:
        """A certificate from a CA not in --ca-file is refused."""
        url = yield self.serve(["127.0.0.1"])
        otherCA = os.path.join(self.directory, "other.pem")
        CertificateAuthority.generate().writeCACertificate(otherCA)
        error = yield self.assertFailure(
            self.client(url, otherCA).requestDeviceCode(CLIENT_ID), OAuthError
        )
        self.assertEqual(error.code, "tls")
        self.assertIn("trusted CA", error.message)

    @defer.inlineCallbacks
    def test_verificationPage(self) -> Steps:
        """The /device page approves a code posted to it."""
        clock = Clock()
        url = yield self.serve(["127.0.0.1"], clock)
        code = yield self.client(url).requestDeviceCode(CLIENT_ID)
        status, body = yield postToPage(
            self.caFile,
            url,
            {"user_code": code.userCode, "login": "carol", "action": "approve"},
        )
        self.assertEqual(status, 200)
        self.assertIn(b"Access allowed for carol", body)
        self.assertEqual(self.standIn.pending[code.deviceCode.reveal()].login, "carol")


@defer.inlineCallbacks
def postToPage(caFile: str, url: str, form: dict[str, str]) -> Steps:
    """POST ``form`` to the stand-in's verification page, as a browser would."""
    agent = Agent(
        reactor,
        contextFactory=VerifyingPolicy(loadTrustRoot(caFile)),
        pool=HTTPConnectionPool(reactor, persistent=False),
    )
    response = yield HTTPClient(agent).post(url + "/device", data=form)
    body = yield response.content()
    return response.code, body


class ConsoleScriptTests(StandInCase):
    """``yadiskpush token`` run for real, as the docs show it."""

    def setUp(self) -> None:
        super().setUp()
        if not SCRIPT.exists():
            self.skipTest(f"no yadiskpush script next to {sys.executable}")
        self.secretFile = os.path.join(self.directory, "client-secret")
        with open(self.secretFile, "w") as f:
            f.write(CLIENT_SECRET + "\n")
        self.environment = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(REPOSITORY),
            "HOME": self.directory,
            "XDG_CONFIG_HOME": os.path.join(self.directory, "config"),
            "LANG": "C.UTF-8",
        }

    def tokenArguments(self, url: str, *extra: str) -> list[str]:
        """``yadiskpush token`` against the stand-in at ``url``, trusting
        the test's CA."""
        return [
            "token",
            "--client-id",
            CLIENT_ID,
            "--oauth-url",
            url,
            "--api-url",
            url,
            "--ca-file",
            self.caFile,
            *extra,
        ]

    def spawn(self, *args: str) -> TwistdProcess:
        return self.spawnWithTransport(*args)[0]

    def spawnWithTransport(self, *args: str) -> tuple[TwistdProcess, Any]:
        process = TwistdProcess()
        transport = reactor.spawnProcess(
            process,
            str(SCRIPT),
            [str(SCRIPT), *args],
            env=self.environment,
            path=self.directory,
        )
        self.addCleanup(reapChild, process, transport)
        return process, transport

    @defer.inlineCallbacks
    def test_tokenThenRefresh(self) -> Steps:
        """yadiskpush token prints the URL and code, waits for the approval
        (given at the /device page), writes a 0600 JSON file under
        $XDG_CONFIG_HOME and prints the twistd line; token refresh renews it."""
        url = yield self.serve(["localhost", "127.0.0.1"])
        process = self.spawn(
            *self.tokenArguments(url, "--client-secret-file", self.secretFile)
        )
        line = yield process.whenLine("enter the code: ")
        userCode = line.rsplit(" ", 1)[1]
        self.assertIn(f"Open {url}/device", line)
        yield postToPage(
            self.caFile,
            url,
            {"user_code": userCode, "login": "alice", "action": "approve"},
        )
        yield process.ended
        self.assertEqual(process.exitCode, 0, process.text())
        path = os.path.join(self.directory, "config", "yadiskpush", "token.json")
        self.assertIn(f"Wrote the token for alice to {path}", process.text())
        self.assertIn(f"twistd yadiskpush --token-file {path}", process.text())
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path) as f:
            written = json.load(f)
        self.assertEqual(written["access_token"], self.accounts["alice"])
        self.assertEqual(
            (written["login"], written["client_id"], written["client_secret"]),
            ("alice", CLIENT_ID, CLIENT_SECRET),
        )
        self.assertEqual(written["oauth_url"], url)
        self.assertNotIn(written["access_token"], process.text())
        self.assertEqual(Secret.fromFile(path)[0].reveal(), self.accounts["alice"])

        refresher = self.spawn(
            "token", "refresh", "--token-file", path, "--ca-file", self.caFile
        )
        yield refresher.ended
        self.assertEqual(refresher.exitCode, 0, refresher.text())
        self.assertIn("Refreshed the token for alice", refresher.text())
        renewed, _ = readTokenFile(path)
        self.assertEqual(renewed.accessToken.reveal(), self.accounts["alice"])
        self.assertNotEqual(renewed.accessToken.reveal(), written["access_token"])
        self.assertEqual((renewed.login, renewed.oauthUrl), ("alice", url))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)

    @defer.inlineCallbacks
    def test_denied(self) -> Steps:
        """Denying at the page ends the command with exit 77 and a sentence."""
        url = yield self.serve(["127.0.0.1"])
        self.environment["YADISKPUSH_CLIENT_SECRET"] = CLIENT_SECRET
        out = os.path.join(self.directory, "token.json")
        process = self.spawn(*self.tokenArguments(url, "--out", out))
        line = yield process.whenLine("enter the code: ")
        self.standIn.deny(line.rsplit(" ", 1)[1])
        yield process.ended
        self.assertEqual(process.exitCode, 77, process.text())
        self.assertIn("you denied access", process.text())
        self.assertNotIn("Traceback", process.text())
        self.assertFalse(os.path.exists(out))

    @defer.inlineCallbacks
    def test_badClientSecret(self) -> Steps:
        """A wrong client secret ends with invalid_client's advice, exit 78."""
        url = yield self.serve(["127.0.0.1"])
        self.environment["YADISKPUSH_CLIENT_SECRET"] = "wrong"
        process = self.spawn(*self.tokenArguments(url))
        line = yield process.whenLine("enter the code: ")
        self.standIn.approve(line.rsplit(" ", 1)[1], "alice")
        yield process.ended
        self.assertEqual(process.exitCode, 78, process.text())
        self.assertIn("check --client-id and the client secret", process.text())
        self.assertNotIn("wrong", process.text())

    @defer.inlineCallbacks
    def test_interruptWhileWaiting(self) -> Steps:
        """Ctrl-C while waiting for the approval exits 130 with one line."""
        url = yield self.serve(["127.0.0.1"])
        self.environment["YADISKPUSH_CLIENT_SECRET"] = CLIENT_SECRET
        out = os.path.join(self.directory, "token.json")
        process, transport = self.spawnWithTransport(
            *self.tokenArguments(url, "--out", out)
        )
        yield process.whenLine("enter the code: ")
        transport.signalProcess("INT")
        yield process.ended
        self.assertEqual(process.exitCode, 130, process.text())
        self.assertIn("stopped; no token file was written", process.text())
        self.assertNotIn("Traceback", process.text())
        self.assertFalse(os.path.exists(out))

    @defer.inlineCallbacks
    def test_plainHTTPToRemoteHostRefused(self) -> Steps:
        """http:// to a host that is not loopback is a usage error (64)."""
        self.environment["YADISKPUSH_CLIENT_SECRET"] = CLIENT_SECRET
        process = self.spawn(
            "token", "--client-id", CLIENT_ID, "--oauth-url", "http://oauth.example"
        )
        yield process.ended
        self.assertEqual(process.exitCode, 64, process.text())
        self.assertIn("--oauth-url", process.text())
        self.assertIn("https://", process.text())

    @defer.inlineCallbacks
    def test_refreshPlainFile(self) -> Steps:
        """A plain-token file cannot be refreshed: one sentence, exit 78."""
        path = os.path.join(self.directory, "plain")
        with open(path, "w") as f:
            f.write("plain-token\n")
        os.chmod(path, 0o600)
        process = self.spawn("token", "refresh", "--token-file", path)
        yield process.ended
        self.assertEqual(process.exitCode, 78, process.text())
        self.assertIn("has no refresh token", process.text())
        self.assertIn("run yadiskpush token", process.text())
        self.assertNotIn("plain-token", process.text())

    @defer.inlineCallbacks
    def test_versionAndHelp(self) -> Steps:
        """--version names yadiskpush, Twisted and wokkel; --help the commands."""
        version = self.spawn("--version")
        yield version.ended
        self.assertEqual(version.exitCode, 0)
        for name in ("yadiskpush", "Twisted", "wokkel"):
            self.assertIn(name, version.text())
        helpText = self.spawn("--help")
        yield helpText.ended
        self.assertIn("token", helpText.text())
