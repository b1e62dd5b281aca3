"""
Tests for yadiskpush.delivery.sinks.jsonlines: one JSON line per push, handed
to the operating system before the push is acknowledged, never blocking.

Pipes are real (``os.pipe``) and watched by the real reactor; the close grace
runs on a ``task.Clock``.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, main, reactor, task
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from wokkel.generic import parseXml
from zope.interface import implementer

from yadiskpush.delivery.sinks import DeliveryFailed, JSONLinesSink, Sink
from yadiskpush.delivery.sinks._fdwriter import DescriptorWriter, WriteFailed
from yadiskpush.delivery.sinks.jsonlines import encodeJSONLine
from yadiskpush.errors import ConfigurationError
from yadiskpush.notification import Notification, PushChild

#: A path this long makes a line of about 8 KiB (the path is in the JSON
#: twice: as text and in the raw XML), so a pipe fills in a few lines.
BIG = 4000


def makeNotification(
    number: int, path: str = "/disk/file.txt", login: str = "user"
) -> Notification:
    """A push as the server sends it, numbered ``number``, for ``login``."""
    xml = (
        f"<iq type='set' id='push{number}' from='push.xmpp.yandex.ru' "
        f"to='user@ya.ru/yadiskpush'><query xmlns='yandex:push:disk' "
        f"type='disk' revision='{number}'><path>{path}</path></query></iq>"
    )
    return Notification.fromStanza(parseXml(xml.encode("utf-8")), 1700000000.5, login)


def bigNotification(number: int) -> Notification:
    """A push whose line is about 8 KiB."""
    return makeNotification(number, "/disk/" + "x" * BIG)


def readAvailable(fd: int) -> bytes:
    """Everything a pipe holds right now (it is made non-blocking)."""
    os.set_blocking(fd, False)
    data = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return data
        if not chunk:
            return data
        data += chunk


@implementer(IReadDescriptor)
class PipeReader:
    """Reads a pipe through the reactor until its end of file."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.data = bytearray()
        self.ended: defer.Deferred[bytes] = defer.Deferred()
        os.set_blocking(fd, False)

    def start(self) -> None:
        reactor.addReader(self)

    def stop(self) -> None:
        reactor.removeReader(self)

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "PipeReader"

    def doRead(self) -> object:
        try:
            chunk = os.read(self.fd, 65536)
        except BlockingIOError:
            return None
        if not chunk:
            return main.CONNECTION_DONE
        self.data += chunk
        return None

    def connectionLost(self, reason: Failure) -> None:
        if not self.ended.called:
            self.ended.callback(bytes(self.data))


class JSONLinesSinkTestCase(TestCase):
    """Helpers: sinks closed on cleanup, pipes, and the sink's log."""

    def setUp(self) -> None:
        self.path = self.mktemp()
        self.openFDs: set[int] = set()
        self.events: list[dict[str, Any]] = []
        observer = self.events.append
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def openSink(self, path: str | None = None, **kwargs: Any) -> JSONLinesSink:
        sink = JSONLinesSink(self.path if path is None else path, **kwargs)
        self.addCleanup(sink.close)
        return sink

    def makePipe(self) -> tuple[int, int]:
        """A pipe whose ends are closed on cleanup, unless :meth:`closeFD`
        closed them before (a number closed twice may be someone else's)."""
        readEnd, writeEnd = os.pipe()
        for fd in (readEnd, writeEnd):
            self.openFDs.add(fd)
            self.addCleanup(self.closeFD, fd)
        return readEnd, writeEnd

    def closeFD(self, fd: int) -> None:
        """Close one end of a pipe from :meth:`makePipe` (once)."""
        if fd in self.openFDs:
            self.openFDs.remove(fd)
            os.close(fd)

    def pipeSink(self, **kwargs: Any) -> tuple[JSONLinesSink, int]:
        """
        A ``-`` sink whose standard output is a fresh pipe; returns the
        sink and the pipe's read end. The test's own write end is closed,
        so the reader sees end of file once the sink closes.
        """
        readEnd, writeEnd = self.makePipe()
        sink = self.openSink("-", stdoutFD=writeEnd, stderrFD=None, **kwargs)
        self.closeFD(writeEnd)
        return sink, readEnd

    def fillPipe(
        self, sink: JSONLinesSink
    ) -> tuple[list[Notification], defer.Deferred[None]]:
        """
        Deliver big lines until one cannot be written whole: returns the
        notifications written and the Deferred of the one that waits.
        """
        written: list[Notification] = []
        for number in range(1, 1000):
            notification = bigNotification(number)
            d = sink.deliver(notification)
            if d is not None:
                if not d.called:
                    return written, d
                self.successResultOf(d)
            written.append(notification)
        self.fail("the pipe never filled")

    def assertTaken(self, result: defer.Deferred[None] | None) -> None:
        """deliver took the line: at once (``None``) or by a fired Deferred."""
        if result is not None:
            self.assertIsNone(self.successResultOf(result))

    def logged(self, level: LogLevel) -> list[str]:
        """The sink's log lines of ``level``."""
        return [
            formatEvent(e)
            for e in self.events
            if e.get("log_level") == level
            and "jsonlines" in str(e.get("log_namespace", ""))
        ]

    def readLines(self, path: str | None = None) -> list[str]:
        with open(path or self.path, encoding="utf-8", newline="") as f:
            return f.read().split("\n")


