"""
A stand-in for Yandex OAuth and the Disk API, so the token flow runs with no
account: ``yadiskpush token`` against it gets a token that the local XMPP
server accepts.

Endpoints, as Yandex's::

    POST /device/code   client_id            -> device_code, user_code, ...
    POST /token         grant_type=device_code | refresh_token
    GET  /v1/disk       Authorization: OAuth TOKEN -> {"user": {"login": ...}}
    GET  /device        the verification page: a form for the code and a login
    POST /device        user_code, login, action=approve|deny

The hook into the XMPP server is its ``accounts`` dict (login -> token):
whenever the stand-in issues an access token it sets ``accounts[login]``, so
the XMPP server accepts exactly the newest token. Expiry and the polling
interval run on the given reactor's clock, so a test drives them with
``task.Clock``.
"""

from __future__ import annotations

import html
import json
import secrets
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

#: Seconds between polls the stand-in asks for, and a device code's life.
DEFAULT_INTERVAL = 5
DEFAULT_CODE_LIFETIME = 300
#: An issued access token's life (Yandex: a year).
DEFAULT_TOKEN_LIFETIME = 365 * 24 * 3600


@dataclass
class PendingCode:
    """A device code waiting for a person at the verification page."""

    deviceCode: str
    userCode: str
    clientId: str
    expiresAt: float
    interval: float
    lastPoll: float
    state: str = "pending"  # pending, approved, denied
    login: str | None = None


