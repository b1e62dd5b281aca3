"""
Tests for yadiskpush.oauth.client against the OAuth stand-in in memory
(treq's RequestTraversalAgent), with polling and expiry on a task.Clock.
"""

from __future__ import annotations

from typing import Any

from treq.testing import RequestTraversalAgent
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from yadiskpush.errors import ConfigurationError
from yadiskpush.localserver.oauth import OAuthStandIn
from yadiskpush.oauth.client import (
    OAuthClient,
    OAuthError,
    checkURL,
    cleanServerText,
)
from yadiskpush.secret import Secret

CLIENT_ID = "client-id"
CLIENT_SECRET = Secret("client-secret")
BASE = "http://127.0.0.1:8080"


class Flow(SynchronousTestCase):
    """A stand-in and a client sharing one Clock, talking in memory."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.accounts: dict[str, str] = {}
        self.standIn = OAuthStandIn(
            self.accounts, {CLIENT_ID: CLIENT_SECRET.reveal()}, self.clock
        )
        self.agent = RequestTraversalAgent(self.standIn)
        self.client = OAuthClient(BASE, BASE, reactor=self.clock, agent=self.agent)

    def result(self, d: Any) -> Any:
        self.agent.flush()
        return self.successResultOf(d)

    def failureCode(self, d: Any) -> OAuthError:
        self.agent.flush()
        return self.failureResultOf(d, OAuthError).value

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.agent.flush()

    def deviceCode(self) -> Any:
        return self.result(self.client.requestDeviceCode(CLIENT_ID))


class DeviceFlowTests(Flow):
    def test_deviceCode(self) -> None:
        """The device code answer is parsed; the device code stays hidden."""
        code = self.deviceCode()
        self.assertEqual((code.interval, code.expiresIn), (5.0, 300.0))
        self.assertTrue(code.verificationUrl.endswith("/device"))
        self.assertEqual(code.userCode, self.standIn.pendingUserCodes()[0])
        self.assertNotIn(code.deviceCode.reveal(), repr(code))

    def test_pollsEveryIntervalUntilApproved(self) -> None:
        """Pending polls repeat every interval; approval gives the token."""
        code = self.deviceCode()
        d = self.client.pollForToken(code, CLIENT_ID, CLIENT_SECRET)
        self.advance(4.9)
        self.assertEqual(self.standIn.pollTimes, [])
        self.advance(0.1)
        self.advance(5)
        self.assertEqual(self.standIn.pollTimes, [5.0, 10.0])
        self.assertNoResult(d)
        self.standIn.approve(code.userCode, "alice")
        self.advance(5)
        grant = self.successResultOf(d)
        self.assertEqual(self.accounts, {"alice": grant.accessToken.reveal()})
        self.assertEqual(grant.expiresIn, self.standIn.tokenLifetime)
        self.assertEqual(
            self.result(self.client.fetchLogin(grant.accessToken)), "alice"
        )

    def test_slowDownAddsFiveSeconds(self) -> None:
        """After slow_down the client waits 5 s longer between polls."""
        code = self.deviceCode()
        self.standIn.failNext(
            "/token", 400, b'{"error": "slow_down", "error_description": "slower"}'
        )
        d = self.client.pollForToken(code, CLIENT_ID, CLIENT_SECRET)
        self.advance(5)  # answered slow_down: the next poll is 10 s later
        self.advance(9.9)
        self.assertEqual(self.standIn.pollTimes, [])
        self.advance(0.1)
        self.advance(10)
        self.assertEqual(self.standIn.pollTimes, [15.0, 25.0])
        self.standIn.approve(code.userCode, "alice")
        self.advance(10)
        self.successResultOf(d)

    def test_standInAnswersSlowDown(self) -> None:
        """The stand-in answers slow_down to a poll sooner than the interval."""
        code = self.deviceCode()
        early = self.client.exchangeDeviceCode(code, CLIENT_ID, CLIENT_SECRET)
        self.assertEqual(self.failureCode(early).code, "slow_down")

    def test_temporaryFailureKeepsPolling(self) -> None:
        """A 5xx while the person enters the code does not waste the code:
        the next interval asks again, and approval still gives the token."""
        code = self.deviceCode()
        self.standIn.failNext("/token", 503, b"<html>busy</html>", "text/html")
        d = self.client.pollForToken(code, CLIENT_ID, CLIENT_SECRET)
        self.advance(5)
        self.assertNoResult(d)
        self.standIn.approve(code.userCode, "alice")
        self.advance(5)
        grant = self.successResultOf(d)
        self.assertEqual(self.accounts, {"alice": grant.accessToken.reveal()})

    def test_temporaryFailureUntilExpiryReported(self) -> None:
        """When the server fails until the code runs out, that failure is
        what the user hears, not "the code expired before it was entered"."""
        code = self.deviceCode()
        for _ in range(60):
            self.standIn.failNext("/token", 502, b"", "text/plain")
        d = self.client.pollForToken(code, CLIENT_ID, CLIENT_SECRET)
        self.advance(300)
        error = self.failureResultOf(d, OAuthError).value
        self.assertEqual((error.code, error.status), ("http", 502))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_expired(self) -> None:
        """A code nobody enters ends in expired_token with the advice to rerun."""
        code = self.deviceCode()
        d = self.client.pollForToken(code, CLIENT_ID, CLIENT_SECRET)
        self.advance(300)
        error = self.failureResultOf(d, OAuthError).value
        self.assertEqual(error.code, "expired_token")
        self.assertIn("run yadiskpush token again", error.message)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_expiredAtServer(self) -> None:
        """The server's expired_token is reported with the same sentence."""
        code = self.deviceCode()
        self.advance(301)
        error = self.failureCode(
            self.client.exchangeDeviceCode(code, CLIENT_ID, CLIENT_SECRET)
        )
        self.assertEqual(error.code, "expired_token")
        self.assertIn("expired before it was entered", error.message)

    def test_denied(self) -> None:
        """A denied code stops polling with access_denied."""
        code = self.deviceCode()
        d = self.client.pollForToken(code, CLIENT_ID, CLIENT_SECRET)
        self.standIn.deny(code.userCode)
        self.advance(5)
        error = self.failureResultOf(d, OAuthError).value
        self.assertEqual(error.code, "access_denied")
        self.assertIn("denied access", error.message)

    def test_cancelStopsPolling(self) -> None:
        """Cancelling the poll leaves no timer behind."""
        d = self.client.pollForToken(self.deviceCode(), CLIENT_ID, CLIENT_SECRET)
        d.cancel()
        self.failureResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_badClient(self) -> None:
        """An unknown client id or a wrong secret is invalid_client, with advice."""
        error = self.failureCode(self.client.requestDeviceCode("nobody"))
        self.assertEqual(error.code, "invalid_client")
        code = self.deviceCode()
        self.advance(5)
        error = self.failureCode(
            self.client.exchangeDeviceCode(code, CLIENT_ID, Secret("wrong"))
        )
        self.assertEqual(error.code, "invalid_client")
        self.assertIn("--client-id", error.message)


