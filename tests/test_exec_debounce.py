"""
Tests for the debounce, the longest delay and the start run of
:class:`~yadiskpush.delivery.sinks.execute.ExecSink`, their options, and
``--exec-on-start`` end to end.

The sink's tests run on a ``task.Clock`` with the fake process launcher and
journal of ``test_sinks_execute``: each push, each second and each exit is
the test's move. :class:`ExecOnStartTwistdTests` runs the real ``twistd``
child (as ``tests/integration/test_plugin`` does) against a
:class:`~yadiskpush.localserver.LocalServer` over loopback TLS, and waits on
the child's output only.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from twisted.internet import defer
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.integration.test_plugin import Steps, TwistdTestCase
from tests.test_sinks_execute import (
    FakeJournal,
    FakeLauncherTestCase,
    exited,
    makeNotification,
)
from yadiskpush.cli.options import Options, buildSinks
from yadiskpush.delivery.journal import Entry
from yadiskpush.delivery.sinks import ExecSink, encodeJSONLine

#: ``changes`` as the JSON line carries them, for YADISKPUSH_CHANGES.
CHANGES = [
    {"type": "created", "path": "/Docs/a.txt"},
    {"type": "deleted", "path": "/Docs/b.txt"},
]


def lineWithChanges(number: int, changes: list[dict[str, str]], login: str) -> bytes:
    """A journal line of push ``number`` of ``login`` listing ``changes``."""
    obj = json.loads(encodeJSONLine(makeNotification(number, login=login)))
    obj["changes"] = changes
    return json.dumps(obj).encode("utf-8") + b"\n"


class DebounceTests(FakeLauncherTestCase):
    """A run starts once an account's pushes have been quiet for the
    debounce, or at the longest delay, per account; acks never wait."""

    def deliver(self, sink: ExecSink, login: str, *numbers: int) -> None:
        """Deliver the pushes ``numbers`` of ``login``: each acked at once."""
        for number in numbers:
            self.successResultOf(sink.deliver(makeNotification(number, login=login)))

    def endRun(self, index: int, reason: Failure | None = None) -> None:
        self.reactor.endProcess(index, reason or exited())

    def test_runAfterQuiet(self) -> None:
        """One push is acked at once and runs once the debounce has passed
        with no other push."""
        sink = self.makeSink(debounce=1.0, maxDelay=30.0)
        self.deliver(sink, "alice", 1)
        self.reactor.advance(0.9)
        self.assertEqual(self.reactor.spawned, [])
        self.reactor.advance(0.1)
        self.assertEqual(self.reactor.logins(), ["alice"])
        self.assertEqual(self.reactor.stdinIds(0), ["push1"])

    def test_eachPushRestartsTheDebounce(self) -> None:
        """Pushes 0.5 s apart keep the run waiting; it starts 1 s after the
        last, with all of them."""
        sink = self.makeSink(debounce=1.0, maxDelay=30.0)
        for number in range(1, 5):
            self.deliver(sink, "alice", number)
            self.reactor.advance(0.5)
        self.assertEqual(self.reactor.spawned, [])
        self.reactor.advance(0.5)
        self.assertEqual(len(self.reactor.spawned), 1)
        self.assertEqual(self.reactor.stdinIds(0), ["push1", "push2", "push3", "push4"])

    def test_steadyStreamRunsAtMaxDelay(self) -> None:
        """A push every 0.5 s never leaves 1 s of quiet, yet a run starts
        maxDelay after the first push, then maxDelay after the first push it
        did not take."""
        sink = self.makeSink(debounce=1.0, maxDelay=5.0)
        number = 0
        self.deliver(sink, "alice", number)
        for _ in range(9):
            self.reactor.advance(0.5)
            number += 1
            self.deliver(sink, "alice", number)
        self.assertEqual(self.reactor.spawned, [])
        self.reactor.advance(0.5)
        self.assertEqual(len(self.reactor.spawned), 1)
        self.assertEqual(self.reactor.stdinIds(0), [f"push{n}" for n in range(10)])
        self.endRun(0)
        # The stream goes on: the next run is maxDelay after push 10.
        for _ in range(10):
            number += 1
            self.deliver(sink, "alice", number)
            self.reactor.advance(0.5)
        self.assertEqual(len(self.reactor.spawned), 2)
        self.assertEqual(self.reactor.stdinIds(1), [f"push{n}" for n in range(10, 20)])

    def test_pushesDuringARunMakeOneDebouncedRun(self) -> None:
        """Pushes during a run make exactly one follow-up run, which waits
        out its own debounce when the run ends before it has passed."""
        sink = self.makeSink(debounce=1.0, maxDelay=30.0)
        self.deliver(sink, "alice", 1)
        self.reactor.advance(1.0)
        self.deliver(sink, "alice", 2, 3)
        self.reactor.advance(0.5)
        self.deliver(sink, "alice", 4)
        self.reactor.advance(0.5)
        self.endRun(0)
        self.assertEqual(len(self.reactor.spawned), 1)
        self.reactor.advance(0.5)
        self.assertEqual(len(self.reactor.spawned), 2)
        self.assertEqual(self.reactor.stdinIds(1), ["push2", "push3", "push4"])
        self.reactor.advance(60)
        self.assertEqual(len(self.reactor.spawned), 2)
        self.assertEqual(self.reactor.overlaps, [])

    def test_followUpAtOnceWhenSettledDuringTheRun(self) -> None:
        """Pushes that settled while the run went on start the follow-up run
        as soon as the run ends."""
        sink = self.makeSink(debounce=1.0, maxDelay=30.0)
        self.deliver(sink, "alice", 1)
        self.reactor.advance(1.0)
        self.deliver(sink, "alice", 2)
        self.reactor.advance(5)
        self.assertEqual(len(self.reactor.spawned), 1)
        self.endRun(0)
        self.assertEqual(len(self.reactor.spawned), 2)
        self.assertEqual(self.reactor.stdinIds(1), ["push2"])

    def test_accountsIndependent(self) -> None:
        """Each account has its own debounce: bob's pushes do not hold
        alice's run back."""
        sink = self.makeSink(debounce=1.0, maxDelay=30.0)
        self.deliver(sink, "alice", 1)
        self.reactor.advance(0.5)
        self.deliver(sink, "bob", 2)
        self.reactor.advance(0.5)
        self.assertEqual(self.reactor.logins(), ["alice"])
        self.deliver(sink, "bob", 3)
        self.reactor.advance(0.9)
        self.assertEqual(self.reactor.logins(), ["alice"])
        self.reactor.advance(0.1)
        self.assertEqual(self.reactor.logins(), ["alice", "bob"])
        self.assertEqual(self.reactor.stdinIds(1), ["push2", "push3"])

    def test_zeroRunsAtOnce(self) -> None:
        """debounce=0 starts the run as soon as the push is journaled, as
        before there was a debounce."""
        sink = self.makeSink(debounce=0, maxDelay=0)
        self.deliver(sink, "alice", 1)
        self.assertEqual(self.reactor.logins(), ["alice"])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_defaults(self) -> None:
        """By default a run waits 1 s of quiet, and at most 30 s."""
        sink = ExecSink("true", None, reactor=self.reactor)
        self.assertEqual((sink.debounce, sink.maxDelay), (1.0, 30.0))

    def test_badValues(self) -> None:
        """A negative debounce, or a longest delay below it, is refused."""
        self.assertRaises(ValueError, ExecSink, "true", None, debounce=-1)
        self.assertRaises(ValueError, ExecSink, "true", None, debounce=5, maxDelay=2)

    def test_ackNeverWaits(self) -> None:
        """The ack is the journal's: it fires before the debounce ends, and
        a push still held by the journal starts no debounce."""
        self.journal.hold = True
        sink = self.makeSink(debounce=1.0, maxDelay=30.0)
        delivered = sink.deliver(makeNotification(1, login="alice"))
        self.assertNoResult(delivered)
        self.reactor.advance(10)
        self.assertEqual(self.reactor.spawned, [])
        self.journal.held[0].callback(None)
        self.successResultOf(delivered)
        self.assertEqual(self.reactor.spawned, [])
        self.reactor.advance(1.0)
        self.assertEqual(self.reactor.logins(), ["alice"])

    def test_maxJobsStillHolds(self) -> None:
        """Accounts that settle together share the slots: never more than
        maxJobs runs, and the rest start as slots free up."""
        sink = self.makeSink(debounce=1.0, maxDelay=30.0, maxJobs=2)
        for number, login in enumerate(["alice", "bob", "carol"]):
            self.deliver(sink, login, number)
        self.reactor.advance(1.0)
        self.assertEqual(self.reactor.logins(), ["alice", "bob"])
        self.assertEqual(sink.waiting, 1)
        # A push for the waiting account joins its run, with no new debounce.
        self.deliver(sink, "carol", 9)
        self.endRun(0)
        self.assertEqual(self.reactor.logins(), ["alice", "bob", "carol"])
        self.assertEqual(self.reactor.stdinIds(2), ["push2", "push9"])
        self.assertEqual(self.reactor.peak, 2)

    def test_closeDuringTheDebounceKeepsThePushesJournaled(self) -> None:
        """Closing while pushes wait out their debounce starts no run; they
        stay journaled (and logged so) for the next start."""
        sink = self.makeSink(debounce=1.0, maxDelay=30.0)
        self.deliver(sink, "alice", 1, 2)
        self.successResultOf(sink.close())
        self.reactor.advance(60)
        self.assertEqual(self.reactor.spawned, [])
        self.assertEqual(self.journal.removed, [])
        self.assertEqual(self.journal.count, 2)
        self.assertTrue(self.journal.closed)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertIn(
            "2 notification(s) stay journaled; they go to the command at the "
            "next start",
            self.recorder.texts(),
        )

    def test_replayRunsAtOnce(self) -> None:
        """Entries an earlier process left (a crash during the debounce)
        run at start without another debounce."""
        line = encodeJSONLine(makeNotification(1, login="alice"))
        self.journal = FakeJournal([Entry(4, line, "alice")])
        sink = self.makeSink(debounce=1.0, maxDelay=30.0)
        self.successResultOf(sink.start())
        self.assertEqual(self.reactor.logins(), ["alice"])
        self.assertEqual(self.reactor.stdinIds(0), ["push1"])

    def test_quietAccountsForgotten(self) -> None:
        """Once its runs are over, an account leaves no timer and no state."""
        sink = self.makeSink(debounce=1.0, maxDelay=30.0)
        self.deliver(sink, "alice", 1)
        self.reactor.advance(1.0)
        self.endRun(0)
        self.assertEqual(sink._accounts, {})
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class StartRunTests(FakeLauncherTestCase):
    """runOnStart: a run with REASON=start, joined by the pushes around it."""

    def test_startRunAlone(self) -> None:
        """Without pushes the start run reads nothing and says so in its
        environment: REASON=start, COUNT=0, CHANGES=0, the login."""
        sink = self.makeSink(debounce=1.0, maxDelay=30.0)
        sink.runOnStart("alice")
        self.reactor.advance(0.9)
        self.assertEqual(self.reactor.spawned, [])
        self.reactor.advance(0.1)
        [(protocol, transport, env)] = self.reactor.spawned
        self.assertEqual(transport.written, b"")
        self.assertTrue(transport.stdinClosed)
        self.assertEqual(env["YADISKPUSH_REASON"], "start")
        self.assertEqual(env["YADISKPUSH_COUNT"], "0")
        self.assertEqual(env["YADISKPUSH_CHANGES"], "0")
        self.assertEqual(env["YADISKPUSH_LOGIN"], "alice")
        self.assertEqual(env["YADISKPUSH_ID"], "")
        self.assertEqual(env["YADISKPUSH_RECEIVED_AT"], "")
        self.assertIn(
            "Running the command for the start run of alice", self.recorder.texts()
        )
        self.reactor.endProcess(0, exited())
        # Nothing was journaled for it, so nothing is removed.
        self.assertEqual(self.journal.removed, [])
        self.assertIn(
            "The command finished after 0.00 s; the start run of alice",
            self.recorder.texts(),
        )

    def test_pendingPushesJoinTheStartRun(self) -> None:
        """Pushes pending when the start run is asked for, and those within
        its debounce, are the same run: one run, REASON=start."""
        sink = self.makeSink(debounce=1.0, maxDelay=30.0)
        self.successResultOf(sink.deliver(makeNotification(1, login="alice")))
        sink.runOnStart("alice")
        self.reactor.advance(0.5)
        self.successResultOf(sink.deliver(makeNotification(2, login="alice")))
        self.reactor.advance(1.0)
        [(_, _, env)] = self.reactor.spawned
        self.assertEqual(env["YADISKPUSH_REASON"], "start")
        self.assertEqual(env["YADISKPUSH_COUNT"], "2")
        self.assertEqual(self.reactor.stdinIds(0), ["push1", "push2"])
        self.reactor.endProcess(0, exited())
        self.assertEqual(self.journal.removed, [1, 2])
        self.reactor.advance(60)
        self.assertEqual(len(self.reactor.spawned), 1)

    def test_startRunDuringARunIsTheFollowUp(self) -> None:
        """A start run asked for while the account's run goes on is its one
        follow-up run; the pushes meanwhile join it."""
        sink = self.makeSink(debounce=0, maxDelay=0)
        self.successResultOf(sink.deliver(makeNotification(1, login="alice")))
        sink.runOnStart("alice")
        self.successResultOf(sink.deliver(makeNotification(2, login="alice")))
        self.assertEqual(len(self.reactor.spawned), 1)
        self.assertEqual(self.reactor.spawned[0][2]["YADISKPUSH_REASON"], "push")
        self.reactor.endProcess(0, exited())
        [_, (_, _, env)] = self.reactor.spawned
        self.assertEqual(env["YADISKPUSH_REASON"], "start")
        self.assertEqual(self.reactor.stdinIds(1), ["push2"])

    def test_startRunAfterClose(self) -> None:
        """A start run asked for once the sink is closing is not run."""
        sink = self.makeSink(debounce=0, maxDelay=0)
        self.successResultOf(sink.close())
        sink.runOnStart("alice")
        self.reactor.advance(60)
        self.assertEqual(self.reactor.spawned, [])

    def test_changesCounted(self) -> None:
        """YADISKPUSH_CHANGES is the number of changes of all the run's
        notifications; REASON is push for a run for pushes."""
        lines = [
            lineWithChanges(1, CHANGES, "alice"),
            lineWithChanges(2, CHANGES[:1], "alice"),
            # A line journaled by a release before changes were parsed.
            encodeJSONLine(makeNotification(3, login="alice")),
        ]
        self.journal = FakeJournal(
            [Entry(n + 1, line, "alice") for n, line in enumerate(lines)]
        )
        sink = self.makeSink(debounce=1.0, maxDelay=30.0)
        self.successResultOf(sink.start())
        [(_, _, env)] = self.reactor.spawned
        self.assertEqual(env["YADISKPUSH_CHANGES"], "3")
        self.assertEqual(env["YADISKPUSH_COUNT"], "3")
        self.assertEqual(env["YADISKPUSH_REASON"], "push")


