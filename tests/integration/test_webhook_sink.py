"""
End to end: pushes from the local server over loopback TLS, through a
PushApplication, to a real webhook receiver on a loopback port that checks
every signature with the docs' standard-library verifier.
"""

from __future__ import annotations

import os
import secrets
from typing import Any

from twisted.internet import defer, reactor
from twisted.logger import LogLevel, formatEvent

from tests.integration.support import LOGIN, LocalServerTestCase
from tests.integration.webhookreceiver import HOLD, WebhookReceiver
from tests.test_webhook_signing import notification
from yadiskpush.application import PushApplication
from yadiskpush.delivery.journal import Journal
from yadiskpush.delivery.sinks.webhook import WEBHOOK_JOURNAL_NAME, WebhookSink
from yadiskpush.fleet import PushFleet
from yadiskpush.localserver.ca import CertificateAuthority
from yadiskpush.logs import Logger
from yadiskpush.secret import Secret
from yadiskpush.service import PushService
from yadiskpush.webhooks.retry import RetryPolicy

SECRET = os.urandom(32)

Steps = Any


class WebhookEndToEndTests(LocalServerTestCase):
    @defer.inlineCallbacks
    def connected(self, receiver: WebhookReceiver, **sinkArgs: Any) -> Steps:
        """A server, a receiver and a subscribed application with a webhook sink."""
        url = receiver.listen()
        self.addCleanup(receiver.stop)
        server = yield self.startServer()
        self.journal = Journal(
            os.path.join(self.directory, WEBHOOK_JOURNAL_NAME), reactor
        )
        sinkArgs.setdefault(
            "retryPolicy", RetryPolicy(initialDelay=0.02, maxDelay=0.05)
        )
        self.sink = WebhookSink(url, SECRET, reactor, self.journal, **sinkArgs)
        app = PushApplication(
            PushService(self.settingsFor(server), reactor=reactor), [self.sink]
        )
        app.startService()
        self.app = app
        self.addCleanup(lambda: app.stopService() if app.running else None)
        yield app.push.whenReady()
        session = yield server.whenSubscribed(1)
        return server, session

    @defer.inlineCallbacks
    def barrier(self, session: Any) -> Steps:
        """Everything the client sent before now has reached the server."""
        pong = yield session.ping()
        self.assertEqual(pong["type"], "result")

    @defer.inlineCallbacks
    def test_ackedOnlyOnceAcceptedSameIdOnRetries(self) -> Steps:
        """A push is acked only after the receiver's 2xx; the 503 and the 429
        before it are retried with the same webhook-id, each signed anew."""
        receiver = WebhookReceiver(SECRET)
        receiver.script = [HOLD, (429, {"Retry-After": "0"}), 200]
        server, session = yield self.connected(receiver)
        answer = server.push(LOGIN, {"t": "diff", "new-revision": "3"})
        yield receiver.whenRequests(1)
        yield self.barrier(session)
        self.assertEqual(server.acks, {})
        self.assertFalse(answer.called)
        receiver.release(503)
        result = yield answer
        self.assertEqual(result["type"], "result")
        requests = receiver.requests
        self.assertEqual([r.status for r in requests], [503, 429, 200])
        self.assertEqual([r.refused for r in requests], [None] * 3)
        self.assertEqual(len({r.headers["webhook-id"] for r in requests}), 1)
        [pushId] = server.acks
        self.assertEqual(server.acks[pushId], 1)
        self.assertEqual(requests[-1].data["id"], pushId)
        self.assertEqual(requests[-1].data["login"], LOGIN)
        self.assertEqual(requests[-1].data["attributes"]["new-revision"], "3")
        self.assertEqual(self.sink.queueDepth, 0)

    @defer.inlineCallbacks
    def test_journaledWhileDownDeliveredInOrder(self) -> Steps:
        """With the endpoint down, pushes are journaled and acked after the
        handoff timeout; once it is back they arrive once each, in order."""
        receiver = WebhookReceiver(SECRET)
        receiver.default = 503
        server, session = yield self.connected(receiver, handoffTimeout=0.2)
        answers = yield defer.gatherResults(
            [server.push(LOGIN, {"t": "diff", "n": str(n)}) for n in range(3)]
        )
        self.assertEqual([a["type"] for a in answers], ["result"] * 3)
        ids = [a["id"] for a in answers]
        self.assertEqual(self.sink.queueDepth, 3)
        self.assertEqual(self.journal.count, 3)
        self.assertEqual(receiver.accepted, [])
        receiver.default = 200
        accepted = yield receiver.whenRequests(3, accepted=True)
        yield self.sink.whenEmpty()
        self.assertEqual([r.data["id"] for r in accepted], ids)
        self.assertTrue(all(r.refused is None for r in receiver.requests))
        self.assertEqual(self.sink.queueDepth, 0)
        self.assertEqual(dict(server.acks), {i: 1 for i in ids})

    @defer.inlineCallbacks
    def test_goneStopsDelivery(self) -> Steps:
        """410 Gone: the push is refused, not acked, later ones too, and the
        log says to fix the URL and restart."""
        logs = self.captureLogs()
        receiver = WebhookReceiver(SECRET)
        receiver.script = [410]
        server, session = yield self.connected(receiver)
        first = yield server.push(LOGIN, {"t": "diff"})
        second = yield server.push(LOGIN, {"t": "diff"})
        self.assertEqual([first["type"], second["type"]], ["error", "error"])
        self.assertEqual(server.acks, {})
        self.assertEqual(len(receiver.requests), 1)
        errors = logs.messages(LogLevel.error)
        [error] = [m for m in errors if "asked for no more deliveries. " in m]
        self.assertIn("Fix --webhook", error)
        self.assertIn("restart yadiskpush", error)
        # Each refused push's line says why, and what to do.
        refusals = [m for m in errors if "Could not deliver push" in m]
        self.assertEqual(len(refusals), 2)
        self.assertIn("410 Gone", refusals[1])
        self.assertIn("fix --webhook and restart", refusals[1])

    @defer.inlineCallbacks
    def test_journalReplayedAfterRestart(self) -> Steps:
        """Pushes journaled when the process stops are delivered, in order and
        with their webhook-ids, by the next process's sink at its start."""
        receiver = WebhookReceiver(SECRET)
        receiver.default = 503
        server, session = yield self.connected(receiver, handoffTimeout=0.2)
        answers = yield defer.gatherResults(
            [server.push(LOGIN, {"t": "diff", "n": str(n)}) for n in range(2)]
        )
        yield self.app.stopService()
        sentIds = [r.headers["webhook-id"] for r in receiver.requests]
        receiver.default = 200
        journal = Journal(self.journal.path, reactor)
        sink = WebhookSink(
            f"http://127.0.0.1:{receiver.port.getHost().port}/hook",
            SECRET,
            reactor,
            journal,
        )
        self.addCleanup(sink.close)
        yield sink.start()
        self.assertEqual(sink.queueDepth, 2)
        yield sink.whenEmpty()
        accepted = receiver.accepted
        self.assertEqual([r.data["id"] for r in accepted], [a["id"] for a in answers])
        self.assertEqual(accepted[0].headers["webhook-id"], sentIds[0])
        self.assertEqual(journal.count, 0)