@dataclass
class _Record:
    method: str
    path: str
    grantType: str | None = None
    clientId: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class OAuthStandIn(Resource):
    """
    The resource tree of the stand-in; serve it with :func:`listenOAuth`.

    :param accounts: the XMPP server's login -> token dict
        (``LocalServer.accounts``), updated with every token issued.
    :param clients: client id -> client secret of the known applications.
    :param reactor: whose ``seconds()`` is the stand-in's clock.
    :ivar counts: requests by kind (``device_code``, ``token:device_code``,
        ``token:refresh_token``, ``disk``, ``page``).
    :ivar records: every request, in order (no secrets kept).
    :ivar pollTimes: when each device-code poll arrived, on the clock.
    """

    def __init__(
        self,
        accounts: dict[str, str],
        clients: dict[str, str],
        reactor: Any = None,
        *,
        interval: float = DEFAULT_INTERVAL,
        codeLifetime: float = DEFAULT_CODE_LIFETIME,
        tokenLifetime: float = DEFAULT_TOKEN_LIFETIME,
        verificationUrl: str | None = None,
    ) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor
        self.accounts = accounts
        self.clients = clients
        self.reactor = reactor
        self.interval = interval
        self.codeLifetime = codeLifetime
        self.tokenLifetime = tokenLifetime
        #: Shown to the user; where the stand-in is served plus /device by
        #: default (the Host header of the request).
        self.verificationUrl = verificationUrl
        self.pending: dict[str, PendingCode] = {}
        self._byUserCode: dict[str, str] = {}
        self._refreshTokens: dict[str, tuple[str, str]] = {}  # -> login, client
        self._tokenExpiry: dict[str, float] = {}
        self.counts: Counter[str] = Counter()
        self.records: list[_Record] = []
        self.pollTimes: list[float] = []
        self._faults: dict[str, list[tuple[int, bytes, str]]] = {}
        device = _DevicePage(self)
        device.putChild(b"code", _Endpoint(self, self._deviceCode))
        self.putChild(b"device", device)
        self.putChild(b"token", _Endpoint(self, self._token))
        v1 = Resource()
        v1.putChild(b"disk", _Endpoint(self, self._disk))
        self.putChild(b"v1", v1)

    # -- for tests and the command line -----------------------------------

    def approve(self, userCode: str, login: str) -> None:
        """
        Approve a pending code for ``login`` (as a person at the page would).

        :raises ValueError: for an unknown, used or expired code.
        """
        pending = self._pendingFor(userCode)
        if not login:
            raise ValueError("a login is needed to approve a code")
        pending.state = "approved"
        pending.login = login

    def deny(self, userCode: str) -> None:
        """
        Deny a pending code; the next poll gets ``access_denied``.

        :raises ValueError: for an unknown, used or expired code.
        """
        self._pendingFor(userCode).state = "denied"

    def expireAccessToken(self, login: str) -> None:
        """
        Make ``login``'s current access token invalid, here and at the XMPP
        server (which then knows the account by a token nobody has).
        """
        old = self.accounts.get(login)
        if old is not None:
            self._tokenExpiry.pop(old, None)
        self.accounts[login] = "expired-" + secrets.token_urlsafe(16)

    def revokeRefreshToken(self, login: str) -> None:
        """Make every refresh token of ``login`` invalid (``invalid_grant``)."""
        for token, (owner, _) in list(self._refreshTokens.items()):
            if owner == login:
                del self._refreshTokens[token]

    def failNext(
        self,
        path: str,
        status: int,
        body: bytes,
        contentType: str = "application/json",
    ) -> None:
        """Answer the next request to ``path`` (e.g. ``/token``) with this."""
        self._faults.setdefault(path, []).append((status, body, contentType))

    def pendingUserCodes(self) -> list[str]:
        """The user codes waiting for approval, oldest first."""
        now = self.reactor.seconds()
        return [
            p.userCode
            for p in self.pending.values()
            if p.state == "pending" and p.expiresAt > now
        ]

    # -- the endpoints ----------------------------------------------------

    def _pendingFor(self, userCode: str) -> PendingCode:
        deviceCode = self._byUserCode.get(userCode.strip().upper())
        pending = self.pending.get(deviceCode or "")
        if pending is None or pending.state != "pending":
            raise ValueError(f"no code {userCode!r} is waiting for approval")
        if pending.expiresAt <= self.reactor.seconds():
            raise ValueError(f"the code {userCode!r} has expired")
        return pending

    def _fault(self, request: Request) -> tuple[int, bytes, str] | None:
        queue = self._faults.get(request.path.decode("ascii", "replace"))
        return queue.pop(0) if queue else None

    def _deviceCode(self, request: Request, form: dict[str, str]) -> Any:
        self.counts["device_code"] += 1
        clientId = form.get("client_id", "")
        self.records.append(_Record("POST", "/device/code", clientId=clientId))
        if clientId not in self.clients:
            return 400, _error("invalid_client", "unknown client_id")
        now = self.reactor.seconds()
        deviceCode = secrets.token_hex(16)
        userCode = "".join(secrets.choice("BCDFGHJKLMNPQRSTVWXZ") for _ in range(8))
        self.pending[deviceCode] = PendingCode(
            deviceCode,
            userCode,
            clientId,
            expiresAt=now + self.codeLifetime,
            interval=self.interval,
            lastPoll=now,
        )
        self._byUserCode[userCode] = deviceCode
        verificationUrl = self.verificationUrl or (
            f"{'https' if request.isSecure() else 'http'}://"
            f"{request.getRequestHostname().decode('ascii', 'replace')}:"
            f"{request.getHost().port}/device"
        )
        return 200, {
            "device_code": deviceCode,
            "user_code": userCode,
            "verification_url": verificationUrl,
            "interval": self.interval,
            "expires_in": self.codeLifetime,
        }

    def _token(self, request: Request, form: dict[str, str]) -> Any:
        grantType = form.get("grant_type", "")
        clientId = form.get("client_id", "")
        self.counts[f"token:{grantType}"] += 1
        self.records.append(
            _Record("POST", "/token", grantType=grantType, clientId=clientId)
        )
        if clientId not in self.clients or not secrets.compare_digest(
            self.clients[clientId], form.get("client_secret", "")
        ):
            return 400, _error("invalid_client", "Client not found or bad secret")
        if grantType == "device_code":
            return self._deviceGrant(form.get("code", ""), clientId)
        if grantType == "refresh_token":
            return self._refreshGrant(form.get("refresh_token", ""), clientId)
        return 400, _error("unsupported_grant_type", "unknown grant_type")

    def _deviceGrant(self, code: str, clientId: str) -> Any:
        now = self.reactor.seconds()
        self.pollTimes.append(now)
        pending = self.pending.get(code)
        if pending is None or pending.clientId != clientId:
            return 400, _error("invalid_grant", "Invalid device code")
        if pending.expiresAt <= now:
            self._forget(pending)
            return 400, _error("expired_token", "Device code has expired")
        if pending.state == "denied":
            self._forget(pending)
            return 400, _error("access_denied", "User denied access")
        if now - pending.lastPoll < pending.interval:
            pending.interval += 5
            pending.lastPoll = now
            return 400, _error("slow_down", "Polling too frequently")
        pending.lastPoll = now
        if pending.state == "pending":
            return 400, _error("authorization_pending", "User has not yet authorized")
        self._forget(pending)
        assert pending.login is not None
        return 200, self._issue(pending.login, clientId)

    def _refreshGrant(self, refreshToken: str, clientId: str) -> Any:
        owner = self._refreshTokens.get(refreshToken)
        if owner is None or owner[1] != clientId:
            return 400, _error("invalid_grant", "Refresh token expired or revoked")
        del self._refreshTokens[refreshToken]
        return 200, self._issue(owner[0], clientId)

    def _issue(self, login: str, clientId: str) -> dict[str, Any]:
        accessToken = "y0_" + secrets.token_urlsafe(32)
        refreshToken = "1:" + secrets.token_urlsafe(32)
        self.expireAccessToken(login)
        self.accounts[login] = accessToken
        self._tokenExpiry[accessToken] = self.reactor.seconds() + self.tokenLifetime
        self._refreshTokens[refreshToken] = (login, clientId)
        return {
            "access_token": accessToken,
            "refresh_token": refreshToken,
            "expires_in": self.tokenLifetime,
            "token_type": "bearer",
        }

    def _forget(self, pending: PendingCode) -> None:
        self.pending.pop(pending.deviceCode, None)
        self._byUserCode.pop(pending.userCode, None)

    def _disk(self, request: Request, form: dict[str, str]) -> Any:
        self.counts["disk"] += 1
        self.records.append(_Record("GET", "/v1/disk"))
        header = (request.getHeader("authorization") or "").strip()
        scheme, _, token = header.partition(" ")
        login = None
        if scheme.lower() == "oauth" and token:
            expiry = self._tokenExpiry.get(token)
            if expiry is None or expiry > self.reactor.seconds():
                login = next(
                    (name for name, value in self.accounts.items() if value == token),
                    None,
                )
        if login is None:
            return 401, {
                "error": "UnauthorizedError",
                "description": "Unauthorized",
                "message": "Не авторизован.",
            }
        return 200, {
            "total_space": 10 * 1024**3,
            "used_space": 0,
            "user": {"login": login, "display_name": login, "uid": "0"},
        }


