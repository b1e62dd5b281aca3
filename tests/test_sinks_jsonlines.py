"""Tests for yadiskpush.delivery.sinks.jsonlines: one flushed JSON line per push."""

from __future__ import annotations

import errno
import io
import json
import os
from typing import Any

from twisted.logger import capturedLogs
from twisted.trial.unittest import TestCase
from wokkel.generic import parseXml

from yadiskpush.delivery.sinks import DeliveryFailed, JSONLinesSink, Sink
from yadiskpush.errors import ConfigurationError
from yadiskpush.notification import Notification


def makeNotification(number: int, path: str = "/disk/file.txt") -> Notification:
    """A push as the server sends it, numbered ``number``."""
    xml = (
        f"<iq type='set' id='push{number}' from='push.xmpp.yandex.ru' "
        f"to='user@ya.ru/yadiskpush'><query xmlns='yandex:push:disk' "
        f"type='disk' revision='{number}'><path>{path}</path></query></iq>"
    )
    return Notification.fromStanza(parseXml(xml.encode("utf-8")), 1700000000.5)


class FailingStream(io.RawIOBase):
    """A binary stream that takes ``accept`` bytes, then fails as a full disk."""

    def __init__(self, accept: int = 0) -> None:
        self.accept = accept
        self.data = bytearray()
        self.failing = True

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:  # type: ignore[override]
        if not self.failing:
            self.data += data
            return len(data)
        if self.accept:
            taken = bytes(data[: self.accept])
            self.accept -= len(taken)
            self.data += taken
            return len(taken)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class JSONLinesSinkTests(TestCase):
    """JSONLinesSink writes whole, flushed lines and fails without raising."""

    def setUp(self) -> None:
        self.path = self.mktemp()

    def openSink(self, path: str | None = None, **kwargs: Any) -> JSONLinesSink:
        sink = JSONLinesSink(self.path if path is None else path, **kwargs)
        self.addCleanup(sink.close)
        return sink

    def readLines(self) -> list[str]:
        with open(self.path, encoding="utf-8", newline="") as f:
            return f.read().split("\n")

    def test_isASink(self) -> None:
        """JSONLinesSink provides the Sink protocol."""
        self.assertIsInstance(self.openSink(), Sink)

    def test_oneFlushedLinePerNotification(self) -> None:
        """Each deliver appends one parseable line, readable before close."""
        sink = self.openSink()
        notifications = [makeNotification(i) for i in range(3)]
        for n in notifications:
            self.successResultOf(sink.deliver(n))
        lines = self.readLines()
        self.assertEqual(lines[-1], "")
        self.assertEqual(
            [json.loads(line) for line in lines[:-1]],
            [n.toJSON() for n in notifications],
        )

    def test_appendsToExistingFile(self) -> None:
        """An existing file keeps its content; new lines go after it."""
        with open(self.path, "w", encoding="utf-8") as f:
            f.write('{"old": true}\n')
        sink = self.openSink()
        self.successResultOf(sink.deliver(makeNotification(1)))
        lines = self.readLines()
        self.assertEqual(json.loads(lines[0]), {"old": True})
        self.assertEqual(json.loads(lines[1])["id"], "push1")

    def test_nonASCIIWrittenAsUTF8(self) -> None:
        """Non-ASCII text is written as UTF-8, not as \\u escapes."""
        sink = self.openSink()
        self.successResultOf(sink.deliver(makeNotification(1, "/disk/Фото.jpg")))
        with open(self.path, "rb") as f:
            raw = f.read()
        self.assertIn("Фото".encode(), raw)
        self.assertNotIn(b"\\u0424", raw)

    def test_unicodeLineSeparatorsEscaped(self) -> None:
        """U+2028, U+2029 and U+0085 in a value do not split the line."""
        sink = self.openSink()
        name = "/disk/a\u2028b\u2029c\u0085d"
        self.successResultOf(sink.deliver(makeNotification(1, name)))
        with open(self.path, encoding="utf-8", newline="") as f:
            text = f.read()
        self.assertEqual(len(text.splitlines()), 1)
        self.assertEqual(json.loads(text)["children"][0]["text"], name)

    def test_dashWritesToStdout(self) -> None:
        """``-`` writes to the given stdout stream, which close leaves open."""
        stdout = io.BytesIO()
        sink = self.openSink("-", stdout=stdout)
        self.successResultOf(sink.deliver(makeNotification(7)))
        self.successResultOf(sink.close())
        self.assertFalse(stdout.closed)
        self.assertEqual(
            json.loads(stdout.getvalue().decode("utf-8")),
            makeNotification(7).toJSON(),
        )
        self.assertTrue(stdout.getvalue().endswith(b"\n"))

    def test_unopenableDirectory(self) -> None:
        """A path in a missing directory is a one-line ConfigurationError."""
        path = os.path.join(self.mktemp(), "out.jsonl")
        e = self.assertRaises(ConfigurationError, JSONLinesSink, path)
        self.assertIn(repr(path), str(e))
        self.assertIn("No such file or directory", str(e))
        self.assertNotIn("\n", str(e))

    def test_pathIsADirectory(self) -> None:
        """A directory given as the path is a ConfigurationError."""
        os.mkdir(self.path)
        e = self.assertRaises(ConfigurationError, JSONLinesSink, self.path)
        self.assertIn("Is a directory", str(e))

    def test_writeFailureIsAFailedDeferred(self) -> None:
        """A full disk fails the Deferred with DeliveryFailed and logs an error."""
        sink = self.openSink("-", stdout=FailingStream())
        with capturedLogs() as events:
            d = sink.deliver(makeNotification(1))
        failure = self.failureResultOf(d, DeliveryFailed)
        self.assertIn("No space left on device", str(failure.value))
        self.assertEqual(failure.value.stanzaId, "push1")
        errors = [e for e in events if e["log_level"].name == "error"]
        self.assertEqual(len(errors), 1)
        self.assertEqual(errors[0]["id"], "push1")

    def test_devFull(self) -> None:
        """Writing to /dev/full fails the Deferred instead of raising."""
        if not os.path.exists("/dev/full"):
            self.skipTest("no /dev/full on this system")
        sink = self.openSink("/dev/full")
        with capturedLogs():
            self.failureResultOf(sink.deliver(makeNotification(1)), DeliveryFailed)

    def test_tornLineIsTerminated(self) -> None:
        """After a partly written line, the next line starts on a fresh line."""
        stream = FailingStream(accept=10)
        sink = self.openSink("-", stdout=stream)
        with capturedLogs():
            self.failureResultOf(sink.deliver(makeNotification(1)), DeliveryFailed)
        stream.failing = False
        self.successResultOf(sink.deliver(makeNotification(2)))
        lines = stream.data.decode("utf-8").split("\n")
        self.assertEqual(len(lines[0]), 10)
        self.assertEqual(json.loads(lines[1])["id"], "push2")
        self.assertEqual(lines[2], "")

    def test_deliverAfterClose(self) -> None:
        """Delivering to a closed sink fails with DeliveryFailed."""
        sink = self.openSink()
        self.successResultOf(sink.close())
        self.failureResultOf(sink.deliver(makeNotification(1)), DeliveryFailed)

    def test_closeTwice(self) -> None:
        """Closing twice is harmless and closes the file."""
        sink = self.openSink()
        self.successResultOf(sink.close())
        self.successResultOf(sink.close())
        self.assertTrue(sink._stream.closed)