class RegularFileTests(JSONLinesSinkTestCase):
    """A regular file is written at once, whole lines, failing without raising."""

    def test_isASink(self) -> None:
        """JSONLinesSink provides the Sink protocol."""
        self.assertIsInstance(self.openSink(), Sink)

    def test_oneLinePerNotification(self) -> None:
        """Each deliver appends one parseable line, readable before close."""
        sink = self.openSink()
        notifications = [makeNotification(i) for i in range(3)]
        for n in notifications:
            self.assertTaken(sink.deliver(n))
        lines = self.readLines()
        self.assertEqual(lines[-1], "")
        self.assertEqual(
            [json.loads(line) for line in lines[:-1]],
            [n.toJSON() for n in notifications],
        )

    def test_writtenAtOnceCostsNoDeferred(self) -> None:
        """A line written whole at once is reported by returning None."""
        sink = self.openSink()
        self.assertIsNone(sink.deliver(makeNotification(1)))
        self.assertEqual(len(self.readLines()), 2)

    def test_everyLineNamesItsAccount(self) -> None:
        """Each line starts with the notification's login, as its first key."""
        sink = self.openSink()
        for login in ("alice", "bob"):
            self.assertTaken(sink.deliver(makeNotification(1, login=login)))
        lines = self.readLines()[:-1]
        self.assertEqual(
            [json.loads(line)["login"] for line in lines], ["alice", "bob"]
        )
        for line in lines:
            self.assertTrue(line.startswith('{"login": '), line)

    def test_appendsToExistingFile(self) -> None:
        """An existing file keeps its content; new lines go after it."""
        with open(self.path, "w", encoding="utf-8") as f:
            f.write('{"old": true}\n')
        sink = self.openSink()
        self.assertTaken(sink.deliver(makeNotification(1)))
        lines = self.readLines()
        self.assertEqual(json.loads(lines[0]), {"old": True})
        self.assertEqual(json.loads(lines[1])["id"], "push1")

    def test_nonASCIIWrittenAsUTF8(self) -> None:
        """Non-ASCII text is written as UTF-8, not as \\u escapes."""
        sink = self.openSink()
        self.assertTaken(sink.deliver(makeNotification(1, "/disk/Фото.jpg")))
        with open(self.path, "rb") as f:
            raw = f.read()
        self.assertIn("Фото".encode(), raw)
        self.assertNotIn(b"\\u0424", raw)

    def test_unicodeLineSeparatorsEscaped(self) -> None:
        """U+2028, U+2029 and U+0085 in a value do not split the line."""
        sink = self.openSink()
        name = "/disk/a\u2028b\u2029c\u0085d"
        self.assertTaken(sink.deliver(makeNotification(1, name)))
        with open(self.path, encoding="utf-8", newline="") as f:
            text = f.read()
        self.assertEqual(len(text.splitlines()), 1)
        self.assertEqual(json.loads(text)["children"][0]["text"], name)

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
        """A full disk fails the Deferred with DeliveryFailed and logs one error."""
        sink = self.openSink()
        self.patch(sink, "_write", _failingWrite([]))
        failure = self.failureResultOf(sink.deliver(makeNotification(1)))
        failure.trap(DeliveryFailed)
        self.assertIn("No space left on device", str(failure.value))
        self.assertEqual(failure.value.stanzaId, "push1")
        errors = self.logged(LogLevel.error)
        self.assertEqual(len(errors), 1)
        self.assertIn("push1", errors[0])

    def test_tornLineIsTerminated(self) -> None:
        """After a partly written line, the next line starts on a fresh line."""
        sink = self.openSink()
        self.patch(sink, "_write", _failingWrite([10]))
        self.failureResultOf(sink.deliver(makeNotification(1)), DeliveryFailed)
        self.patch(sink, "_write", os.write)
        self.assertTaken(sink.deliver(makeNotification(2)))
        lines = self.readLines()
        self.assertEqual(len(lines[0]), 10)
        self.assertEqual(json.loads(lines[1])["id"], "push2")
        self.assertEqual(lines[2], "")

    def test_partialWritesAreContinued(self) -> None:
        """A write that takes only part of the line is continued, not torn."""
        sink = self.openSink()
        taken: list[int] = []

        def writeSome(fd: int, data: Any) -> int:
            taken.append(os.write(fd, bytes(data[:100])))
            return taken[-1]

        self.patch(sink, "_write", writeSome)
        self.assertTaken(sink.deliver(makeNotification(1)))
        self.assertGreater(len(taken), 1)
        self.assertEqual(json.loads(self.readLines()[0])["id"], "push1")

    def test_devFull(self) -> None:
        """Writing to /dev/full fails the Deferred instead of raising."""
        if not os.path.exists("/dev/full"):
            self.skipTest("no /dev/full on this system")
        sink = self.openSink("/dev/full")
        failure = self.failureResultOf(sink.deliver(makeNotification(1)))
        failure.trap(DeliveryFailed)
        self.assertIn("No space left on device", str(failure.value))

    def test_deliverAfterClose(self) -> None:
        """Delivering to a closed sink fails with DeliveryFailed."""
        sink = self.openSink()
        self.successResultOf(sink.close())
        failure = self.failureResultOf(sink.deliver(makeNotification(1)))
        failure.trap(DeliveryFailed)
        self.assertIn("is closed", str(failure.value))

    def test_closeTwiceClosesTheDescriptor(self) -> None:
        """Closing twice is harmless; the descriptor is closed (the reader of a
        FIFO sees end of file)."""
        os.mkfifo(self.path)
        reader = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        self.addCleanup(os.close, reader)
        sink = self.openSink()
        self.assertTaken(sink.deliver(makeNotification(1)))
        self.successResultOf(sink.close())
        self.successResultOf(sink.close())
        self.assertEqual(json.loads(readAvailable(reader))["id"], "push1")
        self.assertEqual(os.read(reader, 10), b"")


