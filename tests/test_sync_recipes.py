"""
The recipes of docs/sync.rst (``docs/examples/sync/*.sh``), each run by the
real :class:`~yadiskpush.delivery.sinks.ExecSink` on the real reactor, for
notifications parsed from pushes as the server sends them.

The programs they start (``rclone``, ``yandex-disk``, ``notify-send``) are
stand-ins put first on ``PATH``: each records its name, arguments and
standard input as one JSON line, and the tests assert the exact arguments.
Waits are on the sink's own log events; nothing sleeps.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any, cast

from twisted.internet import defer, reactor
from twisted.logger import ILogObserver, Logger
from twisted.trial.unittest import TestCase
from wokkel.generic import parseXml

from tests.test_sinks_execute import FakeJournal, LogRecorder, isRunEnd
from yadiskpush.delivery.sinks import ExecSink
from yadiskpush.notification import Notification

RECIPES = Path(__file__).resolve().parent.parent / "docs" / "examples" / "sync"

Steps = Generator[defer.Deferred[Any], Any, None]

#: A stand-in for a program: appends what it was called with to $RECORD.
STAND_IN = """\
import json, os, sys
with open(os.environ["RECORD"], "a", encoding="utf-8") as f:
    f.write(json.dumps({
        "program": os.path.basename(sys.argv[0]),
        "argv": sys.argv[1:],
        "stdin": sys.stdin.read(),
    }) + "\\n")
"""

LOGIN = "alice"


def op(type: str, key: str, **attributes: str) -> str:
    """One ``<op>`` of a push's ``<diff>``."""
    extra = "".join(f" {name}='{value}'" for name, value in attributes.items())
    return f"<op type='{type}' key='{key}' resource_type='file'{extra}/>"


def push(number: int, *ops: str) -> Notification:
    """Push ``number`` of alice, its ``<diff>`` made of ``ops``."""
    diff = f"<diff>{''.join(ops)}</diff>" if ops else ""
    xml = (
        f"<iq type='set' id='push{number}' from='push.xmpp.yandex.ru' "
        f"to='{LOGIN}@ya.ru/yadiskpush'><query xmlns='yandex:push:disk' "
        f"type='disk' new='{number}'>{diff}</query></iq>"
    )
    return Notification.fromStanza(parseXml(xml.encode("utf-8")), 1.7e9, LOGIN)


