"""
Where received notifications go: a JSON Lines file, a shell command, or the
log.

Every sink follows :class:`~yadiskpush.sinks.base.Sink`: ``deliver`` fires
once the notification is safely taken (the push is acknowledged only then)
and ``close`` finishes the sink's work on service stop.
"""

from __future__ import annotations

from yadiskpush.sinks.base import DeliveryFailed, Sink
from yadiskpush.sinks.execute import ExecSink
from yadiskpush.sinks.jsonlines import JSONLinesSink, encodeJSONLine
from yadiskpush.sinks.logline import LogSink

__all__ = [
    "DeliveryFailed",
    "ExecSink",
    "JSONLinesSink",
    "LogSink",
    "Sink",
    "encodeJSONLine",
]