class ReopenTests(JSONLinesSinkTestCase):
    """A renamed or deleted file is followed by a new one, as logrotate expects."""

    def openSink(self, path: str | None = None, **kwargs: Any) -> JSONLinesSink:
        # The path is checked once per reactor turn: the clock makes turns.
        self.clock = kwargs.setdefault("clock", Clock())
        return super().openSink(path, **kwargs)

    def nextTurn(self) -> None:
        self.clock.advance(0)

    def test_renamedFileIsReopened(self) -> None:
        """After a rename, the next line lands in a new file at the path."""
        sink = self.openSink()
        self.assertTaken(sink.deliver(makeNotification(1)))
        os.rename(self.path, self.path + ".1")
        self.nextTurn()
        self.assertTaken(sink.deliver(makeNotification(2)))
        self.assertTaken(sink.deliver(makeNotification(3)))
        self.assertEqual(
            [json.loads(line)["id"] for line in self.readLines(self.path + ".1")[:-1]],
            ["push1"],
        )
        self.assertEqual(
            [json.loads(line)["id"] for line in self.readLines()[:-1]],
            ["push2", "push3"],
        )
        self.assertEqual(
            self.logged(LogLevel.info),
            [f"Reopened {self.path} (it was renamed or deleted)"],
        )

    def test_replacedFileIsReopened(self) -> None:
        """When another file took the path (logrotate's ``create``), the next
        line lands in it, not in the renamed one."""
        sink = self.openSink()
        self.assertTaken(sink.deliver(makeNotification(1)))
        os.rename(self.path, self.path + ".1")
        with open(self.path, "w", encoding="utf-8") as f:
            f.write('{"new": true}\n')
        self.nextTurn()
        self.assertTaken(sink.deliver(makeNotification(2)))
        self.assertEqual(len(self.readLines(self.path + ".1")), 2)
        lines = self.readLines()
        self.assertEqual(json.loads(lines[0]), {"new": True})
        self.assertEqual(json.loads(lines[1])["id"], "push2")

    def test_deletedFileIsReopened(self) -> None:
        """After a delete, the next line lands in a new file at the path."""
        sink = self.openSink()
        self.assertTaken(sink.deliver(makeNotification(1)))
        os.unlink(self.path)
        self.nextTurn()
        self.assertTaken(sink.deliver(makeNotification(2)))
        self.assertEqual(
            [json.loads(line)["id"] for line in self.readLines()[:-1]], ["push2"]
        )
        self.assertEqual(len(self.logged(LogLevel.info)), 1)

    def test_checkedOncePerTurn(self) -> None:
        """Lines of one reactor turn go to the file open at its first line."""
        sink = self.openSink()
        self.assertTaken(sink.deliver(makeNotification(1)))
        os.rename(self.path, self.path + ".1")
        self.assertTaken(sink.deliver(makeNotification(2)))
        self.nextTurn()
        self.assertTaken(sink.deliver(makeNotification(3)))
        self.assertEqual(
            [json.loads(line)["id"] for line in self.readLines(self.path + ".1")[:-1]],
            ["push1", "push2"],
        )
        self.assertEqual(
            [json.loads(line)["id"] for line in self.readLines()[:-1]], ["push3"]
        )

    def test_unchangedFileIsNotReopened(self) -> None:
        """While the path names the open file, nothing is reopened or logged."""
        sink = self.openSink()
        for number in range(3):
            self.assertTaken(sink.deliver(makeNotification(number)))
        self.assertEqual(self.logged(LogLevel.info), [])
        self.assertEqual(len(self.readLines()), 4)

    def test_reopenOnRequest(self) -> None:
        """reopen() opens the path again at once (creating it), as on SIGHUP."""
        sink = self.openSink()
        self.assertTaken(sink.deliver(makeNotification(1)))
        os.rename(self.path, self.path + ".1")
        sink.reopen()
        self.assertTrue(os.path.exists(self.path))
        self.assertEqual(self.logged(LogLevel.info), [f"Reopened {self.path}"])
        self.assertTaken(sink.deliver(makeNotification(2)))
        self.assertEqual(json.loads(self.readLines()[0])["id"], "push2")
        self.assertEqual(len(self.logged(LogLevel.info)), 1)

    def test_reopenKeepsAppending(self) -> None:
        """reopen() on a file that was not moved appends to the same file."""
        sink = self.openSink()
        self.assertTaken(sink.deliver(makeNotification(1)))
        sink.reopen()
        self.assertTaken(sink.deliver(makeNotification(2)))
        self.assertEqual(
            [json.loads(line)["id"] for line in self.readLines()[:-1]],
            ["push1", "push2"],
        )

    def test_reopenFailureRetriedAtNextPush(self) -> None:
        """If the path cannot be opened again, that push fails with one log
        line and the next push tries again."""
        directory = self.mktemp()
        os.mkdir(directory)
        path = os.path.join(directory, "out.jsonl")
        sink = self.openSink(path)
        self.assertTaken(sink.deliver(makeNotification(1)))
        os.rename(directory, directory + ".old")
        self.nextTurn()
        failure = self.failureResultOf(sink.deliver(makeNotification(2)))
        failure.trap(DeliveryFailed)
        self.assertIn("No such file or directory", str(failure.value))
        self.assertEqual(len(self.logged(LogLevel.error)), 1)
        os.mkdir(directory)
        self.assertTaken(sink.deliver(makeNotification(3)))
        self.assertEqual(
            [json.loads(line)["id"] for line in self.readLines(path)[:-1]], ["push3"]
        )
        self.assertEqual(len(self.logged(LogLevel.error)), 1)

    def test_explicitReopenFailureIsLogged(self) -> None:
        """reopen() that cannot open the path logs one error and does not
        raise; the next push tries again."""
        directory = self.mktemp()
        os.mkdir(directory)
        path = os.path.join(directory, "out.jsonl")
        sink = self.openSink(path)
        os.rename(directory, directory + ".old")
        sink.reopen()
        self.assertEqual(len(self.logged(LogLevel.error)), 1)
        os.mkdir(directory)
        self.assertTaken(sink.deliver(makeNotification(1)))
        self.assertEqual(json.loads(self.readLines(path)[0])["id"], "push1")

    def test_reopenStdoutDoesNothing(self) -> None:
        """reopen() with ``-`` keeps writing to the same standard output."""
        sink, readEnd = self.pipeSink()
        sink.reopen()
        self.assertTaken(sink.deliver(makeNotification(1)))
        self.assertEqual(json.loads(readAvailable(readEnd))["id"], "push1")
        self.assertEqual(self.logged(LogLevel.info), [])

    def test_fifoWithoutReader(self) -> None:
        """A FIFO nothing reads is not waited for: pushes are refused until
        a reader opens it."""
        os.mkfifo(self.path)
        sink = self.openSink()
        self.assertEqual(len(self.logged(LogLevel.warn)), 1)
        failure = self.failureResultOf(sink.deliver(makeNotification(1)))
        failure.trap(DeliveryFailed)
        self.assertIn("nothing is reading it", str(failure.value))
        reader = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        self.addCleanup(os.close, reader)
        self.assertTaken(sink.deliver(makeNotification(2)))
        self.assertEqual(json.loads(readAvailable(reader))["id"], "push2")


