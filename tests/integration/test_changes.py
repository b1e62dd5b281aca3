"""
What changed, end to end: the local server's realistic diffs, sent over
loopback TLS, reach the JSON line as ``changes`` and the log line in words.

Everything is real: the local server, the client's whole stack, the JSON
Lines file and the log sink. Nothing sleeps: each push's Deferred fires with
the client's ack, which the JSON sink sends only once the line is written.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer
from twisted.logger import formatEvent

from tests.integration.support import LOGIN
from tests.integration.test_pushes import PushTestCase, Steps, readLines
from yadiskpush.delivery.sinks import JSONLinesSink, LogSink
from yadiskpush.localserver import diffs


class ChangesEndToEndTests(PushTestCase):
    """Realistic diffs arrive with their changes, in every output."""

    @defer.inlineCallbacks
    def test_samplePushesInTheJSONLine(self) -> Steps:
        """Each sample push (created, changed, moved, deleted, shared, with
        Cyrillic names and spaces) is one JSON line whose ``changes`` say
        what changed, and one log line that says it in words."""
        path = os.path.join(self.directory, "pushes.jsonl")
        logs = self.captureLogs()
        server, app, session = yield self.connectedApplication(
            [JSONLinesSink(path), LogSink()]
        )
        samples = diffs.samplePushes()
        for sample in samples:
            answer = yield server.push(LOGIN, sample.attributes, sample.childrenXml)
            self.assertEqual(answer["type"], "result")

        lines = readLines(path)
        self.assertEqual(len(lines), len(samples))
        self.assertEqual(
            [[(c["type"], c["path"], c["from"]) for c in o["changes"]] for o in lines],
            [
                [
                    ("new", "/Документы", None),
                    ("new", "/Документы/Отчёт за ноябрь.odt", None),
                ],
                [
                    ("changed", "/Документы/Отчёт за ноябрь.odt", None),
                    (
                        "moved",
                        "/Photos/Море на закате.jpg",
                        "/Photos/2026-11-24 12-00-00.jpg",
                    ),
                ],
                [("deleted", "/Old drafts", None), ("deleted", "/notes.txt", None)],
                [
                    ("new", "/Photos/2026-11-25 09-30-00.jpg", None),
                    ("new", "/Photos/2026-11-25 09-30-05.jpg", None),
                ],
                [("published", "/Photos", None)],
                [("unpublished", "/Photos", None)],
            ],
        )
        first: dict[str, Any] = lines[0]["changes"][1]
        self.assertEqual(first["size"], 48213)
        self.assertEqual(first["resource_type"], "file")
        self.assertEqual(
            first["attributes"]["key"], "/disk/Документы/Отчёт за ноябрь.odt"
        )
        self.assertEqual(len(first["fid"]), 64)
        self.assertEqual(lines[0]["attributes"]["t"], "diff")
        # The raw XML still holds the whole diff.
        self.assertIn("<diff><op type='new'", lines[0]["raw_xml"])

        summaries = [
            formatEvent(e)
            for e in logs.events
            if e.get("log_namespace", "").endswith("LogSink")
        ]
        self.assertEqual(
            summaries[2],
            f"Disk changed: id={lines[2]['id']!r} 2 changes: deleted /Old drafts, "
            "deleted /notes.txt",
        )
        self.assertIn(
            "moved /Photos/2026-11-24 12-00-00.jpg -> /Photos/Море на закате.jpg",
            summaries[1],
        )
