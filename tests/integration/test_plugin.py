"""
``twistd yadiskpush`` as a user runs it: a real ``twistd`` child process.

The child runs the repository's code, not an installed copy: it gets
``PYTHONPATH=<repository>``, so ``yadiskpush`` is imported from here and
Twisted's plugin search also looks in ``<repository>/twisted/plugins``.
Each wait is on the child's own output (read as it comes, through
``spawnProcess``) or, for the JSON file, on a bounded check of its lines;
the class timeout bounds them all, and a child still running when a test
ends is killed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Generator
from pathlib import Path
from typing import Any

from twisted.internet import defer, error, reactor, task
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

Steps = Generator[defer.Deferred[Any], Any, None]

REPOSITORY = Path(__file__).resolve().parents[2]
TWISTD = Path(sys.executable).parent / "twistd"
TWISTD_ARGS = ["--nodaemon", "--pidfile=", "--logfile=-", "yadiskpush"]

#: How often the JSON output file is checked while a test waits on it.
FILE_CHECK_INTERVAL = 0.05


class ChildExited(Exception):
    """The child ended while a test was still waiting for something."""


class TwistdProcess(ProcessProtocol):
    """
    Collects a child's output (stdout and stderr) line by line, and lets a
    test wait for a line or for the exit.
    """

    def __init__(self) -> None:
        self.output = b""
        self.lines: list[str] = []
        self.exitCode: int | None = None
        self.signal: int | None = None
        self.ended: defer.Deferred[None] = defer.Deferred()
        self._partial = {1: b"", 2: b""}
        self._waits: list[tuple[str, defer.Deferred[str]]] = []

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.output += data
        *complete, self._partial[childFD] = (self._partial[childFD] + data).split(b"\n")
        for raw in complete:
            self.lines.append(raw.decode("utf-8", "replace"))
        for wait in list(self._waits):
            text, d = wait
            found = self.lineWith(text)
            if found is not None:
                self._waits.remove(wait)
                d.callback(found)

    def lineWith(self, text: str) -> str | None:
        return next((line for line in self.lines if text in line), None)

    def whenLine(self, text: str) -> defer.Deferred[str]:
        """Fire with the first output line containing ``text``."""
        found = self.lineWith(text)
        if found is not None:
            return defer.succeed(found)
        if self.ended.called:
            return defer.fail(ChildExited(self.describe(f"no line with {text!r}")))
        d: defer.Deferred[str] = defer.Deferred()
        self._waits.append((text, d))
        return d

    def processEnded(self, reason: Failure) -> None:
        for fd, rest in self._partial.items():
            if rest:
                self.lines.append(rest.decode("utf-8", "replace"))
                self._partial[fd] = b""
        self.exitCode = getattr(reason.value, "exitCode", None)
        self.signal = getattr(reason.value, "signal", None)
        waits, self._waits = self._waits, []
        for text, d in waits:
            d.errback(ChildExited(self.describe(f"no line with {text!r}")))
        self.ended.callback(None)

    def describe(self, what: str) -> str:
        text = self.output.decode("utf-8", "replace")
        return f"{what}; exit code {self.exitCode}, output:\n{text}"

    def text(self) -> str:
        return self.output.decode("utf-8", "replace")


def readLines(path: str) -> list[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.endswith("\n")]
    except FileNotFoundError:
        return []


def reapChild(process: TwistdProcess, transport: Any) -> defer.Deferred[None]:
    """Kill a child still running at cleanup; fire once it has ended."""
    if not process.ended.called:
        try:
            transport.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass
    return process.ended


def whenFileLines(
    case: TestCase, process: TwistdProcess, path: str, count: int
) -> defer.Deferred[list[dict[str, Any]]]:
    """
    Fire with the JSON objects of ``path`` once it has ``count`` whole
    lines; fail if the child exits first. Nothing reports a write to the
    file, so it is checked every few milliseconds (bounded by the test
    timeout).
    """
    done: defer.Deferred[list[dict[str, Any]]] = defer.Deferred()

    def check() -> None:
        lines = readLines(path)
        if len(lines) >= count:
            loop.stop()
            done.callback(lines)
        elif process.ended.called:
            loop.stop()
            done.errback(
                ChildExited(process.describe(f"{len(lines)} of {count} lines"))
            )

    loop = task.LoopingCall(check)
    loop.clock = reactor
    loop.start(FILE_CHECK_INTERVAL)
    case.addCleanup(lambda: loop.stop() if loop.running else None)
    return done


class TwistdTestCase(TestCase):
    """Runs ``twistd`` children exactly as documented, and cleans them up."""

    timeout = 60

    def setUp(self) -> None:
        if not TWISTD.exists():
            self.skipTest(f"no twistd next to {sys.executable}")
        self.directory = tempfile.mkdtemp(prefix="yadiskpush-plugin-test-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        # An explicit environment: no YADISKPUSH_TOKEN from the test runner.
        self.environment = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(REPOSITORY),
            "HOME": self.directory,
            "LANG": "C.UTF-8",
        }

    def spawnTwistd(self, *args: str) -> tuple[TwistdProcess, Any]:
        """Start ``twistd`` with ``args``; killed on cleanup if still running."""
        process = TwistdProcess()
        transport = reactor.spawnProcess(
            process,
            str(TWISTD),
            [str(TWISTD), *args],
            env=self.environment,
            path=self.directory,
        )
        self.addCleanup(self.reap, process, transport)
        return process, transport

    def reap(self, process: TwistdProcess, transport: Any) -> defer.Deferred[None]:
        return reapChild(process, transport)

    @defer.inlineCallbacks
    def startServer(self, accounts: dict[str, str]) -> Any:
        """A local server accepting ``accounts``, stopped on cleanup."""
        from yadiskpush.localserver import LocalServer

        server = LocalServer(accounts, reactor=reactor)
        yield server.start()
        self.addCleanup(server.stop)
        return server

    def serverArguments(self, server: Any, caFile: str | None = None) -> list[str]:
        """
        twistd's arguments up to the plugin's, and the plugin's options that
        point it at ``server`` (its CA written to ``ca.pem`` in the test's
        directory unless ``caFile`` is given).
        """
        if caFile is None:
            caFile = str(
                server.writeCACertificate(os.path.join(self.directory, "ca.pem"))
            )
        return [
            *TWISTD_ARGS,
            "--host=localhost",
            f"--port={server.starttlsPort}",
            f"--tls-port={server.tlsPort}",
            f"--ca-file={caFile}",
        ]

    def whenLines(
        self, process: TwistdProcess, path: str, count: int
    ) -> defer.Deferred[list[dict[str, Any]]]:
        """See :func:`whenFileLines`."""
        return whenFileLines(self, process, path, count)

    @defer.inlineCallbacks
    def stopCleanly(self, process: TwistdProcess, transport: Any) -> Steps:
        """
        SIGTERM; the child closes the stream, shuts down completely and
        without a traceback. twistd then ends itself with the signal it got
        (``app._exitWithSignal``, so its parent sees why it stopped): a
        complete shutdown is killed by SIGTERM, not exit status 0.
        """
        transport.signalProcess("TERM")
        yield process.ended
        output = process.text()
        self.assertEqual(
            (process.exitCode, process.signal), (None, signal.SIGTERM), output
        )
        self.assertNotIn("Traceback", output)
        self.assertNotIn("Unhandled", output)
        # Not "Received SIGTERM": Twisted logs it inside the signal handler,
        # where a write interrupting another log write is lost.
        self.assertInOrder(
            process,
            [
                "Closing the stream",
                "Push client stopped",
                "Main loop terminated.",
                "Server Shut Down.",
            ],
        )

    def assertInOrder(self, process: TwistdProcess, texts: list[str]) -> None:
        """Each of ``texts`` is in a line of the output, in this order."""
        positions = []
        for text in texts:
            found = [i for i, line in enumerate(process.lines) if text in line]
            self.assertTrue(found, process.describe(f"no line with {text!r}"))
            positions.append(found[0])
        self.assertEqual(positions, sorted(positions), process.text())


class PluginTests(TwistdTestCase):
    """The twistd plugin, run as a child process exactly as documented."""

    @defer.inlineCallbacks
    def test_demoWritesJSONLines(self) -> Steps:
        """twistd yadiskpush --demo --json-out runs the whole sequence, writes
        the three sample pushes, one more on SIGUSR1, and stops cleanly on
        SIGTERM."""
        path = os.path.join(self.directory, "pushes.jsonl")
        process, transport = self.spawnTwistd(
            *TWISTD_ARGS, "--demo", "--json-out", path
        )
        yield process.whenLine("Subscribed to Disk pushes")
        lines = yield self.whenLines(process, path, 3)
        self.assertEqual([o["id"] for o in lines], ["push-1", "push-2", "push-3"])
        self.assertEqual([o["attributes"]["new"] for o in lines], ["1", "2", "3"])
        self.assertEqual(
            [[(c["type"], c["path"]) for c in o["changes"]] for o in lines],
            [
                [("new", "/Документы"), ("new", "/Документы/Отчёт за ноябрь.odt")],
                [
                    ("changed", "/Документы/Отчёт за ноябрь.odt"),
                    ("moved", "/Photos/Море на закате.jpg"),
                ],
                [("deleted", "/Old drafts"), ("deleted", "/notes.txt")],
            ],
        )
        self.assertInOrder(
            process,
            [
                # The token comes from the OAuth stand-in's device flow.
                "Demo token, as yadiskpush token gets one: open https://localhost:",
                "Demo token granted for demo",
                "Connected to localhost:",
                "STARTTLS accepted",
                "TLS established; certificate verified for localhost",
                "Authenticated as demo (X-YANDEX-OAUTH)",
                "Session open as demo@ya.ru/",
                "Subscribed to Disk pushes",
                "kill -USR1",
            ],
        )

        transport.signalProcess(signal.SIGUSR1)
        lines = yield self.whenLines(process, path, 4)
        self.assertEqual(lines[3]["id"], "push-4")
        self.assertEqual(lines[3]["attributes"]["new"], "4")

        yield self.stopCleanly(process, transport)
        self.assertEqual(len(readLines(path)), 4)
        with open(path, encoding="utf-8") as f:
            self.assertTrue(f.read().endswith("\n"))

    @defer.inlineCallbacks
    def test_demoLogsEachChange(self) -> Steps:
        """Without --json-out or --exec, each change is logged as one
        "Disk changed" line; SIGUSR1 pushes one at once."""
        process, transport = self.spawnTwistd(*TWISTD_ARGS, "--demo")
        yield process.whenLine("kill -USR1")
        transport.signalProcess(signal.SIGUSR1)
        line = yield process.whenLine("Disk changed: id='push-1'")
        self.assertIn(
            "2 changes: created /Документы, created /Документы/Отчёт за ноябрь.odt",
            line,
        )
        self.assertInOrder(
            process,
            [
                "STARTTLS accepted",
                "Authenticated as demo",
                "Session open as demo@ya.ru/",
                "Subscribed to Disk pushes",
                "Disk changed: id='push-1'",
            ],
        )
        yield self.stopCleanly(process, transport)

    @defer.inlineCallbacks
    def test_missingLoginIsAUsageError(self) -> Steps:
        """Without --login (and no token anywhere) twistd prints a one-line
        error, no traceback, and exits 1."""
        process, transport = self.spawnTwistd(*TWISTD_ARGS)
        yield process.ended
        output = process.text()
        self.assertEqual(process.exitCode, 1, output)
        self.assertNotIn("Traceback", output)
        errors = [line for line in process.lines if "--login is required" in line]
        self.assertEqual(len(errors), 1, output)
        self.assertTrue(
            errors[0].endswith(
                ": --login is required (your Yandex login), or --accounts FILE"
            )
        )

    @defer.inlineCallbacks
    def test_missingTokenIsAUsageError(self) -> Steps:
        """With --login but no token file and no YADISKPUSH_TOKEN, twistd
        prints a one-line error naming both ways, no traceback, and exits 1."""
        process, transport = self.spawnTwistd(*TWISTD_ARGS, "--login", "test")
        yield process.ended
        output = process.text()
        self.assertEqual(process.exitCode, 1, output)
        self.assertNotIn("Traceback", output)
        errors = [line for line in process.lines if "no OAuth token" in line]
        self.assertEqual(len(errors), 1, output)
        self.assertIn("--token-file PATH or set YADISKPUSH_TOKEN", errors[0])

    @defer.inlineCallbacks
    def test_childRunsTheRepositoryCode(self) -> Steps:
        """With PYTHONPATH set to the repository, the child imports this
        repository's package and finds the plugin, whose module is ours."""
        program = (
            "import twisted.plugins, yadiskpush\n"
            "from twisted.plugin import getPlugins\n"
            "from twisted.application.service import IServiceMaker\n"
            "makers = [p for p in getPlugins(IServiceMaker)"
            " if p.tapname == 'yadiskpush']\n"
            "print(yadiskpush.__file__)\n"
            "print([m.module for m in makers])\n"
            "print(list(twisted.plugins.__path__))\n"
        )
        process = TwistdProcess()
        reactor.spawnProcess(
            process,
            sys.executable,
            [sys.executable, "-c", program],
            env=self.environment,
            path=self.directory,
        )
        yield process.ended
        self.assertEqual(process.exitCode, 0, process.text())
        packageFile, modules, pluginPath = process.lines[:3]
        self.assertEqual(Path(packageFile), REPOSITORY / "yadiskpush" / "__init__.py")
        self.assertEqual(modules, "['yadiskpush.cli.options']")
        self.assertIn(repr(str(REPOSITORY / "twisted" / "plugins")), pluginPath)

    @defer.inlineCallbacks
    def test_version(self) -> Steps:
        """twistd yadiskpush --version prints yadiskpush's, Twisted's and
        wokkel's versions, one a line, and exits 0."""
        from importlib.metadata import version

        from twisted import __version__ as twistedVersion
        from yadiskpush import __version__

        process, transport = self.spawnTwistd("yadiskpush", "--version")
        yield process.ended
        self.assertEqual(process.exitCode, 0, process.text())
        self.assertEqual(
            process.lines,
            [
                f"yadiskpush {__version__}",
                f"Twisted {twistedVersion}",
                f"wokkel {version('wokkel')}",
            ],
        )

    @defer.inlineCallbacks
    def test_badValueNamesItsOption(self) -> Steps:
        """A bad value is one line naming the option and what it takes, no
        Python exception text, exit 1."""
        process, transport = self.spawnTwistd(*TWISTD_ARGS, "--port", "abc")
        yield process.ended
        output = process.text()
        self.assertEqual(process.exitCode, 1, output)
        self.assertNotIn("Traceback", output)
        self.assertNotIn("invalid literal", output)
        self.assertTrue(
            any(
                line.endswith(": --port: 'abc' is not a port number (1 to 65535)")
                for line in process.lines
            ),
            output,
        )
