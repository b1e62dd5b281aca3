"""
``twistd yadiskpush --json-out -`` whose standard output nobody reads.

The real ``twistd`` runs as a child against a local server in the test
process; its standard output is a pipe the test does not read until the end,
its standard error is read as it comes (the log goes there). Once the pipe is
full the client must keep answering the server, withhold the acks of what it
could not write, and still stop within seconds on SIGTERM; the pipe must
then hold JSON lines only.
"""

from __future__ import annotations

import json
import os
import select
import signal
from typing import Any

from twisted.internet import defer, reactor, task

from tests.integration import test_plugin as plugin
from tests.integration.support import LOGIN, LocalServerTestCase

#: Pushes sent; with :data:`FILLER` bytes each (twice in a JSON line: the
#: attribute and the raw XML), several hundred KB, well beyond a pipe's 64 KB.
PUSHES = 24
FILLER = 16000

#: Seconds a ping may take before the test calls the client frozen.
PING_LIMIT = 10.0

#: How often the pipe is checked while the test waits for it to fill.
PIPE_CHECK_INTERVAL = 0.05


class StalledStdoutTests(LocalServerTestCase):
    """A stalled reader of ``--json-out -`` neither freezes nor corrupts."""

    timeout = 60

    def setUp(self) -> None:
        super().setUp()
        if not plugin.TWISTD.exists():
            self.skipTest("no twistd next to the test's Python")
        # An explicit environment: no YADISKPUSH_TOKEN from the test runner.
        self.environment = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(plugin.REPOSITORY),
            "HOME": self.directory,
            "LANG": "C.UTF-8",
        }

    def writeToken(self) -> str:
        path = os.path.join(self.directory, "token")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.token + "\n")
        return path

    def spawnWithStdout(
        self, stdoutFD: int, *args: str
    ) -> tuple[plugin.TwistdProcess, Any]:
        """Start twistd with ``stdoutFD`` as its standard output; stderr is
        read; the child is killed on cleanup if still running."""
        process = plugin.TwistdProcess()
        transport = reactor.spawnProcess(
            process,
            str(plugin.TWISTD),
            [str(plugin.TWISTD), *args],
            env=self.environment,
            path=self.directory,
            childFDs={0: "w", 1: stdoutFD, 2: "r"},
        )
        self.addCleanup(plugin.reapChild, process, transport)
        return process, transport

    def whenPipeFull(
        self, writeEnd: int, process: plugin.TwistdProcess
    ) -> defer.Deferred[None]:
        """
        Fire once the pipe takes no more data (its write end is no longer
        writable); fail if the child exits first. Nothing reports that, so
        it is checked every few milliseconds, bounded by the test timeout.
        """
        done: defer.Deferred[None] = defer.Deferred()

        def check() -> None:
            _, writable, _ = select.select([], [writeEnd], [], 0)
            if not writable:
                loop.stop()
                done.callback(None)
            elif process.ended.called:
                loop.stop()
                done.errback(plugin.ChildExited(process.describe("pipe not full")))

        loop = task.LoopingCall(check)
        loop.clock = reactor
        loop.start(PIPE_CHECK_INTERVAL)
        self.addCleanup(lambda: loop.stop() if loop.running else None)
        return done

    @defer.inlineCallbacks
    def test_stalledStdoutReader(self) -> Any:
        """With its JSON pipe full, the client answers 5 of 5 pings, acks only
        what is in the pipe, exits within seconds of SIGTERM, and the pipe
        holds JSON lines only (the log went to standard error)."""
        server = yield self.startServer()
        readEnd, writeEnd = os.pipe()
        self.addCleanup(os.close, readEnd)
        writeEndOpen = [True]

        def closeWriteEnd() -> None:
            if writeEndOpen.pop():
                os.close(writeEnd)

        self.addCleanup(lambda: closeWriteEnd() if writeEndOpen else None)
        subscribed = server.whenSubscribed(1)
        process, transport = self.spawnWithStdout(
            writeEnd,
            *plugin.TWISTD_ARGS,
            "--host",
            "localhost",
            "--port",
            str(server.starttlsPort),
            "--tls-port",
            str(server.tlsPort),
            "--ca-file",
            self.caFile(server),
            "--login",
            LOGIN,
            "--token-file",
            self.writeToken(),
            "--json-out",
            "-",
        )
        session = yield subscribed

        for number in range(PUSHES):
            answer = server.push(LOGIN, {"filler": f"{number:05d}" + "x" * FILLER})
            # Pushes the client cannot write stay unanswered until it stops.
            answer.addErrback(lambda _: None)
        yield self.whenPipeFull(writeEnd, process)
        self.assertLess(len(server.acks), PUSHES)

        for _ in range(5):
            answer = yield session.ping().addTimeout(PING_LIMIT, reactor)
            self.assertEqual(answer.getAttribute("type"), "result")

        started = reactor.seconds()
        transport.signalProcess("TERM")
        yield process.ended
        self.assertLess(reactor.seconds() - started, 10.0)
        output = process.text()
        self.assertEqual(
            (process.exitCode, process.signal), (None, signal.SIGTERM), output
        )
        self.assertNotIn("Traceback", output)
        self.assertIsNotNone(process.lineWith("Subscribed to Disk pushes"), output)
        self.assertIsNotNone(process.lineWith("were not written within"), output)

        # Every writer is gone once our own copy is closed: read to the end.
        closeWriteEnd()
        data = b""
        while chunk := os.read(readEnd, 65536):
            data += chunk
        complete, _, torn = data.rpartition(b"\n")
        ids = [json.loads(line)["id"] for line in complete.split(b"\n")]
        self.assertEqual(ids, [f"push-{n}" for n in range(1, len(ids) + 1)])
        # Acknowledged only what is in the pipe.
        self.assertLessEqual(set(server.acks), set(ids))
        # A line cut off when the client stopped can only be the next push's.
        if torn:
            self.assertTrue(
                torn.startswith(f'{{"id": "push-{len(ids) + 1}"'.encode()), torn[:80]
            )
