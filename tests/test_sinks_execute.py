"""
Tests for yadiskpush.delivery.sinks.execute.

:class:`ExecSinkTests` run real child processes on the real reactor, with a
real journal. The tests never sleep. A run that must stay in progress
blocks reading a line from a FIFO the test holds open, and the test writes
that line when the run may end. Everything else waits for the sink's own
log events, and the class timeout bounds every wait.

:class:`ExecSinkClockTests` drive the timers (spawn retries, the close
grace) on a ``task.Clock``, with a fake process reactor and a journal whose
Deferreds the test fires.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any, cast

from twisted.internet import defer, error, reactor, task
from twisted.logger import ILogObserver, LogEvent, Logger, LogLevel, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from wokkel.generic import parseXml

from yadiskpush.delivery.journal import Entry, Journal, JournalError
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


#: The account of the tests' notifications unless they name another.
LOGIN = "user"


def makeNotification(number: int, extra: str = "", login: str = LOGIN) -> Notification:
    """A push as the server sends it to ``login``, numbered ``number``
    (``extra``: more attributes of its payload, as XML)."""
    xml = (
        f"<iq type='set' id='push{number}' from='push.xmpp.yandex.ru' "
        f"to='{login or 'user'}@ya.ru/yadiskpush'><query xmlns='yandex:push:disk' "
        f"type='disk' revision='{number}' new-revision='{number + 1}' {extra}>"
        f"<path>/disk/f{number}</path></query></iq>"
    )
    return Notification.fromStanza(parseXml(xml.encode("utf-8")), 1700000000.25, login)


def lastOf(notification: Notification) -> dict[str, Any]:
    """What childEnvironment reads: the notification's JSON form."""
    return json.loads(encodeJSONLine(notification))


