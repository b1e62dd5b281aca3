"""
Tests for yadiskpush.delivery.sinks.execute: real child processes on the real reactor.

The tests never sleep. A run that must stay in progress blocks reading a
line from a FIFO the test holds open, and the test writes that line when
the run may end. Everything else waits for the sink's own log events, and
the class timeout bounds every wait.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable, Generator
from typing import Any, cast

from twisted.internet import defer, reactor
from twisted.logger import ILogObserver, LogEvent, Logger, LogLevel, formatEvent
from twisted.trial.unittest import TestCase
from wokkel.generic import parseXml

from yadiskpush.delivery.sinks import DeliveryFailed, ExecSink, Sink, encodeJSONLine
from yadiskpush.delivery.sinks.execute import childEnvironment, environmentName
from yadiskpush.notification import Notification

# Writes the child's environment as JSON to the file named by $1.
DUMP_ENV = (
    '"$PYTHON" -c "import json, os, sys; '
    "json.dump(dict(os.environ), open(sys.argv[1], 'w'))\""
)

# Records one run: its stdin and YADISKPUSH_COUNT, in files named by its pid;
# then waits for a line on the gate FIFO.
GATED_RUN = (
    'f="$DIR/run.$$"; cat > "$f.json"; echo "$YADISKPUSH_COUNT" > "$f.count"; '
    'read -r line < "$DIR/gate"'
)


def makeNotification(number: int) -> Notification:
    """A push as the server sends it, numbered ``number``."""
    xml = (
        f"<iq type='set' id='push{number}' from='push.xmpp.yandex.ru' "
        f"to='user@ya.ru/yadiskpush'><query xmlns='yandex:push:disk' "
        f"type='disk' revision='{number}' new-revision='{number + 1}'>"
        f"<path>/disk/f{number}</path></query></iq>"
    )
    return Notification.fromStanza(parseXml(xml.encode("utf-8")), 1700000000.25)


def isRunEnd(event: LogEvent) -> bool:
    """Whether ``event`` is the line logged when a run ends."""
    return "timedOut" in event


class LogRecorder:
    """
    A log observer that keeps events and lets a test wait for some.

    Waits fire on the next reactor turn, so that test code never runs inside
    the sink's logging call, and sees the sink as it is after the event.
    """

    def __init__(self) -> None:
        self.events: list[LogEvent] = []
        self._waits: list[
            tuple[Callable[[LogEvent], bool], int, defer.Deferred[list[LogEvent]]]
        ] = []

    def __call__(self, event: LogEvent) -> None:
        self.events.append(event)
        for wait in list(self._waits):
            predicate, count, d = wait
            matching = self.matching(predicate)
            if len(matching) >= count:
                self._waits.remove(wait)
                reactor.callLater(0, d.callback, matching)

    def matching(self, predicate: Callable[[LogEvent], bool]) -> list[LogEvent]:
        return [e for e in self.events if predicate(e)]

    def waitFor(
        self, predicate: Callable[[LogEvent], bool], count: int = 1
    ) -> defer.Deferred[list[LogEvent]]:
        """Fire with the matching events once ``count`` have been logged."""
        matching = self.matching(predicate)
        if len(matching) >= count:
            return defer.succeed(matching)
        d: defer.Deferred[list[LogEvent]] = defer.Deferred()
        self._waits.append((predicate, count, d))
        return d

    def texts(self) -> list[str]:
        return [formatEvent(e) for e in self.events]


class ExecSinkTests(TestCase):
    """ExecSink runs one command at a time, coalesces, and survives failures."""

    timeout = 30

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.mkdir(self.dir)
        self.environ = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "DIR": self.dir,
            "PYTHON": sys.executable,
        }
        self.recorder = LogRecorder()

    def makeSink(
        self, command: str, timeout: float | None = 10, **kwargs: Any
    ) -> ExecSink:
        kwargs.setdefault("environ", self.environ)
        sink = ExecSink(
            command,
            timeout,
            log=Logger(observer=cast(ILogObserver, self.recorder)),
            **kwargs,
        )
        self.addCleanup(sink.close)
        return sink

    def openGate(self) -> int:
        """
        Make the FIFO that gated runs read a line from; return its write end.

        The test keeps both ends open, so a child's open never blocks and a
        line written before the child reads it waits in the pipe.
        """
        gate = os.path.join(self.dir, "gate")
        os.mkfifo(gate)
        readEnd = os.open(gate, os.O_RDONLY | os.O_NONBLOCK)
        writeEnd = os.open(gate, os.O_WRONLY | os.O_NONBLOCK)
        self.addCleanup(os.close, readEnd)
        self.addCleanup(os.close, writeEnd)
        return writeEnd

    def recordedRuns(self) -> list[tuple[int, list[dict[str, Any]]]]:
        """The (YADISKPUSH_COUNT, stdin objects) of each gated run."""
        runs = []
        for name in sorted(os.listdir(self.dir)):
            if name.startswith("run.") and name.endswith(".json"):
                base = os.path.join(self.dir, name[: -len(".json")])
                with open(base + ".count") as f:
                    count = int(f.read())
                with open(base + ".json", encoding="utf-8") as f:
                    objects = [json.loads(line) for line in f]
                runs.append((count, objects))
        return sorted(runs, key=lambda run: run[0])

    def readJSON(self, name: str) -> Any:
        with open(os.path.join(self.dir, name), encoding="utf-8") as f:
            return json.load(f)

    def test_isASink(self) -> None:
        """ExecSink provides the Sink protocol."""
        self.assertIsInstance(self.makeSink("true"), Sink)

    @defer.inlineCallbacks
    def test_stdinAndEnvironment(self) -> Generator[Any, Any, None]:
        """A run reads the notification's JSON line and sees the documented
        variables, the parent's variables, and no YADISKPUSH_TOKEN."""
        self.environ["YADISKPUSH_TOKEN"] = "y0_secret"
        self.environ["YADISKPUSH_LOGIN"] = "user"
        self.environ["KEPT"] = "kept"
        sink = self.makeSink(f'cat > "$DIR/stdin"; {DUMP_ENV} "$DIR/env.json"')
        notification = makeNotification(1)
        result = sink.deliver(notification)
        self.assertIsNone(self.successResultOf(result))
        yield self.recorder.waitFor(isRunEnd)
        with open(os.path.join(self.dir, "stdin"), "rb") as f:
            self.assertEqual(f.read(), encodeJSONLine(notification))
        env = self.readJSON("env.json")
        self.assertNotIn("YADISKPUSH_TOKEN", env)
        self.assertNotIn("YADISKPUSH_LOGIN", env)
        self.assertEqual(env["KEPT"], "kept")
        self.assertEqual(env["YADISKPUSH_COUNT"], "1")
        self.assertEqual(env["YADISKPUSH_ID"], "push1")
        self.assertEqual(env["YADISKPUSH_FROM"], "push.xmpp.yandex.ru")
        self.assertEqual(env["YADISKPUSH_TO"], "user@ya.ru/yadiskpush")
        self.assertEqual(env["YADISKPUSH_ELEMENT"], "query")
        self.assertEqual(float(env["YADISKPUSH_RECEIVED_AT"]), 1700000000.25)
        self.assertEqual(env["YADISKPUSH_ATTR_TYPE"], "disk")
        self.assertEqual(env["YADISKPUSH_ATTR_REVISION"], "1")
        self.assertEqual(env["YADISKPUSH_ATTR_NEW_REVISION"], "2")

    @defer.inlineCallbacks
    def test_tokenNotInheritedFromProcessEnvironment(
        self,
    ) -> Generator[Any, Any, None]:
        """With the default environ, the child gets os.environ minus the token."""
        for name, value in [
            ("YADISKPUSH_TOKEN", "y0_secret"),
            ("SINKTEST_DIR", self.dir),
            ("PYTHON", sys.executable),
        ]:
            self.addCleanup(self.restoreVariable, name, os.environ.get(name))
            os.environ[name] = value
        sink = self.makeSink(
            f'cat > /dev/null; {DUMP_ENV} "$SINKTEST_DIR/env.json"', environ=None
        )
        sink.deliver(makeNotification(1))
        yield self.recorder.waitFor(isRunEnd)
        env = self.readJSON("env.json")
        self.assertNotIn("YADISKPUSH_TOKEN", env)
        self.assertEqual(env["SINKTEST_DIR"], self.dir)
        self.assertEqual(env["YADISKPUSH_ID"], "push1")

    @staticmethod
    def restoreVariable(name: str, value: str | None) -> None:
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value

    @defer.inlineCallbacks
    def test_coalescing(self) -> Generator[Any, Any, None]:
        """A hundred pushes during one run cause exactly one follow-up run,
        which reads all hundred, oldest first."""
        gate = self.openGate()
        sink = self.makeSink(GATED_RUN, timeout=None)
        self.successResultOf(sink.deliver(makeNotification(0)))
        for number in range(1, 101):
            self.successResultOf(sink.deliver(makeNotification(number)))
        self.assertEqual(sink.runs, 1)

        os.write(gate, b"go\n")
        yield self.recorder.waitFor(isRunEnd)
        self.assertEqual(sink.runs, 2)
        os.write(gate, b"go\n")
        yield self.recorder.waitFor(isRunEnd, 2)
        yield sink.close()

        self.assertEqual(sink.runs, 2)
        runs = self.recordedRuns()
        self.assertEqual([count for count, _ in runs], [1, 100])
        self.assertEqual([o["id"] for o in runs[0][1]], ["push0"])
        self.assertEqual(
            [o["id"] for o in runs[1][1]], [f"push{n}" for n in range(1, 101)]
        )
        ends = self.recorder.matching(isRunEnd)
        self.assertEqual([e["count"] for e in ends], [1, 100])
        self.assertEqual([e["id"] for e in ends], ["push0", "push100"])

    @defer.inlineCallbacks
    def test_failingCommand(self) -> Generator[Any, Any, None]:
        """A command exiting 3 is logged with status 3; the next push still runs."""
        sink = self.makeSink("cat > /dev/null; exit 3")
        self.successResultOf(sink.deliver(makeNotification(1)))
        (end,) = yield self.recorder.waitFor(isRunEnd)
        self.assertEqual(end["exitStatus"], 3)
        self.assertEqual(end["log_level"], LogLevel.warn)
        self.assertFalse(end["timedOut"])
        self.assertIn("exit status 3", formatEvent(end))

        self.successResultOf(sink.deliver(makeNotification(2)))
        ends = yield self.recorder.waitFor(isRunEnd, 2)
        self.assertEqual(ends[1]["exitStatus"], 3)
        self.assertEqual(sink.runs, 2)

    @defer.inlineCallbacks
    def test_successLoggedAtInfo(self) -> Generator[Any, Any, None]:
        """A command exiting 0 is logged at info with its duration and count."""
        sink = self.makeSink("cat > /dev/null")
        sink.deliver(makeNotification(1))
        (end,) = yield self.recorder.waitFor(isRunEnd)
        self.assertEqual(end["log_level"], LogLevel.info)
        self.assertEqual(end["exitStatus"], 0)
        self.assertEqual(end["count"], 1)
        self.assertGreaterEqual(end["duration"], 0)

    @defer.inlineCallbacks
    def test_timeoutStopsTheCommandAndItsChildren(self) -> Generator[Any, Any, None]:
        """A run past its timeout is stopped with SIGTERM, the programs it
        started included, and logged; the next push still runs."""
        sink = self.makeSink(
            'cat > /dev/null; if [ ! -e "$DIR/quick" ]; then sleep 30; fi',
            timeout=0.5,
        )
        sink.deliver(makeNotification(1))
        (end,) = yield self.recorder.waitFor(isRunEnd)
        self.assertTrue(end["timedOut"])
        self.assertEqual(end["signal"], signal.SIGTERM)
        self.assertEqual(end["log_level"], LogLevel.warn)
        self.assertIn("timed out", formatEvent(end))
        self.assertLess(end["duration"], 10)

        open(os.path.join(self.dir, "quick"), "w").close()
        sink.deliver(makeNotification(2))
        ends = yield self.recorder.waitFor(isRunEnd, 2)
        self.assertEqual(ends[1]["exitStatus"], 0)
        yield sink.close()
        # The sleep died with the shell: nothing held the output open.
        self.assertFalse(
            [t for t in self.recorder.texts() if "still holds its output" in t]
        )

    @defer.inlineCallbacks
    def test_timeoutEscalatesToKill(self) -> Generator[Any, Any, None]:
        """A command ignoring SIGTERM is killed with SIGKILL after the grace."""
        sink = self.makeSink(
            "trap '' TERM; cat > /dev/null; sleep 30", timeout=0.5, killGrace=0.5
        )
        sink.deliver(makeNotification(1))
        (end,) = yield self.recorder.waitFor(isRunEnd)
        self.assertTrue(end["timedOut"])
        self.assertEqual(end["signal"], signal.SIGKILL)
        self.assertTrue([t for t in self.recorder.texts() if "ignored SIGTERM" in t])
        yield sink.close()

    @defer.inlineCallbacks
    def test_outputLogged(self) -> Generator[Any, Any, None]:
        """Standard output is logged at info, standard error at warn, by line."""
        sink = self.makeSink(
            "cat > /dev/null; echo hello; echo oops >&2; printf 'no newline'"
        )
        sink.deliver(makeNotification(1))
        yield self.recorder.waitFor(isRunEnd)
        yield sink.close()
        lines = {e["line"]: e for e in self.recorder.events if "line" in e}
        self.assertEqual(set(lines), {"hello", "oops", "no newline"})
        self.assertEqual(lines["hello"]["log_level"], LogLevel.info)
        self.assertEqual(lines["no newline"]["log_level"], LogLevel.info)
        self.assertEqual(lines["oops"]["log_level"], LogLevel.warn)

    @defer.inlineCallbacks
    def test_outputBounded(self) -> Generator[Any, Any, None]:
        """Long lines are cut and lines past the per-run limit are only counted."""
        sink = self.makeSink(
            "cat > /dev/null; head -c 100000 /dev/zero | tr '\\0' a; echo; "
            'i=0; while [ "$i" -lt 20 ]; do echo "$i"; i=$((i + 1)); done'
        )
        sink.maxLineLength = 100
        sink.maxLoggedLines = 5
        sink.deliver(makeNotification(1))
        yield self.recorder.waitFor(isRunEnd)
        yield sink.close()
        lines = [e["line"] for e in self.recorder.events if "line" in e]
        self.assertEqual(lines, ["a" * 100 + " [truncated]", "0", "1", "2", "3"])
        (suppressed,) = self.recorder.matching(lambda e: "suppressed" in e)
        self.assertEqual(suppressed["suppressed"], 16)

    @defer.inlineCallbacks
    def test_closeRunsTheFollowUp(self) -> Generator[Any, Any, None]:
        """close() waits for the current run, then runs the queued pushes."""
        gate = self.openGate()
        sink = self.makeSink(GATED_RUN, timeout=None)
        sink.deliver(makeNotification(0))
        sink.deliver(makeNotification(1))
        sink.deliver(makeNotification(2))
        closed = sink.close()
        self.assertNoResult(closed)
        self.failureResultOf(sink.deliver(makeNotification(3)), DeliveryFailed)

        os.write(gate, b"go\ngo\n")
        yield closed
        self.assertEqual(sink.runs, 2)
        runs = self.recordedRuns()
        self.assertEqual([count for count, _ in runs], [1, 2])
        self.assertEqual([o["id"] for o in runs[1][1]], ["push1", "push2"])

    @defer.inlineCallbacks
    def test_queueFull(self) -> Generator[Any, Any, None]:
        """Past maxPending queued pushes, deliver fails and logs an error."""
        gate = self.openGate()
        sink = self.makeSink(GATED_RUN, timeout=None, maxPending=2)
        for number in range(3):
            self.successResultOf(sink.deliver(makeNotification(number)))
        failure = self.failureResultOf(
            sink.deliver(makeNotification(3)), DeliveryFailed
        )
        self.assertEqual(failure.value.stanzaId, "push3")
        self.assertTrue(
            [e for e in self.recorder.events if e["log_level"] == LogLevel.error]
        )
        os.write(gate, b"go\ngo\n")
        yield sink.close()
        self.assertEqual([count for count, _ in self.recordedRuns()], [1, 2])

    @defer.inlineCallbacks
    def test_backgroundProcessDoesNotBlock(self) -> Generator[Any, Any, None]:
        """A process left running with the output open neither delays the
        next run nor hangs close()."""
        sink = self.makeSink('cat > /dev/null; sleep 30 & echo "$!" > "$DIR/bg"')
        sink.pipeGrace = 0.2
        sink.deliver(makeNotification(1))
        yield self.recorder.waitFor(isRunEnd)
        with open(os.path.join(self.dir, "bg")) as f:
            background = int(f.read())
        self.addCleanup(os.kill, background, signal.SIGKILL)
        sink.deliver(makeNotification(2))
        yield self.recorder.waitFor(isRunEnd, 2)
        yield sink.close()
        self.assertTrue(
            [t for t in self.recorder.texts() if "still holds its output" in t]
        )

    def test_deliverAfterClose(self) -> None:
        """Delivering to a closed sink fails with DeliveryFailed."""
        sink = self.makeSink("true")
        self.successResultOf(sink.close())
        self.failureResultOf(sink.deliver(makeNotification(1)), DeliveryFailed)

    def test_emptyCommandRefused(self) -> None:
        """An empty command is a ValueError at construction."""
        self.assertRaises(ValueError, ExecSink, "  ", None)


class EnvironmentTests(TestCase):
    """The child environment is built explicitly from the parent's."""

    def test_attributeNames(self) -> None:
        """Attribute names are upper-cased, non-alphanumerics become ``_``."""
        self.assertEqual(
            environmentName("new-revision"), "YADISKPUSH_ATTR_NEW_REVISION"
        )
        self.assertEqual(environmentName("{urn:x}a.b"), "YADISKPUSH_ATTR__URN_X_A_B")
        self.assertEqual(environmentName("Фото"), "YADISKPUSH_ATTR_____")

    def test_lastNotificationDescribed(self) -> None:
        """For a coalesced run the variables describe the last notification."""
        env = childEnvironment(
            [makeNotification(1), makeNotification(2)],
            {"HOME": "/home/u", "YADISKPUSH_TOKEN": "secret"},
        )
        self.assertEqual(env["HOME"], "/home/u")
        self.assertEqual(env["YADISKPUSH_COUNT"], "2")
        self.assertEqual(env["YADISKPUSH_ID"], "push2")
        self.assertEqual(env["YADISKPUSH_ATTR_REVISION"], "2")
        self.assertNotIn("YADISKPUSH_TOKEN", env)
