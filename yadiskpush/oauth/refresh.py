"""
Keeping one token file's OAuth token fresh while the daemon runs.

A Yandex OAuth token lives about a year. The JSON token file that
``yadiskpush token`` writes holds what is needed to get a new one without
asking the user (the refresh token, the application's id and secret, the
OAuth server's URL), so the daemon refreshes by itself: when the token
expires within :data:`REFRESH_MARGIN` (checked at start and every
:data:`CHECK_INTERVAL`), and once when the push server rejects the token
(:class:`~yadiskpush.service.PushService` asks for that). The new token is
written back into the same file, atomically and with mode 0600, keeping
every other field, so that a restart, ``yadiskpush token refresh`` and
SIGHUP all see it.

:class:`TokenRefresher` does the refreshing for one file; it never connects
to the push server itself and never decides to give up: the service does.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, task
from twisted.python.failure import Failure

from yadiskpush.errors import AuthenticationFailed, YaDiskPushError
from yadiskpush.logs import Logger
from yadiskpush.oauth.loopback import isLoopbackURL
from yadiskpush.oauth.tokenfile import TokenFile, readTokenFile, writeTokenFile
from yadiskpush.secret import Secret

#: Refresh when the token expires within this many seconds (30 days): long
#: enough that a daemon down for weeks, or a few failed checks in a row,
#: still refreshes in time.
REFRESH_MARGIN = 30 * 24 * 3600.0

#: Seconds between two checks of the expiry (12 hours): a failed refresh
#: is tried again this much later, so an outage of the OAuth server costs
#: two requests a day, not a storm.
CHECK_INTERVAL = 12 * 3600.0

#: :class:`OAuthError` codes worth trying again later without the user.
_TRANSIENT_CODES = frozenset({"http", "timeout"})

ClientFactory = Callable[[str], Any]


def fixFor(path: str) -> str:
    """The command that gets a whole new token into ``path``."""
    return f"run: yadiskpush token --out {path}"


class TokenRefreshError(YaDiskPushError):
    """
    The token in a token file could not be refreshed.

    :ivar path: the token file.
    :ivar reason: what went wrong, without the fix (for messages that
        combine it with another failure).
    :ivar transient: whether the same refresh may work later by itself (the
        OAuth server was unreachable or failed), as opposed to a file that
        cannot be refreshed or a refresh token the server refused.
    """

    fatal = True

    def __init__(self, path: str, reason: str, transient: bool = False) -> None:
        self.path = path
        self.reason = reason
        self.transient = transient
        super().__init__(f"{reason}; {fixFor(path)}")


class RejectedAndNotRefreshed(AuthenticationFailed):
    """
    The push server rejected the token and refreshing it failed as well:
    the give-up of a service with a :class:`TokenRefresher`. Still an
    :class:`~yadiskpush.errors.AuthenticationFailed`, so fleets count it as
    a rejected token and the daemon exits with status 78.
    """

    def __init__(
        self, rejected: AuthenticationFailed, refreshError: YaDiskPushError
    ) -> None:
        AuthenticationFailed.__init__(self, rejected.login, rejected.condition)
        self.fatal = True
        self.rejected = rejected
        self.refreshError = refreshError
        reason = getattr(refreshError, "reason", refreshError.message)
        path = getattr(refreshError, "path", None)
        fix = fixFor(path) if path else "get a new OAuth token"
        YaDiskPushError.__init__(
            self,
            f"the server rejected the OAuth token for login {rejected.login!r} "
            f"({rejected.condition or 'no condition given'}), and refreshing it "
            f"failed: {reason}; {fix} (and check --login)",
        )


def caFileForOAuth(oauthUrl: str, caFile: str | None) -> str | None:
    """
    The CA file to verify the OAuth server with: ``caFile`` (``--ca-file``)
    for a loopback OAuth server, the system's roots for any other.

    ``--ca-file`` names the CAs of the push server. In real use the OAuth
    server is Yandex's public one, whose certificate a private CA file
    does not hold: passing it on would make every refresh fail. A loopback
    OAuth server is the local stand-in, whose certificate comes from the
    same local CA as the push server's.
    """
    return caFile if isLoopbackURL(oauthUrl) else None


def expiresSoon(tokenFile: TokenFile, now: float) -> bool:
    """Whether the token's expiry is known and within :data:`REFRESH_MARGIN`."""
    return tokenFile.expiresAt is not None and tokenFile.expiresAt - now <= (
        REFRESH_MARGIN
    )