def _error(code: str, description: str) -> dict[str, str]:
    return {"error": code, "error_description": description}


class _Endpoint(Resource):
    """One JSON endpoint: parses the form, answers the handler's result."""

    isLeaf = True

    def __init__(self, standIn: OAuthStandIn, handler: Any) -> None:
        super().__init__()
        self._standIn = standIn
        self._handler = handler

    def render(self, request: Request) -> bytes:
        fault = self._standIn._fault(request)
        if fault is not None:
            status, body, contentType = fault
            request.setResponseCode(status)
            request.setHeader("content-type", contentType)
            return body
        expected = b"GET" if self._handler == self._standIn._disk else b"POST"
        if request.method != expected:
            request.setResponseCode(405)
            request.setHeader("allow", expected)
            return b""
        form = {
            key.decode("utf-8", "replace"): values[0].decode("utf-8", "replace")
            for key, values in (request.args or {}).items()
            if values
        }
        status, document = self._handler(request, form)
        request.setResponseCode(status)
        request.setHeader("content-type", "application/json; charset=utf-8")
        return json.dumps(document).encode("utf-8")


_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>yadiskpush local OAuth</title></head>
<body><h1>Allow access to your Disk</h1><p>{message}</p>
<form method="post" action="/device">
<label>Code <input name="user_code" autofocus></label>
<label>Login <input name="login" value="alice"></label>
<button name="action" value="approve">Allow</button>
<button name="action" value="deny">Deny</button>
</form></body></html>
"""


class _DevicePage(Resource):
    """The verification page: enter the code and a login, allow or deny."""

    def __init__(self, standIn: OAuthStandIn) -> None:
        super().__init__()
        self._standIn = standIn

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"":
            return self
        return super().getChild(path, request)

    def _page(self, request: Request, message: str, status: int = 200) -> bytes:
        request.setResponseCode(status)
        request.setHeader("content-type", "text/html; charset=utf-8")
        return _PAGE.format(message=html.escape(message)).encode("utf-8")

    def render_GET(self, request: Request) -> bytes:
        self._standIn.counts["page"] += 1
        return self._page(request, "Enter the code shown by yadiskpush token.")

    def render_POST(self, request: Request) -> bytes:
        self._standIn.counts["page"] += 1
        args = request.args or {}

        def arg(name: bytes) -> str:
            return args.get(name, [b""])[0].decode("utf-8", "replace").strip()

        userCode, login, action = arg(b"user_code"), arg(b"login"), arg(b"action")
        try:
            if action == "deny":
                self._standIn.deny(userCode)
                return self._page(request, f"Access denied for code {userCode}.")
            self._standIn.approve(userCode, login)
        except ValueError as e:
            return self._page(request, str(e), 400)
        return self._page(
            request, f"Access allowed for {login}; return to your device."
        )


def listenOAuth(
    reactor: Any,
    standIn: OAuthStandIn,
    certificateOptions: Any,
    port: int = 0,
    interface: str = "127.0.0.1",
) -> Deferred[IListeningPort]:
    """
    Serve ``standIn`` on ``interface``:``port`` over TLS with
    ``certificateOptions`` (e.g. ``LocalServer.tlsOptions``, whose
    certificate the local CA issued), or plain HTTP when it is ``None``
    (the client allows that for loopback only).
    """
    site = Site(standIn)
    site.noisy = False
    # No access log: the stand-in keeps its own records of every request,
    # and a line per poll would drown the demo's and the tool's output.
    site.log = lambda request: None  # type: ignore[method-assign]
    if certificateOptions is None:
        endpoint: Any = TCP4ServerEndpoint(reactor, port, interface=interface)
    else:
        endpoint = SSL4ServerEndpoint(
            reactor, port, certificateOptions, interface=interface
        )
    return endpoint.listen(site)