class StandardOutputTests(JSONLinesSinkTestCase):
    """``-`` takes standard output for the JSON lines and sends the rest to stderr."""

    def test_stdoutPointedAtStderr(self) -> None:
        """Lines go to the original stdout; whatever else writes to descriptor
        1 afterwards (the log) lands in stderr."""
        stdoutRead, stdoutWrite = self.makePipe()
        stderrRead, stderrWrite = self.makePipe()
        os.set_blocking(stdoutRead, False)
        os.set_blocking(stderrRead, False)
        sink = self.openSink("-", stdoutFD=stdoutWrite, stderrFD=stderrWrite)
        os.write(stdoutWrite, b"a log line\n")
        self.assertTaken(sink.deliver(makeNotification(1)))
        self.assertEqual(readAvailable(stderrRead), b"a log line\n")
        self.assertEqual(readAvailable(stdoutRead), encodeJSONLine(makeNotification(1)))

    def test_pipeModeIsOurOwn(self) -> None:
        """Non-blocking mode on a stdout pipe is set on a descriptor of our
        own: others sharing the pipe keep their blocking mode."""
        readEnd, writeEnd = self.makePipe()
        shared = os.dup(writeEnd)
        self.addCleanup(os.close, shared)
        self.openSink("-", stdoutFD=writeEnd, stderrFD=None)
        self.assertFalse(fcntl.fcntl(shared, fcntl.F_GETFL) & os.O_NONBLOCK)

    def test_sharedModeRestoredOnClose(self) -> None:
        """A socket as stdout is shared; its blocking mode comes back on close."""
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        sink = self.openSink("-", stdoutFD=ours.fileno(), stderrFD=None)
        self.assertTaken(sink.deliver(makeNotification(1)))
        self.assertEqual(json.loads(theirs.recv(65536).decode("utf-8"))["id"], "push1")
        self.successResultOf(sink.close())
        self.assertFalse(fcntl.fcntl(ours.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK)

    def test_regularFileAsStdout(self) -> None:
        """Stdout redirected to a file is written at once, like a path."""
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.addCleanup(os.close, fd)
        sink = self.openSink("-", stdoutFD=fd, stderrFD=None)
        self.assertTaken(sink.deliver(makeNotification(1)))
        self.successResultOf(sink.close())
        self.assertEqual(json.loads(self.readLines()[0])["id"], "push1")

    def test_closedStdout(self) -> None:
        """A closed standard output is a one-line ConfigurationError."""
        fd = os.open(os.devnull, os.O_WRONLY)
        os.close(fd)
        e = self.assertRaises(
            ConfigurationError, JSONLinesSink, "-", stdoutFD=fd, stderrFD=None
        )
        self.assertIn("standard output", str(e))
        self.assertIn("Bad file descriptor", str(e))

    def test_closeLeavesStdoutOpen(self) -> None:
        """close() closes the sink's own descriptor, not descriptor 1 itself."""
        stdoutRead, stdoutWrite = self.makePipe()
        stderrRead, stderrWrite = self.makePipe()
        sink = self.openSink("-", stdoutFD=stdoutWrite, stderrFD=stderrWrite)
        self.successResultOf(sink.close())
        os.set_blocking(stderrRead, False)
        os.write(stdoutWrite, b"still open\n")
        self.assertEqual(readAvailable(stderrRead), b"still open\n")


class NonBlockingTests(JSONLinesSinkTestCase):
    """A stalled reader never blocks: lines wait, in order, up to a bound."""

    def test_pipeThatTakesTheLineCostsNoDeferred(self) -> None:
        """A pipe with room takes the line at once: deliver returns None."""
        sink, readEnd = self.pipeSink()
        self.assertIsNone(sink.deliver(makeNotification(1)))
        self.assertEqual(json.loads(readAvailable(readEnd))["id"], "push1")

    def test_stalledPipeWaitsThenFiresInOrder(self) -> None:
        """Lines wait unfired while the pipe is full, and fire in order, with
        every byte in order, once it is read."""
        sink, readEnd = self.pipeSink(maxBuffer=64 * 1024)
        written, first = self.fillPipe(sink)
        waiting = [first] + [sink.deliver(bigNotification(n)) for n in (901, 902)]
        self.assertEqual([d.called for d in waiting], [False, False, False])
        fired: list[int] = []
        for index, d in enumerate(waiting):
            d.addCallback(lambda _, index=index: fired.append(index))
        reader = PipeReader(readEnd)
        self.addCleanup(lambda: None if reader.ended.called else reader.stop())
        reader.start()

        @defer.inlineCallbacks
        def check() -> Any:
            yield defer.gatherResults(waiting)
            self.assertEqual(fired, [0, 1, 2])
            yield sink.close()
            data = yield reader.ended
            ids = [json.loads(line)["id"] for line in data.splitlines()]
            self.assertEqual(
                ids,
                [n.stanzaId for n in written]
                + [f"push{len(written) + 1}", "push901", "push902"],
            )
            self.assertTrue(data.endswith(b"\n"))

        return check()

    def test_refusedBeyondMaxBuffer(self) -> None:
        """Beyond maxBuffer bytes waiting, deliver fails at once, logged once
        per stall; once the reader catches up, lines are taken again."""
        # Every big line has the same length; the part of the first line
        # still waiting is at most one line, so two more fit and no third.
        line = len(encodeJSONLine(bigNotification(901)))
        sink, readEnd = self.pipeSink(maxBuffer=3 * line)
        written, first = self.fillPipe(sink)
        waiting = [first]
        refused = []
        for number in range(901, 910):
            d = sink.deliver(bigNotification(number))
            assert d is not None
            if d.called:
                refused.append(self.failureResultOf(d))
            else:
                waiting.append(d)
        self.assertEqual((len(waiting), len(refused)), (3, 7))
        for failure in refused:
            failure.trap(DeliveryFailed)
            self.assertRegex(
                str(failure.value),
                r"standard output is not reading; \d+ bytes waiting",
            )
        warnings = self.logged(LogLevel.warn)
        self.assertEqual(len(warnings), 1)
        self.assertIn("standard output is not reading", warnings[0])
        reader = PipeReader(readEnd)
        self.addCleanup(lambda: None if reader.ended.called else reader.stop())
        reader.start()

        @defer.inlineCallbacks
        def check() -> Any:
            yield defer.gatherResults(waiting)
            self.assertEqual(
                self.logged(LogLevel.info),
                ["standard output is reading again; pushes are taken again"],
            )
            yield sink.deliver(bigNotification(999))

        return check()

    def test_bigLineAcceptedWhenNothingWaits(self) -> None:
        """A single line longer than maxBuffer is taken when nothing waits."""
        sink, readEnd = self.pipeSink(maxBuffer=1024)
        self.assertTaken(sink.deliver(bigNotification(1)))
        self.assertEqual(json.loads(readAvailable(readEnd))["id"], "push1")

    def test_brokenPipe(self) -> None:
        """Writing after the reader closed fails with DeliveryFailed (EPIPE)
        and one error line."""
        sink, readEnd = self.pipeSink()
        self.closeFD(readEnd)
        failure = self.failureResultOf(sink.deliver(makeNotification(1)))
        failure.trap(DeliveryFailed)
        self.assertIn(os.strerror(errno.EPIPE), str(failure.value))
        self.assertEqual(len(self.logged(LogLevel.error)), 1)

    def test_waitingLinesFailWhenReaderCloses(self) -> None:
        """Lines waiting when the reader goes away all fail with
        DeliveryFailed, with one error line for all of them."""
        sink, readEnd = self.pipeSink()
        written, first = self.fillPipe(sink)
        waiting = [first, sink.deliver(bigNotification(901))]
        self.closeFD(readEnd)
        results = defer.DeferredList(waiting, consumeErrors=True)

        def check(results: list[tuple[bool, Any]]) -> None:
            for success, failure in results:
                self.assertFalse(success)
                failure.trap(DeliveryFailed)
            errors = self.logged(LogLevel.error)
            self.assertEqual(len(errors), 1, errors)
            self.assertIn("2 waiting line(s)", errors[0])

        return results.addCallback(check)


class DescriptorWriterTests(JSONLinesSinkTestCase):
    """The reactor-driven writer behind the sink: cut-off and cancelled lines."""

    def test_cutOffLineIsTorn(self) -> None:
        """A line partly written when the reader goes away leaves the writer
        torn, so the sink starts the next line on a fresh line."""
        readEnd, writeEnd = self.makePipe()
        os.set_blocking(writeEnd, False)
        failures: list[tuple[str, int]] = []
        writer = DescriptorWriter(
            writeEnd, reactor, "pipe", lambda *args: failures.append(args), object
        )
        chunk = b"x" * (1024 * 1024)
        d = writer.write(chunk)
        self.assertGreater(writer.pending, 0)
        self.assertLess(writer.pending, len(chunk))
        self.assertFalse(writer.torn)
        self.closeFD(readEnd)

        def check(results: list[tuple[bool, Any]]) -> None:
            [(success, failure)] = results
            self.assertFalse(success)
            failure.trap(WriteFailed)
            self.assertTrue(writer.torn)
            self.assertEqual(writer.pending, 0)
            self.assertEqual(len(failures), 1)

        return defer.DeferredList([d], consumeErrors=True).addCallback(check)

    def test_cancelDropsAWaitingLine(self) -> None:
        """Cancelling a line none of which was written drops it; cancelling
        a partly written one still finishes it, so the output stays whole."""
        sink, readEnd = self.pipeSink()
        written, first = self.fillPipe(sink)
        second = sink.deliver(bigNotification(901))
        third = sink.deliver(bigNotification(902))
        second.cancel()
        self.failureResultOf(second, defer.CancelledError)
        first.cancel()
        self.failureResultOf(first, defer.CancelledError)
        reader = PipeReader(readEnd)
        self.addCleanup(lambda: None if reader.ended.called else reader.stop())
        reader.start()

        @defer.inlineCallbacks
        def check() -> Any:
            yield third
            yield sink.close()
            data = yield reader.ended
            ids = [json.loads(line)["id"] for line in data.splitlines()]
            self.assertEqual(
                ids,
                [n.stanzaId for n in written] + [f"push{len(written) + 1}", "push902"],
            )

        return check()


class CloseTests(JSONLinesSinkTestCase):
    """close() waits a bounded time for a slow reader, then drops what is left."""

    def test_closeDropsAfterGrace(self) -> None:
        """With a stalled reader, close fires after closeGrace seconds, fails
        the waiting lines, logs how many, and closes the descriptor."""
        clock = task.Clock()
        sink, readEnd = self.pipeSink(clock=clock, closeGrace=2.0)
        written, first = self.fillPipe(sink)
        waiting = [first, sink.deliver(bigNotification(901))]
        closed = sink.close()
        clock.advance(1.9)
        self.assertNoResult(closed)
        self.assertEqual([d.called for d in waiting], [False, False])
        clock.advance(0.1)
        self.successResultOf(closed)
        for d in waiting:
            failure = self.failureResultOf(d)
            failure.trap(DeliveryFailed)
            self.assertIn("closed before the line was written", str(failure.value))
        warnings = self.logged(LogLevel.warn)
        self.assertEqual(len(warnings), 1)
        self.assertIn("2 line(s) were not written within 2.0 seconds", warnings[0])
        # The descriptor is closed: the reader gets what was written, then
        # end of file.
        os.set_blocking(readEnd, True)
        data = b""
        while chunk := os.read(readEnd, 65536):
            data += chunk
        complete = data.split(b"\n")[:-1]
        self.assertEqual(
            [json.loads(line)["id"] for line in complete],
            [n.stanzaId for n in written],
        )

    def test_closeFinishesWhenReaderCatchesUp(self) -> None:
        """If the reader catches up within the grace, close fires once every
        waiting line is written, without waiting for the grace."""
        clock = task.Clock()
        sink, readEnd = self.pipeSink(clock=clock)
        written, first = self.fillPipe(sink)
        closed = sink.close()
        self.assertNoResult(closed)
        self.assertFalse(first.called)
        reader = PipeReader(readEnd)
        self.addCleanup(lambda: None if reader.ended.called else reader.stop())
        reader.start()

        @defer.inlineCallbacks
        def check() -> Any:
            yield closed
            self.assertIsNone(self.successResultOf(first))
            self.assertEqual(clock.getDelayedCalls(), [])
            data = yield reader.ended
            self.assertEqual(len(data.splitlines()), len(written) + 1)

        return check()

    def test_closeWithNothingWaiting(self) -> None:
        """With nothing waiting, close fires at once."""
        sink, readEnd = self.pipeSink(clock=task.Clock())
        self.assertTaken(sink.deliver(makeNotification(1)))
        self.successResultOf(sink.close())
        self.assertEqual(json.loads(readAvailable(readEnd))["id"], "push1")


def _failingWrite(accept: list[int]) -> Any:
    """
    A stand-in for ``os.write`` that takes the next count of bytes from
    ``accept`` per call, then fails as a full disk.
    """

    def write(fd: int, data: Any) -> int:
        if accept:
            return os.write(fd, bytes(data[: accept.pop(0)]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return write


def referenceLine(notification: Notification) -> bytes:
    """The line as json.dumps writes it: what encodeJSONLine must give."""
    text = json.dumps(notification.toJSON(), ensure_ascii=False)
    for char in "\u0085\u2028\u2029":
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text.encode("utf-8") + b"\n"


_anyText = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=8
)


@st.composite
def notifications(draw: Any) -> Notification:
    """Notifications with any text in every field, and now and then a child."""
    children: tuple[PushChild, ...] = ()
    if draw(st.booleans()):
        child = parseXml(b"<op xmlns='yandex:push:disk' a='1'>x<b/></op>")
        children = (PushChild.fromElement(child),)
    return Notification(
        stanzaId=draw(_anyText),
        sender=draw(_anyText),
        recipient=draw(_anyText),
        receivedAt=draw(
            st.one_of(st.floats(), st.integers(-(2**60), 2**60), st.just(1.5))
        ),
        element=draw(_anyText),
        attributes=draw(st.dictionaries(_anyText, _anyText, max_size=3)),
        children=children,
        rawXml=draw(_anyText),
        login=draw(_anyText),
    )


class EncodeJSONLineTests(SynchronousTestCase):
    """encodeJSONLine writes, byte for byte, what json.dumps writes."""

    @settings(max_examples=500, deadline=None)
    @given(notifications())
    def test_sameAsJSONDumps(self, notification: Notification) -> None:
        """Any text, any number, with or without children: the same line."""
        self.assertEqual(encodeJSONLine(notification), referenceLine(notification))

    def test_fieldsOfAnotherType(self) -> None:
        """A field that is not text (built by hand) is written as json would."""
        notification = Notification(
            "i",
            None,
            "r",
            1.0,
            "query",
            {"n": 1},
            (),
            "<iq/>",  # type: ignore[arg-type]
        )
        self.assertEqual(encodeJSONLine(notification), referenceLine(notification))

    def test_receivedPush(self) -> None:
        """A push as received, its raw XML serialized on the way."""
        notification = makeNotification(7, '/disk/\u2028"q"\\')
        self.assertEqual(encodeJSONLine(notification), referenceLine(notification))