class RefreshTests(Flow):
    def grant(self) -> Any:
        code = self.deviceCode()
        self.standIn.approve(code.userCode, "alice")
        self.advance(5)
        return self.result(
            self.client.exchangeDeviceCode(code, CLIENT_ID, CLIENT_SECRET)
        )

    def test_refresh(self) -> None:
        """A refresh issues a new token the XMPP accounts now hold."""
        first = self.grant()
        second = self.result(
            self.client.refresh(first.refreshToken, CLIENT_ID, CLIENT_SECRET)
        )
        self.assertNotEqual(first.accessToken, second.accessToken)
        self.assertEqual(self.accounts["alice"], second.accessToken.reveal())
        error = self.failureCode(self.client.fetchLogin(first.accessToken))
        self.assertEqual(error.code, "unauthorized")

    def test_revoked(self) -> None:
        """A revoked refresh token is invalid_grant, advising to rerun."""
        first = self.grant()
        self.standIn.revokeRefreshToken("alice")
        error = self.failureCode(
            self.client.refresh(first.refreshToken, CLIENT_ID, CLIENT_SECRET)
        )
        self.assertEqual(error.code, "invalid_grant")
        self.assertIn("run yadiskpush token again", error.message)
        self.assertNotIn(first.refreshToken.reveal(), error.message)

    def test_expiredAccessToken(self) -> None:
        """expireAccessToken makes the Disk API answer 401."""
        grant = self.grant()
        self.standIn.expireAccessToken("alice")
        self.assertNotEqual(self.accounts["alice"], grant.accessToken.reveal())
        error = self.failureCode(self.client.fetchLogin(grant.accessToken))
        self.assertEqual((error.code, error.status), ("unauthorized", 401))


