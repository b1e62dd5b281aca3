"""Tests for yadiskpush.metrics: counters, gauges, the sink wrapper, the site."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest
from wokkel.generic import parseXml

from yadiskpush.connection.handshakes import HandshakeGate
from yadiskpush.delivery.pipeline import DeliveryPipeline
from yadiskpush.delivery.sinks.base import DeliveryFailed
from yadiskpush.errors import (
    AuthenticationFailed,
    ConnectFailed,
    ConnectionLostError,
    StreamErrorReceived,
    YaDiskPushError,
)
from yadiskpush.metrics import (
    RECONNECT_REASONS,
    FleetMetrics,
    InstrumentedSink,
    MetricsResource,
    checkEndpoint,
    reasonOf,
    sinkName,
)
from yadiskpush.metrics.http import MetricsEndpointError, QuietSite
from yadiskpush.notification import Notification


class FakeFleet:
    """What FleetMetrics reads of a PushFleet: counts, the gate, the hooks."""

    def __init__(self, logins: list[str]) -> None:
        self.logins = logins
        self.subscribed = 0
        self.gaveUp: dict[str, YaDiskPushError] = {}
        self.context = SimpleNamespace(handshakes=HandshakeGate(2))
        self.attemptObservers: list[Callable[[str], None]] = []
        self.reconnectObservers: list[Callable[[str, YaDiskPushError], None]] = []
        self.pipelineObserver: Any = None

    def __len__(self) -> int:
        return len(self.logins)

    def addAttemptObserver(self, observer: Callable[[str], None]) -> None:
        self.attemptObservers.append(observer)

    def addReconnectObserver(
        self, observer: Callable[[str, YaDiskPushError], None]
    ) -> None:
        self.reconnectObservers.append(observer)

    def setPipelineObserver(self, observer: Any) -> None:
        self.pipelineObserver = observer

    def attempt(self, login: str) -> None:
        for observer in self.attemptObservers:
            observer(login)

    def reconnect(self, login: str, error: YaDiskPushError) -> None:
        for observer in self.reconnectObservers:
            observer(login, error)


def scrape(
    metrics: FleetMetrics,
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, parsed back: (name, labels) -> value."""
    text = metrics.render().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(metrics: FleetMetrics, name: str, **labels: str) -> float:
    return scrape(metrics)[(name, tuple(sorted(labels.items())))]


def pushStanza(n: int) -> Any:
    return parseXml(
        b"<iq type='set' from='alice@ya.ru' id='push-%d'>"
        b"<query xmlns='yandex:push:disk' t='diff' uid='1'/></iq>" % n
    )


def push(n: int) -> tuple[Any, Notification]:
    iq = pushStanza(n)
    return iq, Notification.fromStanza(iq, 0.0, "alice")


class FleetMetricsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.fleet = FakeFleet(["alice", "bob", "carol"])
        self.clock = Clock()
        self.metrics = FleetMetrics(self.fleet, self.clock)  # type: ignore[arg-type]

    def test_gaugesReadTheFleetAtScrapeTime(self) -> None:
        """Accounts, subscribed, given up and handshakes are read when scraped."""
        self.assertEqual(value(self.metrics, "yadiskpush_accounts"), 3)
        self.assertEqual(value(self.metrics, "yadiskpush_accounts_subscribed"), 0)
        self.fleet.subscribed = 2
        self.fleet.gaveUp["carol"] = AuthenticationFailed("carol", "not-authorized")
        gate = self.fleet.context.handshakes
        gate.acquire()
        gate.acquire()
        gate.acquire()
        samples = scrape(self.metrics)
        self.assertEqual(samples[("yadiskpush_accounts_subscribed", ())], 2)
        self.assertEqual(samples[("yadiskpush_accounts_gave_up", ())], 1)
        self.assertEqual(samples[("yadiskpush_handshakes_in_flight", ())], 2)
        self.assertEqual(samples[("yadiskpush_handshakes_waiting", ())], 1)

    def test_attemptsAndReconnectsByReason(self) -> None:
        """Each attempt and each reconnect counts, the latter under its reason."""
        for login in ("alice", "bob", "alice"):
            self.fleet.attempt(login)
        self.fleet.reconnect("alice", ConnectionLostError("reset"))
        self.fleet.reconnect("bob", ConnectionLostError("reset"))
        self.fleet.reconnect("bob", StreamErrorReceived("conflict", "taken"))
        samples = scrape(self.metrics)
        self.assertEqual(samples[("yadiskpush_connection_attempts_total", ())], 3)
        reconnects = {
            labels[0][1]: count
            for (name, labels), count in samples.items()
            if name == "yadiskpush_reconnects_total"
        }
        self.assertEqual(set(reconnects), set(RECONNECT_REASONS))
        self.assertEqual(reconnects["connection_lost"], 2)
        self.assertEqual(reconnects["stream_error"], 1)
        self.assertEqual(sum(reconnects.values()), 3)

    def test_reasonsAreAFixedSet(self) -> None:
        """Every error maps to one of the fixed reasons; unknown ones to other."""
        self.assertEqual(reasonOf(ConnectFailed("no route")), "unreachable")
        self.assertEqual(reasonOf(AuthenticationFailed("a", "x")), "auth")
        self.assertEqual(reasonOf(YaDiskPushError("odd")), "other")

    def test_pipelineCountsReceivedAckedRefused(self) -> None:
        """The pipeline's observer counts received, acked and each refusal reason."""
        observer = self.fleet.pipelineObserver
        self.assertIs(observer, self.metrics.pushes)
        pending: list[defer.Deferred[None]] = []

        def deliver(n: Notification) -> Any:
            if n.stanzaId == "push-2":
                return defer.fail(DeliveryFailed(n.stanzaId, "disk full"))
            if n.stanzaId == "push-3":
                pending.append(defer.Deferred())
                return pending[-1]
            return None

        sent: list[str] = []
        pipeline = DeliveryPipeline(
            deliver,
            lambda iq, xml: sent.append(xml),
            self.clock,
            Logger(),
            timeout=10,
            maxWaiting=1,
            observer=observer,
        )
        for n in (1, 2, 3, 4, 5):
            pipeline.receive(*push(n))
        # 1 acked, 2 failed, 3 waits, 4 waits behind it, 5 refused (full).
        self.clock.advance(10)
        # 3 timed out, 4 acked.
        samples = scrape(self.metrics)
        self.assertEqual(samples[("yadiskpush_pushes_received_total", ())], 5)
        self.assertEqual(samples[("yadiskpush_pushes_acked_total", ())], 2)
        refused = {
            labels[0][1]: count
            for (name, labels), count in samples.items()
            if name == "yadiskpush_pushes_refused_total"
        }
        self.assertEqual(refused, {"timeout": 1, "full": 1, "sink_failed": 1})
        self.assertEqual(len(sent), 5)

    def test_noLoginLabel(self) -> None:
        """No series carries a login: only reason, sink and le labels exist."""
        self.metrics.instrument(SimpleNamespace(deliver=lambda n: None), "log")
        self.fleet.attempt("alice")
        self.fleet.reconnect("alice", ConnectionLostError("reset"))
        text = self.metrics.render().decode()
        self.assertNotIn("alice", text)
        labels = {key for _, pairs in scrape(self.metrics) for key, _ in pairs}
        self.assertEqual(labels, {"reason", "sink", "le"})

    def test_readiness(self) -> None:
        """Ready once every account subscribed or gave up; the counts say so."""
        self.assertEqual(self.metrics.readiness(), (False, "0/3 subscribed, 0 gave up"))
        self.fleet.subscribed = 2
        self.fleet.gaveUp["carol"] = AuthenticationFailed("carol", "not-authorized")
        self.assertEqual(self.metrics.readiness(), (True, "2/3 subscribed, 1 gave up"))

    def test_twoFleetsDoNotCollide(self) -> None:
        """Each FleetMetrics has its own registry: a second one registers fine."""
        other = FleetMetrics(FakeFleet(["dave"]), self.clock)  # type: ignore[arg-type]
        self.assertEqual(value(other, "yadiskpush_accounts"), 1)
        self.assertEqual(value(self.metrics, "yadiskpush_accounts"), 3)


class QueueSink:
    """A sink with a queue: deliver hands back a Deferred the test fires."""

    def __init__(self) -> None:
        self.pending: list[defer.Deferred[None]] = []
        self.started = 0

    @property
    def queueDepth(self) -> int:
        return len([d for d in self.pending if not d.called])

    def start(self) -> None:
        self.started += 1

    def deliver(self, notification: Notification) -> defer.Deferred[None]:
        self.pending.append(defer.Deferred())
        return self.pending[-1]

    def close(self) -> defer.Deferred[None]:
        return defer.succeed(None)


class WebhookSink(QueueSink):
    """Named like ours, for sinkName."""


class InstrumentedSinkTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.metrics = FleetMetrics(FakeFleet(["alice"]), self.clock)  # type: ignore[arg-type]

    def test_countsTimesAndPassesThrough(self) -> None:
        """Delivered and failed count, latency is observed, the result is the sink's."""
        sink = QueueSink()
        wrapped = self.metrics.instrument(sink, "webhook")
        first = wrapped.deliver(push(1)[1])
        second = wrapped.deliver(push(2)[1])
        self.assertEqual(
            value(self.metrics, "yadiskpush_sink_queue_depth", sink="webhook"), 2
        )
        self.clock.advance(0.3)
        sink.pending[0].callback(None)
        self.clock.advance(20)
        sink.pending[1].errback(DeliveryFailed("push-2", "410 Gone"))
        self.assertIsNone(self.successResultOf(first))
        self.failureResultOf(second, DeliveryFailed)
        samples = scrape(self.metrics)
        label = (("sink", "webhook"),)
        self.assertEqual(samples[("yadiskpush_sink_delivered_total", label)], 1)
        self.assertEqual(samples[("yadiskpush_sink_failed_total", label)], 1)
        self.assertEqual(samples[("yadiskpush_sink_queue_depth", label)], 0)
        self.assertEqual(samples[("yadiskpush_sink_delivery_seconds_count", label)], 2)
        self.assertAlmostEqual(
            samples[("yadiskpush_sink_delivery_seconds_sum", label)], 20.6
        )
        bucket = (("le", "0.5"), ("sink", "webhook"))
        self.assertEqual(
            samples[("yadiskpush_sink_delivery_seconds_bucket", bucket)], 1
        )
        bucket = (("le", "30.0"), ("sink", "webhook"))
        self.assertEqual(
            samples[("yadiskpush_sink_delivery_seconds_bucket", bucket)], 2
        )

    def test_synchronousSink(self) -> None:
        """A sink that takes at once (None) counts as delivered, returns None."""
        wrapped = self.metrics.instrument(
            SimpleNamespace(deliver=lambda n: None), "log"
        )
        self.assertIsNone(wrapped.deliver(push(1)[1]))
        self.assertEqual(
            value(self.metrics, "yadiskpush_sink_delivered_total", sink="log"), 1
        )
        # No queue: no queue depth series for it.
        self.assertNotIn(
            ("yadiskpush_sink_queue_depth", (("sink", "log"),)), scrape(self.metrics)
        )

    def test_otherAttributesAreTheSinks(self) -> None:
        """start, reopen and the rest reach the sink; missing ones stay missing."""
        sink = QueueSink()
        wrapped = InstrumentedSink(sink, "webhook", self.clock)
        wrapped.start()
        self.assertEqual(sink.started, 1)
        self.assertIsNone(getattr(wrapped, "reopen", None))

    def test_sameKindShareSeries(self) -> None:
        """Two sinks of one kind add up in one series (label sets stay unique)."""
        one, two = QueueSink(), QueueSink()
        self.metrics.instrument(one, "webhook").deliver(push(1)[1])
        self.metrics.instrument(two, "webhook").deliver(push(2)[1])
        self.assertEqual(
            value(self.metrics, "yadiskpush_sink_queue_depth", sink="webhook"), 2
        )

    def test_sinkNames(self) -> None:
        """The sink label comes from the class: ours by name, others lowercased."""
        self.assertEqual(sinkName(WebhookSink()), "webhook")
        self.assertEqual(sinkName(QueueSink()), "queue")


def get(resource: MetricsResource, path: bytes) -> tuple[int, bytes, DummyRequest]:
    request = DummyRequest([path])
    child = resource.getChildWithDefault(path, request)
    body = child.render(request)
    return request.responseCode or 200, body, request


class ResourceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.fleet = FakeFleet(["alice", "bob"])
        self.metrics = FleetMetrics(self.fleet, Clock())  # type: ignore[arg-type]
        self.resource = MetricsResource(self.metrics, self.metrics.readiness)

    def test_readyz(self) -> None:
        """/readyz is 503 with the counts until every account settled, then 200."""
        code, body, _ = get(self.resource, b"readyz")
        self.assertEqual((code, body), (503, b"not ready: 0/2 subscribed, 0 gave up\n"))
        self.fleet.subscribed = 2
        code, body, _ = get(self.resource, b"readyz")
        self.assertEqual((code, body), (200, b"ready: 2/2 subscribed, 0 gave up\n"))

    def test_metricsContentType(self) -> None:
        """/metrics is the Prometheus text format, with its content type."""
        code, body, request = get(self.resource, b"metrics")
        self.assertEqual(code, 200)
        [contentType] = request.responseHeaders.getRawHeaders(b"content-type")
        self.assertTrue(contentType.startswith(b"text/plain; version=0.0.4"))
        self.assertIn(b"yadiskpush_accounts 2.0", body)

    def test_quietSite(self) -> None:
        """The site writes no access log line per request."""
        site = QuietSite(self.resource)
        self.assertFalse(site.noisy)
        self.assertIsNone(site.log(DummyRequest([b"metrics"])))

    def test_badEndpoint(self) -> None:
        """A bad endpoint string is one clear configuration error."""
        error = self.assertRaises(MetricsEndpointError, checkEndpoint, "tcp:nine")
        self.assertIn("--metrics 'tcp:nine' is not a server endpoint", error.message)
