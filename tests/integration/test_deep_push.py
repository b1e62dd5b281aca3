"""
End to end over loopback TLS: a push nested far deeper than Python's
recursion limit (but well under the stanza caps) is delivered whole and
acknowledged, and nothing prints a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from typing import Any

from twisted.internet import defer
from wokkel.generic import parseXml

from tests.integration.support import LOGIN, LocalServerTestCase
from yadiskpush.delivery.sinks.jsonlines import encodeJSONLine
from yadiskpush.notification import MAX_STRUCTURED_DEPTH, Notification

Steps = Generator[defer.Deferred[Any], Any, None]


def nested(depth: int) -> str:
    """``depth`` nested elements around a text, as raw XML."""
    return "<a n='x'>" * depth + "bottom" + "</a>" * depth


def elementDepth(xml: str) -> int:
    """How many levels of elements ``xml`` holds (counted without recursion)."""
    deepest = 0
    stack = [(parseXml(xml.encode("utf-8")), 1)]
    while stack:
        element, level = stack.pop()
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in element.elements())
    return deepest


class DeepPushTests(LocalServerTestCase):
    """Deep pushes are answered once with a result and reach observers whole."""

    @defer.inlineCallbacks
    def assertDeliveredWhole(self, depth: int) -> Steps:
        server = yield self.startServer()
        service = self.startClient(self.settingsFor(server))
        received: list[Notification] = []
        service.addNotificationObserver(received.append)
        logs = self.captureLogs()
        yield self.readySession(server, service)

        answer = yield server.push(LOGIN, {"t": "diff"}, childrenXml=nested(depth))

        self.assertEqual(answer["type"], "result")
        [notification] = received
        self.assertEqual(notification.stanzaId, answer["id"])
        # iq > query > depth levels of <a>.
        self.assertEqual(elementDepth(notification.rawXml), depth + 2)
        [child] = notification.children
        for _ in range(MAX_STRUCTURED_DEPTH - 1):
            [child] = child.children
        self.assertTrue(child.truncated)
        line = json.loads(encodeJSONLine(notification))
        self.assertEqual(line["raw_xml"], notification.rawXml)
        self.assertIn("t='diff'", notification.summary())
        self.assertEqual(
            [e for e in logs.events if "log_failure" in e or "failure" in e], []
        )

    def test_600Deep(self) -> defer.Deferred[None]:
        """A push nested 600 deep is acknowledged and delivered whole."""
        return self.assertDeliveredWhole(600)

    def test_5000Deep(self) -> defer.Deferred[None]:
        """A push nested 5,000 deep is acknowledged and delivered whole."""
        return self.assertDeliveredWhole(5000)
