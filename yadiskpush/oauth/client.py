"""
A client for Yandex OAuth's device flow and token refresh, and the Disk API
call that tells whose token it is.

The device flow suits a headless server: the program asks for a code, a
person enters it at ``verification_url`` on any device, and the program
polls until the token is issued. Yandex's endpoints::

    POST {oauth}/device/code  client_id           -> device_code, user_code,
                                                     verification_url,
                                                     interval, expires_in
    POST {oauth}/token        grant_type=device_code|refresh_token, ...
                                                  -> access_token,
                                                     refresh_token, expires_in
                              or HTTP 400 {"error": ..., "error_description"}
    GET  {api}/v1/disk        Authorization: OAuth TOKEN -> user.login

What this client guarantees: TLS is always verified, against the system's
CAs or only those of ``caFile``, and the certificate must name the host
dialled; plain ``http://`` is refused except for loopback hosts (the local
stand-in); redirects are not followed (a redirected POST would carry the
secrets elsewhere); every request, body included, has a timeout on the
given reactor; and no secret appears in an error message, a log or a repr.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from OpenSSL import SSL
from service_identity import VerificationError
from treq.client import HTTPClient
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    ResponseDone,
    ResponseFailed,
)
from twisted.web.http import PotentialDataLoss

from yadiskpush import __version__
from yadiskpush.connection.tls import loadTrustRoot
from yadiskpush.errors import ConfigurationError, YaDiskPushError
from yadiskpush.httpclient import (
    ImmediateBody,
    QuietPool,
    VerifyingPolicy,
    cancelAfter,
)
from yadiskpush.oauth.loopback import isLoopbackHost
from yadiskpush.secret import Secret

DEFAULT_OAUTH_URL = "https://oauth.yandex.ru"
DEFAULT_API_URL = "https://cloud-api.yandex.net"

#: What ``slow_down`` adds to the polling interval (RFC 8628 §3.5).
SLOW_DOWN_STEP = 5.0
#: Answers larger than this are not what these endpoints send.
MAX_RESPONSE_SIZE = 64 * 1024
#: Server-supplied text shown to the user is cut to this length.
MAX_SHOWN_TEXT = 200

# Long runs of token-like characters in server text are hidden: a server
# that echoes a request would otherwise print a secret.
_TOKEN_LIKE = re.compile(r"[A-Za-z0-9_\-~+=]{20,}")

# Sentences for the OAuth errors a user can meet; {description} is the
# server's own text, cleaned.
_ERROR_SENTENCES = {
    "authorization_pending": "the code has not been entered yet",
    "slow_down": "the OAuth server asks to poll more slowly",
    "expired_token": (
        "the code expired before it was entered; run yadiskpush token again"
    ),
    "access_denied": (
        "you denied access at the verification page; run yadiskpush token "
        "again and allow access to use this program"
    ),
    "invalid_client": (
        "the OAuth server does not accept the client id or client secret "
        "({description}); check --client-id and the client secret"
    ),
}


class OAuthError(YaDiskPushError):
    """
    The OAuth server or the Disk API refused a request, or could not be
    asked.

    :ivar code: the server's ``error`` (``authorization_pending``,
        ``slow_down``, ``expired_token``, ``access_denied``,
        ``invalid_grant``, ``invalid_client``, ...), ``unauthorized`` for a
        token the Disk API rejects, or a local one: ``http`` (an unexpected
        status, or no connection), ``timeout``, ``tls``, ``bad_response``.
    :ivar status: the HTTP status, when there was an answer.
    :ivar message: one sentence for the user, with any server-supplied text
        cleaned (printable, bounded, nothing token-like).
    """

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status

    @property
    def temporary(self) -> bool:
        """Whether asking again later may succeed (no answer, or a 5xx)."""
        if self.code in ("timeout", "http"):
            return self.status is None or self.status >= 500
        return False

    def __repr__(self) -> str:
        return f"OAuthError({self.code!r}, {self.message!r})"


@dataclass(frozen=True)
class DeviceCode:
    """
    What ``/device/code`` answered: show :attr:`verificationUrl` and
    :attr:`userCode` to the person, and poll with :attr:`deviceCode`.

    :ivar interval: seconds to wait between polls.
    :ivar expiresIn: seconds the code stays valid.
    """

    deviceCode: Secret
    userCode: str
    verificationUrl: str
    interval: float
    expiresIn: float


@dataclass(frozen=True)
class TokenGrant:
    """
    A token the OAuth server issued.

    :ivar expiresIn: the access token's lifetime in seconds, if given.
    """

    accessToken: Secret
    refreshToken: Secret | None
    expiresIn: float | None


def cleanServerText(text: str, limit: int = MAX_SHOWN_TEXT, redact: bool = True) -> str:
    """
    Make text from a server fit to show: token-like runs hidden, control
    characters replaced, white space collapsed, cut to ``limit``.
    """
    if redact:
        # Random tokens carry digits; long words such as error codes do not.
        text = _TOKEN_LIKE.sub(
            lambda m: "<redacted>" if any(c.isdigit() for c in m[0]) else m[0], text
        )
    text = "".join(c if c.isprintable() else " " for c in text)
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def checkURL(url: str, option: str) -> str:
    """
    Check a base URL given with ``option`` and return it without a trailing
    slash.

    :raises ConfigurationError: naming ``option``, for a URL that is not
        ``https://`` (``http://`` is allowed for loopback hosts only, as no
        token may cross a network in clear), has no host, or carries a user
        name or password.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ConfigurationError(f"{option} {url!r} is not a valid URL") from None
    if parts.scheme not in ("https", "http") or not host:
        raise ConfigurationError(
            f"{option} must be an https:// URL with a host, not {url!r}"
        )
    if parts.username is not None or parts.password is not None:
        raise ConfigurationError(f"{option} must not carry a user name or password")
    if parts.query or parts.fragment:
        raise ConfigurationError(f"{option} must not have a query or fragment")
    if parts.scheme == "http" and not isLoopbackHost(host):
        raise ConfigurationError(
            f"{option} {url!r} is plain http:// to a host that is not this "
            "machine; tokens are only sent over https:// (http:// is allowed "
            "for localhost, 127.0.0.1 and ::1)"
        )
    return url.rstrip("/")