class WebhookFleetTests(LocalServerTestCase):
    """Several accounts' pushes to one receiver, in parallel lanes."""

    @defer.inlineCallbacks
    def test_accountsInParallelEachInOrder(self) -> Steps:
        """
        While alice's first push is held by the receiver (and journaled,
        so her second comes in and waits behind it), bob's pushes are
        accepted; once alice's first is, her second follows: each
        account's notifications arrive in order, every push is acked once.
        """
        accounts = {n: "y0_" + secrets.token_urlsafe(16) for n in ("alice", "bob")}
        server = yield self.startServer(accounts=accounts)
        receiver = WebhookReceiver(SECRET)
        receiver.script = [HOLD]
        url = receiver.listen()
        self.addCleanup(receiver.stop)
        journal = Journal(os.path.join(self.directory, WEBHOOK_JOURNAL_NAME), reactor)
        sink = WebhookSink(url, SECRET, reactor, journal, handoffTimeout=0.2)
        fleet = PushFleet(
            reactor,
            host="localhost",
            port=server.starttlsPort,
            tlsPort=server.tlsPort,
            caFile=self.caFile(server),
            domain=server.domain,
        )
        fleet.apply({login: Secret(token) for login, token in accounts.items()})
        app = PushApplication(fleet, [sink])
        app.startService()
        self.addCleanup(lambda: app.stopService() if app.running else None)
        yield fleet.whenAllSettled()

        def push(login: str, n: int) -> Any:
            return server.push(login, {"t": "diff", "n": f"{login}-{n}"})

        held = push("alice", 1)
        yield receiver.whenRequests(1)
        answer = yield held  # journaled after the handoff timeout, then acked
        self.assertEqual(answer["type"], "result")
        answer = yield push("alice", 2)  # journaled at once, behind alice-1
        self.assertEqual(answer["type"], "result")
        for n in (1, 2, 3):
            answer = yield push("bob", n)
            self.assertEqual(answer["type"], "result")
        accepted = yield receiver.whenRequests(3, accepted=True)
        self.assertEqual(
            [r.data["attributes"]["n"] for r in accepted], ["bob-1", "bob-2", "bob-3"]
        )
        # alice-1 is still held: alice-2 waits for it.
        self.assertEqual(
            [r.data["attributes"]["n"] for r in receiver.requests],
            ["alice-1", "bob-1", "bob-2", "bob-3"],
        )
        receiver.release(200)
        yield sink.whenEmpty()
        # alice-2 was sent only once alice-1 had been accepted.
        order = [r.data["attributes"]["n"] for r in receiver.accepted]
        self.assertEqual(order, ["alice-1", "bob-1", "bob-2", "bob-3", "alice-2"])
        self.assertTrue(all(r.refused is None for r in receiver.requests))
        self.assertEqual(sorted(server.acks.values()), [1] * 5)
        self.assertEqual(sink.queueDepth, 0)