def isRunning(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(b")") + 2 :].split()[0] not in b"ZX"


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
    """ExecSink runs one command at a time, coalesces, journals every acked
    push until a run has consumed it, and survives failures."""

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
        self.journalPath = Path(self.dir) / "journal.sqlite3"

    def makeSink(
        self, command: str, timeout: float | None = 10, **kwargs: Any
    ) -> ExecSink:
        """A sink on the test's journal file; closed on cleanup."""
        kwargs.setdefault("environ", self.environ)
        kwargs.setdefault("journal", Journal(self.journalPath, reactor))
        # Runs at once, as before the debounce: test_exec_debounce covers it.
        kwargs.setdefault("debounce", 0)
        sink = ExecSink(
            command,
            timeout,
            log=Logger(observer=cast(ILogObserver, self.recorder)),
            **kwargs,
        )
        self.addCleanup(sink.close)
        return sink

    @defer.inlineCallbacks
    def journaled(self) -> Generator[Any, Any, list[Entry]]:
        """The entries in the test's journal file (the sink must be closed)."""
        journal = Journal(self.journalPath, reactor)
        entries = yield journal.open()
        yield journal.close()
        return entries

    def openGate(self, name: str = "gate") -> int:
        """
        Make the FIFO ``name`` that gated runs read a line from; return its
        write end.

        The test keeps both ends open, so a child's open never blocks and a
        line written before the child reads it waits in the pipe.
        """
        gate = os.path.join(self.dir, name)
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
        self.environ["YADISKPUSH_LOGIN"] = "inherited"
        self.environ["YADISKPUSH_OTHER"] = "inherited"
        self.environ["KEPT"] = "kept"
        sink = self.makeSink(f'cat > "$DIR/stdin"; {DUMP_ENV} "$DIR/env.json"')
        notification = makeNotification(1)
        self.assertIsNone((yield sink.deliver(notification)))
        yield self.recorder.waitFor(isRunEnd)
        with open(os.path.join(self.dir, "stdin"), "rb") as f:
            self.assertEqual(f.read(), encodeJSONLine(notification))
        env = self.readJSON("env.json")
        self.assertNotIn("YADISKPUSH_TOKEN", env)
        self.assertNotIn("YADISKPUSH_OTHER", env)
        self.assertEqual(env["KEPT"], "kept")
        self.assertEqual(env["YADISKPUSH_LOGIN"], LOGIN)
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
        yield sink.deliver(makeNotification(0))
        yield defer.gatherResults(
            [sink.deliver(makeNotification(number)) for number in range(1, 101)]
        )
        self.assertEqual(sink.runs, 1)
        # One commit for the first push, one for the hundred of one turn.
        self.assertEqual(sink.journal.commits, 2)

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
        yield sink.deliver(makeNotification(1))
        (end,) = yield self.recorder.waitFor(isRunEnd)
        self.assertEqual(end["exitStatus"], 3)
        self.assertEqual(end["log_level"], LogLevel.warn)
        self.assertFalse(end["timedOut"])
        self.assertIn("exit status 3", formatEvent(end))

        yield sink.deliver(makeNotification(2))
        ends = yield self.recorder.waitFor(isRunEnd, 2)
        self.assertEqual(ends[1]["exitStatus"], 3)
        self.assertEqual(sink.runs, 2)
        # Not retried: both runs' entries were consumed.
        yield sink.close()
        self.assertEqual((yield self.journaled()), [])

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
    def test_closeKeepsTheFollowUpJournaled(self) -> Generator[Any, Any, None]:
        """close() lets the current run finish but starts no follow-up: the
        pushes that were waiting stay journaled, and the count is logged."""
        gate = self.openGate()
        sink = self.makeSink(GATED_RUN, timeout=None)
        yield sink.deliver(makeNotification(0))
        yield defer.gatherResults([sink.deliver(makeNotification(n)) for n in (1, 2)])
        closed = sink.close()
        self.assertNoResult(closed)
        self.failureResultOf(sink.deliver(makeNotification(3)), DeliveryFailed)

        os.write(gate, b"go\n")
        yield closed
        self.assertEqual(sink.runs, 1)
        self.assertEqual([count for count, _ in self.recordedRuns()], [1])
        entries = yield self.journaled()
        self.assertEqual(
            [entry.line for entry in entries],
            [encodeJSONLine(makeNotification(n)) for n in (1, 2)],
        )
        self.assertIn(
            "2 notification(s) stay journaled; they go to the command at the "
            "next start",
            self.recorder.texts(),
        )

    @defer.inlineCallbacks
    def test_replayAfterRestart(self) -> Generator[Any, Any, None]:
        """Entries an earlier process left are run first, in one run, with
        stdin byte-identical to a direct run, and then leave the journal."""
        notifications = [makeNotification(n) for n in range(3)]
        journal = Journal(self.journalPath, reactor)
        yield journal.open()
        for notification in notifications:
            yield journal.append(encodeJSONLine(notification), LOGIN)
        yield journal.close()

        sink = self.makeSink(f'cat > "$DIR/stdin"; {DUMP_ENV} "$DIR/env.json"')
        yield sink.start()
        (end,) = yield self.recorder.waitFor(isRunEnd)
        self.assertIn(
            "Replaying 3 notification(s) journaled before a restart, for 1 account(s)",
            self.recorder.texts(),
        )
        self.assertEqual(end["count"], 3)
        with open(os.path.join(self.dir, "stdin"), "rb") as f:
            self.assertEqual(
                f.read(), b"".join(encodeJSONLine(n) for n in notifications)
            )
        env = self.readJSON("env.json")
        self.assertEqual(env["YADISKPUSH_LOGIN"], LOGIN)
        self.assertEqual(env["YADISKPUSH_COUNT"], "3")
        self.assertEqual(env["YADISKPUSH_ID"], "push2")
        self.assertEqual(env["YADISKPUSH_ATTR_REVISION"], "2")
        self.assertEqual(float(env["YADISKPUSH_RECEIVED_AT"]), 1700000000.25)
        yield sink.close()
        self.assertEqual((yield self.journaled()), [])

    @defer.inlineCallbacks
    def test_boundedClose(self) -> Generator[Any, Any, None]:
        """close() stops a run still going after closeGrace (its process
        group included) and keeps its pushes journaled for the next start."""
        sink = self.makeSink(
            'cat > /dev/null; sleep 30 & echo "$!" > "$DIR/bg"; wait',
            timeout=None,
            closeGrace=0.2,
            killGrace=5,
        )
        yield sink.deliver(makeNotification(1))
        yield self.recorder.waitFor(lambda e: "Running the command" in formatEvent(e))
        yield sink.close()
        (end,) = self.recorder.matching(isRunEnd)
        self.assertTrue(end["stoppedByShutdown"])
        self.assertEqual(end["signal"], signal.SIGTERM)
        self.assertIn("stay journaled for the next start", formatEvent(end))
        entries = yield self.journaled()
        self.assertEqual(
            [entry.line for entry in entries], [encodeJSONLine(makeNotification(1))]
        )
        # The background sleep was in the group, and is gone too (at most
        # a zombie, which its new parent may take a while to reap).
        with open(os.path.join(self.dir, "bg")) as f:
            background = int(f.read())
        self.assertFalse(isRunning(background))

    @defer.inlineCallbacks
    def test_oversizedAttributeOnlyOnStdin(self) -> Generator[Any, Any, None]:
        """A 200 KB attribute is left out of the environment, named in the
        log, and still on standard input; the command starts."""
        big = "x" * 200_000
        notification = makeNotification(1, f"blob='{big}'")
        sink = self.makeSink(f'cat > "$DIR/stdin"; {DUMP_ENV} "$DIR/env.json"')
        yield sink.deliver(notification)
        (end,) = yield self.recorder.waitFor(isRunEnd)
        self.assertEqual(end["exitStatus"], 0)
        env = self.readJSON("env.json")
        self.assertNotIn("YADISKPUSH_ATTR_BLOB", env)
        self.assertEqual(env["YADISKPUSH_ATTR_REVISION"], "1")
        with open(os.path.join(self.dir, "stdin"), "rb") as f:
            stdin = f.read()
        self.assertEqual(stdin, encodeJSONLine(notification))
        self.assertEqual(json.loads(stdin)["attributes"]["blob"], big)
        (leftOut,) = self.recorder.matching(lambda e: "leftOut" in e)
        self.assertEqual(leftOut["leftOut"], ["YADISKPUSH_ATTR_BLOB"])
        self.assertEqual(leftOut["log_level"], LogLevel.warn)

    @defer.inlineCallbacks
    def test_queueFull(self) -> Generator[Any, Any, None]:
        """Past maxPending journaled and unconsumed pushes (the running
        one included), deliver fails and logs an error."""
        gate = self.openGate()
        sink = self.makeSink(GATED_RUN, timeout=None, maxPending=2)
        yield sink.deliver(makeNotification(0))
        yield sink.deliver(makeNotification(1))
        failure = self.failureResultOf(
            sink.deliver(makeNotification(2)), DeliveryFailed
        )
        self.assertEqual(failure.value.stanzaId, "push2")
        self.assertTrue(
            [e for e in self.recorder.events if e["log_level"] == LogLevel.error]
        )
        # Once the first run is consumed, there is room again.
        os.write(gate, b"go\n")
        yield self.recorder.waitFor(isRunEnd)
        yield sink.deliver(makeNotification(3))
        os.write(gate, b"go\ngo\n")
        yield self.recorder.waitFor(isRunEnd, 3)
        yield sink.close()
        self.assertEqual(
            [[o["id"] for o in objects] for _, objects in self.recordedRuns()],
            [["push0"], ["push1"], ["push3"]],
        )

    @defer.inlineCallbacks
    def test_backgroundProcessDoesNotBlock(self) -> Generator[Any, Any, None]:
        """A process left running with the output open neither delays the
        next run nor hangs close()."""
        sink = self.makeSink('cat > /dev/null; sleep 30 & echo "$!" > "$DIR/bg"')
        sink.pipeGrace = 0.2
        yield sink.deliver(makeNotification(1))
        yield self.recorder.waitFor(isRunEnd)
        with open(os.path.join(self.dir, "bg")) as f:
            background = int(f.read())
        self.addCleanup(os.kill, background, signal.SIGKILL)
        yield sink.deliver(makeNotification(2))
        yield self.recorder.waitFor(isRunEnd, 2)
        yield sink.close()
        self.assertTrue(
            [t for t in self.recorder.texts() if "still holds its output" in t]
        )

    @defer.inlineCallbacks
    def test_deliverAfterClose(self) -> Generator[Any, Any, None]:
        """Delivering to a closed sink fails with DeliveryFailed."""
        sink = self.makeSink("true")
        yield sink.close()
        self.failureResultOf(sink.deliver(makeNotification(1)), DeliveryFailed)

    @defer.inlineCallbacks
    def test_unusableJournalRefuses(self) -> Generator[Any, Any, None]:
        """A journal that cannot be opened is logged once, and every push is
        refused (not acknowledged) instead of being lost."""
        self.journalPath.write_bytes(b"not a database" * 100)
        sink = self.makeSink("true")
        failure = yield self.assertFailure(
            sink.deliver(makeNotification(1)), DeliveryFailed
        )
        self.assertIn("corrupt", str(failure))
        self.failureResultOf(sink.deliver(makeNotification(2)), DeliveryFailed)
        errors = [e for e in self.recorder.events if e["log_level"] == LogLevel.error]
        self.assertEqual(len(errors), 1)
        self.assertEqual(sink.runs, 0)

    @defer.inlineCallbacks
    def test_accountsInParallel(self) -> Generator[Any, Any, None]:
        """Real runs of three accounts with two slots: two run at once, the
        third waits for a slot, each run reads only its account's pushes
        and sees its login in YADISKPUSH_LOGIN."""
        logins = ["alice", "bob", "carol"]
        gates = {login: self.openGate(f"gate.{login}") for login in logins}
        # Records its stdin in a file named by its login and pid, then waits
        # for a line on its account's gate.
        command = (
            'f="$DIR/run.$YADISKPUSH_LOGIN.$$"; cat > "$f.json"; '
            'read -r line < "$DIR/gate.$YADISKPUSH_LOGIN"'
        )
        sink = self.makeSink(command, timeout=None, maxJobs=2)
        for number, login in enumerate(logins):
            yield sink.deliver(makeNotification(number, login=login))
        self.assertEqual((sink.runs, sink.running, sink.waiting), (2, 2, 1))
        # Alice's next pushes wait for her run; carol is first for a slot.
        yield defer.gatherResults(
            [sink.deliver(makeNotification(n, login="alice")) for n in (3, 4)]
        )
        os.write(gates["alice"], b"go\n")
        yield self.recorder.waitFor(isRunEnd)
        self.assertEqual((sink.runs, sink.running, sink.waiting), (3, 2, 1))
        for login in ("bob", "carol", "alice"):
            os.write(gates[login], b"go\n")
        yield self.recorder.waitFor(isRunEnd, 4)
        yield sink.close()

        starts = self.recorder.matching(
            lambda e: "Running the command" in formatEvent(e)
        )
        self.assertEqual(
            [e["login"] for e in starts], ["alice", "bob", "carol", "alice"]
        )
        # Counted from the log, in order: never more than two runs going.
        going = peak = 0
        for event in self.recorder.events:
            if event in starts:
                going += 1
            elif isRunEnd(event):
                going -= 1
            peak = max(peak, going)
        self.assertEqual(peak, 2)
        runs: dict[str, list[list[str]]] = {}
        for name in sorted(os.listdir(self.dir)):
            if name.startswith("run."):
                login = name.split(".")[1]
                with open(os.path.join(self.dir, name), encoding="utf-8") as f:
                    ids = [json.loads(line)["id"] for line in f]
                runs.setdefault(login, []).append(ids)
        self.assertEqual(
            {login: sorted(r) for login, r in runs.items()},
            {
                "alice": [["push0"], ["push3", "push4"]],
                "bob": [["push1"]],
                "carol": [["push2"]],
            },
        )
        self.assertEqual((yield self.journaled()), [])

    def test_emptyCommandRefused(self) -> None:
        """An empty command is a ValueError at construction."""
        self.assertRaises(ValueError, ExecSink, "  ", None)