def parse(*argv: str, environ: dict[str, str] | None = None) -> Options:
    options = Options()
    options.environ = environ or {}
    options.parseOptions(list(argv))
    return options


class OptionsTests(SynchronousTestCase):
    """--exec-debounce, --exec-max-delay and --exec-on-start."""

    def setUp(self) -> None:
        self.environ = {
            "YADISKPUSH_TOKEN": "AQAAAAA-secret-token",
            "STATE_DIRECTORY": os.path.abspath(self.mktemp()),
        }

    def parse(self, *argv: str) -> Options:
        return parse("--login", "test", *argv, environ=self.environ)

    def assertUsageError(self, fragment: str, *argv: str) -> None:
        with self.assertRaises(usage.UsageError) as caught:
            self.parse(*argv)
        message = str(caught.exception)
        self.assertIn(fragment, message)
        self.assertNotIn("\n", message)
        self.assertNotIn("secret-token", message)

    def test_defaultsReachTheSink(self) -> None:
        """By default the sink waits 1 s of quiet and at most 30 s; given
        values reach it, 0 included."""
        [sink] = buildSinks(self.parse("--exec", "true", "--log-level", "warn"), None)
        self.assertEqual((sink.debounce, sink.maxDelay), (1.0, 30.0))
        options = self.parse(
            "--exec",
            "true",
            "--log-level",
            "warn",
            "--exec-debounce",
            "0",
            "--exec-max-delay",
            "0",
        )
        [sink] = buildSinks(options, None)
        self.assertEqual((sink.debounce, sink.maxDelay), (0.0, 0.0))
        self.assertFalse(options["exec-on-start"])

    def test_maxDelayBelowDebounce(self) -> None:
        """A longest delay shorter than the debounce is a usage error naming
        both options."""
        self.assertUsageError(
            "--exec-max-delay (2 s) must be at least --exec-debounce (5 s)",
            "--exec",
            "true",
            "--exec-debounce",
            "5",
            "--exec-max-delay",
            "2",
        )

    def test_notSeconds(self) -> None:
        """A negative or non-numeric value is a usage error naming the
        option."""
        for option in ("--exec-debounce", "--exec-max-delay"):
            for value in ("-1", "soon", "nan"):
                self.assertUsageError(option, "--exec", "true", option, value)

    def test_onStartNeedsExec(self) -> None:
        """--exec-on-start without --exec is a usage error."""
        self.assertUsageError(
            "--exec-on-start runs the --exec command: give --exec COMMAND too",
            "--exec-on-start",
        )