class WebhookTLSTests(LocalServerTestCase):
    """https:// is verified against the host in the URL and the CA file."""

    @defer.inlineCallbacks
    def test_httpsVerifiedAgainstCAFile(self) -> Steps:
        """A receiver whose certificate names the host and chains to
        --ca-file gets the push; the same receiver dialled by an address the
        certificate does not name gets nothing, and the log says why."""
        ca = CertificateAuthority.generate()
        caFile = str(ca.writeCACertificate(os.path.join(self.directory, "ca.pem")))
        receiver = WebhookReceiver(SECRET)
        url = receiver.listen(ca.issueServerCertificate(["localhost"]))
        self.addCleanup(receiver.stop)
        sink = WebhookSink(url, SECRET, reactor, Journal(None, reactor), caFile=caFile)
        self.addCleanup(sink.close)
        yield sink.deliver(notification(stanzaId="over-tls"))
        [request] = receiver.accepted
        self.assertEqual(request.data["id"], "over-tls")

        wrongHost = url.replace("localhost", "127.0.0.1")
        warned: defer.Deferred[str] = defer.Deferred()

        def observe(event: dict[str, Any]) -> None:
            if event["log_level"] == LogLevel.warn and not warned.called:
                reactor.callLater(0, warned.callback, formatEvent(event))

        other = WebhookSink(
            wrongHost,
            SECRET,
            reactor,
            Journal(None, reactor),
            caFile=caFile,
            log=Logger(observer=observe),
        )
        self.addCleanup(other.close)
        other.deliver(notification(stanzaId="wrong-host")).addErrback(lambda _: None)
        line = yield warned
        self.assertIn("did not accept", line)
        self.assertIn("certificate does not name 127.0.0.1", line)
        self.assertEqual(len(receiver.requests), 1)