class EnvironmentTests(SynchronousTestCase):
    """The child environment is built explicitly from the parent's."""

    def test_attributeNames(self) -> None:
        """Attribute names are upper-cased, non-alphanumerics become ``_``."""
        self.assertEqual(
            environmentName("new-revision"), "YADISKPUSH_ATTR_NEW_REVISION"
        )
        self.assertEqual(environmentName("{urn:x}a.b"), "YADISKPUSH_ATTR__URN_X_A_B")
        self.assertEqual(environmentName("Фото"), "YADISKPUSH_ATTR_____")

    def test_lastNotificationDescribed(self) -> None:
        """The variables describe the notification given, with the run's count."""
        env, leftOut = childEnvironment(
            lastOf(makeNotification(2)),
            2,
            {"HOME": "/home/u", "YADISKPUSH_TOKEN": "secret"},
        )
        self.assertEqual(env["HOME"], "/home/u")
        self.assertEqual(env["YADISKPUSH_COUNT"], "2")
        self.assertEqual(env["YADISKPUSH_ID"], "push2")
        self.assertEqual(env["YADISKPUSH_LOGIN"], LOGIN)
        self.assertEqual(env["YADISKPUSH_ATTR_REVISION"], "2")
        self.assertEqual(env["YADISKPUSH_RECEIVED_AT"], repr(1700000000.25))
        self.assertNotIn("YADISKPUSH_TOKEN", env)
        self.assertEqual(leftOut, [])

    def test_systemdNotificationSettingsNotInherited(self) -> None:
        """A command never gets the service's NOTIFY_SOCKET or watchdog
        settings: what it sent there would speak for the service."""
        parent = {
            "HOME": "/home/u",
            "NOTIFY_SOCKET": "@notify",
            "WATCHDOG_USEC": "30000000",
            "WATCHDOG_PID": "1",
        }
        env, _ = childEnvironment(lastOf(makeNotification(1)), 1, parent)
        self.assertEqual(env["HOME"], "/home/u")
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            self.assertNotIn(name, env)

    def test_login(self) -> None:
        """YADISKPUSH_LOGIN is the run's account, or by default the login of
        the notification described; a parent's value never gets through."""
        last = {**lastOf(makeNotification(1)), "login": "from-line"}
        parent = {"YADISKPUSH_LOGIN": "parent"}
        env, _ = childEnvironment(last, 1, parent)
        self.assertEqual(env["YADISKPUSH_LOGIN"], "from-line")
        env, _ = childEnvironment(last, 1, parent, login="alice")
        self.assertEqual(env["YADISKPUSH_LOGIN"], "alice")

    def test_longValueLeftOut(self) -> None:
        """A value longer than maxValue bytes (UTF-8) is left out and named."""
        notification = makeNotification(1, "a='ééé' b='12345'")
        env, leftOut = childEnvironment(lastOf(notification), 1, {}, maxValue=5)
        self.assertNotIn("YADISKPUSH_ATTR_A", env)
        self.assertEqual(env["YADISKPUSH_ATTR_B"], "12345")
        self.assertIn("YADISKPUSH_ATTR_A", leftOut)

    def test_totalCapped(self) -> None:
        """Attributes past maxTotal bytes of YADISKPUSH_* variables are left
        out in name order; the fixed variables always stay."""
        notification = makeNotification(1, "a='1111' b='2222' c='3333'")
        last = lastOf(notification)
        full, _ = childEnvironment(last, 1, {})
        fixedSize = sum(
            len(name) + len(value) + 2
            for name, value in full.items()
            if not name.startswith("YADISKPUSH_ATTR_")
        )
        entrySize = len("YADISKPUSH_ATTR_A") + len("1111") + 2
        env, leftOut = childEnvironment(last, 1, {}, maxTotal=fixedSize + 2 * entrySize)
        self.assertEqual(env["YADISKPUSH_ATTR_A"], "1111")
        self.assertEqual(env["YADISKPUSH_ATTR_B"], "2222")
        self.assertEqual(env["YADISKPUSH_ID"], "push1")
        self.assertEqual(
            leftOut,
            [
                "YADISKPUSH_ATTR_C",
                "YADISKPUSH_ATTR_NEW_REVISION",
                "YADISKPUSH_ATTR_REVISION",
                "YADISKPUSH_ATTR_TYPE",
            ],
        )


