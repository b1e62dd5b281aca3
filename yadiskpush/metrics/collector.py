"""
The metric families of a fleet, in a registry of their own.

Counters are events: the fleet's attempt and reconnect observers and the
delivery pipelines' observer add to plain integers (the per-push path
costs one attribute check and an addition, no lock). Gauges are state:
accounts, handshakes and sink queues are read from the fleet, its
handshake gate and the sinks when Prometheus scrapes, so nothing is copied
that could go stale. No metric has a login label: at 10,000 accounts that
would be 10,000 series per metric.

Each :class:`FleetMetrics` has its own ``CollectorRegistry``, not the
process-wide one, so that two fleets in one process (or in one test run)
do not collide.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)

from yadiskpush.delivery.pipeline import REFUSED_REASONS
from yadiskpush.errors import (
    AuthenticationFailed,
    CertificateError,
    ConfigurationError,
    ConnectFailed,
    ConnectionClosedDuringHandshake,
    ConnectionLostError,
    ConnectionStalled,
    HandshakeFailed,
    HandshakeTimeout,
    InsecureAuthenticationRefused,
    ProtocolViolation,
    ServerStoppedReading,
    StartTLSNotOffered,
    StartTLSRefused,
    StreamErrorReceived,
    SubscriptionFailed,
    YaDiskPushError,
)
from yadiskpush.fleet import PushFleet
from yadiskpush.metrics.sinkmetrics import InstrumentedSink, SinkStats, sinkName

#: The ``reason`` label of ``yadiskpush_reconnects_total``: a small fixed
#: set, in the order of :func:`reasonOf`'s checks.
RECONNECT_REASONS = (
    "unreachable",
    "tls",
    "auth",
    "stream_error",
    "handshake",
    "stalled",
    "connection_lost",
    "other",
)

_REASON_BY_ERROR: tuple[tuple[type[YaDiskPushError] | tuple[type, ...], str], ...] = (
    (ConnectFailed, "unreachable"),
    (
        (
            CertificateError,
            StartTLSNotOffered,
            StartTLSRefused,
            InsecureAuthenticationRefused,
        ),
        "tls",
    ),
    ((AuthenticationFailed, ConfigurationError), "auth"),
    (StreamErrorReceived, "stream_error"),
    (
        (
            HandshakeFailed,
            HandshakeTimeout,
            ConnectionClosedDuringHandshake,
            SubscriptionFailed,
            ProtocolViolation,
        ),
        "handshake",
    ),
    ((ConnectionStalled, ServerStoppedReading), "stalled"),
    (ConnectionLostError, "connection_lost"),
)


def reasonOf(error: YaDiskPushError) -> str:
    """The ``reason`` label (one of :data:`RECONNECT_REASONS`) for ``error``."""
    for kinds, reason in _REASON_BY_ERROR:
        if isinstance(error, kinds):
            return reason
    return "other"


class PushCounts:
    """
    The delivery pipelines' observer: pushes received, acknowledged and
    refused by reason, as plain integers (the per-push path).
    """

    __slots__ = ("acked", "received", "refused")

    def __init__(self) -> None:
        self.received = 0
        self.acked = 0
        self.refused = dict.fromkeys(REFUSED_REASONS, 0)

    def pushReceived(self) -> None:
        self.received += 1

    def pushAcked(self) -> None:
        self.acked += 1

    def pushRefused(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1


class FleetMetrics:
    """
    The metrics of one fleet and its sinks; :meth:`render` gives the
    Prometheus text format.

    Attach it once, before the fleet starts: it adds observers to the fleet
    (they cannot be removed) and becomes the pipelines' observer. Wrap each
    sink with :meth:`instrument` to have its deliveries counted and timed.

    :param fleet: the accounts whose counts and events are exported.
    :param clock: times sink deliveries (``seconds()``); the reactor.
    """

    def __init__(self, fleet: PushFleet, clock: Any) -> None:
        self.fleet = fleet
        self.clock = clock
        self.registry = CollectorRegistry(auto_describe=False)
        self.attempts = 0
        self.reconnects = dict.fromkeys(RECONNECT_REASONS, 0)
        self.pushes = PushCounts()
        self.sinks: list[InstrumentedSink] = []
        fleet.addAttemptObserver(self._attemptStarted)
        fleet.addReconnectObserver(self._reconnecting)
        fleet.setPipelineObserver(self.pushes)
        self.registry.register(_FleetCollector(self))

    def instrument(self, sink: Any, name: str | None = None) -> InstrumentedSink:
        """
        ``sink`` wrapped so that its deliveries are counted and timed under
        ``sink=name`` (by default from its class: jsonlines, exec, log,
        redis, webhook). Hand the wrapper to the application instead of
        the sink.
        """
        wrapped = InstrumentedSink(sink, name or sinkName(sink), self.clock)
        self.sinks.append(wrapped)
        return wrapped

    def readiness(self) -> tuple[bool, str]:
        """
        Whether every account has subscribed or given up, and the counts:
        ``(False, "3/5 subscribed, 0 gave up")``.
        """
        total = len(self.fleet)
        subscribed = self.fleet.subscribed
        gaveUp = len(self.fleet.gaveUp)
        return (
            subscribed + gaveUp >= total,
            f"{subscribed}/{total} subscribed, {gaveUp} gave up",
        )

    def render(self) -> bytes:
        """The current metrics in the Prometheus text format."""
        return generate_latest(self.registry)

    def _attemptStarted(self, login: str) -> None:
        self.attempts += 1

    def _reconnecting(self, login: str, error: YaDiskPushError) -> None:
        reason = reasonOf(error)
        self.reconnects[reason] += 1


class _FleetCollector:
    """Builds every family at scrape time from :class:`FleetMetrics`."""

    def __init__(self, metrics: FleetMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        # Names only, so the registry checks for duplicates without
        # collecting at registration.
        return list(self.collect())

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        fleet = m.fleet
        gate = fleet.context.handshakes
        yield _gauge("accounts", "Accounts configured in this process.", len(fleet))
        yield _gauge(
            "accounts_subscribed",
            "Accounts whose session is open and subscribed.",
            fleet.subscribed,
        )
        yield _gauge(
            "accounts_gave_up",
            "Accounts that stopped trying (rejected token, configuration).",
            len(fleet.gaveUp),
        )
        yield _gauge(
            "handshakes_in_flight",
            "Connections between TCP connect and open session.",
            gate.inFlight,
        )
        yield _gauge(
            "handshakes_waiting",
            "Connection attempts waiting for a handshake slot.",
            gate.waiting,
        )
        yield _counter(
            "connection_attempts",
            "Connection attempts started (a handshake slot taken).",
            m.attempts,
        )
        reconnects = CounterMetricFamily(
            "yadiskpush_reconnects",
            "Connections or attempts that ended and will be retried, by reason.",
            labels=["reason"],
        )
        for reason, count in m.reconnects.items():
            reconnects.add_metric([reason], count)
        yield reconnects
        yield _counter("pushes_received", "Pushes received.", m.pushes.received)
        yield _counter(
            "pushes_acked",
            "Pushes acknowledged once every sink took them.",
            m.pushes.acked,
        )
        refused = CounterMetricFamily(
            "yadiskpush_pushes_refused",
            "Pushes refused (the server sends them again), by reason.",
            labels=["reason"],
        )
        for reason, count in m.pushes.refused.items():
            refused.add_metric([reason], count)
        yield refused
        yield from _sinkFamilies(m.sinks)


def _sinkFamilies(sinks: list[InstrumentedSink]) -> Iterator[Metric]:
    delivered = CounterMetricFamily(
        "yadiskpush_sink_delivered",
        "Notifications a sink took.",
        labels=["sink"],
    )
    failed = CounterMetricFamily(
        "yadiskpush_sink_failed",
        "Notifications a sink could not take.",
        labels=["sink"],
    )
    depth = GaugeMetricFamily(
        "yadiskpush_sink_queue_depth",
        "Notifications a sink holds, not yet passed on (sinks with a queue).",
        labels=["sink"],
    )
    latency = SinkStats.histogramFamily(
        "yadiskpush_sink_delivery_seconds",
        "Seconds from handing a notification to a sink until it took it or failed.",
    )
    # Two sinks of one kind (two webhooks) share their series: the label
    # set must be unique, and a kind is what a dashboard asks about.
    byName: dict[str, tuple[SinkStats, int | None]] = {}
    for sink in sinks:
        stats, total = byName.get(sink.name, (SinkStats(), None))
        stats.add(sink.stats)
        queueDepth = sink.queueDepth
        if queueDepth is not None:
            total = (total or 0) + queueDepth
        byName[sink.name] = (stats, total)
    for name, (stats, queueDepth) in byName.items():
        delivered.add_metric([name], stats.delivered)
        failed.add_metric([name], stats.failed)
        stats.addHistogram(latency, name)
        if queueDepth is not None:
            depth.add_metric([name], queueDepth)
    yield delivered
    yield failed
    yield latency
    yield depth


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily("yadiskpush_" + name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily("yadiskpush_" + name, documentation, value=value)