class RecipeTests(TestCase):
    """Each recipe, run for realistic pushes, calls its program with exactly
    the arguments the docs promise."""

    timeout = 30

    def setUp(self) -> None:
        self.dir = Path(os.path.abspath(self.mktemp()))
        bin = self.dir / "bin"
        bin.mkdir(parents=True)
        for program in ("rclone", "yandex-disk", "notify-send"):
            path = bin / program
            path.write_text(f"#!{sys.executable}\n{STAND_IN}")
            path.chmod(0o755)
        self.record = self.dir / "record.jsonl"
        self.home = self.dir / "home"
        self.home.mkdir()
        self.environ = {
            # python3 of the recipes: the one running the tests, if the
            # system has none.
            "PATH": os.pathsep.join(
                [
                    str(bin),
                    os.environ.get("PATH", "/usr/bin:/bin"),
                    str(Path(sys.executable).parent),
                ]
            ),
            "HOME": str(self.home),
            "RECORD": str(self.record),
        }
        self.recorder = LogRecorder()

    def sink(self, recipe: str, **environ: str) -> ExecSink:
        """
        A sink running ``recipe``; closed on cleanup. Its journal takes each
        push at once, so the pushes a test delivers together are all in
        before the debounce can end: one run, whatever the machine's speed.
        """
        sink = ExecSink(
            str(RECIPES / recipe),
            10,
            reactor=reactor,
            environ={**self.environ, **environ},
            journal=cast(Any, FakeJournal()),
            debounce=0.01,
            maxDelay=1,
            log=Logger(observer=cast(ILogObserver, self.recorder)),
        )
        self.addCleanup(sink.close)
        return sink

    @defer.inlineCallbacks
    def runRecipe(
        self, sink: ExecSink, *notifications: Notification, start: bool = False
    ) -> Generator[Any, Any, list[dict[str, Any]]]:
        """Deliver ``notifications`` (after asking for the start run), wait
        for the one run, and return what the stand-ins recorded."""
        if start:
            sink.runOnStart(LOGIN)
        yield defer.gatherResults([sink.deliver(n) for n in notifications])
        [end] = yield self.recorder.waitFor(isRunEnd, 1)
        self.assertEqual(end["exitStatus"], 0, self.recorder.texts())
        self.assertEqual(sink.runs, 1)
        if not self.record.exists():
            return []
        with self.record.open(encoding="utf-8") as f:
            return [json.loads(line) for line in f]

    def argvOf(self, calls: list[dict[str, Any]]) -> list[list[str]]:
        return [[call["program"], *call["argv"]] for call in calls]

    @defer.inlineCallbacks
    def test_rcloneSync(self) -> Steps:
        """rclone-sync.sh: rclone sync from the remote to the local folder,
        the defaults or the ones given."""
        calls = yield self.runRecipe(
            self.sink("rclone-sync.sh"), push(1, op("new", "disk:/Docs/a.txt"))
        )
        self.assertEqual(
            self.argvOf(calls),
            [["rclone", "sync", "yandex:", str(self.home / "YandexDisk")]],
        )
        # Standard input was the script's: nothing left for rclone.
        self.assertEqual(calls[0]["stdin"], "")

    @defer.inlineCallbacks
    def test_rcloneSyncSettings(self) -> Steps:
        """RCLONE_REMOTE and SYNC_DIR choose both ends."""
        sink = self.sink("rclone-sync.sh", RCLONE_REMOTE="disk:", SYNC_DIR="/srv/d")
        calls = yield self.runRecipe(sink, start=True)
        self.assertEqual(self.argvOf(calls), [["rclone", "sync", "disk:", "/srv/d"]])

    @defer.inlineCallbacks
    def test_rcloneBisync(self) -> Steps:
        """rclone-bisync.sh: rclone bisync between the remote and the
        folder."""
        calls = yield self.runRecipe(
            self.sink("rclone-bisync.sh"), push(1, op("deleted", "disk:/b.txt"))
        )
        self.assertEqual(
            self.argvOf(calls),
            [["rclone", "bisync", "yandex:", str(self.home / "YandexDisk")]],
        )

    @defer.inlineCallbacks
    def test_vfsRefreshChangedFolder(self) -> Steps:
        """A change in /Docs/a.txt refreshes dir=Docs, recursively."""
        calls = yield self.runRecipe(
            self.sink("rclone-vfs-refresh.sh"),
            push(1, op("new", "disk:/Docs/a.txt")),
        )
        self.assertEqual(
            self.argvOf(calls),
            [["rclone", "rc", "vfs/refresh", "recursive=true", "dir=Docs"]],
        )

    @defer.inlineCallbacks
    def test_vfsRefreshSeveralFolders(self) -> Steps:
        """Changes in a few folders, over coalesced pushes and a move,
        refresh each folder once (dir=, dir2=, ...), a subfolder of one
        already refreshed left out; the remote control's URL is passed."""
        sink = self.sink("rclone-vfs-refresh.sh", RCLONE_RC_URL="http://[::1]:5573/")
        calls = yield self.runRecipe(
            sink,
            push(1, op("changed", "disk:/Photos/2026/a b.jpg")),
            push(
                2,
                op("moved", "disk:/Work/new.odt", **{"from": "disk:/Старое/x.odt"}),
                op("new", "disk:/Photos/2026/Trip/c.jpg"),
                op("changed", "disk:/Work/new.odt"),
            ),
        )
        self.assertEqual(
            self.argvOf(calls),
            [
                [
                    "rclone",
                    "rc",
                    "--url",
                    "http://[::1]:5573/",
                    "vfs/refresh",
                    "recursive=true",
                    "dir=Photos/2026",
                    "dir2=Work",
                    "dir3=Старое",
                ]
            ],
        )

    @defer.inlineCallbacks
    def test_vfsRefreshRootForMany(self) -> Steps:
        """Deletions in more folders than VFS_REFRESH_MAX_DIRS refresh the
        whole mount (no dir=)."""
        ops = [op("deleted", f"disk:/Old/{n}/f.txt") for n in range(11)]
        calls = yield self.runRecipe(self.sink("rclone-vfs-refresh.sh"), push(1, *ops))
        self.assertEqual(
            self.argvOf(calls), [["rclone", "rc", "vfs/refresh", "recursive=true"]]
        )

    @defer.inlineCallbacks
    def test_vfsRefreshRootForTheStartAndUnknown(self) -> Steps:
        """The start run, a change at the top and a push that says nothing
        of what changed each refresh the whole mount."""
        root = ["rclone", "rc", "vfs/refresh", "recursive=true"]
        calls = yield self.runRecipe(self.sink("rclone-vfs-refresh.sh"), start=True)
        self.assertEqual(self.argvOf(calls), [root])
        self.record.unlink()
        for notification in (push(2, op("new", "disk:/top.txt")), push(3)):
            self.recorder = LogRecorder()
            calls = yield self.runRecipe(
                self.sink("rclone-vfs-refresh.sh"), notification
            )
            self.assertEqual(self.argvOf(calls), [root])
            self.record.unlink()

    @defer.inlineCallbacks
    def test_yandexDiskSync(self) -> Steps:
        """yandex-disk-sync.sh: yandex-disk sync, with --dir= when
        YANDEX_DISK_DIR is set."""
        calls = yield self.runRecipe(
            self.sink("yandex-disk-sync.sh"), push(1, op("new", "disk:/a.txt"))
        )
        self.assertEqual(self.argvOf(calls), [["yandex-disk", "sync"]])
        self.record.unlink()
        self.recorder = LogRecorder()
        sink = self.sink("yandex-disk-sync.sh", YANDEX_DISK_DIR="/srv/Yandex Disk")
        calls = yield self.runRecipe(sink, start=True)
        self.assertEqual(
            self.argvOf(calls), [["yandex-disk", "sync", "--dir=/srv/Yandex Disk"]]
        )

    @defer.inlineCallbacks
    def test_notify(self) -> Steps:
        """notify.sh: one notification whose title counts the run's changes
        and whose body names the first five, then how many more."""
        ops = [op("new", f"disk:/Docs/{n}.txt") for n in range(5)]
        calls = yield self.runRecipe(
            self.sink("notify.sh"),
            push(1, op("moved", "disk:/New", **{"from": "disk:/Old"})),
            push(2, *ops, op("deleted", "disk:/Docs/gone.txt")),
        )
        self.assertEqual(
            self.argvOf(calls),
            [
                [
                    "notify-send",
                    "--app-name=yadiskpush",
                    "Yandex.Disk: 7 changes",
                    "moved /Old \u2192 /New\n"
                    + "".join(f"new /Docs/{n}.txt\n" for n in range(4))
                    + "and 2 more",
                ]
            ],
        )

    @defer.inlineCallbacks
    def test_notifyQuietAtStart(self) -> Steps:
        """notify.sh says nothing for a start run without pushes."""
        calls = yield self.runRecipe(self.sink("notify.sh"), start=True)
        self.assertEqual(calls, [])