class FakeTransport:
    """The process transport a :class:`FakeProcessReactor` hands out."""

    pid = None

    def __init__(self) -> None:
        self.written = b""
        self.signals: list[int] = []
        self.stdinClosed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def closeStdin(self) -> None:
        self.stdinClosed = True

    def signalProcess(self, number: int) -> None:
        self.signals.append(number)

    def loseConnection(self) -> None:
        pass


class FakeProcessReactor(task.Clock):
    """
    A clock whose ``spawnProcess`` raises the errors queued in ``failures``
    first (or the one in ``failFor`` for the run's ``YADISKPUSH_LOGIN``),
    then records the spawn and returns a :class:`FakeTransport`.

    It counts the processes that have started and not ended (see
    :meth:`endProcess`): the most at once in ``peak``, and in ``overlaps``
    each login a process was started for while one of its own was going.
    """

    def __init__(self) -> None:
        super().__init__()
        self.failures: list[Exception] = []
        self.failFor: dict[str, Exception] = {}
        self.spawned: list[tuple[Any, FakeTransport, dict[str, str]]] = []
        self.live: dict[Any, str] = {}
        self.peak = 0
        self.overlaps: list[str] = []

    def spawnProcess(
        self, protocol: Any, executable: str, args: list[str], env: Any, path: Any
    ) -> FakeTransport:
        login = env["YADISKPUSH_LOGIN"]
        if self.failures:
            raise self.failures.pop(0)
        if login in self.failFor:
            raise self.failFor[login]
        if login in self.live.values():
            self.overlaps.append(login)
        transport = FakeTransport()
        self.spawned.append((protocol, transport, env))
        self.live[protocol] = login
        self.peak = max(self.peak, len(self.live))
        protocol.makeConnection(transport)
        return transport

    def endProcess(self, index: int, reason: Failure) -> None:
        """The process of the ``index``-th spawn exits and its pipes close."""
        protocol, _, _ = self.spawned[index]
        del self.live[protocol]
        protocol.processEnded(reason)

    def logins(self) -> list[str]:
        """The ``YADISKPUSH_LOGIN`` of every spawn, in order."""
        return [env["YADISKPUSH_LOGIN"] for _, _, env in self.spawned]

    def stdinIds(self, index: int) -> list[str]:
        """The push ids the ``index``-th spawn read on standard input."""
        _, transport, _ = self.spawned[index]
        return [json.loads(line)["id"] for line in transport.written.splitlines()]


