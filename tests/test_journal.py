"""
Tests for yadiskpush.delivery.journal (the durable --exec journal) and for
yadiskpush.statedir (where it lives), with the --state-dir option checks.

Journal tests run on the real reactor: its I/O is in a real worker thread,
and each test waits on the journal's Deferreds.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any, cast

from twisted.internet import defer, reactor
from twisted.logger import ILogObserver, LogEvent, Logger, formatEvent
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from yadiskpush.cli.options import Options
from yadiskpush.delivery import journal as journalModule
from yadiskpush.delivery.journal import (
    JOURNAL_NAME,
    SCHEMA_VERSION,
    Entry,
    Journal,
    JournalClosed,
    checkJournal,
    loginOfLine,
)
from yadiskpush.errors import ConfigurationError
from yadiskpush.statedir import ensureStateDir, resolveStateDir


def line(number: int) -> bytes:
    """A journal entry as the --exec sink writes it: one JSON line."""
    return b'{"id": "push%d", "attributes": {}}\n' % number


def writeSchema1(path: Path, lines: list[bytes]) -> list[int]:
    """
    A journal as the release before logins wrote it (schema 1: no login
    column), holding ``lines``; returns their ids. The last entry is removed
    after one more is added, so the next id is not simply the row count.
    """
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(
        "CREATE TABLE entries (id INTEGER PRIMARY KEY AUTOINCREMENT, "
        "line BLOB NOT NULL)"
    )
    db.execute("PRAGMA user_version = 1")
    ids = [
        cast(int, db.execute("INSERT INTO entries (line) VALUES (?)", (x,)).lastrowid)
        for x in [*lines, b"consumed\n"]
    ]
    db.execute("DELETE FROM entries WHERE id = ?", (ids[-1],))
    db.close()
    return ids[:-1]


def schemaOf(path: Path) -> tuple[int, list[str]]:
    """The ``user_version`` of the journal at ``path`` and its columns."""
    db = sqlite3.connect(path)
    try:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        columns = [row[1] for row in db.execute("PRAGMA table_info(entries)")]
    finally:
        db.close()
    return version, columns


class JournalTests(TestCase):
    """The journal keeps entries across reopening, in order, off the reactor."""

    timeout = 20

    def setUp(self) -> None:
        self.path = Path(self.mktemp()).absolute()
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def journal(self, path: Path | None = None) -> Journal:
        """A journal at ``path`` (default: the test's), closed on cleanup."""
        journal = Journal(self.path if path is None else path, reactor)
        self.addCleanup(journal.close)
        return journal

    @defer.inlineCallbacks
    def reopened(self) -> Generator[Any, Any, list[tuple[int, bytes]]]:
        """The entries a fresh journal on the same file finds at open."""
        journal = self.journal()
        entries = yield journal.open()
        yield journal.close()
        return entries

    @defer.inlineCallbacks
    def test_entriesSurviveReopening(self) -> Generator[Any, Any, None]:
        """Appended entries are found, oldest first and byte for byte, by the
        next journal opened on the same file."""
        journal = self.journal()
        self.assertEqual((yield journal.open()), [])
        ids = []
        logins = ["alice", "", "bob"]
        for number, login in enumerate(logins):
            ids.append((yield journal.append(line(number), login)))
        yield journal.close()
        self.assertEqual(ids, sorted(ids))
        entries = yield self.reopened()
        self.assertEqual(
            entries,
            [Entry(i, line(n), logins[n]) for n, i in enumerate(ids)],
        )

    @defer.inlineCallbacks
    def test_groupCommit(self) -> Generator[Any, Any, None]:
        """A hundred appends made in one reactor turn are written in one
        transaction, and all fire, in order, once it is committed."""
        journal = self.journal()
        yield journal.open()
        appends = [journal.append(line(n)) for n in range(100)]
        self.assertEqual(journal.count, 100)
        for d in appends:
            self.assertNoResult(d)
        ids = yield defer.gatherResults(appends)
        self.assertEqual(journal.commits, 1)
        self.assertEqual(ids, sorted(ids))
        self.assertEqual(len(set(ids)), 100)

        yield defer.gatherResults([journal.append(line(n)) for n in range(3)])
        self.assertEqual(journal.commits, 2)

    @defer.inlineCallbacks
    def test_writesOffTheReactorThread(self) -> Generator[Any, Any, None]:
        """Every database call runs in the journal's one worker thread."""
        journal = self.journal()
        threadIds: set[int] = set()
        store = journal._store
        for name in ("open", "append", "entries", "remove", "close"):
            original = getattr(store, name)

            def recorded(*args: Any, _original: Any = original) -> Any:
                threadIds.add(threading.get_ident())
                return _original(*args)

            setattr(store, name, recorded)
        yield journal.open()
        entryId = yield journal.append(line(1))
        yield journal.pending()
        yield journal.remove([entryId])
        yield journal.close()
        self.assertEqual(len(threadIds), 1)
        self.assertNotIn(threading.get_ident(), threadIds)

    @defer.inlineCallbacks
    def test_removedEntriesStayRemoved(self) -> Generator[Any, Any, None]:
        """Removed entries are gone after reopening; the others remain."""
        journal = self.journal()
        yield journal.open()
        ids = yield defer.gatherResults([journal.append(line(n)) for n in range(4)])
        yield journal.remove(ids[:3])
        self.assertEqual(journal.count, 1)
        self.assertEqual((yield journal.pending()), [Entry(ids[3], line(3))])
        yield journal.close()
        self.assertEqual((yield self.reopened()), [Entry(ids[3], line(3))])

    @defer.inlineCallbacks
    def test_idsNeverReused(self) -> Generator[Any, Any, None]:
        """After the newest entry is removed, the next one still gets a
        higher id, so replayed and new entries stay in arrival order."""
        journal = self.journal()
        yield journal.open()
        first = yield journal.append(line(1))
        yield journal.remove([first])
        second = yield journal.append(line(2))
        self.assertGreater(second, first)

    @defer.inlineCallbacks
    def test_closeWritesThisTurnsAppends(self) -> Generator[Any, Any, None]:
        """An append made in the same turn as close() is still written."""
        journal = self.journal()
        yield journal.open()
        appended = journal.append(line(7))
        closed = journal.close()
        entryId = yield appended
        yield closed
        self.assertEqual((yield self.reopened()), [Entry(entryId, line(7))])

    @defer.inlineCallbacks
    def test_closedJournalRefuses(self) -> Generator[Any, Any, None]:
        """After close(), append, pending and remove fail with JournalClosed."""
        journal = self.journal()
        yield journal.open()
        yield journal.close()
        self.failureResultOf(journal.append(line(1)), JournalClosed)
        self.failureResultOf(journal.pending(), JournalClosed)
        self.failureResultOf(journal.remove([1]), JournalClosed)
        self.successResultOf(journal.close())

    @defer.inlineCallbacks
    def test_corruptJournal(self) -> Generator[Any, Any, None]:
        """A file that is not a journal is a ConfigurationError naming it and
        saying what to do, for open() and for the startup check."""
        self.path.write_bytes(b"this is not a database\n" * 100)
        failure = yield self.assertFailure(self.journal().open(), ConfigurationError)
        message = str(failure)
        self.assertIn(str(self.path), message)
        self.assertIn("corrupt", message)
        self.assertIn("move it away", message)
        self.assertNotIn("\n", message)
        error = self.assertRaises(ConfigurationError, checkJournal, self.path)
        self.assertEqual(str(error), message)

    @defer.inlineCallbacks
    def test_foreignDatabase(self) -> Generator[Any, Any, None]:
        """Another program's SQLite database is refused, not written into."""
        import sqlite3

        db = sqlite3.connect(self.path)
        db.execute("CREATE TABLE things (x)")
        db.commit()
        db.close()
        failure = yield self.assertFailure(self.journal().open(), ConfigurationError)
        self.assertIn("another program", str(failure))

    @defer.inlineCallbacks
    def test_unopenable(self) -> Generator[Any, Any, None]:
        """A journal in a missing directory is a ConfigurationError naming it."""
        path = self.path.parent / "missing" / JOURNAL_NAME
        failure = yield self.assertFailure(
            self.journal(path).open(), ConfigurationError
        )
        self.assertIn(str(path), str(failure))
        self.assertIn("cannot open", str(failure))

    @defer.inlineCallbacks
    def test_secondUserRefused(self) -> Generator[Any, Any, None]:
        """A journal open in one place cannot be opened a second time, so two
        processes never run (and remove) the same entries."""
        first = self.journal()
        yield first.open()
        failure = yield self.assertFailure(self.journal().open(), ConfigurationError)
        self.assertIn("in use by another yadiskpush process", str(failure))
        self.assertRaises(ConfigurationError, checkJournal, self.path)
        yield first.close()
        self.assertEqual(checkJournal(self.path), 0)

    @defer.inlineCallbacks
    def test_inMemory(self) -> Generator[Any, Any, None]:
        """A journal without a path works the same, in memory."""
        journal = Journal(None, reactor)
        self.addCleanup(journal.close)
        yield journal.open()
        entryId = yield journal.append(line(1), "alice")
        self.assertEqual((yield journal.pending()), [Entry(entryId, line(1), "alice")])


class JournalUpgradeTests(TestCase):
    """A journal of the release before logins is upgraded in place, keeping
    every entry and its order, and naming each entry's account."""

    timeout = 20

    def setUp(self) -> None:
        self.path = Path(self.mktemp()).absolute()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.events: list[LogEvent] = []
        self.patch(
            Journal, "_log", Logger(observer=cast(ILogObserver, self.events.append))
        )
        self.lines = [
            # As the release before logins wrote them: the login is the local
            # part of the recipient JID.
            b'{"id": "push1", "to": "test@ya.ru/yadiskpush-1"}\n',
            b'{"login": "alice", "id": "push2", "to": "alice@ya.ru/r"}\n',
            b'{"id": "push3", "to": ""}\n',
        ]

    def journal(self) -> Journal:
        journal = Journal(self.path, reactor)
        self.addCleanup(journal.close)
        return journal

    def upgrades(self) -> list[str]:
        return [formatEvent(e) for e in self.events if "Upgraded" in formatEvent(e)]

    @defer.inlineCallbacks
    def test_upgradedAtOpen(self) -> Generator[Any, Any, None]:
        """Opening a schema 1 journal upgrades it: same ids, same order, each
        entry's login from its line, logged once; later ids stay higher."""
        ids = writeSchema1(self.path, self.lines)
        journal = self.journal()
        entries = yield journal.open()
        self.assertEqual(
            entries,
            [
                Entry(ids[0], self.lines[0], "test"),
                Entry(ids[1], self.lines[1], "alice"),
                Entry(ids[2], self.lines[2], ""),
            ],
        )
        self.assertEqual(journal.count, 3)
        self.assertEqual(
            self.upgrades(),
            [
                f"Upgraded the journal {self.path} from schema 1 to "
                f"{SCHEMA_VERSION}; its 3 notification(s) are kept"
            ],
        )
        newId = yield journal.append(line(4), "bob")
        # The id of the entry consumed before the upgrade is not reused.
        self.assertGreater(newId, ids[-1] + 1)
        yield journal.close()
        self.assertEqual(schemaOf(self.path), (SCHEMA_VERSION, ["id", "line", "login"]))
        again = yield self.journal().open()
        self.assertEqual(again[-1], Entry(newId, line(4), "bob"))
        self.assertEqual(len(self.upgrades()), 1)

    def test_upgradedByTheStartupCheck(self) -> None:
        """The startup check upgrades too, and says so (twistd shows events
        logged before its log began)."""
        writeSchema1(self.path, self.lines)
        self.assertEqual(checkJournal(self.path), 3)
        self.assertEqual(len(self.upgrades()), 1)
        self.assertEqual(schemaOf(self.path)[0], SCHEMA_VERSION)
        self.assertEqual(checkJournal(self.path), 3)
        self.assertEqual(len(self.upgrades()), 1)

    def test_failedUpgradeRolledBack(self) -> None:
        """An upgrade that fails half way leaves the journal as it was, so
        that the next start can try again; the error says what to do."""
        ids = writeSchema1(self.path, self.lines)

        def broken(line: bytes) -> str:
            raise sqlite3.OperationalError("disk I/O error")

        self.patch(journalModule, "loginOfLine", broken)
        error = self.assertRaises(
            journalModule.ConfigurationError, checkJournal, self.path
        )
        self.assertIn("disk I/O error", str(error))
        self.assertEqual(schemaOf(self.path), (1, ["id", "line"]))
        db = sqlite3.connect(self.path)
        rows = db.execute("SELECT id, line FROM entries ORDER BY id").fetchall()
        db.close()
        self.assertEqual(rows, list(zip(ids, self.lines, strict=True)))
        self.assertEqual(self.upgrades(), [])

    def test_newerSchemaRefused(self) -> None:
        """A journal of a newer schema is refused, not rewritten, with a
        sentence saying what to do."""
        writeSchema1(self.path, self.lines)
        db = sqlite3.connect(self.path, isolation_level=None)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        db.close()
        error = self.assertRaises(
            journalModule.ConfigurationError, checkJournal, self.path
        )
        self.assertEqual(
            str(error),
            f"the journal {self.path} was written by a newer version of "
            f"yadiskpush (schema {SCHEMA_VERSION + 1}; this one reads schema "
            f"{SCHEMA_VERSION} and older): run that version, or move the journal "
            "away to start with an empty one (the notifications it holds are "
            "then lost)",
        )
        self.assertEqual(schemaOf(self.path)[0], SCHEMA_VERSION + 1)


class LoginOfLineTests(SynchronousTestCase):
    """Which account an entry written before logins belongs to."""

    def test_loginField(self) -> None:
        """The line's own login wins."""
        data = {"login": "alice", "to": "bob@ya.ru/r"}
        self.assertEqual(loginOfLine(json.dumps(data).encode()), "alice")

    def test_recipient(self) -> None:
        """Otherwise the local part of the recipient JID."""
        self.assertEqual(loginOfLine(b'{"to": "test@ya.ru/yadiskpush-1"}'), "test")

    def test_nothingToGoOn(self) -> None:
        """No login, no JID, or not a JSON object: the account ``""``."""
        for data in (b'{"to": "ya.ru"}', b"[1]", b"not json", b"{}"):
            self.assertEqual(loginOfLine(data), "")


class StateDirTests(SynchronousTestCase):
    """The state directory follows --state-dir, systemd, then XDG."""

    def test_optionFirst(self) -> None:
        """--state-dir wins over every variable."""
        environ = {"STATE_DIRECTORY": "/var/lib/a", "XDG_STATE_HOME": "/x"}
        self.assertEqual(resolveStateDir("/opt/s", environ), Path("/opt/s"))

    def test_systemdFirstEntry(self) -> None:
        """$STATE_DIRECTORY is used as is, its first entry when it lists several."""
        environ = {"STATE_DIRECTORY": "/var/lib/a:/var/lib/b", "XDG_STATE_HOME": "/x"}
        self.assertEqual(resolveStateDir(None, environ), Path("/var/lib/a"))

    def test_xdgStateHome(self) -> None:
        """Without systemd, $XDG_STATE_HOME/yadiskpush."""
        environ = {"XDG_STATE_HOME": "/x", "HOME": "/home/u"}
        self.assertEqual(resolveStateDir(None, environ), Path("/x/yadiskpush"))

    def test_homeDefault(self) -> None:
        """Otherwise ~/.local/state/yadiskpush; a relative XDG value is ignored."""
        environ = {"XDG_STATE_HOME": "relative", "HOME": "/home/u"}
        self.assertEqual(
            resolveStateDir(None, environ), Path("/home/u/.local/state/yadiskpush")
        )

    def test_createdPrivate(self) -> None:
        """The directory and its missing parents are created with mode 0700."""
        base = Path(self.mktemp())
        base.mkdir()
        path = base / "a" / "b"
        self.assertEqual(ensureStateDir(path), path)
        for directory in (base / "a", path):
            self.assertEqual(stat.S_IMODE(directory.stat().st_mode), 0o700)
        self.assertEqual(ensureStateDir(path), path)

    def test_notADirectory(self) -> None:
        """A file in the way is a ConfigurationError naming the path."""
        path = Path(self.mktemp())
        path.write_text("")
        error = self.assertRaises(ConfigurationError, ensureStateDir, path)
        self.assertIn(str(path), str(error))
        self.assertIn("not a directory", str(error))

    def test_notWritable(self) -> None:
        """A directory that cannot be written is a ConfigurationError."""
        if os.geteuid() == 0:
            raise self.skipTest("root can write anywhere")
        path = Path(self.mktemp())
        path.mkdir(mode=0o500)
        self.addCleanup(path.chmod, 0o700)
        error = self.assertRaises(ConfigurationError, ensureStateDir, path)
        self.assertIn(f"cannot write in the state directory {path}", str(error))


class StateDirOptionTests(SynchronousTestCase):
    """--state-dir is checked at startup, so mistakes are usage errors."""

    def parse(self, *argv: str, environ: dict[str, str] | None = None) -> Options:
        options = Options()
        options.environ = environ if environ is not None else {}
        options.parseOptions(["--login", "test", *argv])
        return options

    def test_journalCreated(self) -> None:
        """With --exec, the state directory and an empty journal are created."""
        directory = Path(self.mktemp()).absolute()
        options = self.parse(
            "--exec",
            "true",
            "--state-dir",
            str(directory),
            environ={"YADISKPUSH_TOKEN": "t"},
        )
        self.assertEqual(options["state-dir"], str(directory))
        self.assertTrue((directory / JOURNAL_NAME).exists())

    def test_defaultFromEnvironment(self) -> None:
        """Without --state-dir, --exec uses $STATE_DIRECTORY."""
        directory = Path(self.mktemp()).absolute()
        options = self.parse(
            "--exec",
            "true",
            environ={"STATE_DIRECTORY": str(directory), "YADISKPUSH_TOKEN": "t"},
        )
        self.assertEqual(options["state-dir"], str(directory))

    def test_badDirectory(self) -> None:
        """A state directory that cannot be created is a one-line usage error."""
        blocker = Path(self.mktemp())
        blocker.write_text("")
        with self.assertRaises(usage.UsageError) as caught:
            self.parse("--exec", "true", "--state-dir", str(blocker / "sub"))
        self.assertIn(
            f"cannot create the state directory {blocker}", str(caught.exception)
        )

    def test_corruptJournal(self) -> None:
        """A corrupt journal is a usage error naming it, before anything runs."""
        directory = Path(self.mktemp())
        directory.mkdir()
        (directory / JOURNAL_NAME).write_bytes(b"garbage" * 1000)
        with self.assertRaises(usage.UsageError) as caught:
            self.parse("--exec", "true", "--state-dir", str(directory))
        self.assertIn("corrupt", str(caught.exception))
        self.assertIn(JOURNAL_NAME, str(caught.exception))