def _when(timestamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


class TokenRefresher:
    """
    Refreshes the OAuth token of one token file, on demand and on a timer.

    :param path: the token file (JSON, as ``yadiskpush token`` writes it).
    :param reactor: the reactor, whose clock decides what is due and
        drives the checks (a ``task.Clock`` in tests).
    :param client: ``client(oauthUrl)`` returns the object whose
        ``refresh(refreshToken, clientId, clientSecret)`` returns a Deferred
        of a :class:`~yadiskpush.oauth.client.TokenGrant`; an
        :class:`~yadiskpush.oauth.client.OAuthClient` if omitted.
    :param caFile: ``--ca-file``; used only for a loopback OAuth server
        (see :func:`caFileForOAuth`).
    :param log: where to log; one of the package's loggers if omitted.
    """

    def __init__(
        self,
        path: str,
        reactor: Any,
        client: ClientFactory | None = None,
        caFile: str | None = None,
        log: Logger | None = None,
    ) -> None:
        self.path = path
        self.reactor = reactor
        self.caFile = caFile
        self.log = log if log is not None else Logger(namespace="yadiskpush.token")
        self._clientFactory = client if client is not None else self._oauthClient
        self._waiting: list[defer.Deferred[Secret]] = []
        self._inFlight = False
        self._loop: task.LoopingCall | None = None
        self._checking: defer.Deferred[Secret] | None = None
        #: How many refresh requests were sent to the OAuth server.
        self.requests = 0
        # A refresh the file could not take (a read-only credential, a full
        # disk): the file's access token then, and the refreshed file kept in
        # memory instead. The server may have replaced the refresh token, so
        # the new one must not be lost while the process runs.
        self._unsaved: tuple[Secret, TokenFile] | None = None

    def _oauthClient(self, oauthUrl: str) -> Any:
        from yadiskpush.oauth.client import OAuthClient

        return OAuthClient(
            oauthUrl,
            reactor=self.reactor,
            caFile=caFileForOAuth(oauthUrl, self.caFile),
        )

    # -- what is due -----------------------------------------------------------

    def read(self) -> TokenFile:
        """
        The token file as it is now.

        :raises TokenRefreshError: if it cannot be read.
        """
        try:
            tokenFile, _ = readTokenFile(self.path)
        except YaDiskPushError as e:
            if self._unsaved is not None:
                return self._unsaved[1]
            raise TokenRefreshError(self.path, e.message) from None
        return self._overlay(tokenFile)

    def currentToken(self, fileToken: Secret) -> Secret:
        """
        The token to connect with, given the one the file holds now: the
        file's, unless a refresh could not be saved to it, in which case the
        refreshed one (until someone puts another token in the file).
        """
        if self._unsaved is None:
            return fileToken
        onDisk, refreshed = self._unsaved
        if fileToken != onDisk:
            self._unsaved = None  # replaced by hand: the new file wins
            return fileToken
        return refreshed.accessToken

    def _overlay(self, tokenFile: TokenFile) -> TokenFile:
        if self._unsaved is None:
            return tokenFile
        if tokenFile.accessToken != self._unsaved[0]:
            self._unsaved = None
            return tokenFile
        return self._unsaved[1]

    def isDue(self, now: float | None = None) -> bool:
        """
        Whether the token should be refreshed now: its expiry is known and
        is within 30 days, or past. ``False`` when the file cannot be read.

        :param now: seconds since the epoch; the reactor's time if omitted.
        """
        if now is None:
            now = self.reactor.seconds()
        try:
            return expiresSoon(self.read(), now)
        except TokenRefreshError:
            return False

    # -- refreshing ----------------------------------------------------------------

    def refresh(self) -> defer.Deferred[Secret]:
        """
        Exchange the file's refresh token for a new access token, write it
        back into the file (keeping the other fields; a new refresh token if
        the server sent one; ``expires_at`` from ``expires_in``) and fire
        with the new access token.

        Calls made while a refresh is under way share its one request. A
        caller may cancel its own Deferred; the request goes on and the file
        is still written, since the server may have replaced the refresh
        token already.

        :raises TokenRefreshError: (as the Deferred's failure) when the file
            cannot be read or refreshed (a plain token, missing fields), the
            OAuth server refuses or cannot be reached, or the file cannot be
            written. The message never contains a token.
        """
        waiter: defer.Deferred[Secret] = defer.Deferred(self._forget)
        self._waiting.append(waiter)
        if not self._inFlight:
            self._inFlight = True
            self._start()
        return waiter

    def _forget(self, waiter: defer.Deferred[Secret]) -> None:
        # The request is not cancelled; only this caller stops waiting.
        if waiter in self._waiting:
            self._waiting.remove(waiter)

    def _start(self) -> None:
        d = defer.maybeDeferred(self._request)
        d.addErrback(self._refused)
        d.addBoth(self._finished)

    def _request(self) -> defer.Deferred[Secret]:
        tokenFile = self.read()
        self._checkRefreshable(tokenFile)
        assert tokenFile.oauthUrl is not None
        assert tokenFile.refreshToken is not None
        assert tokenFile.clientId is not None
        assert tokenFile.clientSecret is not None
        client = self._clientFactory(tokenFile.oauthUrl)
        self.requests += 1
        self.log.debug(
            "Refreshing the OAuth token in {path} at {url}",
            path=self.path,
            url=tokenFile.oauthUrl,
        )
        d = defer.maybeDeferred(
            client.refresh,
            tokenFile.refreshToken,
            tokenFile.clientId,
            tokenFile.clientSecret,
        )
        d.addCallback(self._granted, tokenFile)
        return d

    def _finished(self, result: Any) -> None:
        self._inFlight = False
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    def _checkRefreshable(self, tokenFile: TokenFile) -> None:
        if tokenFile.canRefresh():
            return
        if tokenFile == TokenFile(accessToken=tokenFile.accessToken):
            raise TokenRefreshError(
                self.path,
                f"the token file {self.path} holds a plain token, with no refresh "
                "token to get a new one",
            )
        missing = [
            key
            for key, value in (
                ("refresh_token", tokenFile.refreshToken),
                ("client_id", tokenFile.clientId),
                ("client_secret", tokenFile.clientSecret),
                ("oauth_url", tokenFile.oauthUrl),
            )
            if not value
        ]
        raise TokenRefreshError(
            self.path,
            f"the token file {self.path} has no {', '.join(missing)}, which a "
            "refresh needs",
        )

    def _granted(self, grant: Any, before: TokenFile) -> Secret:
        now = self.reactor.seconds()
        try:
            current = self.read()
        except TokenRefreshError:
            # Gone or broken meanwhile: the grant must still be saved, since
            # the server may have replaced the refresh token.
            current = before
        if current.accessToken != before.accessToken:
            # Someone put another token in place while we asked (a new
            # `yadiskpush token`): theirs wins, ours is not written.
            self.log.info(
                "The token file {path} changed during the refresh; keeping it",
                path=self.path,
            )
            return current.accessToken
        refreshed = current.withGrant(
            grant.accessToken, grant.refreshToken, grant.expiresIn, now
        )
        try:
            writeTokenFile(self.path, refreshed)
        except YaDiskPushError as e:
            # The new token is good and the old one may be dead already:
            # use it from memory rather than fail the account.
            onDisk = self._unsaved[0] if self._unsaved else before.accessToken
            self._unsaved = (onDisk, refreshed)
            self.log.warn(
                "Refreshed the OAuth token but could not save it ({problem}); "
                "using it from memory until the process stops. Make {path} "
                "writable, or run yadiskpush token refresh where it can be "
                "written",
                problem=e.message,
                path=self.path,
            )
            return refreshed.accessToken
        self._unsaved = None
        if refreshed.expiresAt is None:
            self.log.info("Refreshed the OAuth token in {path}", path=self.path)
        else:
            self.log.info(
                "Refreshed the OAuth token in {path}; it now expires on {when}",
                path=self.path,
                when=_when(refreshed.expiresAt),
            )
        return refreshed.accessToken

    def _refused(self, reason: Any) -> Any:
        error = reason.value
        if isinstance(error, TokenRefreshError):
            return reason
        if isinstance(error, YaDiskPushError):
            # OAuthError knows (no answer, or a 5xx); others by their code.
            transient = getattr(error, "temporary", None)
            if transient is None:
                transient = getattr(error, "code", None) in _TRANSIENT_CODES
            raise TokenRefreshError(
                self.path,
                f"cannot refresh the OAuth token in {self.path}: {error.message}",
                transient=bool(transient),
            )
        # A bug, not a refusal: log it once in full, report one sentence.
        self.log.failure("Refreshing the OAuth token failed", reason)
        raise TokenRefreshError(
            self.path,
            f"cannot refresh the OAuth token in {self.path}: {type(error).__name__}",
            transient=True,
        )

    # -- the periodic check ----------------------------------------------------------

    def startChecking(self, onRefreshed: Callable[[Secret], Any]) -> None:
        """
        Check now and every :data:`CHECK_INTERVAL` whether the token is
        due; if so, refresh it and call ``onRefreshed(newToken)``. A failure
        is logged as one warning with the fix and tried again at the next
        check.
        """
        self.stopChecking()
        self._loop = task.LoopingCall(self._check, onRefreshed)
        self._loop.clock = self.reactor
        self._loop.start(CHECK_INTERVAL, now=True)

    def stopChecking(self) -> None:
        """Stop the checks; a refresh under way still rewrites the file."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        checking, self._checking = self._checking, None
        if checking is not None:
            checking.cancel()

    def _check(self, onRefreshed: Callable[[Secret], Any]) -> None:
        if self._checking is not None:
            return
        now = self.reactor.seconds()
        try:
            tokenFile = self.read()
        except TokenRefreshError as e:
            self.log.warn("{problem}", problem=e.message)
            return
        if not expiresSoon(tokenFile, now):
            return
        assert tokenFile.expiresAt is not None
        expiry = (
            "expired on" if tokenFile.expiresAt <= now else "expires on"
        ) + f" {_when(tokenFile.expiresAt)}"
        if not tokenFile.canRefresh():
            self.log.warn(
                "The OAuth token in {path} {expiry} and cannot be refreshed "
                "(the file has no refresh token or client); {fix}",
                path=self.path,
                expiry=expiry,
                fix=fixFor(self.path),
            )
            return
        self.log.info(
            "The OAuth token in {path} {expiry}; refreshing it",
            path=self.path,
            expiry=expiry,
        )
        self._checking = d = self.refresh()

        def refreshed(token: Secret) -> None:
            self._checking = None
            onRefreshed(token)

        def failed(reason: Any) -> None:
            if reason.check(defer.CancelledError):
                return
            self._checking = None
            error = reason.value
            if isinstance(error, TokenRefreshError) and error.transient:
                problem = (
                    f"{error.reason}; trying again in {CHECK_INTERVAL / 3600:g} hours"
                )
            else:
                problem = getattr(error, "message", str(error))
            self.log.warn("{problem}", problem=problem)

        d.addCallbacks(refreshed, failed)
