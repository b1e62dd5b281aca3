"""
The receiver of docs/fleet-webhooks.rst (docs/examples/fleet/
webhook_receiver.py), run as its own process as a reader would run it, fed
by yadiskpush's real WebhookSink over loopback HTTP.
"""

from __future__ import annotations

import base64
import os
import sys
import time
from typing import Any

import treq
from twisted.internet import defer, reactor
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from tests.integration.webhookreceiver import EXAMPLE
from tests.test_webhook_signing import notification
from yadiskpush.delivery.journal import Journal
from yadiskpush.delivery.sinks.jsonlines import encodeJSONLine
from yadiskpush.delivery.sinks.webhook import WebhookSink
from yadiskpush.webhooks.message import messageFromLine
from yadiskpush.webhooks.signing import sign

SECRET = os.urandom(32)


class ReceiverProcess(ProcessProtocol):
    """The example's process: its output lines, and a wait for one."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.errors = b""
        self._buffer = b""
        self._waits: list[tuple[str, defer.Deferred[str]]] = []
        self.ended: defer.Deferred[None] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        *complete, self._buffer = self._buffer.split(b"\n")
        for raw in complete:
            line = raw.decode()
            self.lines.append(line)
            for wait in list(self._waits):
                if line.startswith(wait[0]):
                    self._waits.remove(wait)
                    wait[1].callback(line)

    def errReceived(self, data: bytes) -> None:
        self.errors += data

    def whenLine(self, prefix: str) -> defer.Deferred[str]:
        """Fires with the first output line starting with ``prefix``."""
        for line in self.lines:
            if line.startswith(prefix):
                return defer.succeed(line)
        d: defer.Deferred[str] = defer.Deferred()
        self._waits.append((prefix, d))
        return d

    def processEnded(self, reason: Failure) -> None:
        for _, d in self._waits:
            d.errback(RuntimeError(f"the receiver exited: {self.errors!r}"))
        self._waits = []
        self.ended.callback(None)


class DocsWebhookReceiverTests(TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        directory = self.mktemp()
        os.makedirs(directory)
        secretFile = os.path.join(directory, "webhook-secret")
        with open(os.open(secretFile, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write("whsec_" + base64.b64encode(SECRET).decode() + "\n")
        self.process = ReceiverProcess()
        transport = reactor.spawnProcess(  # type: ignore[attr-defined]
            self.process,
            sys.executable,
            [sys.executable, str(EXAMPLE), secretFile, "0"],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )

        def stop() -> defer.Deferred[None]:
            if not self.process.ended.called:
                transport.signalProcess("TERM")
            return self.process.ended

        self.addCleanup(stop)
        line = yield self.process.whenLine("listening on ")
        self.url = line.split()[-1]
        self.sink = WebhookSink(self.url, SECRET, reactor, Journal(None, reactor))
        self.addCleanup(self.sink.close)
        yield self.sink.start()

    @defer.inlineCallbacks
    def test_signedPushHandled(self) -> Any:
        """A push from the real sink is verified and handled by the example."""
        yield self.sink.deliver(notification(stanzaId="push-7"))
        line = yield self.process.whenLine("changed: ")
        self.assertEqual(line, "changed: alice push push-7: no details")

    @defer.inlineCallbacks
    def post(self, headers: dict[str, str], body: bytes) -> Any:
        # A connection of its own: the example speaks HTTP/1.0.
        pool = HTTPConnectionPool(reactor, persistent=False)
        response = yield treq.post(self.url, data=body, headers=headers, pool=pool)
        text = yield response.text()
        return response.code, text.strip()

    def signedHeaders(self, secret: bytes, timestamp: int) -> tuple[dict, bytes]:
        message = messageFromLine(encodeJSONLine(notification()))
        return {
            "content-type": "application/json",
            "webhook-id": message.msgId,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, message.msgId, timestamp, message.body),
        }, message.body

    @defer.inlineCallbacks
    def test_wrongSignatureRefused(self) -> Any:
        """Signed with another secret: 401, not handled."""
        headers, body = self.signedHeaders(os.urandom(32), int(time.time()))
        status, text = yield self.post(headers, body)
        self.assertEqual((status, text), (401, "bad signature"))
        headers, body = self.signedHeaders(SECRET, int(time.time()))
        status, _ = yield self.post(headers, body + b" ")
        self.assertEqual(status, 401)
        yield self.sink.deliver(notification(stanzaId="after"))
        yield self.process.whenLine("changed: ")
        self.assertEqual(
            [line for line in self.process.lines if line.startswith("changed")],
            ["changed: alice push after: no details"],
        )

    @defer.inlineCallbacks
    def test_oldTimestampRefused(self) -> Any:
        """A correctly signed request from ten minutes ago: 400 (a replay)."""
        headers, body = self.signedHeaders(SECRET, int(time.time()) - 600)
        status, text = yield self.post(headers, body)
        self.assertEqual((status, text), (400, "webhook-timestamp too old or too new"))
        status, _ = yield self.post({"content-type": "application/json"}, body)
        self.assertEqual(status, 400)

    @defer.inlineCallbacks
    def test_repeatedIdHandledOnce(self) -> Any:
        """The same push delivered twice (same webhook-id) is answered 200
        both times and handled once."""
        yield self.sink.deliver(notification(stanzaId="push-1"))
        yield self.sink.deliver(notification(stanzaId="push-1", receivedAt=2e9))
        yield self.sink.deliver(notification(stanzaId="push-2"))
        yield self.process.whenLine("changed: alice push push-2")
        self.assertEqual(
            [line for line in self.process.lines if line.startswith("changed")],
            [
                "changed: alice push push-1: no details",
                "changed: alice push push-2: no details",
            ],
        )