#: Records one line per run (reason, count, changes, login, stdin lines),
#: then says which run it was on its output, which the child logs.
RECORD_RUN = (
    'n=$(wc -l); echo "$YADISKPUSH_REASON $YADISKPUSH_COUNT '
    '$YADISKPUSH_CHANGES $YADISKPUSH_LOGIN $n" >> "$OUT"; '
    'echo "ran for $YADISKPUSH_REASON"'
)

LOGIN = "test"


class ExecOnStartTwistdTests(TwistdTestCase):
    """twistd yadiskpush --exec-on-start: one start run per account after
    its first subscription, none after a reconnect."""

    @defer.inlineCallbacks
    def test_startRunOnceAfterFirstSubscription(self) -> Steps:
        """The command runs once with REASON=start, COUNT=0 and no input
        after the subscription; after the server drops the session and the
        client subscribes again, only the push runs it (REASON=push)."""
        token = "y0_" + secrets.token_urlsafe(32)
        server = yield self.startServer({LOGIN: token})
        directory = Path(self.directory)
        tokenFile = directory / "token"
        tokenFile.touch(mode=0o600)
        tokenFile.write_text(token + "\n")
        out = directory / "runs"
        self.environment["OUT"] = str(out)
        process, transport = self.spawnTwistd(
            *self.serverArguments(server),
            "--login",
            LOGIN,
            "--token-file",
            str(tokenFile),
            "--state-dir",
            str(directory / "state"),
            "--exec",
            RECORD_RUN,
            "--exec-on-start",
            "--exec-debounce",
            "0.1",
        )
        first = yield server.whenSubscribed(1, LOGIN)
        yield process.whenLine("ran for start")
        self.assertEqual(out.read_text(), f"start 0 0 {LOGIN} 0\n")

        first.drop()
        yield server.whenSubscribed(2, LOGIN)
        answer = yield server.push(
            LOGIN,
            {"type": "disk", "new": "7"},
            "<diff><op type='new' key='disk:/Docs/a.txt' resource_type='file'/>"
            "<op type='deleted' key='disk:/Docs/b.txt' resource_type='file'/>"
            "</diff>",
        )
        self.assertEqual(answer["type"], "result")
        yield process.whenLine("ran for push")
        yield self.stopCleanly(process, transport)
        self.assertEqual(
            out.read_text().splitlines(),
            [f"start 0 0 {LOGIN} 0", f"push 1 2 {LOGIN} 1"],
        )

    @defer.inlineCallbacks
    def test_startRunForAccountsAddedBySighup(self) -> Steps:
        """With --accounts, each account gets one start run; one SIGHUP adds
        gets its own after its first subscription, and so does one removed
        and added back."""
        tokens = {login: "y0_" + secrets.token_urlsafe(16) for login in "abc"}
        server = yield self.startServer(tokens)
        directory = Path(self.directory)
        accounts = directory / "accounts"
        out = directory / "runs"
        self.environment["OUT"] = str(out)

        def writeAccounts(*logins: str) -> None:
            new = directory / "accounts.new"
            new.touch(mode=0o600)
            new.write_text("".join(f"{login}:{tokens[login]}\n" for login in logins))
            new.replace(accounts)

        writeAccounts("a", "b")
        process, transport = self.spawnTwistd(
            *self.serverArguments(server),
            f"--accounts={accounts}",
            f"--state-dir={directory / 'state'}",
            "--exec",
            # Numbers each run, so that every one has a line of its own.
            'echo "$YADISKPUSH_REASON $YADISKPUSH_LOGIN" >> "$OUT"; '
            'echo "run $(wc -l < "$OUT"): $YADISKPUSH_REASON $YADISKPUSH_LOGIN"',
            "--exec-on-start",
            "--exec-debounce=0.1",
        )
        yield process.whenLine("run 2: start")
        self.assertEqual(sorted(out.read_text().splitlines()), ["start a", "start b"])

        writeAccounts("a", "c")
        transport.signalProcess("HUP")
        yield process.whenLine("run 3: start c")
        writeAccounts("a", "b", "c")
        transport.signalProcess("HUP")
        yield process.whenLine("run 4: start b")
        yield self.stopCleanly(process, transport)
        self.assertEqual(len(out.read_text().splitlines()), 4)
