"""
Where received notifications go: a JSON Lines file, a shell command, or the
log.

Every sink follows :class:`~yadiskpush.delivery.sinks.base.Sink`: ``deliver`` fires
once the notification is safely taken (the push is acknowledged only then)
and ``close`` finishes the sink's work on service stop.
"""

from __future__ import annotations

from yadiskpush.delivery.sinks.base import DeliveryFailed, Sink
from yadiskpush.delivery.sinks.execute import ExecSink
from yadiskpush.delivery.sinks.jsonlines import JSONLinesSink, encodeJSONLine
from yadiskpush.delivery.sinks.logline import LogSink

__all__ = [
    "DeliveryFailed",
    "ExecSink",
    "JSONLinesSink",
    "LogSink",
    "Sink",
    "encodeJSONLine",
]