class FakeJournal:
    """
    A journal in memory whose appends fire at once, or, with ``hold``, when
    the test fires them: the durability a test controls.
    """

    def __init__(self, leftovers: list[Entry] | None = None) -> None:
        self.leftovers = leftovers or []
        self.count = len(self.leftovers)
        self.commits = 0
        self.hold = False
        self.held: list[defer.Deferred[int]] = []
        self.failure: Exception | None = None
        self.removed: list[int] = []
        self.logins: list[str] = []
        self.closed = False
        self._nextId = max((e.entryId for e in self.leftovers), default=0) + 1

    def open(self) -> defer.Deferred[list[Entry]]:
        return defer.succeed(list(self.leftovers))

    def append(self, line: bytes, login: str = "") -> defer.Deferred[int]:
        if self.failure is not None:
            return defer.fail(self.failure)
        self.logins.append(login)
        self.count += 1
        entryId, self._nextId = self._nextId, self._nextId + 1
        if self.hold:
            d: defer.Deferred[int] = defer.Deferred()
            d.addCallback(lambda _: entryId)
            self.held.append(d)
            return d
        return defer.succeed(entryId)

    def remove(self, ids: list[int]) -> defer.Deferred[None]:
        self.count -= len(ids)
        self.removed.extend(ids)
        return defer.succeed(None)

    def close(self) -> defer.Deferred[None]:
        self.closed = True
        return defer.succeed(None)


def exited(status: int = 0, signalNumber: int | None = None) -> Failure:
    """The reason a process protocol gets when its process ends."""
    if status == 0 and signalNumber is None:
        return Failure(error.ProcessDone(0))
    return Failure(error.ProcessTerminated(status, signalNumber))


class FakeLauncherTestCase(TestCase):
    """An ExecSink on a fake process reactor, a fake journal and a log recorder."""

    def setUp(self) -> None:
        self.reactor = FakeProcessReactor()
        self.journal = FakeJournal()
        self.recorder = LogRecorder()

    def makeSink(self, **kwargs: Any) -> ExecSink:
        kwargs.setdefault("journal", self.journal)
        # Runs at once, as before the debounce: test_exec_debounce covers it.
        kwargs.setdefault("debounce", 0)
        return ExecSink(
            "cat",
            None,
            reactor=self.reactor,
            environ={"PATH": "/bin"},
            log=Logger(observer=cast(ILogObserver, self.recorder)),
            **kwargs,
        )


