"""
``twistd yadiskpush --exec`` killed with SIGKILL while a run is in progress,
then started again: every push the server saw acknowledged reaches the
command (duplicates allowed, losses not), with its account in
``YADISKPUSH_LOGIN``. And a journal the release before logins left behind is
upgraded at startup and replayed to its account.

The real ``twistd`` child (as in ``test_plugin``) against a
:class:`~yadiskpush.localserver.LocalServer` in the test process, over
loopback TLS. The command appends its standard input to a file; in the
first child it then blocks reading a line from a FIFO the test holds open,
so the run is certainly in progress when the child is killed and every later
push is only in the journal. Waits are on the child's output, the server's
answers and a bounded check of the output file; nothing sleeps.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import sqlite3
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from tests.integration.test_plugin import (
    REPOSITORY,
    TWISTD,
    TWISTD_ARGS,
    Steps,
    TwistdProcess,
    reapChild,
    whenFileLines,
)
from yadiskpush.delivery.journal import JOURNAL_NAME
from yadiskpush.localserver import LocalServer

LOGIN = "test"
PUSHES = 200

#: Records its process group and its YADISKPUSH_LOGIN, appends its stdin to
#: $OUT, and, when $GATE is set, waits for a line on that FIFO.
COMMAND = (
    'echo "$$" >> "$PIDS"; echo "$YADISKPUSH_LOGIN" >> "$LOGINS"; '
    'cat >> "$OUT"; if [ -n "$GATE" ]; then read -r line < "$GATE"; fi'
)


class ExecCrashTests(TestCase):
    """SIGKILL during an --exec run loses no acknowledged push."""

    timeout = 60

    def setUp(self) -> None:
        if not TWISTD.exists():
            self.skipTest(f"no twistd next to {TWISTD.parent}")
        self.directory = Path(tempfile.mkdtemp(prefix="yadiskpush-exec-crash-"))
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.out = self.directory / "out.jsonl"
        self.pids = self.directory / "pids"
        self.logins = self.directory / "logins"
        self.stateDir = self.directory / "state"
        self.token = "y0_" + secrets.token_urlsafe(32)
        self.tokenFile = self.directory / "token"
        self.tokenFile.touch(mode=0o600)
        self.tokenFile.write_text(self.token + "\n")
        self.environment = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(REPOSITORY),
            "HOME": str(self.directory),
            "LANG": "C.UTF-8",
            "OUT": str(self.out),
            "PIDS": str(self.pids),
            "LOGINS": str(self.logins),
        }
        # Runs the first child left behind: its SIGKILL does not reach them.
        self.addCleanup(self.killRuns)

    def killRuns(self) -> None:
        if not self.pids.exists():
            return
        for pgid in {int(p) for p in self.pids.read_text().split()}:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def openGate(self) -> Path:
        """A FIFO whose both ends the test holds, so a reader just blocks."""
        gate = self.directory / "gate"
        os.mkfifo(gate)
        readEnd = os.open(gate, os.O_RDONLY | os.O_NONBLOCK)
        writeEnd = os.open(gate, os.O_WRONLY | os.O_NONBLOCK)
        self.addCleanup(os.close, readEnd)
        self.addCleanup(os.close, writeEnd)
        return gate

    @defer.inlineCallbacks
    def startServer(self) -> Any:
        server = LocalServer({LOGIN: self.token}, reactor=reactor)
        yield server.start()
        self.addCleanup(server.stop)
        return server

    def spawnClient(
        self, server: LocalServer, **environment: str
    ) -> tuple[TwistdProcess, Any]:
        """Start ``twistd yadiskpush --exec`` for ``server``; killed on cleanup."""
        caFile = server.writeCACertificate(self.directory / "ca.pem")
        args = [
            str(TWISTD),
            *TWISTD_ARGS,
            "--login",
            LOGIN,
            "--token-file",
            str(self.tokenFile),
            "--host",
            "localhost",
            "--port",
            str(server.starttlsPort),
            "--tls-port",
            str(server.tlsPort),
            "--ca-file",
            str(caFile),
            "--exec",
            COMMAND,
            # The first push's run starts at once, before the others.
            "--exec-debounce",
            "0",
            "--state-dir",
            str(self.stateDir),
        ]
        process = TwistdProcess()
        transport = reactor.spawnProcess(
            process,
            str(TWISTD),
            args,
            env={**self.environment, **environment},
            path=str(self.directory),
        )
        self.addCleanup(reapChild, process, transport)
        return process, transport

    def whenOutLines(
        self, process: TwistdProcess, count: int
    ) -> defer.Deferred[list[dict[str, Any]]]:
        """Fire with the command's output once it has ``count`` JSON lines."""
        return whenFileLines(self, process, str(self.out), count)

    @defer.inlineCallbacks
    def test_sigkillDuringARunLosesNoAckedPush(self) -> Steps:
        """200 pushes acked while a run is in progress, SIGKILL, restart with
        the same --state-dir: all 200 reach the command (the one in the
        killed run twice), none is lost."""
        server = yield self.startServer()
        gate = self.openGate()
        first, firstTransport = self.spawnClient(server, GATE=str(gate))
        yield first.whenLine("Subscribed to Disk pushes")

        answers = yield defer.gatherResults(
            [
                server.push(LOGIN, {"type": "disk", "revision": str(n)})
                for n in range(PUSHES)
            ]
        )
        acked = [a["id"] for a in answers if a["type"] == "result"]
        self.assertEqual(len(acked), PUSHES, first.text())

        # The first push's run is blocked on the gate: the 199 others were
        # acknowledged while only the journal had them.
        yield first.whenLine("Running the command for 1 notification(s)")
        before = yield self.whenOutLines(first, 1)
        self.assertEqual(len(before), 1)
        firstTransport.signalProcess(signal.SIGKILL)
        yield first.ended
        self.assertEqual(first.signal, signal.SIGKILL)

        second, secondTransport = self.spawnClient(server)
        yield second.whenLine(
            f"Replaying {PUSHES} notification(s) journaled before a restart"
        )
        lines = yield self.whenOutLines(second, PUSHES + 1)
        yield second.whenLine("The command finished after")

        seen = Counter(o["id"] for o in lines)
        lost = [i for i in acked if i not in seen]
        duplicated = sorted(i for i, n in seen.items() if n > 1)
        self.assertEqual(lost, [], f"lost {len(lost)} of {len(acked)} acked pushes")
        self.assertEqual(duplicated, [acked[0]])
        self.assertEqual(len(lines), PUSHES + 1)
        # Replayed in the order they were acknowledged.
        self.assertEqual([o["id"] for o in lines[1:]], acked)
        # Every run, the replay included, was for the one account.
        self.assertEqual({o["login"] for o in lines}, {LOGIN})
        self.assertEqual(set(self.logins.read_text().split()), {LOGIN})

        # Consumed: a clean stop leaves nothing journaled.
        secondTransport.signalProcess(signal.SIGTERM)
        yield second.ended
        self.assertNotIn("stay journaled", second.text())
        sinkProblems = [
            line
            for line in second.lines
            if "sinks.execute" in line and ("#error]" in line or "#critical]" in line)
        ]
        self.assertEqual(sinkProblems, [], second.text())

    def writeSchema1Journal(self, lines: list[bytes]) -> None:
        """Leave in the state directory a journal as the release before
        logins wrote it: schema 1, no login column."""
        self.stateDir.mkdir(mode=0o700)
        db = sqlite3.connect(self.stateDir / JOURNAL_NAME, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(
            "CREATE TABLE entries (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "line BLOB NOT NULL)"
        )
        db.execute("PRAGMA user_version = 1")
        for line in lines:
            db.execute("INSERT INTO entries (line) VALUES (?)", (line,))
        db.close()

    @defer.inlineCallbacks
    def test_journalOfThePreviousReleaseReplayed(self) -> Steps:
        """A schema 1 journal is upgraded at startup (logged), and its
        notifications go to the command in one run, in order, with the
        account they were pushed to in YADISKPUSH_LOGIN."""
        old = [
            {
                "id": f"old{n}",
                "from": "test@ya.ru",
                "to": f"{LOGIN}@ya.ru/yadiskpush-0123abcd",
                "received_at": 1795537935.25,
                "element": "query",
                "attributes": {"type": "diff", "revision": str(n)},
                "children": [],
                "raw_xml": "<iq/>",
            }
            for n in range(3)
        ]
        self.writeSchema1Journal([json.dumps(o).encode() + b"\n" for o in old])
        server = yield self.startServer()
        process, transport = self.spawnClient(server)
        yield process.whenLine("from schema 1 to 2; its 3 notification(s) are kept")
        yield process.whenLine(
            "Replaying 3 notification(s) journaled before a restart, for 1 account(s)"
        )
        lines = yield self.whenOutLines(process, 3)
        yield process.whenLine("The command finished after")
        self.assertEqual(lines, old)
        self.assertEqual(self.logins.read_text().split(), [LOGIN])

        transport.signalProcess(signal.SIGTERM)
        yield process.ended
        self.assertNotIn("stay journaled", process.text())
