"""
Prometheus metrics and Kubernetes-style health endpoints for a fleet.

:class:`FleetMetrics` counts what happens (connection attempts, reconnects
by reason, pushes received, acknowledged and refused, per-sink deliveries)
from the fleet's observer hooks, reads the rest (accounts, handshakes,
sink queues) at scrape time, and keeps it all in a registry of its own.
:func:`listenMetrics` serves ``/metrics``, ``/livez`` and ``/readyz``.
"""

from __future__ import annotations

from yadiskpush.metrics.collector import RECONNECT_REASONS, FleetMetrics, reasonOf
from yadiskpush.metrics.http import (
    MetricsListenError,
    MetricsResource,
    MetricsService,
    checkEndpoint,
    listenMetrics,
)
from yadiskpush.metrics.sinkmetrics import InstrumentedSink, sinkName

__all__ = [
    "RECONNECT_REASONS",
    "FleetMetrics",
    "InstrumentedSink",
    "MetricsListenError",
    "MetricsResource",
    "MetricsService",
    "checkEndpoint",
    "listenMetrics",
    "reasonOf",
    "sinkName",
]