_RESPONSE_DONE = Failure(ResponseDone())


class _BoundedBody(Protocol):
    """Collect a response body up to a size, stoppable by cancellation."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        self.finished: Deferred[bytes] = Deferred(self._cancel)

    def _cancel(self, _: Deferred[bytes]) -> None:
        if self.transport is not None:
            self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.finished.called:
            return
        self._size += len(data)
        if self._size > self._limit:
            self.transport.stopProducing()
            self.finished.errback(_TooLarge())
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = _RESPONSE_DONE) -> None:
        if self.finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(b"".join(self._chunks))
        else:
            self.finished.errback(reason)


class _TooLarge(Exception):
    pass


def _readBody(response: Any) -> Deferred[bytes]:
    if response.length == 0:
        return defer.succeed(b"")
    body = _BoundedBody(MAX_RESPONSE_SIZE)
    response.deliverBody(body)
    return body.finished


def _tlsDetail(failure: Failure, host: str) -> str | None:
    """A sentence for a TLS failure among ``failure``'s reasons, or ``None``."""
    reasons = [failure]
    if isinstance(failure.value, ResponseFailed) or hasattr(failure.value, "reasons"):
        reasons = list(getattr(failure.value, "reasons", [])) or reasons
    for reason in reasons:
        if reason.check(VerificationError):
            return f"the server's certificate does not name {host}"
        if reason.check(SSL.Error):
            text = str(reason.value)
            if "certificate verify failed" in text:
                return "the server's certificate is not signed by a trusted CA"
            return cleanServerText(text, 120)
    return None