class BadAnswerTests(Flow):
    def test_serverError(self) -> None:
        """A 5xx is a temporary http error naming the status."""
        self.standIn.failNext("/device/code", 503, b"<html>busy</html>", "text/html")
        error = self.failureCode(self.client.requestDeviceCode(CLIENT_ID))
        self.assertEqual((error.code, error.status), ("http", 503))
        self.assertIn("HTTP 503", error.message)
        self.assertTrue(error.temporary)

    def test_clientErrorWithDescription(self) -> None:
        """A 4xx JSON error without "error" shows the description, cleaned."""
        self.standIn.failNext("/v1/disk", 403, b'{"description": "Forbidden\\u0007"}')
        error = self.failureCode(self.client.fetchLogin(Secret("t")))
        self.assertEqual((error.code, error.status), ("http", 403))
        self.assertIn("Forbidden", error.message)
        self.assertNotIn("\x07", error.message)
        self.assertFalse(error.temporary)

    def test_notJSON(self) -> None:
        """A 200 that is not JSON is a bad_response."""
        self.standIn.failNext("/token", 200, b"not json", "text/plain")
        code = self.deviceCode()
        error = self.failureCode(
            self.client.exchangeDeviceCode(code, CLIENT_ID, CLIENT_SECRET)
        )
        self.assertEqual(error.code, "bad_response")

    def test_missingFields(self) -> None:
        """A device code answer without a user code is a bad_response naming it."""
        self.standIn.failNext("/device/code", 200, b'{"device_code": "x"}')
        error = self.failureCode(self.client.requestDeviceCode(CLIENT_ID))
        self.assertEqual(error.code, "bad_response")
        self.assertIn("user_code", error.message)

    def test_redirectNotFollowed(self) -> None:
        """A redirect is an error, not followed."""
        self.standIn.failNext("/token", 302, b"")
        code = self.deviceCode()
        error = self.failureCode(
            self.client.exchangeDeviceCode(code, CLIENT_ID, CLIENT_SECRET)
        )
        self.assertIn("redirect", error.message)

    def test_echoedSecretHidden(self) -> None:
        """Server text that echoes a token shows <redacted> instead."""
        self.standIn.failNext(
            "/token",
            400,
            b'{"error": "invalid_request", "error_description": "bad code '
            b'abcdefghijklmnopqrstuvwxyz0123456789"}',
        )
        code = self.deviceCode()
        error = self.failureCode(
            self.client.exchangeDeviceCode(code, CLIENT_ID, CLIENT_SECRET)
        )
        self.assertEqual(error.code, "invalid_request")
        self.assertNotIn("abcdefghijklmnopqrstuvwxyz", error.message)
        self.assertIn("<redacted>", error.message)


class URLTests(SynchronousTestCase):
    def test_httpsAccepted(self) -> None:
        """https URLs are accepted, trailing slash removed."""
        self.assertEqual(
            checkURL("https://oauth.yandex.ru/", "--x"), "https://oauth.yandex.ru"
        )

    def test_httpLoopbackOnly(self) -> None:
        """http:// is accepted for loopback hosts and refused for others."""
        for url in ("http://localhost:1", "http://127.0.0.2", "http://[::1]:8"):
            checkURL(url, "--oauth-url")
        with self.assertRaises(ConfigurationError) as caught:
            checkURL("http://oauth.example", "--oauth-url")
        self.assertIn("--oauth-url", caught.exception.message)
        self.assertIn("https://", caught.exception.message)

    def test_malformed(self) -> None:
        """No host, another scheme or credentials in the URL are refused."""
        for url in ("oauth.example", "ftp://x", "https://u:p@x", "https://x:port"):
            with self.assertRaises(ConfigurationError):
                checkURL(url, "--api-url")

    def test_clientChecksURLs(self) -> None:
        """The client refuses plain http to a remote API host at once."""
        with self.assertRaises(ConfigurationError):
            OAuthClient(BASE, "http://cloud-api.example", reactor=Clock())

    def test_cleanServerText(self) -> None:
        """Control characters go, long text is cut, token-like runs hidden."""
        self.assertEqual(cleanServerText("a\x00b\n c"), "a b c")
        self.assertEqual(len(cleanServerText("x " * 500)), 200)
        self.assertEqual(cleanServerText("t: " + "A1" * 15), "t: <redacted>")


class DeclaredInterfacesTests(SynchronousTestCase):
    def test_formBodyIsABodyProducer(self) -> None:
        """The form body declares and satisfies IBodyProducer."""
        from twisted.web.iweb import IBodyProducer
        from zope.interface.verify import verifyObject

        from yadiskpush.httpclient import ImmediateBody

        self.assertTrue(verifyObject(IBodyProducer, ImmediateBody("a=b")))
