"""
The daemon keeps its token fresh, end to end over loopback TLS: the local
XMPP server and the OAuth stand-in (sharing the server's accounts and CA),
the real OAuth client, a real PushService or PushFleet, and once the real
``twistd yadiskpush --token-file token.json``.

Token files are made as ``yadiskpush token`` makes them: the device flow
against the stand-in, approved by the test.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, reactor
from twisted.logger import LogLevel

from tests.integration.support import (
    LOGIN,
    CompressedTimePolicy,
    LocalServerTestCase,
)
from tests.integration.test_plugin import TwistdTestCase
from yadiskpush.errors import AuthenticationFailed
from yadiskpush.fleet import PushFleet
from yadiskpush.localserver import LocalServer
from yadiskpush.localserver.oauth import OAuthStandIn, listenOAuth
from yadiskpush.oauth.client import OAuthClient
from yadiskpush.oauth.refresh import RejectedAndNotRefreshed, TokenRefresher
from yadiskpush.oauth.tokenfile import TokenFile, readTokenFile, writeTokenFile
from yadiskpush.secret import Secret
from yadiskpush.service import PushService

Steps = Generator[defer.Deferred[Any], Any, None]

CLIENT_ID = "yadiskpush-test-client"
CLIENT_SECRET = "client-secret-" + "s3cr3t" * 4
DAY = 24 * 3600.0
YEAR = 365 * DAY


@defer.inlineCallbacks
def startOAuth(case: Any, server: LocalServer) -> Any:
    """
    Serve an OAuth stand-in for ``server``'s accounts, with its CA, on
    loopback; return the stand-in and its URL. Polling may be immediate.
    """
    standIn = OAuthStandIn(
        server.accounts, {CLIENT_ID: CLIENT_SECRET}, reactor, interval=0
    )
    port = yield listenOAuth(reactor, standIn, server.tlsOptions)
    case.addCleanup(port.stopListening)
    return standIn, f"https://localhost:{port.getHost().port}"


@defer.inlineCallbacks
def obtainTokenFile(
    path: str, standIn: OAuthStandIn, url: str, caFile: str, expiresIn: float
) -> Any:
    """
    Get a token with the device flow (approved at once) and write the token
    file as ``yadiskpush token`` does, with the expiry the test asks for.
    """
    client = OAuthClient(url, url, reactor=reactor, caFile=caFile)
    code = yield client.requestDeviceCode(CLIENT_ID)
    standIn.approve(code.userCode, LOGIN)
    grant = yield client.exchangeDeviceCode(code, CLIENT_ID, Secret(CLIENT_SECRET))
    tokenFile = TokenFile(
        accessToken=grant.accessToken,
        refreshToken=grant.refreshToken,
        expiresAt=reactor.seconds() + expiresIn,
        login=LOGIN,
        clientId=CLIENT_ID,
        clientSecret=Secret(CLIENT_SECRET),
        oauthUrl=url,
    )
    writeTokenFile(path, tokenFile)
    return tokenFile


def secretsOf(path: str) -> list[str]:
    """Every secret the token file holds now."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return [data[k] for k in ("access_token", "refresh_token", "client_secret")]


@dataclass(frozen=True)
class Grant:
    accessToken: Secret
    refreshToken: Secret | None
    expiresIn: float | None


