"""
A durable, ordered journal of notifications that were acknowledged to the
server but not yet consumed (by an ``--exec`` run): what makes an acked push
survive a crash, a SIGKILL or a power loss.

**Why SQLite.** It is in the standard library, and it already does what an
append-only file would need by hand: a torn last record after a crash is
rolled back, not parsed; removing consumed entries needs no compaction pass;
``PRAGMA quick_check`` tells a corrupt file from a good one at open. The
database is in WAL mode with ``synchronous=FULL``, so each commit is
fsync-ed before it is reported; an ``AUTOINCREMENT`` key keeps the order of
arrival and never reuses an id.

**Off the reactor.** Every SQLite call runs in one worker thread owned by the
journal (a ``ThreadPool`` of exactly one thread, so calls run one at a time
and in the order they were made). ``append`` is group-committed: all the
``append`` calls made in one reactor turn are written in one transaction and
one fsync, then their Deferreds fire together, so a burst of pushes costs
one disk flush, not one each.

**Per account.** Each entry keeps the login of the account its push came
from, so that a restart replays every account's entries to that account
(see :class:`~yadiskpush.delivery.sinks.execute.ExecSink`). A journal of
schema 1 (one account, no login column) is upgraded in place when opened,
in one transaction: each entry's login is the ``login`` of its JSON line if
it has one, else the local part of its ``to`` JID (``test`` in
``test@ya.ru/yadiskpush``), which is the login the process served.

A second process using the same journal would run the same entries twice
and remove the other's: an exclusive ``flock`` on ``<journal>.lock`` refuses
it with a clear error.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from twisted.internet import defer, threads
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from yadiskpush.errors import ConfigurationError, YaDiskPushError
from yadiskpush.logs import Logger

#: The journal's file name in the state directory.
JOURNAL_NAME = "exec-journal.sqlite3"

#: The schema version this code writes (``PRAGMA user_version``). 1: entries
#: without a login (before several accounts per process); 2: with one.
SCHEMA_VERSION = 2

#: Ids deleted per statement (SQLite limits the number of parameters).
_DELETE_CHUNK = 500

_T = TypeVar("_T")


class Entry(NamedTuple):
    """
    One journaled notification. Entries sort by ``entryId``, the order of
    arrival across all accounts.
    """

    #: Unique and increasing, never reused.
    entryId: int
    #: The notification as one JSON line (what the command reads).
    line: bytes
    #: The account it belongs to (``""`` when the notification had none).
    login: str = ""


def loginOfLine(line: bytes) -> str:
    """
    The account of an entry written before the journal kept logins: the
    ``login`` of its JSON line, else the local part of its ``to`` JID, else
    ``""`` (also for a line that is not a JSON object).
    """
    try:
        data = json.loads(line)
    except ValueError:
        return ""
    if not isinstance(data, dict):
        return ""
    login = data.get("login")
    if isinstance(login, str) and login:
        return login
    recipient = data.get("to")
    if isinstance(recipient, str) and "@" in recipient:
        return recipient.split("@", 1)[0]
    return ""


class JournalError(YaDiskPushError):
    """Writing to or reading from an open journal failed (disk full, I/O)."""


class JournalClosed(JournalError):
    """The journal was used after :meth:`Journal.close`."""

    def __init__(self) -> None:
        super().__init__("the journal is closed")


def _describe(path: Path | None) -> str:
    return "the in-memory journal" if path is None else f"the journal {path}"


class _Store:
    """
    The SQLite side of a journal, synchronous: every method blocks, and is
    called in the journal's worker thread (or, for :func:`checkJournal`,
    before the reactor runs).
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        #: The schema an existing journal was upgraded from by :meth:`open`.
        self.migratedFrom: int | None = None
        self._db: sqlite3.Connection | None = None
        self._lockFile: int | None = None

    def open(self) -> list[Entry]:
        """
        Open (creating if needed) and check the database; return the entries
        it holds, oldest first.

        :raises ConfigurationError: if it is locked by another process,
            cannot be opened, is corrupt, or has an unknown schema.
        """
        try:
            self._lock()
            self._db = sqlite3.connect(
                ":memory:" if self.path is None else str(self.path),
                isolation_level=None,
                check_same_thread=False,
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._migrate()
            (check,) = self._db.execute("PRAGMA quick_check").fetchone()
            if check != "ok":
                raise sqlite3.DatabaseError(check)
            entries = self.entries()
        except ConfigurationError:
            self.close()
            raise
        except sqlite3.OperationalError as e:
            self.close()
            raise ConfigurationError(
                f"cannot open {_describe(self.path)}: {e} "
                "(check the permissions of the state directory)"
            ) from None
        except (sqlite3.Error, JournalError) as e:
            self.close()
            raise ConfigurationError(
                f"{_describe(self.path)} is corrupt ({e}); move it away to start "
                "with an empty one (the notifications it holds are then lost)"
            ) from None
        except OSError as e:
            self.close()
            raise ConfigurationError(
                f"cannot open {_describe(self.path)}: {e.strerror or e}"
            ) from None
        return entries

    def _lock(self) -> None:
        if self.path is None:
            return
        lockPath = f"{self.path}.lock"
        self._lockFile = os.open(lockPath, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lockFile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigurationError(
                f"{_describe(self.path)} is in use by another yadiskpush process "
                "(give each process its own --state-dir)"
            ) from None

    def _migrate(self) -> None:
        assert self._db is not None
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise ConfigurationError(
                f"{_describe(self.path)} was written by a newer version of "
                f"yadiskpush (schema {version}; this one reads schema "
                f"{SCHEMA_VERSION} and older): run that version, or move the "
                "journal away to start with an empty one (the notifications it "
                "holds are then lost)"
            )
        if version == 0:
            tables = self._db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
            ).fetchall()
            if tables:
                raise JournalError("it holds tables of another program")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            if version == 0:
                self._db.execute(
                    "CREATE TABLE entries ("
                    "id INTEGER PRIMARY KEY AUTOINCREMENT, "
                    "line BLOB NOT NULL, login TEXT NOT NULL DEFAULT '')"
                )
            else:
                self._upgradeFrom1()
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        if version != 0:
            self.migratedFrom = version

    def _upgradeFrom1(self) -> None:
        # Schema 1 was written by a process serving one login: find it in the
        # lines, so that the replay after the upgrade names the right account.
        # A crash during the upgrade rolls it back; the next start redoes it.
        assert self._db is not None
        self._db.execute(
            "ALTER TABLE entries ADD COLUMN login TEXT NOT NULL DEFAULT ''"
        )
        rows = self._db.execute("SELECT id, line FROM entries").fetchall()
        for entryId, line in rows:
            if isinstance(line, bytes) and (login := loginOfLine(line)):
                self._db.execute(
                    "UPDATE entries SET login = ? WHERE id = ?", (login, entryId)
                )

    def entries(self) -> list[Entry]:
        assert self._db is not None
        rows = self._db.execute(
            "SELECT id, line, login FROM entries ORDER BY id"
        ).fetchall()
        entries = []
        for entryId, line, login in rows:
            if (
                not isinstance(entryId, int)
                or not isinstance(line, bytes)
                or not isinstance(login, str)
            ):
                raise JournalError(f"entry {entryId!r} is not a notification")
            entries.append(Entry(entryId, line, login))
        return entries

    def append(self, rows: Sequence[tuple[bytes, str]]) -> list[int]:
        """
        Insert ``rows`` (line, login) in one transaction; return their ids,
        in order.
        """
        db = self._openDatabase()
        try:
            db.execute("BEGIN IMMEDIATE")
            ids = []
            for line, login in rows:
                cursor = db.execute(
                    "INSERT INTO entries (line, login) VALUES (?, ?)", (line, login)
                )
                ids.append(cursor.lastrowid)
            db.execute("COMMIT")
        except sqlite3.Error as e:
            self._rollback()
            raise JournalError(
                f"could not write to {_describe(self.path)}: {e}"
            ) from None
        return ids  # type: ignore[return-value]

    def remove(self, ids: Sequence[int]) -> None:
        db = self._openDatabase()
        try:
            db.execute("BEGIN IMMEDIATE")
            for start in range(0, len(ids), _DELETE_CHUNK):
                chunk = ids[start : start + _DELETE_CHUNK]
                marks = ",".join("?" * len(chunk))
                db.execute(f"DELETE FROM entries WHERE id IN ({marks})", chunk)
            db.execute("COMMIT")
        except sqlite3.Error as e:
            self._rollback()
            raise JournalError(
                f"could not remove entries from {_describe(self.path)}: {e}"
            ) from None

    def _openDatabase(self) -> sqlite3.Connection:
        if self._db is None:
            raise JournalClosed()
        return self._db

    def _rollback(self) -> None:
        if self._db is not None and self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            db.close()
        if self._lockFile is not None:
            lockFile, self._lockFile = self._lockFile, None
            os.close(lockFile)


def checkJournal(path: Path) -> int:
    """
    Open the journal at ``path`` synchronously, check it and close it again:
    for startup, so that a corrupt or locked journal is a usage error before
    anything runs. Creates an empty journal if there is none, and upgrades
    one of an older schema (logged: a log event emitted before logging has
    begun is kept and shown once it has).

    :returns: how many entries it holds.
    :raises ConfigurationError: as :meth:`Journal.open` does.
    """
    store = _Store(path)
    entries = store.open()
    store.close()
    _logUpgrade(store, len(entries))
    return len(entries)


def _logUpgrade(store: _Store, count: int) -> None:
    if store.migratedFrom is not None:
        Journal._log.info(
            "Upgraded {journal} from schema {old} to {new}; its {count} "
            "notification(s) are kept",
            journal=_describe(store.path),
            old=store.migratedFrom,
            new=SCHEMA_VERSION,
            count=count,
        )


class Journal:
    """
    The journal at ``path`` (``None``: in memory, for tests and the demo;
    durable only as long as the process).

    Nothing is done until :meth:`open`; every method returns at once and
    does its I/O in the journal's own worker thread, in call order.

    :param path: the SQLite file, created if missing (its directory must
        exist), or ``None``.
    :param reactor: provides ``IReactorTime``, ``IReactorFromThreads`` and
        ``IReactorCore`` (the real reactor: results come back through
        ``callFromThread``).

    :ivar count: entries appended (durable or being written) and not removed.
    :ivar commits: transactions that wrote appended entries; a burst of
        appends in one reactor turn is one commit.
    """

    _log = Logger()

    def __init__(self, path: str | Path | None, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor  # type: ignore[no-redef]
        self.path = None if path is None else Path(path)
        self.count = 0
        self.commits = 0
        self._reactor = reactor
        self._store = _Store(self.path)
        self._pool: ThreadPool | None = None
        self._shutdownTrigger: Any = None
        self._batch: list[tuple[bytes, str, defer.Deferred[int]]] = []
        self._flushCall: Any = None
        self._opened = False
        self._closed = False
        self._closing = False
        self._closeFinished = False
        self._closeWaiters: list[defer.Deferred[None]] = []

    def __repr__(self) -> str:
        return f"<Journal {self.path or ':memory:'}>"

    def _call(self, f: Callable[..., _T], *args: Any) -> defer.Deferred[_T]:
        assert self._pool is not None, "open() the journal first"
        return threads.deferToThreadPool(self._reactor, self._pool, f, *args)

    def open(self) -> defer.Deferred[list[Entry]]:
        """
        Start the worker thread and open the database.

        :returns: a Deferred firing with the entries an earlier process left
            (:class:`Entry`, oldest first), or failing with
            :class:`~yadiskpush.errors.ConfigurationError` (locked, corrupt,
            unreadable, of a newer schema) after which the journal is
            closed. A journal of an older schema is upgraded first, and that
            is logged.
        """
        if self._opened or self._closed:
            raise RuntimeError(f"{self!r} was opened before")
        self._opened = True
        self._pool = ThreadPool(1, 1, name=f"yadiskpush journal {self.path}")
        self._pool.start()
        self._shutdownTrigger = self._reactor.addSystemEventTrigger(
            "during", "shutdown", self._stopPool
        )

        def opened(entries: list[Entry]) -> list[Entry]:
            self.count += len(entries)
            _logUpgrade(self._store, len(entries))
            return entries

        def failed(reason: Failure) -> Failure:
            self._closed = True
            self._stopPool()
            return reason

        return self._call(self._store.open).addCallbacks(opened, failed)

    def append(self, line: bytes, login: str = "") -> defer.Deferred[int]:
        """
        Add one entry, of the account ``login``. Every append of this
        reactor turn is written in one transaction at the end of the turn.

        :returns: a Deferred firing with the entry's id once it is on disk,
            or failing with :class:`JournalError`.
        """
        if self._closed:
            return defer.fail(JournalClosed())
        d: defer.Deferred[int] = defer.Deferred()
        self._batch.append((line, login, d))
        self.count += 1
        if self._flushCall is None:
            self._flushCall = self._reactor.callLater(0, self._flush)
        return d

    def _flush(self) -> None:
        self._flushCall = None
        batch, self._batch = self._batch, []
        if not batch:
            return

        def written(ids: list[int]) -> None:
            self.commits += 1
            for (_, _, d), entryId in zip(batch, ids, strict=True):
                d.callback(entryId)

        def failed(reason: Failure) -> None:
            self.count -= len(batch)
            for _, _, d in batch:
                d.errback(reason)

        rows = [(line, login) for line, login, _ in batch]
        self._call(self._store.append, rows).addCallbacks(written, failed)

    def pending(self) -> defer.Deferred[list[Entry]]:
        """Every entry now in the journal, oldest first."""
        if self._closed:
            return defer.fail(JournalClosed())
        return self._call(self._store.entries)

    def remove(self, ids: Sequence[int]) -> defer.Deferred[None]:
        """
        Delete the entries ``ids`` (consumed), in one transaction.

        :returns: a Deferred firing once that is on disk, or failing with
            :class:`JournalError` (the entries then come back at the next
            open: at least once, never lost).
        """
        if self._closed:
            return defer.fail(JournalClosed())
        ids = list(ids)
        self.count -= len(ids)
        return self._call(self._store.remove, ids)

    def close(self) -> defer.Deferred[None]:
        """
        Write what was appended this turn, close the database and stop the
        worker thread. Never fails; calling it again waits for the same
        close.
        """
        if not self._closing:
            self._closing = True
            self._closed = True
            if self._pool is None or not self._pool.started:
                self._closeFinished = True
            else:
                if self._flushCall is not None:
                    self._flushCall.cancel()
                    self._flush()
                self._call(self._store.close).addCallbacks(
                    self._finishClose, self._closeFailed
                )
        if self._closeFinished:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._closeWaiters.append(d)
        return d

    def _closeFailed(self, reason: Failure) -> None:
        self._log.failure("Closing {journal} failed", reason, journal=self)
        self._finishClose(None)

    def _finishClose(self, _: object) -> None:
        self._stopPool()
        self._closeFinished = True
        waiters, self._closeWaiters = self._closeWaiters, []
        for d in waiters:
            d.callback(None)

    def _stopPool(self) -> None:
        if self._shutdownTrigger is not None:
            trigger, self._shutdownTrigger = self._shutdownTrigger, None
            try:
                self._reactor.removeSystemEventTrigger(trigger)
            except (ValueError, KeyError):
                # Already fired: this is the shutdown itself.
                pass
        if self._pool is not None and self._pool.started:
            self._pool.stop()