class ExecSinkClockTests(FakeLauncherTestCase):
    """Retries and the close grace, on a Clock: no real process, no waiting."""

    def endRun(self, index: int, reason: Failure | None = None) -> None:
        """The process of the ``index``-th spawn exits and its pipes close."""
        self.reactor.endProcess(index, reason or exited())

    def test_ackWaitsForTheJournal(self) -> None:
        """deliver fires only once the journal has the push on disk, and no
        run starts before that."""
        self.journal.hold = True
        sink = self.makeSink()
        delivered = sink.deliver(makeNotification(1))
        self.assertNoResult(delivered)
        self.assertEqual(self.reactor.spawned, [])
        self.journal.held[0].callback(None)
        self.assertIsNone(self.successResultOf(delivered))
        self.assertEqual(len(self.reactor.spawned), 1)
        _, transport, _ = self.reactor.spawned[0]
        self.assertEqual(transport.written, encodeJSONLine(makeNotification(1)))

    def test_journalFailureRefuses(self) -> None:
        """A push the journal cannot write is refused with one error line."""
        self.journal.failure = JournalError("disk full")
        sink = self.makeSink()
        failure = self.failureResultOf(
            sink.deliver(makeNotification(1)), DeliveryFailed
        )
        self.assertIn("disk full", str(failure.value))
        errors = [e for e in self.recorder.events if e["log_level"] == LogLevel.error]
        self.assertEqual(len(errors), 1)
        self.assertIn("push1", formatEvent(errors[0]))

    def test_consumedEntriesRemoved(self) -> None:
        """When a run ends, failing or not, its entries leave the journal."""
        sink = self.makeSink()
        self.successResultOf(sink.deliver(makeNotification(1)))
        self.successResultOf(sink.deliver(makeNotification(2)))
        self.assertEqual(self.journal.removed, [])
        self.endRun(0, exited(3))
        self.assertEqual(self.journal.removed, [1])
        self.endRun(1)
        self.assertEqual(self.journal.removed, [1, 2])
        self.assertEqual(self.journal.count, 0)

    def test_spawnFailureRetried(self) -> None:
        """E2BIG at spawn is logged once per attempt and retried after 5, 10,
        then 20 s; the pushes stay journaled and run once a start works."""
        self.reactor.failures = [OSError(errno.E2BIG, "Argument list too long")] * 3
        sink = self.makeSink()
        self.successResultOf(sink.deliver(makeNotification(1)))
        self.successResultOf(sink.deliver(makeNotification(2)))
        failures = self.recorder.matching(lambda e: "spawnFailed" in e)
        self.assertEqual(len(failures), 1)
        self.assertIn("(E2BIG)", formatEvent(failures[0]))
        self.assertIn("1 notification(s) stay journaled", formatEvent(failures[0]))
        for delay, attempts in [(5, 2), (10, 3)]:
            self.reactor.advance(delay - 0.5)
            self.assertEqual(
                len(self.recorder.matching(lambda e: "spawnFailed" in e)), attempts - 1
            )
            self.reactor.advance(0.5)
            failures = self.recorder.matching(lambda e: "spawnFailed" in e)
            self.assertEqual(len(failures), attempts)
            self.assertIn(
                f"2 notification(s) stay journaled; next attempt in {delay * 2} s",
                formatEvent(failures[-1]),
            )
        self.assertEqual(self.reactor.spawned, [])
        self.reactor.advance(20)
        self.assertEqual(sink.runs, 1)
        _, transport, env = self.reactor.spawned[0]
        self.assertEqual(env["YADISKPUSH_COUNT"], "2")
        self.assertEqual(
            transport.written,
            encodeJSONLine(makeNotification(1)) + encodeJSONLine(makeNotification(2)),
        )
        self.assertEqual(self.journal.removed, [])

    def test_replayedFirst(self) -> None:
        """Entries left by an earlier process run at start, before new ones."""
        leftover = encodeJSONLine(makeNotification(1))
        self.journal = FakeJournal([Entry(7, leftover, LOGIN)])
        sink = self.makeSink()
        self.successResultOf(sink.start())
        self.assertIn(
            "Replaying 1 notification(s) journaled before a restart, for 1 account(s)",
            self.recorder.texts(),
        )
        self.successResultOf(sink.deliver(makeNotification(2)))
        _, transport, _ = self.reactor.spawned[0]
        self.assertEqual(transport.written, leftover)
        self.endRun(0)
        self.assertEqual(self.journal.removed, [7])
        _, transport, _ = self.reactor.spawned[1]
        self.assertEqual(transport.written, encodeJSONLine(makeNotification(2)))

    def test_closeWaitsForARunWithinTheGrace(self) -> None:
        """A run that ends within closeGrace is waited for, not signalled, and
        its entries are consumed."""
        sink = self.makeSink(closeGrace=5)
        self.successResultOf(sink.deliver(makeNotification(1)))
        closed = sink.close()
        self.reactor.advance(4.9)
        self.assertNoResult(closed)
        self.endRun(0)
        self.successResultOf(closed)
        _, transport, _ = self.reactor.spawned[0]
        self.assertEqual(transport.signals, [])
        self.assertEqual(self.journal.removed, [1])
        self.assertTrue(self.journal.closed)

    def test_closeStopsARunAfterTheGrace(self) -> None:
        """After closeGrace the run gets SIGTERM, killGrace later SIGKILL; its
        entries and the waiting ones stay journaled; no follow-up run."""
        sink = self.makeSink(closeGrace=5, killGrace=2)
        self.successResultOf(sink.deliver(makeNotification(1)))
        self.successResultOf(sink.deliver(makeNotification(2)))
        closed = sink.close()
        _, transport, _ = self.reactor.spawned[0]
        self.reactor.advance(5)
        self.assertEqual(transport.signals, [signal.SIGTERM])
        self.reactor.advance(2)
        self.assertEqual(transport.signals, [signal.SIGTERM, signal.SIGKILL])
        self.assertNoResult(closed)
        self.endRun(0, exited(signalNumber=signal.SIGKILL))
        self.successResultOf(closed)
        self.assertEqual(sink.runs, 1)
        self.assertEqual(self.journal.removed, [])
        self.assertIn(
            "2 notification(s) stay journaled; they go to the command at the "
            "next start",
            self.recorder.texts(),
        )

    def test_closeNeverHangs(self) -> None:
        """A run that survives even SIGKILL does not hold close() beyond
        closeGrace + killGrace + pipeGrace; that is logged."""
        sink = self.makeSink(closeGrace=5, killGrace=2)
        self.successResultOf(sink.deliver(makeNotification(1)))
        closed = sink.close()
        # Step by step: a Clock runs late calls at the time advanced to.
        for step in (5, 2, sink.pipeGrace - 0.5):
            self.reactor.advance(step)
        self.assertNoResult(closed)
        self.reactor.advance(0.5)
        # The output pipes are abandoned after pipeGrace more.
        self.reactor.advance(sink.pipeGrace)
        self.successResultOf(closed)
        self.assertTrue(
            [t for t in self.recorder.texts() if "did not exit even after SIGKILL" in t]
        )
        self.assertEqual(self.journal.removed, [])
        self.assertTrue(self.journal.closed)


