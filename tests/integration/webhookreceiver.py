"""
A real webhook receiver for the tests: twisted.web on a loopback port,
whose answers a test scripts, and which checks every request's signature
with the receiver of the docs (``docs/examples/fleet/webhook_receiver.py``,
standard library only), not with yadiskpush's own code.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

from twisted.internet import defer, reactor
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from yadiskpush.localserver.ca import ServerCertificate

EXAMPLE = (
    Path(__file__).resolve().parents[2]
    / "docs"
    / "examples"
    / "fleet"
    / "webhook_receiver.py"
)

#: In a script: do not answer until the test calls :meth:`WebhookReceiver.release`.
HOLD = "hold"


def loadDocsReceiver() -> ModuleType:
    """Import the docs' receiver from its file, as a reader would run it."""
    spec = importlib.util.spec_from_file_location("docs_webhook_receiver", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Received(NamedTuple):
    """One request: its headers (names lower-cased), body, and verdict."""

    headers: dict[str, str]
    body: bytes
    #: ``None`` if the signature and timestamp were good, else the refusal.
    refused: tuple[int, str] | None
    #: The status answered (``None`` while held).
    status: int | None

    @property
    def data(self) -> dict[str, Any]:
        """The notification object the message carries."""
        return json.loads(self.body)["data"]  # type: ignore[no-any-return]


class WebhookReceiver(Resource):
    """
    Answers POSTs with the statuses of :attr:`script` in turn (an int, a
    ``(status, headers)`` pair, or :data:`HOLD`), then :attr:`default`. A
    request whose signature does not verify is answered 401 whatever the
    script says, and the test sees it in :attr:`requests`.
    """

    isLeaf = True

    def __init__(self, secret: bytes) -> None:
        super().__init__()
        self.secret = secret
        self.check = loadDocsReceiver().check
        self.script: list[Any] = []
        self.default: Any = 200
        self.requests: list[Received] = []
        self.held: list[tuple[int, Request]] = []
        self._waiters: list[tuple[int, bool, defer.Deferred[list[Received]]]] = []
        self.port: Any = None

    def listen(self, tls: ServerCertificate | None = None) -> str:
        """
        Listen on a free loopback port, over TLS with ``tls``; return the
        URL (``https://localhost:PORT/hook`` with TLS).
        """
        site = Site(self)
        site.noisy = False
        if tls is None:
            self.port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
            return f"http://127.0.0.1:{self.port.getHost().port}/hook"
        self.port = reactor.listenSSL(  # type: ignore[attr-defined]
            0, site, tls.serverOptions(), interface="127.0.0.1"
        )
        return f"https://localhost:{self.port.getHost().port}/hook"

    def stop(self) -> defer.Deferred[None]:
        for _, request in self.held:
            if not request.finished and not request._disconnected:
                request.setResponseCode(503)
                request.finish()
        self.held = []
        return defer.maybeDeferred(self.port.stopListening)

    @property
    def accepted(self) -> list[Received]:
        """The verified requests answered 2xx, in order."""
        return [
            r
            for r in self.requests
            if r.refused is None and r.status is not None and 200 <= r.status < 300
        ]

    def whenRequests(self, count: int, accepted: bool = False) -> Any:
        """Fires with the requests (or accepted ones) once there are ``count``."""
        d: defer.Deferred[list[Received]] = defer.Deferred()
        self._waiters.append((count, accepted, d))
        self._check()
        return d

    def _check(self) -> None:
        for waiter in list(self._waiters):
            count, accepted, d = waiter
            found = self.accepted if accepted else self.requests
            if len(found) >= count:
                self._waiters.remove(waiter)
                d.callback(list(found))

    def render_POST(self, request: Request) -> bytes | int:
        headers = {
            k.decode("latin-1").lower(): v[0].decode("latin-1")
            for k, v in request.requestHeaders.getAllRawHeaders()
        }
        body = request.content.read()
        refused = self.check(self.secret, headers, body, time.time())
        answer = self.script.pop(0) if self.script else self.default
        if refused is not None:
            answer = refused[0]
        index = len(self.requests)
        if answer == HOLD:
            self.requests.append(Received(headers, body, refused, None))
            self.held.append((index, request))
            self._check()
            return NOT_DONE_YET
        status, extra = answer if isinstance(answer, tuple) else (answer, {})
        self.requests.append(Received(headers, body, refused, status))
        request.setResponseCode(status)
        for name, value in extra.items():
            request.setHeader(name, value)
        reactor.callLater(0, self._check)  # type: ignore[attr-defined]
        return b"scripted answer\n"

    def release(self, status: int) -> None:
        """Answer the oldest held request with ``status``."""
        index, request = self.held.pop(0)
        self.requests[index] = self.requests[index]._replace(status=status)
        request.setResponseCode(status)
        request.write(b"released\n")
        request.finish()
        self._check()
