"""
A sink wrapper that counts and times deliveries, for the metrics.

:class:`InstrumentedSink` keeps the sink contract (it returns the sink's
own result, so the push is acknowledged exactly when it would have been)
and adds, per delivery, one count (delivered or failed) and one latency
observation. The sinks themselves know nothing of metrics.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from prometheus_client.core import HistogramMetricFamily
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from yadiskpush.notification import Notification

#: Upper bounds of the latency buckets, in seconds: a file write takes
#: milliseconds, a webhook or Redis round trip tens of them, and nothing
#: may take longer than the delivery timeout (60 s by default).
LATENCY_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

#: The ``sink`` label of the sinks we ship, by class name.
SINK_NAMES = {
    "JSONLinesSink": "jsonlines",
    "ExecSink": "exec",
    "LogSink": "log",
    "RedisSink": "redis",
    "RedisStreamSink": "redis",
    "WebhookSink": "webhook",
}


def sinkName(sink: object) -> str:
    """The ``sink`` label for ``sink``: ``jsonlines``, ``exec``, ``webhook``..."""
    className = type(sink).__name__
    known = SINK_NAMES.get(className)
    if known is not None:
        return known
    name = className.lower()
    return name[: -len("sink")] if name.endswith("sink") and name != "sink" else name


class SinkStats:
    """Deliveries of one sink: counts and a latency histogram."""

    __slots__ = ("buckets", "delivered", "failed", "latencySum")

    def __init__(self) -> None:
        self.delivered = 0
        self.failed = 0
        self.latencySum = 0.0
        # One count per bucket (not cumulative) and one for +Inf.
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)

    def observe(self, seconds: float, ok: bool) -> None:
        if ok:
            self.delivered += 1
        else:
            self.failed += 1
        seconds = max(seconds, 0.0)
        self.latencySum += seconds
        self.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1

    def add(self, other: SinkStats) -> None:
        """Add ``other``'s counts to these (two sinks of the same kind)."""
        self.delivered += other.delivered
        self.failed += other.failed
        self.latencySum += other.latencySum
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]

    @staticmethod
    def histogramFamily(name: str, documentation: str) -> HistogramMetricFamily:
        return HistogramMetricFamily(name, documentation, labels=["sink"])

    def addHistogram(self, family: HistogramMetricFamily, sinkLabel: str) -> None:
        cumulative = 0
        points = []
        bounds = [repr(bound) for bound in LATENCY_BUCKETS] + ["+Inf"]
        for bound, count in zip(bounds, self.buckets, strict=True):
            cumulative += count
            points.append((bound, cumulative))
        family.add_metric([sinkLabel], points, self.latencySum)


class InstrumentedSink:
    """
    ``sink``, with its deliveries counted and timed under ``name``.

    ``deliver`` returns what the sink returned (the same Deferred, with a
    pass-through callback added), so acknowledgement, failures and timeouts
    are exactly the sink's. Every other attribute (``start``, ``reopen``,
    ``queueDepth``, ``runOnStart``...) is the sink's own.

    :param sink: the sink to wrap.
    :param name: its ``sink`` label.
    :param clock: ``seconds()`` for the latency; the reactor.
    """

    def __init__(self, sink: Any, name: str, clock: Any) -> None:
        self.sink = sink
        self.name = name
        self.clock = clock
        self.stats = SinkStats()

    def __repr__(self) -> str:
        return repr(self.sink)

    def __getattr__(self, name: str) -> Any:
        # Only for what this class does not define: start, reopen, ...
        return getattr(self.sink, name)

    @property
    def queueDepth(self) -> int | None:
        """The sink's ``queueDepth``; ``None`` if it has no queue."""
        depth = getattr(self.sink, "queueDepth", None)
        return None if depth is None else int(depth)

    def deliver(self, notification: Notification) -> Deferred[None] | None:
        startedAt = self.clock.seconds()
        try:
            result = self.sink.deliver(notification)
        except Exception:
            self.stats.observe(self.clock.seconds() - startedAt, False)
            raise
        if result is None:
            self.stats.observe(self.clock.seconds() - startedAt, True)
            return None

        def settled(outcome: Any) -> Any:
            self.stats.observe(
                self.clock.seconds() - startedAt, not isinstance(outcome, Failure)
            )
            return outcome

        result.addBoth(settled)
        return result

    def close(self) -> Deferred[None]:
        result: Deferred[None] = self.sink.close()
        return result