class AccountsClockTests(FakeLauncherTestCase):
    """Runs per account, at most maxJobs at once, fair between accounts, on
    a fake process launcher: every spawn and exit is the test's move."""

    def deliver(self, sink: ExecSink, login: str, *numbers: int) -> None:
        """Deliver the pushes ``numbers`` of ``login``, each journaled."""
        for number in numbers:
            self.successResultOf(sink.deliver(makeNotification(number, login=login)))

    def endRun(self, index: int, reason: Failure | None = None) -> None:
        self.reactor.endProcess(index, reason or exited())

    def test_maxJobsAtLeastOne(self) -> None:
        """maxJobs below 1 is a ValueError at construction."""
        self.assertRaises(ValueError, ExecSink, "true", None, maxJobs=0)

    def test_loginJournaled(self) -> None:
        """Each push is journaled with the login of its notification."""
        sink = self.makeSink()
        self.deliver(sink, "alice", 1)
        self.deliver(sink, "bob", 2)
        self.assertEqual(self.journal.logins, ["alice", "bob"])

    def test_coalescedPerLogin(self) -> None:
        """Pushes arriving during an account's run go to one follow-up run of
        that account; a run never carries another account's pushes, and its
        YADISKPUSH_LOGIN names its account."""
        sink = self.makeSink(maxJobs=4)
        self.deliver(sink, "alice", 1)
        self.deliver(sink, "bob", 2)
        self.deliver(sink, "alice", 3, 4)
        self.deliver(sink, "bob", 5)
        self.deliver(sink, "alice", 6)
        self.assertEqual(self.reactor.logins(), ["alice", "bob"])

        self.endRun(0)
        self.assertEqual(self.reactor.logins(), ["alice", "bob", "alice"])
        self.assertEqual(self.reactor.stdinIds(2), ["push3", "push4", "push6"])
        self.endRun(1)
        self.assertEqual(self.reactor.logins(), ["alice", "bob", "alice", "bob"])
        self.assertEqual(self.reactor.stdinIds(3), ["push5"])

        _, _, env = self.reactor.spawned[2]
        self.assertEqual(env["YADISKPUSH_COUNT"], "3")
        self.assertEqual(env["YADISKPUSH_ID"], "push6")
        self.assertEqual(self.reactor.overlaps, [])
        self.assertEqual(sink.runs, 4)
        texts = self.recorder.texts()
        self.assertIn(
            "Running the command for 3 notification(s) of alice up to push push6",
            texts,
        )

    def test_accountWithoutLogin(self) -> None:
        """Notifications without a login are an account of their own, with
        an empty YADISKPUSH_LOGIN, and the log does not name an account."""
        sink = self.makeSink()
        self.deliver(sink, "", 1)
        self.deliver(sink, "alice", 2)
        self.assertEqual(self.reactor.logins(), ["", "alice"])
        self.assertIn(
            "Running the command for 1 notification(s) up to push push1",
            self.recorder.texts(),
        )

    def test_neverMoreThanMaxJobs(self) -> None:
        """With 3 slots and 20 busy accounts, no more than 3 runs are ever
        going, no account runs twice at once, and every push is run."""
        sink = self.makeSink(maxJobs=3)
        logins = [f"user{n:02}" for n in range(20)]
        for n, login in enumerate(logins):
            self.deliver(sink, login, n)
        self.assertEqual(len(self.reactor.live), 3)
        self.assertEqual(sink.running, 3)
        self.assertEqual(sink.waiting, 17)
        # End runs one by one, more pushes arriving all the while.
        ended = 0
        number = 100
        while self.reactor.live:
            index = next(
                i
                for i, (p, _, _) in enumerate(self.reactor.spawned)
                if p in self.reactor.live
            )
            self.endRun(index)
            ended += 1
            if ended < 30:
                self.deliver(sink, logins[ended % 20], number)
                self.deliver(sink, logins[(ended * 7) % 20], number + 1)
                number += 2
            self.assertLessEqual(len(self.reactor.live), 3)
        self.assertEqual(self.reactor.peak, 3)
        self.assertEqual(self.reactor.overlaps, [])
        self.assertEqual(sink.running, 0)
        self.assertEqual(sink.waiting, 0)
        ran = sorted(
            i
            for n in range(len(self.reactor.spawned))
            for i in self.reactor.stdinIds(n)
        )
        self.assertEqual(len(ran), 20 + 2 * 29)
        self.assertEqual(len(set(ran)), len(ran))
        self.assertEqual(self.journal.count, 0)
        # Quiet accounts cost nothing once their runs are over.
        self.assertEqual(sink._accounts, {})

    def test_fairness(self) -> None:
        """Accounts waiting for a slot get it in the order they became ready:
        an account pushing all the time goes to the back after each run."""
        sink = self.makeSink(maxJobs=1)
        self.deliver(sink, "alice", 1)
        self.deliver(sink, "bob", 2)
        self.deliver(sink, "carol", 3)
        self.deliver(sink, "alice", 4)
        self.assertEqual(self.reactor.logins(), ["alice"])
        self.endRun(0)
        self.deliver(sink, "alice", 5)
        self.deliver(sink, "dave", 6)
        self.endRun(1)
        self.endRun(2)
        self.endRun(3)
        self.endRun(4)
        self.assertEqual(
            self.reactor.logins(), ["alice", "bob", "carol", "alice", "dave"]
        )
        self.assertEqual(self.reactor.stdinIds(3), ["push4", "push5"])
        self.assertEqual(self.reactor.peak, 1)

    def test_replayGroupedByLogin(self) -> None:
        """Entries left by an earlier process run per login, each login's in
        one run in journal order, the logins in the order of their oldest
        entry, before any new push."""
        lines = {n: encodeJSONLine(makeNotification(n)) for n in range(1, 6)}
        self.journal = FakeJournal(
            [
                Entry(1, lines[1], "alice"),
                Entry(2, lines[2], "bob"),
                Entry(3, lines[3], "alice"),
                Entry(4, lines[4], ""),
                Entry(5, lines[5], "bob"),
            ]
        )
        sink = self.makeSink(maxJobs=1)
        self.deliver(sink, "carol", 9)
        self.assertIn(
            "Replaying 5 notification(s) journaled before a restart, for 3 account(s)",
            self.recorder.texts(),
        )
        for index in range(3):
            self.endRun(index)
        self.assertEqual(self.reactor.logins(), ["alice", "bob", "", "carol"])
        self.assertEqual(
            [self.reactor.stdinIds(i) for i in range(4)],
            [["push1", "push3"], ["push2", "push5"], ["push4"], ["push9"]],
        )
        self.assertEqual(sorted(self.journal.removed), [1, 2, 3, 4, 5])

    def test_spawnFailureOfOneAccount(self) -> None:
        """An account whose command cannot start is retried on its own; the
        slot goes to the next account meanwhile."""
        self.reactor.failFor["alice"] = OSError(errno.E2BIG, "Argument list too long")
        sink = self.makeSink(maxJobs=1)
        self.deliver(sink, "alice", 1)
        self.deliver(sink, "bob", 2)
        self.assertEqual(self.reactor.logins(), ["bob"])
        (failure,) = self.recorder.matching(lambda e: "spawnFailed" in e)
        self.assertEqual(failure["login"], "alice")
        self.assertIn("Could not start the command for alice", formatEvent(failure))
        del self.reactor.failFor["alice"]
        self.reactor.advance(5)
        # The slot is bob's until his run ends.
        self.assertEqual(self.reactor.logins(), ["bob"])
        self.endRun(0)
        self.assertEqual(self.reactor.logins(), ["bob", "alice"])
        self.assertEqual(self.reactor.stdinIds(1), ["push1"])

    def test_closeStopsEveryRun(self) -> None:
        """close() gives every run in progress the same grace, then stops
        each; queued accounts are not started; close stays bounded."""
        sink = self.makeSink(maxJobs=2, closeGrace=5, killGrace=2)
        self.deliver(sink, "alice", 1)
        self.deliver(sink, "bob", 2)
        self.deliver(sink, "carol", 3)
        closed = sink.close()
        self.reactor.advance(5)
        for _, transport, _ in self.reactor.spawned:
            self.assertEqual(transport.signals, [signal.SIGTERM])
        self.endRun(0, exited(signalNumber=signal.SIGTERM))
        self.assertNoResult(closed)
        self.reactor.advance(2)
        self.assertEqual(
            self.reactor.spawned[1][1].signals, [signal.SIGTERM, signal.SIGKILL]
        )
        self.endRun(1, exited(signalNumber=signal.SIGKILL))
        self.successResultOf(closed)
        self.assertEqual(self.reactor.logins(), ["alice", "bob"])
        self.assertEqual(self.journal.removed, [])
        self.assertIn(
            "3 notification(s) stay journaled; they go to the command at the "
            "next start",
            self.recorder.texts(),
        )