class OAuthClient:
    """
    Talks to the OAuth server at ``oauthUrl`` and the Disk API at ``apiUrl``.

    :param reactor: for connections, timeouts and polling; the global one
        by default. A ``task.Clock`` drives polling in tests when ``agent``
        is given too.
    :param caFile: a PEM file whose CAs replace the system's, for both URLs.
    :param timeout: seconds for each request, answer body included.
    :param agent: an ``IAgent`` to send requests with instead of one built
        here (e.g. treq's in-memory ``RequestTraversalAgent``).
    :raises ConfigurationError: for a URL :func:`checkURL` refuses or an
        unusable ``caFile``.
    """

    def __init__(
        self,
        oauthUrl: str = DEFAULT_OAUTH_URL,
        apiUrl: str = DEFAULT_API_URL,
        *,
        reactor: Any = None,
        caFile: str | None = None,
        timeout: float = 30.0,
        agent: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor
        self.oauthUrl = checkURL(oauthUrl, "--oauth-url")
        self.apiUrl = checkURL(apiUrl, "--api-url")
        self._reactor = reactor
        self._timeout = timeout
        if agent is None:
            agent = Agent(
                reactor,
                contextFactory=VerifyingPolicy(loadTrustRoot(caFile)),
                connectTimeout=timeout,
                # One request now and then: no idle connections to clean up.
                pool=QuietPool(reactor, persistent=False),
            )
        self._http = HTTPClient(agent, data_to_body_producer=ImmediateBody)

    # -- requests ---------------------------------------------------------

    def _request(
        self,
        method: str,
        url: str,
        *,
        data: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Deferred[tuple[int, bytes]]:
        """Send one request; fire with (status, body) or fail with OAuthError."""
        host = urlsplit(url).hostname or url
        allHeaders = {
            "Accept": "application/json",
            "User-Agent": f"yadiskpush/{__version__}",
        }
        allHeaders.update(headers or {})

        async def exchange() -> tuple[int, bytes]:
            response = await self._http.request(
                method,
                url,
                data=data,
                headers=allHeaders,
                allow_redirects=False,
                unbuffered=True,
                reactor=self._reactor,
            )
            body = await _readBody(response)
            return response.code, body

        d = Deferred.fromCoroutine(exchange())
        timedOut = cancelAfter(d, self._timeout, self._reactor)

        def failed(failure: Failure) -> Failure:
            if timedOut():
                raise OAuthError(
                    "timeout", f"{host} did not answer within {self._timeout:g} s"
                )
            if failure.check(OAuthError, defer.CancelledError):
                return failure
            if failure.check(_TooLarge):
                raise OAuthError(
                    "bad_response",
                    f"{url} sent an answer larger than {MAX_RESPONSE_SIZE} bytes",
                )
            detail = _tlsDetail(failure, host)
            if detail is not None:
                raise OAuthError(
                    "tls",
                    f"TLS with {host} failed: {detail} (check the URL and "
                    "--ca-file; the certificate must be valid for the host name)",
                )
            if failure.check(ConnectError, DNSLookupError):
                reason = cleanServerText(str(failure.value), 120)
                raise OAuthError("http", f"cannot connect to {host}: {reason}")
            reason = cleanServerText(failure.getErrorMessage(), 120)
            raise OAuthError("http", f"the request to {url} failed: {reason}")

        return d.addErrback(failed)

    def _postForm(self, path: str, form: dict[str, str]) -> Deferred[Any]:
        """POST a form to the OAuth server; fire with the JSON object."""
        url = self.oauthUrl + path

        async def post() -> Any:
            status, body = await self._request("POST", url, data=form)
            document = _jsonObject(body)
            if status == 200 and document is not None:
                return document
            if document is not None and isinstance(document.get("error"), str):
                raise _oauthError(status, document)
            raise _httpError(url, status, body, document)

        return Deferred.fromCoroutine(post())

    # -- the API ----------------------------------------------------------

    def requestDeviceCode(
        self, clientId: str, deviceName: str | None = None
    ) -> Deferred[DeviceCode]:
        """
        Ask for a device code and a user code (``POST /device/code``).

        :raises OAuthError: (as the Deferred's failure) when refused.
        """
        form = {"client_id": clientId}
        if deviceName:
            form["device_name"] = deviceName

        def parse(document: dict[str, Any]) -> DeviceCode:
            url = self.oauthUrl + "/device/code"
            try:
                deviceCode = _string(document, "device_code")
                userCode = _string(document, "user_code")
                verificationUrl = _string(document, "verification_url")
                interval = _number(document, "interval", 5.0)
                expiresIn = _number(document, "expires_in", 300.0)
            except (KeyError, TypeError, ValueError) as e:
                raise OAuthError(
                    "bad_response", f"{url} answered without a usable {e.args[0]}"
                ) from None
            return DeviceCode(
                deviceCode=Secret(deviceCode),
                userCode=cleanServerText(userCode, 64, redact=False),
                verificationUrl=cleanServerText(verificationUrl, redact=False),
                interval=max(interval, 1.0),
                expiresIn=expiresIn,
            )

        return self._postForm("/device/code", form).addCallback(parse)

    def exchangeDeviceCode(
        self, deviceCode: DeviceCode, clientId: str, clientSecret: Secret
    ) -> Deferred[TokenGrant]:
        """
        Poll once: ask whether the code was entered and, if so, for the token.

        :raises OAuthError: ``authorization_pending`` while it was not;
            ``slow_down``, ``expired_token``, ``access_denied``, ... otherwise.
        """
        return self._grant(
            {
                "grant_type": "device_code",
                "code": deviceCode.deviceCode.reveal(),
                "client_id": clientId,
                "client_secret": clientSecret.reveal(),
            }
        )

    def pollForToken(
        self, deviceCode: DeviceCode, clientId: str, clientSecret: Secret
    ) -> Deferred[TokenGrant]:
        """
        Poll every ``interval`` seconds (5 s more after each ``slow_down``)
        until the token is issued or the code expires, on the reactor's
        clock. Cancelling the Deferred stops polling.

        :raises OAuthError: ``expired_token`` when the code's ``expiresIn``
            passes, or the first error other than ``authorization_pending``
            and ``slow_down``.
        """
        return _Poller(self, self._reactor, deviceCode, clientId, clientSecret).start()

    def refresh(
        self, refreshToken: Secret, clientId: str, clientSecret: Secret
    ) -> Deferred[TokenGrant]:
        """
        Exchange a refresh token for a new access token.

        :raises OAuthError: ``invalid_grant`` for a refresh token that is
            no longer valid, ``invalid_client``, or a local failure.
        """
        return self._grant(
            {
                "grant_type": "refresh_token",
                "refresh_token": refreshToken.reveal(),
                "client_id": clientId,
                "client_secret": clientSecret.reveal(),
            }
        )

    def _grant(self, form: dict[str, str]) -> Deferred[TokenGrant]:
        def parse(document: dict[str, Any]) -> TokenGrant:
            url = self.oauthUrl + "/token"
            try:
                accessToken = Secret(_string(document, "access_token"))
                refresh = document.get("refresh_token")
                refreshToken = Secret(refresh) if isinstance(refresh, str) else None
                expiresIn = (
                    _number(document, "expires_in", 0.0)
                    if document.get("expires_in") is not None
                    else None
                )
            except (KeyError, TypeError, ValueError, ConfigurationError):
                raise OAuthError(
                    "bad_response", f"{url} answered without a usable access_token"
                ) from None
            return TokenGrant(accessToken, refreshToken, expiresIn)

        return self._postForm("/token", form).addCallback(parse)

    def fetchLogin(self, accessToken: Secret) -> Deferred[str]:
        """
        Find the login a token belongs to (``GET {api}/v1/disk``, field
        ``user.login``).

        :raises OAuthError: ``unauthorized`` when the API rejects the token.
        """
        url = self.apiUrl + "/v1/disk"

        async def fetch() -> str:
            status, body = await self._request(
                "GET", url, headers={"Authorization": f"OAuth {accessToken.reveal()}"}
            )
            document = _jsonObject(body)
            if status == 401:
                raise OAuthError(
                    "unauthorized",
                    f"the Disk API at {self.apiUrl} rejected the token (HTTP 401); "
                    "run yadiskpush token again",
                    status,
                )
            if status != 200 or document is None:
                raise _httpError(url, status, body, document)
            user = document.get("user")
            login = user.get("login") if isinstance(user, dict) else None
            if not isinstance(login, str) or not login:
                raise OAuthError(
                    "bad_response", f"{url} answered without user.login", status
                )
            return cleanServerText(login, 128, redact=False)

        return Deferred.fromCoroutine(fetch())


class _Poller:
    """One run of :meth:`OAuthClient.pollForToken`."""

    def __init__(
        self,
        client: OAuthClient,
        reactor: Any,
        deviceCode: DeviceCode,
        clientId: str,
        clientSecret: Secret,
    ) -> None:
        self._client = client
        self._reactor = reactor
        self._deviceCode = deviceCode
        self._clientId = clientId
        self._clientSecret = clientSecret
        self._interval = deviceCode.interval
        self._deadline = reactor.seconds() + deviceCode.expiresIn
        self._call: IDelayedCall | None = None
        self._inFlight: Deferred[TokenGrant] | None = None
        self._result: Deferred[TokenGrant] = Deferred(self._cancel)
        #: The last temporary failure (no answer, a 5xx), if the last poll
        #: had one: reported instead of "expired" if the code runs out.
        self._lastTemporary: OAuthError | None = None

    def start(self) -> Deferred[TokenGrant]:
        self._schedule()
        return self._result

    def _cancel(self, _: Deferred[TokenGrant]) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        if self._inFlight is not None:
            self._inFlight.cancel()

    def _schedule(self) -> None:
        if self._reactor.seconds() + self._interval > self._deadline:
            if self._lastTemporary is not None:
                # The person may have allowed access: what stopped us was
                # the server, and the user should hear that.
                self._result.errback(self._lastTemporary)
                return
            self._result.errback(
                OAuthError("expired_token", _ERROR_SENTENCES["expired_token"])
            )
            return
        self._call = self._reactor.callLater(self._interval, self._poll)

    def _poll(self) -> None:
        self._call = None
        self._inFlight = self._client.exchangeDeviceCode(
            self._deviceCode, self._clientId, self._clientSecret
        )
        self._inFlight.addCallbacks(self._granted, self._refused)

    def _granted(self, grant: TokenGrant) -> None:
        self._inFlight = None
        self._result.callback(grant)

    def _refused(self, failure: Failure) -> None:
        self._inFlight = None
        if self._result.called:
            return  # cancelled while the request was under way
        if failure.check(OAuthError):
            code = failure.value.code
            # A network hiccup or a busy server during the minutes a person
            # takes to enter the code must not waste the code: ask again at
            # the next interval, until the code expires.
            self._lastTemporary = failure.value if failure.value.temporary else None
            if self._lastTemporary is not None:
                self._schedule()
                return
            if code == "authorization_pending":
                self._schedule()
                return
            if code == "slow_down":
                self._interval += SLOW_DOWN_STEP
                self._schedule()
                return
        self._result.errback(failure)


def _jsonObject(body: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


def _string(document: dict[str, Any], key: str) -> str:
    value = document[key]
    if not isinstance(value, str) or not value:
        raise TypeError(key)
    return value


def _number(document: dict[str, Any], key: str, default: float) -> float:
    value = document.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(key)
    return float(value)


def _oauthError(status: int, document: dict[str, Any]) -> OAuthError:
    code = cleanServerText(document["error"], 64, redact=False) or "unknown"
    description = document.get("error_description")
    description = (
        cleanServerText(description) if isinstance(description, str) else ""
    ) or code
    sentence = _ERROR_SENTENCES.get(code)
    if sentence is None:
        if code == "invalid_grant":
            sentence = (
                "the OAuth server refused the code or refresh token "
                f"({description}); run yadiskpush token again"
            )
        else:
            sentence = f"the OAuth server refused the request: {code} ({description})"
    return OAuthError(code, sentence.format(description=description), status)


def _httpError(
    url: str, status: int, body: bytes, document: dict[str, Any] | None
) -> OAuthError:
    if 200 <= status < 300:
        return OAuthError(
            "bad_response", f"{url} answered something other than a JSON object", status
        )
    detail = ""
    if document is not None:
        for key in ("error_description", "description", "message", "error"):
            if isinstance(document.get(key), str):
                detail = ": " + cleanServerText(document[key])
                break
    if 300 <= status < 400:
        return OAuthError(
            "http",
            f"{url} answered with a redirect (HTTP {status}), which is not "
            "followed; check the URL",
            status,
        )
    return OAuthError("http", f"{url} answered HTTP {status}{detail}", status)
