"""
Tests for yadiskpush.oauth.refresh: what is due, refreshing the token file,
and the periodic check, on a ``task.Clock`` with a stand-in OAuth client
object (the real client and server are in the integration tests).
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, task
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from yadiskpush.errors import AuthenticationFailed, ConfigurationError, YaDiskPushError
from yadiskpush.oauth import refresh as refreshModule
from yadiskpush.oauth.refresh import (
    CHECK_INTERVAL,
    REFRESH_MARGIN,
    RejectedAndNotRefreshed,
    TokenRefresher,
    TokenRefreshError,
    caFileForOAuth,
    isLoopbackURL,
)
from yadiskpush.oauth.tokenfile import TokenFile, readTokenFile, writeTokenFile
from yadiskpush.secret import Secret

#: The stand-in clock's "now": a realistic time, so expiry dates read well.
NOW = 1_800_000_000.0
DAY = 24 * 3600.0

OLD_ACCESS = "y0_old-access-token-abcdef"
OLD_REFRESH = "1:old-refresh-token-ghijkl"
NEW_ACCESS = "y0_new-access-token-mnopqr"
NEW_REFRESH = "1:new-refresh-token-stuvwx"
CLIENT_SECRET = "client-secret-yz0123"


@dataclass(frozen=True)
class Grant:
    """What the real client's ``refresh`` gives (a TokenGrant's fields)."""

    accessToken: Secret
    refreshToken: Secret | None
    expiresIn: float | None


class FakeOAuthError(YaDiskPushError):
    """Shaped like the client's OAuthError: a message and a code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class FakeClient:
    """
    An OAuth client whose ``refresh`` answers are given by the test: each
    call returns a Deferred kept in :attr:`calls`, fired by the test.
    """

    def __init__(self) -> None:
        self.urls: list[str] = []
        self.calls: list[tuple[Secret, str, Secret, defer.Deferred[Any]]] = []

    def factory(self, oauthUrl: str) -> FakeClient:
        self.urls.append(oauthUrl)
        return self

    def refresh(
        self, refreshToken: Secret, clientId: str, clientSecret: Secret
    ) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.calls.append((refreshToken, clientId, clientSecret, d))
        return d

    def grant(
        self,
        access: str = NEW_ACCESS,
        refresh: str | None = NEW_REFRESH,
        expiresIn: float | None = 365 * DAY,
        index: int = -1,
    ) -> None:
        self.calls[index][3].callback(
            Grant(Secret(access), Secret(refresh) if refresh else None, expiresIn)
        )

    def refuse(self, code: str, message: str, index: int = -1) -> None:
        self.calls[index][3].errback(FakeOAuthError(code, message))


class RefresherTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(NOW)
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.path = os.path.join(self.directory, "token.json")
        self.client = FakeClient()
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def writeFile(self, expiresIn: float | None = 10 * DAY, **fields: Any) -> None:
        values: dict[str, Any] = dict(
            accessToken=Secret(OLD_ACCESS),
            refreshToken=Secret(OLD_REFRESH),
            expiresAt=None if expiresIn is None else NOW + expiresIn,
            login="alice",
            clientId="the-client-id",
            clientSecret=Secret(CLIENT_SECRET),
            oauthUrl="https://oauth.example",
        )
        values.update(fields)
        writeTokenFile(self.path, TokenFile(**values))

    def writePlain(self, token: str = OLD_ACCESS) -> None:
        with open(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(token + "\n")

    def refresher(self, **kwargs: Any) -> TokenRefresher:
        return TokenRefresher(
            self.path, self.clock, client=self.client.factory, **kwargs
        )

    def fileData(self) -> dict[str, Any]:
        with open(self.path, encoding="utf-8") as f:
            data: dict[str, Any] = json.load(f)
        return data

    def logged(self, level: LogLevel) -> list[str]:
        return [formatEvent(e) for e in self.events if e.get("log_level") == level]

    def assertNoToken(self, text: str) -> None:
        for secret in (OLD_ACCESS, OLD_REFRESH, NEW_ACCESS, NEW_REFRESH, CLIENT_SECRET):
            self.assertNotIn(secret, text)


class IsDueTests(RefresherTestCase):
    def test_notDueBeyondThirtyDays(self) -> None:
        """A token expiring in 31 days is not due."""
        self.writeFile(expiresIn=31 * DAY)
        self.assertFalse(self.refresher().isDue())

    def test_dueWithinThirtyDays(self) -> None:
        """A token expiring within 30 days (at the margin, too) is due."""
        self.writeFile(expiresIn=29 * DAY)
        self.assertTrue(self.refresher().isDue())
        self.writeFile(expiresIn=REFRESH_MARGIN)
        self.assertTrue(self.refresher().isDue())

    def test_dueWhenExpired(self) -> None:
        """A token that expired already is due."""
        self.writeFile(expiresIn=-DAY)
        self.assertTrue(self.refresher().isDue())

    def test_nowGiven(self) -> None:
        """isDue(now) judges at the time given, not the clock's."""
        self.writeFile(expiresIn=60 * DAY)
        refresher = self.refresher()
        self.assertFalse(refresher.isDue(NOW))
        self.assertTrue(refresher.isDue(NOW + 31 * DAY))

    def test_unknownExpiryIsNotDue(self) -> None:
        """No expires_at (or a plain token file) is never due."""
        self.writeFile(expiresIn=None)
        self.assertFalse(self.refresher().isDue())
        self.writePlain()
        self.assertFalse(self.refresher().isDue())

    def test_unreadableIsNotDue(self) -> None:
        """A missing file is not due (the service reports the file itself)."""
        self.assertFalse(self.refresher().isDue())


class RefreshTests(RefresherTestCase):
    def test_refreshWritesTheFile(self) -> None:
        """A refresh sends the file's refresh token and client, and writes the
        new tokens and expiry back, keeping every other field."""
        self.writeFile(expiresIn=10 * DAY)
        refresher = self.refresher()
        d = refresher.refresh()
        [(refreshToken, clientId, clientSecret, _)] = self.client.calls
        self.assertEqual(self.client.urls, ["https://oauth.example"])
        self.assertEqual(refreshToken, Secret(OLD_REFRESH))
        self.assertEqual(clientId, "the-client-id")
        self.assertEqual(clientSecret, Secret(CLIENT_SECRET))
        self.clock.advance(5)
        self.client.grant(expiresIn=365 * DAY)
        self.assertEqual(self.successResultOf(d), Secret(NEW_ACCESS))
        self.assertEqual(
            self.fileData(),
            {
                "access_token": NEW_ACCESS,
                "refresh_token": NEW_REFRESH,
                "expires_at": NOW + 5 + 365 * DAY,
                "login": "alice",
                "client_id": "the-client-id",
                "client_secret": CLIENT_SECRET,
                "oauth_url": "https://oauth.example",
            },
        )
        self.assertFalse(refresher.isDue())

    def test_writtenAtomicallyWithMode600(self) -> None:
        """The file is replaced by a rename (a new inode), mode 0600, with no
        temporary file left beside it, even when it was wider before."""
        self.writeFile()
        os.chmod(self.path, 0o644)
        before = os.stat(self.path).st_ino
        d = self.refresher().refresh()
        self.client.grant()
        self.successResultOf(d)
        after = os.stat(self.path)
        self.assertNotEqual(after.st_ino, before)
        self.assertEqual(stat.S_IMODE(after.st_mode), 0o600)
        self.assertEqual(os.listdir(self.directory), ["token.json"])

    def test_keepsRefreshTokenWhenNoneCame(self) -> None:
        """Without a new refresh token the old one stays; without expires_in
        the expiry becomes unknown."""
        self.writeFile()
        d = self.refresher().refresh()
        self.client.grant(refresh=None, expiresIn=None)
        self.successResultOf(d)
        data = self.fileData()
        self.assertEqual(data["access_token"], NEW_ACCESS)
        self.assertEqual(data["refresh_token"], OLD_REFRESH)
        self.assertIsNone(data["expires_at"])

    def test_concurrentRefreshesShareOneRequest(self) -> None:
        """Calls while a refresh is under way share its one request; the next
        call after it ends sends a new one."""
        self.writeFile()
        refresher = self.refresher()
        first, second = refresher.refresh(), refresher.refresh()
        self.assertEqual(len(self.client.calls), 1)
        self.assertNoResult(first)
        self.client.grant()
        self.assertEqual(self.successResultOf(first), Secret(NEW_ACCESS))
        self.assertEqual(self.successResultOf(second), Secret(NEW_ACCESS))
        self.assertEqual(refresher.requests, 1)
        refresher.refresh()
        self.assertEqual(len(self.client.calls), 2)
        self.assertEqual(self.client.calls[1][0], Secret(NEW_REFRESH))

    def test_cancelledCallerDoesNotCancelTheRequest(self) -> None:
        """A caller that stops waiting does not stop the refresh: the file is
        still written (the server may have replaced the refresh token), and
        a call meanwhile still shares the request."""
        self.writeFile()
        refresher = self.refresher()
        d = refresher.refresh()
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        later = refresher.refresh()
        self.assertEqual(len(self.client.calls), 1)
        self.client.grant()
        self.assertEqual(self.successResultOf(later), Secret(NEW_ACCESS))
        self.assertEqual(self.fileData()["refresh_token"], NEW_REFRESH)

    def test_plainTokenRefused(self) -> None:
        """A plain-token file cannot be refreshed: one sentence with the fix,
        and no request."""
        self.writePlain()
        error = self.failureResultOf(self.refresher().refresh(), TokenRefreshError)
        self.assertEqual(
            error.value.message,
            f"the token file {self.path} holds a plain token, with no refresh "
            f"token to get a new one; run: yadiskpush token --out {self.path}",
        )
        self.assertFalse(error.value.transient)
        self.assertEqual(self.client.calls, [])
        self.assertNoToken(error.value.message)

    def test_missingFieldsNamed(self) -> None:
        """A JSON file without what a refresh needs names the missing keys."""
        self.writeFile(refreshToken=None, clientSecret=None)
        error = self.failureResultOf(self.refresher().refresh(), TokenRefreshError)
        self.assertIn(
            "has no refresh_token, client_secret, which a refresh needs",
            error.value.message,
        )
        self.assertEqual(self.client.calls, [])

    def test_unreadableFile(self) -> None:
        """A missing file fails with the reader's sentence and the fix."""
        error = self.failureResultOf(self.refresher().refresh(), TokenRefreshError)
        self.assertIn(f"cannot read the token file {self.path}", error.value.message)
        self.assertIn("run: yadiskpush token --out", error.value.message)

    def test_refusedByServer(self) -> None:
        """A refused refresh token fails with the server's reason and the fix;
        the file is left as it was."""
        self.writeFile()
        before = self.fileData()
        d = self.refresher().refresh()
        self.client.refuse("invalid_grant", "the refresh token was revoked")
        error = self.failureResultOf(d, TokenRefreshError).value
        self.assertEqual(
            error.message,
            f"cannot refresh the OAuth token in {self.path}: the refresh token "
            f"was revoked; run: yadiskpush token --out {self.path}",
        )
        self.assertFalse(error.transient)
        self.assertEqual(self.fileData(), before)

    def test_unreachableIsTransient(self) -> None:
        """A timeout or an HTTP failure may pass by itself: transient."""
        self.writeFile()
        d = self.refresher().refresh()
        self.client.refuse("timeout", "the OAuth server did not answer in 30 s")
        self.assertTrue(self.failureResultOf(d, TokenRefreshError).value.transient)

    def test_fileChangedMeanwhileWins(self) -> None:
        """A token put in place during the refresh is kept, not overwritten."""
        self.writeFile()
        d = self.refresher().refresh()
        self.writeFile(accessToken=Secret("y0_put-there-by-hand"))
        self.client.grant()
        self.assertEqual(self.successResultOf(d), Secret("y0_put-there-by-hand"))
        self.assertEqual(self.fileData()["access_token"], "y0_put-there-by-hand")

    def unwritable(self) -> None:
        """Make every write of the token file fail, as a read-only
        credential does (permissions do not stop root, who runs CI)."""

        def refuse(path: str, tokenFile: TokenFile) -> None:
            raise ConfigurationError(f"cannot write the token file {path}: read-only")

        self.patch(refreshModule, "writeTokenFile", refuse)

    def test_unsavedRefreshKeptInMemory(self) -> None:
        """A refresh the file cannot take is used from memory, with one
        warning naming the file and the fix; the next refresh sends the
        refresh token the server gave, not the file's stale one."""
        self.writeFile()
        self.unwritable()
        refresher = self.refresher()
        d = refresher.refresh()
        self.client.grant()
        self.assertEqual(self.successResultOf(d), Secret(NEW_ACCESS))
        self.assertEqual(self.fileData()["access_token"], OLD_ACCESS)
        self.assertEqual(refresher.read().accessToken, Secret(NEW_ACCESS))
        self.assertEqual(refresher.currentToken(Secret(OLD_ACCESS)), Secret(NEW_ACCESS))
        [warning] = self.logged(LogLevel.warn)
        self.assertIn("could not save it", warning)
        self.assertIn(self.path, warning)
        for secret in (OLD_ACCESS, NEW_ACCESS, OLD_REFRESH, NEW_REFRESH):
            self.assertNotIn(secret, warning)
        refresher.refresh()
        self.assertEqual(self.client.calls[-1][0], Secret(NEW_REFRESH))

    def test_fileReplacedAfterUnsavedRefreshWins(self) -> None:
        """A token put in the file by hand after an unsaved refresh is used."""
        self.writeFile()
        self.unwritable()
        refresher = self.refresher()
        refresher.refresh()
        self.client.grant()
        self.assertEqual(
            refresher.currentToken(Secret("y0_put-there-by-hand")),
            Secret("y0_put-there-by-hand"),
        )
        self.assertEqual(refresher.currentToken(Secret(OLD_ACCESS)), Secret(OLD_ACCESS))

    def test_rejectedAndNotRefreshedSaysBoth(self) -> None:
        """The give-up error names the rejection, why the refresh failed, and
        the fix, and still counts as a rejected token."""
        rejected = AuthenticationFailed("alice", "not-authorized", "Invalid token")
        refreshError = TokenRefreshError(self.path, "the refresh token was revoked")
        error = RejectedAndNotRefreshed(rejected, refreshError)
        self.assertIsInstance(error, AuthenticationFailed)
        self.assertTrue(error.fatal)
        self.assertEqual(
            error.message,
            "the server rejected the OAuth token for login 'alice' (not-authorized),"
            " and refreshing it failed: the refresh token was revoked; run: "
            f"yadiskpush token --out {self.path} (and check --login)",
        )


class PeriodicCheckTests(RefresherTestCase):
    def test_dueAtStartRefreshes(self) -> None:
        """The first check runs at start; a due token is refreshed and the new
        one handed on."""
        self.writeFile(expiresIn=10 * DAY)
        refresher = self.refresher()
        tokens: list[Secret] = []
        refresher.startChecking(tokens.append)
        self.addCleanup(refresher.stopChecking)
        self.assertEqual(len(self.client.calls), 1)
        self.client.grant()
        self.assertEqual(tokens, [Secret(NEW_ACCESS)])
        self.assertEqual(self.fileData()["access_token"], NEW_ACCESS)

    def test_notDueWaitsForTheNextCheck(self) -> None:
        """A token not yet due is refreshed at the first check (every 12 h)
        after it becomes due, not before."""
        self.writeFile(expiresIn=REFRESH_MARGIN + CHECK_INTERVAL + 60)
        refresher = self.refresher()
        tokens: list[Secret] = []
        refresher.startChecking(tokens.append)
        self.addCleanup(refresher.stopChecking)
        self.clock.advance(CHECK_INTERVAL)
        self.assertEqual(self.client.calls, [])
        self.clock.advance(CHECK_INTERVAL)
        self.assertEqual(len(self.client.calls), 1)
        self.client.grant()
        self.assertEqual(tokens, [Secret(NEW_ACCESS)])

    def test_failureLoggedOnceAndRetried(self) -> None:
        """A failed refresh is one warning with the fix, no error or
        traceback, and the next check tries again."""
        self.writeFile(expiresIn=5 * DAY)
        refresher = self.refresher()
        tokens: list[Secret] = []
        refresher.startChecking(tokens.append)
        self.addCleanup(refresher.stopChecking)
        self.client.refuse("invalid_grant", "the refresh token was revoked")
        warnings = [w for w in self.logged(LogLevel.warn) if "refresh" in w]
        self.assertEqual(
            warnings,
            [
                f"cannot refresh the OAuth token in {self.path}: the refresh "
                f"token was revoked; run: yadiskpush token --out {self.path}"
            ],
        )
        self.assertEqual(self.logged(LogLevel.error), [])
        self.assertEqual(self.logged(LogLevel.critical), [])
        self.clock.advance(CHECK_INTERVAL)
        self.assertEqual(len(self.client.calls), 2)
        self.client.grant()
        self.assertEqual(tokens, [Secret(NEW_ACCESS)])
        self.assertNoToken("\n".join(formatEvent(e) for e in self.events))

    def test_transientFailureSaysWhenAgain(self) -> None:
        """An unreachable OAuth server: the warning says when it is tried again."""
        self.writeFile(expiresIn=5 * DAY)
        refresher = self.refresher()
        refresher.startChecking(lambda token: None)
        self.addCleanup(refresher.stopChecking)
        self.client.refuse("timeout", "the OAuth server did not answer in 30 s")
        self.assertIn(
            f"cannot refresh the OAuth token in {self.path}: the OAuth server did "
            "not answer in 30 s; trying again in 12 hours",
            self.logged(LogLevel.warn),
        )

    def test_dueButPlainWarns(self) -> None:
        """A due token the file cannot refresh: a warning with the fix, no
        request."""
        self.writeFile(expiresIn=2 * DAY, refreshToken=None)
        refresher = self.refresher()
        refresher.startChecking(lambda token: None)
        self.addCleanup(refresher.stopChecking)
        self.assertEqual(self.client.calls, [])
        [warning] = self.logged(LogLevel.warn)
        self.assertIn("expires on 2027-01-", warning)
        self.assertIn("cannot be refreshed", warning)
        self.assertIn(f"run: yadiskpush token --out {self.path}", warning)

    def test_stopChecking(self) -> None:
        """After stopChecking no check runs, and a refresh under way no longer
        calls back (but still writes the file)."""
        self.writeFile(expiresIn=5 * DAY)
        refresher = self.refresher()
        tokens: list[Secret] = []
        refresher.startChecking(tokens.append)
        refresher.stopChecking()
        self.client.grant()
        self.assertEqual(tokens, [])
        self.assertEqual(self.fileData()["access_token"], NEW_ACCESS)
        self.clock.advance(10 * CHECK_INTERVAL)
        self.assertEqual(len(self.client.calls), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class TrustTests(SynchronousTestCase):
    def test_loopbackURLs(self) -> None:
        """127.0.0.0/8, ::1 and localhost are loopback; anything else is not."""
        for url in (
            "https://127.0.0.1:8443",
            "https://127.1.2.3",
            "https://[::1]:1",
            "https://localhost:8443/",
        ):
            self.assertTrue(isLoopbackURL(url), url)
        for url in ("https://oauth.yandex.ru", "https://10.0.0.1", "not a url"):
            self.assertFalse(isLoopbackURL(url), url)

    def test_caFileOnlyForLoopback(self) -> None:
        """--ca-file verifies a loopback OAuth server; Yandex's uses the
        system roots."""
        self.assertEqual(caFileForOAuth("https://127.0.0.1:1", "ca.pem"), "ca.pem")
        self.assertIsNone(caFileForOAuth("https://oauth.yandex.ru", "ca.pem"))
        self.assertIsNone(caFileForOAuth("https://127.0.0.1:1", None))


class ReadBackTests(RefresherTestCase):
    def test_refreshedFileReadsBack(self) -> None:
        """What the refresher writes, the token file reader reads."""
        self.writeFile()
        d = self.refresher().refresh()
        self.client.grant()
        self.successResultOf(d)
        tokenFile, warnings = readTokenFile(self.path)
        self.assertEqual(warnings, [])
        self.assertEqual(tokenFile.accessToken, Secret(NEW_ACCESS))
        self.assertTrue(tokenFile.canRefresh())


class OptionsTests(RefresherTestCase):
    """twistd yadiskpush --token-file with the JSON file."""

    def parse(self, *argv: str) -> Any:
        from yadiskpush.cli.options import Options

        options = Options()
        options.environ = {}
        options.parseOptions(list(argv))
        return options

    def test_loginFromTheFile(self) -> None:
        """Without --login, the JSON file's login is used."""
        self.writeFile()
        options = self.parse("--token-file", self.path)
        self.assertEqual(options.settings.login, "alice")
        self.assertEqual(options.settings.token, Secret(OLD_ACCESS))
        self.assertEqual(options.settings.tokenFile, self.path)

    def test_sameLoginGiven(self) -> None:
        """--login equal to the file's is fine."""
        self.writeFile()
        self.assertEqual(
            self.parse("--token-file", self.path, "--login", "alice").settings.login,
            "alice",
        )

    def test_differentLoginIsAUsageError(self) -> None:
        """A --login other than the file's is a usage error naming both."""
        from twisted.python.usage import UsageError

        self.writeFile()
        error = self.assertRaises(
            UsageError, self.parse, "--token-file", self.path, "--login", "bob"
        )
        self.assertEqual(
            str(error),
            f"--login bob differs from the login alice of the token file "
            f"{self.path}: drop --login, or give the token file of bob",
        )

    def test_noLoginAnywhere(self) -> None:
        """A file without a login (plain, or JSON without one) still needs
        --login."""
        from twisted.python.usage import UsageError

        self.writePlain()
        error = self.assertRaises(UsageError, self.parse, "--token-file", self.path)
        self.assertIn("--login is required", str(error))
        self.writeFile(login=None)
        error = self.assertRaises(UsageError, self.parse, "--token-file", self.path)
        self.assertIn("--login is required", str(error))

    def test_refresherForJSONOnly(self) -> None:
        """A JSON token file gets a refresher with --ca-file passed on; a
        plain one and YADISKPUSH_TOKEN get none."""
        from yadiskpush.cli.options import buildTokenRefresher

        self.writeFile()
        options = self.parse("--token-file", self.path)
        options["ca-file"] = "ca.pem"  # not read here: only handed on
        refresher = buildTokenRefresher(options, self.clock)
        assert refresher is not None
        self.assertEqual((refresher.path, refresher.caFile), (self.path, "ca.pem"))
        self.assertEqual(refresher.log.namespace, "yadiskpush.account.alice")
        self.writePlain()
        options = self.parse("--token-file", self.path, "--login", "alice")
        self.assertIsNone(buildTokenRefresher(options, self.clock))
        from yadiskpush.cli.options import Options

        options = Options()
        options.environ = {"YADISKPUSH_TOKEN": OLD_ACCESS}
        options.parseOptions(["--login", "alice"])
        self.assertIsNone(buildTokenRefresher(options, self.clock))
