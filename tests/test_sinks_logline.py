"""Tests for yadiskpush.delivery.sinks.logline: one readable log line per push."""

from __future__ import annotations

from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from wokkel.generic import parseXml

from yadiskpush.delivery.sinks import LogSink, Sink
from yadiskpush.notification import Notification


def makeNotification() -> Notification:
    """A push as the server sends it."""
    xml = (
        b"<iq type='set' id='push1' from='push.xmpp.yandex.ru' "
        b"to='user@ya.ru/yadiskpush'><query xmlns='yandex:push:disk' "
        b"type='disk' revision='42'><path>/disk/a</path></query></iq>"
    )
    return Notification.fromStanza(parseXml(xml), 1700000000.0)


class LogSinkTests(SynchronousTestCase):
    """LogSink logs each notification's summary at info level."""

    def test_isASink(self) -> None:
        """LogSink provides the Sink protocol."""
        self.assertIsInstance(LogSink(), Sink)

    def test_logsSummary(self) -> None:
        """Delivering logs exactly the summary, once, at info level."""
        notification = makeNotification()
        with capturedLogs() as events:
            result = LogSink().deliver(notification)
        self.assertIsNone(result)
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["log_level"], LogLevel.info)
        self.assertEqual(formatEvent(events[0]), notification.summary())
        self.assertNotIn("\n", formatEvent(events[0]))

    def test_close(self) -> None:
        """Closing fires at once."""
        self.successResultOf(LogSink().close())
