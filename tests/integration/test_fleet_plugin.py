"""
``twistd yadiskpush`` as one process of a fleet, end to end through the real
command line: accounts from a file, every push added to a real redis-server
and POSTed to a real HTTP receiver that checks its signature, metrics and
health scraped over HTTP. No push is acknowledged before both outputs have
it, across a webhook that answers 503, then 429 with Retry-After, and across
Redis stopped and started again.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Generator
from typing import Any

import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor, task
from twisted.internet.protocol import Factory

from tests.integration.redisserver import freePort, startRedis
from tests.integration.test_accounts_plugin import AccountsTwistdTestCase, newToken
from tests.integration.webhookreceiver import WebhookReceiver

Steps = Generator[defer.Deferred[Any], Any, None]

SECRET = b"fleet-test-secret-of-32-bytes!!!"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape: (name, sorted labels) -> value."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


class FleetPluginTests(AccountsTwistdTestCase):
    timeout = 120

    @defer.inlineCallbacks
    def get(self, port: int, path: str) -> Steps:
        response = yield treq.get(f"http://127.0.0.1:{port}{path}", persistent=False)
        body = yield response.text()
        return response.code, body

    @defer.inlineCallbacks
    def whenReady(self, port: int) -> Steps:
        """/readyz, asked until it answers 200 (bounded by the test timeout)."""
        while True:
            try:
                code, body = yield self.get(port, "/readyz")
            except Exception:
                code, body = None, ""
            if code == 200:
                return body
            yield task.deferLater(reactor, 0.05, lambda: None)

    @defer.inlineCallbacks
    def test_redisWebhookAndMetrics(self) -> Steps:
        logins = ["alice", "bob", "carol"]
        server = yield self.startServer({login: newToken() for login in logins})
        path = self.writeAccounts({login: server.accounts[login] for login in logins})
        redis = startRedis(self)
        receiver = WebhookReceiver(SECRET)
        webhookURL = receiver.listen()
        self.addCleanup(receiver.stop)
        # The first delivery is refused twice before it is accepted.
        receiver.script = [503, (429, {"Retry-After": "1"})]
        secretFile = os.path.join(self.directory, "webhook-secret")
        with open(secretFile, "w") as f:
            f.write("whsec_" + base64.b64encode(SECRET).decode() + "\n")
        os.chmod(secretFile, 0o600)
        metricsPort = freePort()
        process, transport = self.spawnTwistd(
            *self.args(
                server,
                path,
                f"--redis={redis.url}",
                "--redis-stream=changes",
                f"--webhook={webhookURL}",
                f"--webhook-secret-file={secretFile}",
                f"--metrics=tcp:{metricsPort}:interface=127.0.0.1",
                f"--state-dir={os.path.join(self.directory, 'state')}",
            )
        )
        yield server.whenSubscribed(3)
        readyBody = yield self.whenReady(metricsPort)
        self.assertIn("3/3", readyBody)
        code, _ = yield self.get(metricsPort, "/livez")
        self.assertEqual(code, 200)

        # alice's push: not acked while the webhook refuses it.
        first = server.push("alice", {"t": "diff", "uid": "1"})
        refused = yield receiver.whenRequests(2)
        self.assertEqual([r.status for r in refused], [503, 429])
        self.assertFalse(first.called, "acked before the webhook accepted it")
        answer = yield first
        self.assertEqual(answer["type"], "result")
        accepted = receiver.accepted
        self.assertEqual(len(accepted), 1)
        self.assertEqual(
            {r.headers["webhook-id"] for r in receiver.requests[:3]},
            {accepted[0].headers["webhook-id"]},
        )
        for login in ("bob", "carol"):
            answer = yield server.push(login, {"t": "diff", "uid": "1"})
            self.assertEqual(answer["type"], "result")
        entries = redis.xrange("changes")
        self.assertEqual(
            sorted((f["login"], f["id"]) for _, f in entries),
            sorted((r.data["login"], r.data["id"]) for r in receiver.accepted),
        )
        self.assertEqual(len(entries), 3)
        for _, fields in entries:
            self.assertEqual(json.loads(fields["json"])["login"], fields["login"])

        _, text = yield self.get(metricsPort, "/metrics")
        scraped = samples(text)
        self.assertEqual(scraped[("yadiskpush_accounts", ())], 3)
        self.assertEqual(scraped[("yadiskpush_accounts_subscribed", ())], 3)
        self.assertEqual(scraped[("yadiskpush_pushes_received_total", ())], 3)
        self.assertEqual(scraped[("yadiskpush_pushes_acked_total", ())], 3)
        for sink in ("redis", "webhook"):
            self.assertEqual(
                scraped[("yadiskpush_sink_delivered_total", (("sink", sink),))], 3
            )
        self.assertNotIn("alice", text)

        # Redis stopped: the next push is not acked; back, it is, once.
        redis.stop()
        pending = server.push("bob", {"t": "diff", "uid": "2"})
        yield receiver.whenRequests(len(receiver.requests) + 1)
        self.assertFalse(pending.called, "acked while Redis was down")
        redis.restart()
        answer = yield pending
        self.assertEqual(answer["type"], "result")
        entries = redis.xrange("changes")
        self.assertEqual(
            [(f["login"], f["id"]) for _, f in entries], [("bob", answer["id"])]
        )
        self.assertNotIn(SECRET.decode(), process.text())
        yield self.stopCleanly(process, transport)

    @defer.inlineCallbacks
    def test_metricsPortInUseExits78(self) -> Steps:
        """A --metrics port another process holds: one line, exit status 78."""
        server = yield self.startServer({"alice": newToken()})
        path = self.writeAccounts({"alice": server.accounts["alice"]})
        taken = reactor.listenTCP(0, Factory(), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(taken.stopListening)
        port = taken.getHost().port
        process, _ = self.spawnTwistd(
            *self.args(server, path, f"--metrics=tcp:{port}:interface=127.0.0.1")
        )
        yield process.ended
        self.assertEqual(process.exitCode, 78, process.text())
        line = process.lineWith("cannot serve metrics on")
        self.assertIsNotNone(line, process.text())
        self.assertIn("address already in use", line or "")
        self.assertIsNotNone(process.lineWith("Exiting with status 78"), process.text())
        self.assertNotIn("Traceback", process.text())
