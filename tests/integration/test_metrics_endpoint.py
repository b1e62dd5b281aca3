"""
The metrics endpoint end to end: a fleet against the local server over real
loopback TLS, its ``/metrics``, ``/livez`` and ``/readyz`` scraped over
real loopback HTTP, the counts matching what happened.
"""

from __future__ import annotations

import secrets
from typing import Any

import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor
from twisted.internet.error import ConnectionRefusedError

from tests.integration.support import LocalServerTestCase
from yadiskpush.fleet import PushFleet
from yadiskpush.localserver import LocalServer
from yadiskpush.localserver.faults import Faults
from yadiskpush.metrics import (
    FleetMetrics,
    MetricsListenError,
    MetricsService,
    listenMetrics,
)
from yadiskpush.notification import Notification
from yadiskpush.secret import Secret

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class MemorySink:
    """Takes every notification at once, keeping it."""

    def __init__(self) -> None:
        self.received: list[Notification] = []

    def deliver(self, notification: Notification) -> None:
        self.received.append(notification)

    def close(self) -> defer.Deferred[None]:
        return defer.succeed(None)


def parse(text: str) -> Samples:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


class MetricsEndpointTests(LocalServerTestCase):
    timeout = 60

    def startFleet(
        self, server: LocalServer, accounts: dict[str, str], **kwargs: Any
    ) -> PushFleet:
        fleet = PushFleet(
            reactor,
            host="localhost",
            port=server.starttlsPort,
            tlsPort=server.tlsPort,
            caFile=self.caFile(server),
            domain=server.domain,
            **kwargs,
        )
        fleet.apply({login: Secret(token) for login, token in accounts.items()})
        return fleet

    @defer.inlineCallbacks
    def listen(self, metrics: FleetMetrics) -> Any:
        port = yield listenMetrics(
            "tcp:0:interface=127.0.0.1", metrics, metrics.readiness, reactor
        )
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}"

    @defer.inlineCallbacks
    def get(self, url: str) -> Any:
        response = yield treq.get(url, persistent=False)
        body = yield treq.content(response)
        return response.code, body.decode()

    @defer.inlineCallbacks
    def test_countsMatchWhatHappened(self) -> None:
        """
        Four accounts, one rejected, one whose first handshake the server
        holds and then drops: /readyz is 503 while it is held, 200 once
        settled; attempts, reconnects, pushes and sink deliveries match.
        """
        logins = ["alice", "bob", "carol", "dave"]
        accounts = {login: "y0_" + secrets.token_urlsafe(16) for login in logins}
        server = yield self.startServer(accounts=accounts)
        # The first connection stalls at SASL, holding the only handshake
        # slot: no account can subscribe until the test drops it.
        server.faultNextConnection(Faults(stallAt="auth"))
        fleet = self.startFleet(
            server, dict(accounts, dave="y0_wrong-token"), maxHandshakes=1
        )
        metrics = FleetMetrics(fleet, reactor)
        sink = MemorySink()
        fleet.addNotificationObserver(metrics.instrument(sink).deliver)
        base = yield self.listen(metrics)

        code, body = yield self.get(base + "/readyz")
        self.assertEqual((code, body), (503, "not ready: 0/4 subscribed, 0 gave up\n"))

        fleet.startService()
        self.addCleanup(lambda: fleet.stopService() if fleet.running else None)
        held = yield server.whenConnected(count=1)
        code, body = yield self.get(base + "/readyz")
        self.assertEqual((code, body), (503, "not ready: 0/4 subscribed, 0 gave up\n"))
        code, text = yield self.get(base + "/metrics")
        samples = parse(text)
        self.assertEqual(samples[("yadiskpush_handshakes_in_flight", ())], 1)
        self.assertEqual(samples[("yadiskpush_accounts", ())], 4)

        held.abort()
        yield fleet.whenAllSettled()
        code, body = yield self.get(base + "/readyz")
        self.assertEqual((code, body), (200, "ready: 3/4 subscribed, 1 gave up\n"))

        sent = 0
        for login in ("alice", "bob", "carol", "alice", "bob"):
            answer = yield server.push(login, {"t": "diff", "uid": login})
            self.assertEqual(answer["type"], "result")
            sent += 1

        code, text = yield self.get(base + "/metrics")
        self.assertEqual(code, 200)
        self.assertNotIn("alice", text)
        samples = parse(text)
        self.assertEqual(samples[("yadiskpush_accounts_subscribed", ())], 3)
        self.assertEqual(samples[("yadiskpush_accounts_gave_up", ())], 1)
        self.assertEqual(samples[("yadiskpush_handshakes_in_flight", ())], 0)
        self.assertEqual(samples[("yadiskpush_pushes_received_total", ())], sent)
        self.assertEqual(samples[("yadiskpush_pushes_acked_total", ())], sent)
        refused = [
            count
            for (name, _), count in samples.items()
            if name == "yadiskpush_pushes_refused_total"
        ]
        self.assertEqual(sum(refused), 0)
        # Four first attempts and one after the held handshake was dropped.
        self.assertEqual(samples[("yadiskpush_connection_attempts_total", ())], 5)
        reconnects = {
            labels[0][1]: count
            for (name, labels), count in samples.items()
            if name == "yadiskpush_reconnects_total"
        }
        self.assertEqual(sum(reconnects.values()), 1, reconnects)
        label = (("sink", "memory"),)
        self.assertEqual(samples[("yadiskpush_sink_delivered_total", label)], sent)
        self.assertEqual(samples[("yadiskpush_sink_failed_total", label)], 0)
        self.assertEqual(len(sink.received), sent)

        code, body = yield self.get(base + "/livez")
        self.assertEqual((code, body), (200, "ok\n"))
        code, _ = yield self.get(base + "/elsewhere")
        self.assertEqual(code, 404)

    @defer.inlineCallbacks
    def test_portInUse(self) -> None:
        """A port in use is one MetricsListenError naming the endpoint."""
        server = yield self.startServer()
        fleet = self.startFleet(server, {})
        metrics = FleetMetrics(fleet, reactor)
        first = yield listenMetrics(
            "tcp:0:interface=127.0.0.1", metrics, metrics.readiness, reactor
        )
        self.addCleanup(first.stopListening)
        taken = f"tcp:{first.getHost().port}:interface=127.0.0.1"
        error = yield self.assertFailure(
            listenMetrics(taken, metrics, metrics.readiness, reactor),
            MetricsListenError,
        )
        self.assertEqual(
            error.message, f"cannot serve metrics on {taken}: address already in use"
        )

    @defer.inlineCallbacks
    def test_serviceStopsListening(self) -> None:
        """MetricsService listens while running and closes the port at stop."""
        server = yield self.startServer()
        metrics = FleetMetrics(self.startFleet(server, {}), reactor)
        service = MetricsService(
            "tcp:0:interface=127.0.0.1", metrics, metrics.readiness, reactor
        )
        service.startService()
        port = yield service.whenListening()
        base = f"http://127.0.0.1:{port.getHost().port}"
        code, _ = yield self.get(base + "/livez")
        self.assertEqual(code, 200)
        yield service.stopService()
        yield self.assertFailure(
            treq.get(base + "/livez", persistent=False), ConnectionRefusedError
        )
