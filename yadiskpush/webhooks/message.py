"""
The webhook message a push becomes: its ``webhook-id`` and its body, built
from the push's JSON line (what the journal keeps), so that a push sent now
and the same push replayed from the journal after a crash are the same
message.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any, NamedTuple

#: The ``type`` of every message.
EVENT_TYPE = "disk.changed"


class WebhookMessage(NamedTuple):
    """One message: what is signed and sent, and what the log names."""

    msgId: str
    body: bytes
    login: str
    pushId: str


def webhookId(data: dict[str, Any]) -> str:
    """
    The ``webhook-id`` of the push whose JSON object is ``data``: ``msg_``
    and a hash of its login, its push id and its payload (attributes and
    children), not of when it was received. A push the server sends again
    (its ack was lost, or the process stopped before acknowledging it) gets
    the same id, so that receivers can drop the copy; two different pushes
    get different ids even if the server were to reuse a push id.
    """
    identity = json.dumps(
        [
            data.get("login", ""),
            data.get("id", ""),
            data.get("element", ""),
            data.get("attributes", {}),
            data.get("children", []),
        ],
        ensure_ascii=True,
        sort_keys=True,
        separators=(",", ":"),
    )
    return "msg_" + hashlib.sha256(identity.encode("ascii")).hexdigest()[:32]


def isoTimestamp(seconds: float) -> str:
    """``seconds`` since the epoch as ISO 8601 in UTC, to the millisecond."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def messageFromLine(line: bytes) -> WebhookMessage:
    """
    The message for one JSON line (from
    :func:`~yadiskpush.delivery.sinks.jsonlines.encodeJSONLine`): the body
    is ``{"type": "disk.changed", "timestamp": <received_at in ISO 8601
    UTC>, "data": <the line's object, byte for byte>}``.

    :raises ValueError: for a line that is not a JSON object.
    """
    data = json.loads(line)
    if not isinstance(data, dict):
        raise ValueError("the line is not a JSON object")
    receivedAt = data.get("received_at")
    if isinstance(receivedAt, bool) or not isinstance(receivedAt, (int, float)):
        raise ValueError("the line has no received_at")
    head = json.dumps({"type": EVENT_TYPE, "timestamp": isoTimestamp(receivedAt)})
    body = head[:-1].encode("ascii") + b', "data": ' + line.rstrip(b"\n") + b"}"
    return WebhookMessage(
        webhookId(data), body, str(data.get("login", "")), str(data.get("id", ""))
    )