class ControlledClient:
    """
    An OAuth client whose refresh answers when the test says: for the
    service's semantics around a refresh (the refresh itself is tested with
    the real client and stand-in above).
    """

    def __init__(self) -> None:
        self.answers: list[defer.Deferred[Any]] = []
        self.called: defer.Deferred[None] = defer.Deferred()

    def factory(self, oauthUrl: str) -> ControlledClient:
        return self

    def refresh(self, *args: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.answers.append(d)
        if not self.called.called:
            self.called.callback(None)
        return d


class RefreshTestCase(LocalServerTestCase):
    @defer.inlineCallbacks
    def setUpOAuth(self, expiresIn: float) -> Any:
        """A server, its OAuth stand-in and a token file for ``LOGIN``."""
        self.server = yield self.startServer(accounts={LOGIN: "not-issued-yet"})
        self.standIn, self.url = yield startOAuth(self, self.server)
        self.ca = self.caFile(self.server)
        self.path = os.path.join(self.directory, "token.json")
        self.original = yield obtainTokenFile(
            self.path, self.standIn, self.url, self.ca, expiresIn
        )
        self.assertEqual(
            self.server.accounts[LOGIN], self.original.accessToken.reveal()
        )

    def refresher(self, client: Any = None) -> TokenRefresher:
        return TokenRefresher(self.path, reactor, client=client, caFile=self.ca)

    def startService(self, refresher: TokenRefresher) -> PushService:
        token, _ = readTokenFile(self.path)
        service = PushService(
            self.settingsFor(self.server, token=token.accessToken, tokenFile=self.path),
            reactor=reactor,
            reconnectPolicy=CompressedTimePolicy(),
            tokenRefresher=refresher,
        )
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        return service

    def assertFileRefreshed(self) -> TokenFile:
        """The file holds the token the server accepts now, a year's expiry,
        the other fields as before, mode 0600."""
        tokenFile, warnings = readTokenFile(self.path)
        self.assertEqual(warnings, [])
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.assertNotEqual(tokenFile.accessToken, self.original.accessToken)
        self.assertNotEqual(tokenFile.refreshToken, self.original.refreshToken)
        self.assertEqual(self.server.accounts[LOGIN], tokenFile.accessToken.reveal())
        assert tokenFile.expiresAt is not None
        self.assertGreater(tokenFile.expiresAt, reactor.seconds() + YEAR - DAY)
        self.assertEqual(
            (tokenFile.login, tokenFile.clientId, tokenFile.clientSecret),
            (LOGIN, CLIENT_ID, Secret(CLIENT_SECRET)),
        )
        self.assertEqual(tokenFile.oauthUrl, self.url)
        return tokenFile

    def assertNoSecretLogged(self, capture: Any, secrets: list[str]) -> None:
        text = "\n".join(capture.messages())
        for secret in secrets:
            self.assertNotIn(secret, text)


class RefreshEndToEndTests(RefreshTestCase):
    @defer.inlineCallbacks
    def test_nearExpiryRefreshedAtStart(self) -> Steps:
        """A token expiring within 30 days is refreshed when the service
        starts; the file is rewritten, and the service runs subscribed with
        the token the server accepts."""
        capture = self.captureLogs()
        yield self.setUpOAuth(expiresIn=10 * DAY)
        oldSecrets = secretsOf(self.path)
        refresher = self.refresher()
        service = self.startService(refresher)
        self.assertEqual(refresher.requests, 1)
        # Shares the request the start's check sent.
        token = yield refresher.refresh()
        yield service.whenReady()
        # One request, even when the session began with the old token and
        # the server rejected it once the refresh had replaced it.
        self.assertEqual(refresher.requests, 1)
        self.assertEqual(self.standIn.counts["token:refresh_token"], 1)
        tokenFile = self.assertFileRefreshed()
        self.assertEqual(token, tokenFile.accessToken)
        [session] = self.server.openSessions(LOGIN)
        self.assertTrue(session.subscribed)
        self.assertIsNone(service.gaveUp)
        self.assertTrue(
            any(
                "Refreshed the OAuth token in" in m and "it now expires on" in m
                for m in capture.messages(LogLevel.info)
            ),
            capture.messages(),
        )
        self.assertNoSecretLogged(capture, oldSecrets + secretsOf(self.path))

    @defer.inlineCallbacks
    def test_rejectedThenRefreshed(self) -> Steps:
        """The access token expires at the server; the next session is
        rejected, the fleet's account refreshes once, reconnects and
        subscribes, never counted as given up, and the file holds the new
        token."""
        capture = self.captureLogs()
        yield self.setUpOAuth(expiresIn=300 * DAY)
        oldSecrets = secretsOf(self.path)
        refresher = self.refresher()
        fleet = PushFleet(reactor, **self._fleetSettings())
        token, _ = readTokenFile(self.path)
        fleet.add(
            LOGIN, token.accessToken, tokenFile=self.path, tokenRefresher=refresher
        )
        fleet.startService()
        self.addCleanup(fleet.stopService)
        yield fleet.whenAllSettled()
        self.assertEqual((fleet.subscribed, refresher.requests), (1, 0))
        service = fleet[LOGIN]
        service.reconnectPolicy = CompressedTimePolicy()
        allGaveUp = fleet.whenGaveUp()
        allGaveUp.addErrback(lambda _: None)

        self.standIn.expireAccessToken(LOGIN)
        failed = service.whenConnectionFailed()
        [session] = self.server.openSessions(LOGIN)
        session.drop()
        yield failed  # the drop
        rejected = yield service.whenConnectionFailed()
        self.assertIsInstance(rejected, AuthenticationFailed)
        self.assertEqual(fleet.gaveUp, {})
        yield self.server.whenSubscribed(2)
        yield service.whenReady()

        self.assertFalse(allGaveUp.called)
        self.assertEqual(fleet.gaveUp, {})
        self.assertEqual(fleet.subscribed, 1)
        self.assertEqual(refresher.requests, 1)
        self.assertEqual(self.standIn.counts["token:refresh_token"], 1)
        self.assertEqual(len(self.server.eventsOf("auth-failure")), 1)
        self.assertFileRefreshed()
        warnings = capture.clientMessages(LogLevel.warn)
        self.assertIn(
            "the server rejected the OAuth token for login 'test' "
            f"(not-authorized: Invalid OAuth token); refreshing the token with "
            f"the refresh token in {self.path}",
            warnings,
        )
        self.assertEqual(capture.clientMessages(LogLevel.error), [])
        self.assertNoSecretLogged(capture, oldSecrets + secretsOf(self.path))

    @defer.inlineCallbacks
    def test_rejectedThenRefreshedIntoAnUnwritableFile(self) -> Steps:
        """
        When the token file cannot be written (a read-only credential), the
        refreshed token is used from memory: the session after the rejection
        subscribes with it, and so does every later reconnect, although the
        file still holds the dead token.
        """
        from yadiskpush.errors import ConfigurationError
        from yadiskpush.oauth import refresh as refreshModule

        yield self.setUpOAuth(expiresIn=300 * DAY)

        def refuse(path: str, tokenFile: TokenFile) -> None:
            raise ConfigurationError(f"cannot write the token file {path}: read-only")

        self.patch(refreshModule, "writeTokenFile", refuse)
        refresher = self.refresher()
        service = self.startService(refresher)
        yield service.whenReady()
        self.standIn.expireAccessToken(LOGIN)
        [session] = self.server.openSessions(LOGIN)
        session.drop()
        rejected = yield service.whenConnectionFailed()
        while not isinstance(rejected, AuthenticationFailed):
            rejected = yield service.whenConnectionFailed()
        yield self.server.whenSubscribed(2)
        yield service.whenReady()
        tokenFile, _ = readTokenFile(self.path)
        self.assertEqual(tokenFile.accessToken, self.original.accessToken)

        [session] = self.server.openSessions(LOGIN)
        session.drop()
        yield self.server.whenSubscribed(3)
        yield service.whenReady()
        self.assertEqual(len(self.server.eventsOf("auth-failure")), 1)
        self.assertEqual(refresher.requests, 1)
        self.assertIsNone(service.gaveUp)

    def _fleetSettings(self) -> dict[str, Any]:
        settings = self.settingsFor(self.server)
        return dict(
            host=settings.host,
            port=settings.port,
            tlsPort=settings.tlsPort,
            caFile=settings.caFile,
            domain=settings.domain,
            resource=settings.resource,
        )

    @defer.inlineCallbacks
    def test_revokedRefreshTokenGivesUp(self) -> Steps:
        """A rejected token whose refresh token was revoked: the service gives
        up, with one message naming the rejection, the refresh's failure and
        the fix, and connects no more."""
        capture = self.captureLogs()
        yield self.setUpOAuth(expiresIn=300 * DAY)
        oldSecrets = secretsOf(self.path)
        self.standIn.expireAccessToken(LOGIN)
        self.standIn.revokeRefreshToken(LOGIN)
        service = self.startService(self.refresher())
        error = yield service.whenGaveUp()
        self.assertIsInstance(error, RejectedAndNotRefreshed)
        self.assertIsInstance(error, AuthenticationFailed)
        self.assertIn(
            "the server rejected the OAuth token for login 'test' (not-authorized),"
            f" and refreshing it failed: cannot refresh the OAuth token in "
            f"{self.path}: ",
            error.message,
        )
        self.assertTrue(
            error.message.endswith(
                f"; run: yadiskpush token --out {self.path} (and check --login)"
            ),
            error.message,
        )
        self.assertIn(error.message, capture.clientMessages(LogLevel.error))
        self.assertEqual(len(self.server.eventsOf("auth")), 1)
        self.assertEqual(self.standIn.counts["token:refresh_token"], 1)
        self.assertEqual(secretsOf(self.path), oldSecrets)
        self.assertNoSecretLogged(capture, oldSecrets)


class RefreshSemanticsTests(RefreshTestCase):
    """What the service does around a refresh, with a refresh the test
    answers: no loop, no give-up while it runs, no reconnect after a stop."""

    @defer.inlineCallbacks
    def test_refreshedTokenRejectedTooGivesUp(self) -> Steps:
        """A refreshed token that is rejected as well is not refreshed again
        (a wrong --login would loop): the service gives up after one
        refresh."""
        yield self.setUpOAuth(expiresIn=300 * DAY)
        self.server.accounts[LOGIN] = "a-token-nobody-has"
        client = ControlledClient()
        refresher = self.refresher(client.factory)
        service = self.startService(refresher)
        yield client.called
        client.answers[0].callback(Grant(Secret("y0_also-rejected"), None, YEAR))
        error = yield service.whenGaveUp()
        self.assertIsInstance(error, AuthenticationFailed)
        self.assertNotIsInstance(error, RejectedAndNotRefreshed)
        self.assertEqual(refresher.requests, 1)
        self.assertEqual(len(self.server.eventsOf("auth-failure")), 2)
        self.assertEqual(
            readTokenFile(self.path)[0].accessToken.reveal(), "y0_also-rejected"
        )

    @defer.inlineCallbacks
    def test_noGiveUpWhileRefreshing(self) -> Steps:
        """While the refresh after a rejection is under way the service has
        neither given up nor is it ready; it gives up once the refresh
        fails."""
        yield self.setUpOAuth(expiresIn=300 * DAY)
        self.server.accounts[LOGIN] = "a-token-nobody-has"
        client = ControlledClient()
        service = self.startService(self.refresher(client.factory))
        gaveUp = service.whenGaveUp()
        states: list[tuple[bool, bool]] = []
        service.addStateObserver(lambda s: states.append((s.ready, s.gaveUp is None)))
        yield client.called
        self.assertFalse(gaveUp.called)
        self.assertIsNone(service.gaveUp)
        self.assertFalse(service.ready)
        self.assertTrue(service.retrying)
        from yadiskpush.oauth.client import OAuthError

        client.answers[0].errback(OAuthError("timeout", "localhost did not answer"))
        error = yield gaveUp
        self.assertIn("refreshing it failed", error.message)
        self.assertEqual(states[-1], (False, False))

    @defer.inlineCallbacks
    def test_stopDuringRefreshDoesNotReconnect(self) -> Steps:
        """Stopped while refreshing: no reconnect when the refresh ends, and
        the file still gets the new token."""
        yield self.setUpOAuth(expiresIn=300 * DAY)
        self.server.accounts[LOGIN] = "a-token-nobody-has"
        client = ControlledClient()
        service = self.startService(self.refresher(client.factory))
        yield client.called
        yield service.stopService()
        client.answers[0].callback(Grant(Secret("y0_after-the-stop"), None, YEAR))
        self.assertEqual(
            readTokenFile(self.path)[0].accessToken.reveal(), "y0_after-the-stop"
        )
        # A connection would be scheduled now; there is none.
        self.assertEqual(
            [
                call
                for call in reactor.getDelayedCalls()
                if getattr(call.func, "__self__", None) is service
            ],
            [],
        )
        self.assertEqual(len(self.server.eventsOf("auth")), 1)
        self.assertIsNone(service.gaveUp)


class TwistdRefreshTests(TwistdTestCase):
    """The real ``twistd yadiskpush --token-file token.json``."""

    @defer.inlineCallbacks
    def _setUp(self, expiresIn: float) -> Any:
        server = LocalServer({LOGIN: "not-issued-yet"}, reactor=reactor)
        yield server.start()
        self.addCleanup(server.stop)
        standIn, url = yield startOAuth(self, server)
        ca = str(server.writeCACertificate(os.path.join(self.directory, "ca.pem")))
        path = os.path.join(self.directory, "token.json")
        yield obtainTokenFile(path, standIn, url, ca, expiresIn)
        args = [*self.serverArguments(server, ca), f"--token-file={path}"]
        return server, standIn, path, args

    @defer.inlineCallbacks
    def test_nearExpiryRefreshedAtStart(self) -> Steps:
        """With no --login (the file's is used), a token near expiry is
        refreshed at start, the file rewritten, the session subscribed; no
        secret in the output."""
        server, standIn, path, args = yield self._setUp(expiresIn=5 * DAY)
        oldSecrets = secretsOf(path)
        process, transport = self.spawnTwistd(*args)
        yield process.whenLine("Refreshed the OAuth token in")
        yield server.whenSubscribed(1)
        tokenFile, _ = readTokenFile(path)
        self.assertEqual(server.accounts[LOGIN], tokenFile.accessToken.reveal())
        assert tokenFile.expiresAt is not None
        self.assertGreater(tokenFile.expiresAt, reactor.seconds() + YEAR - DAY)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(tokenFile.login, LOGIN)
        yield self.stopCleanly(process, transport)
        for secret in oldSecrets + secretsOf(path):
            self.assertNotIn(secret, process.text())

    @defer.inlineCallbacks
    def test_revokedRefreshTokenExits78(self) -> Steps:
        """A rejected token that cannot be refreshed ends twistd with status
        78 and one line saying both and the fix; no secret in the output."""
        server, standIn, path, args = yield self._setUp(expiresIn=300 * DAY)
        oldSecrets = secretsOf(path)
        standIn.expireAccessToken(LOGIN)
        standIn.revokeRefreshToken(LOGIN)
        process, _ = self.spawnTwistd(*args)
        yield process.ended
        output = process.text()
        self.assertEqual(process.exitCode, 78, output)
        line = process.lineWith("Exiting with status 78 (EX_CONFIG)")
        self.assertIsNotNone(line, output)
        assert line is not None
        self.assertIn("the server rejected the OAuth token for login 'test'", line)
        self.assertIn("and refreshing it failed", line)
        self.assertIn(f"run: yadiskpush token --out {path}", line)
        self.assertNotIn("Traceback", output)
        for secret in oldSecrets:
            self.assertNotIn(secret, output)
        self.assertEqual(secretsOf(path), oldSecrets)

    @defer.inlineCallbacks
    def test_differentLoginIsAUsageError(self) -> Steps:
        """--login other than the token file's: one usage line naming both."""
        server, standIn, path, args = yield self._setUp(expiresIn=300 * DAY)
        process, _ = self.spawnTwistd(*args, "--login=someone-else")
        yield process.ended
        self.assertEqual(process.exitCode, 1, process.text())
        self.assertIsNotNone(
            process.lineWith(
                f"--login someone-else differs from the login {LOGIN} of the token "
                f"file {path}"
            ),
            process.text(),
        )
        self.assertNotIn("Traceback", process.text())
