"""
Runs a shell command for notifications: once an account's pushes settle
(a debounce, bounded by a longest delay), one run at a time per account and
a bounded number across accounts, with the pushes of an account that arrive
during its run coalesced into one follow-up run, and every acknowledged push
kept in a journal until a run has consumed it.
"""

from __future__ import annotations

import bisect
import errno
import json
import os
import re
import signal
import sys
from collections import deque
from collections.abc import Mapping
from typing import Any

from twisted.internet import defer, error
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from yadiskpush.delivery.journal import Entry, Journal, JournalClosed
from yadiskpush.delivery.sinks.base import DeliveryFailed
from yadiskpush.delivery.sinks.jsonlines import encodeJSONLine
from yadiskpush.logs import Logger
from yadiskpush.notification import Notification

#: Never passed to the command, whatever the parent's environment holds.
TOKEN_VARIABLE = "YADISKPUSH_TOKEN"

#: Inherited variables with this prefix are dropped, so that the child sees
#: only the ones this run sets (and no setting that might hold a secret).
ENV_PREFIX = "YADISKPUSH_"

#: systemd's notification settings are the service's, not the command's: a
#: command that notified (``systemd-notify``, any library honouring them)
#: would speak for the service, as ``sd_notify(3)`` warns.
SERVICE_ONLY_VARIABLES = frozenset({"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"})

# Puts the command in a process group of its own before it becomes /bin/sh,
# so that a timeout stops the whole tree, not just the shell (a killed shell
# would leave its children running next to the following run). spawnProcess
# has no setpgid option. Python ignores SIGPIPE and SIGXFSZ at startup, and
# ignored signals survive exec: restore them, as subprocess does.
_TRAMPOLINE = (
    "import os, signal, sys\n"
    "signal.signal(signal.SIGPIPE, signal.SIG_DFL)\n"
    "signal.signal(signal.SIGXFSZ, signal.SIG_DFL)\n"
    "os.setpgid(0, 0)\n"
    "os.execv('/bin/sh', ['/bin/sh', '-c', sys.argv[1]])\n"
)

# How often to check whether a timed-out command's processes are gone.
_GROUP_POLL_INTERVAL = 0.1

_NOT_ALPHANUMERIC = re.compile(r"[^A-Z0-9]")

#: ``YADISKPUSH_REASON`` of a run for pushes.
REASON_PUSH = "push"

#: ``YADISKPUSH_REASON`` of the run after an account's first subscription
#: (``--exec-on-start``), whether or not pushes joined it: what changed while
#: the client was down was never pushed, so the command should look at
#: everything.
REASON_START = "start"

#: Longest value, in bytes, put in one ``YADISKPUSH_*`` variable by default.
MAX_ENV_VALUE = 4096

#: Bytes of ``YADISKPUSH_*`` variables (names and values) per run by default;
#: Linux refuses an ``execve`` whose strings exceed about 2 MiB (E2BIG).
MAX_ENV_TOTAL = 64 * 1024


def environmentName(attribute: str) -> str:
    """
    The variable an attribute of the push payload is passed in:
    ``YADISKPUSH_ATTR_`` and the name upper-cased, with every character other
    than ASCII letters and digits replaced by ``_`` (``new-revision`` becomes
    ``YADISKPUSH_ATTR_NEW_REVISION``).
    """
    return "YADISKPUSH_ATTR_" + _NOT_ALPHANUMERIC.sub("_", attribute.upper())


def childEnvironment(
    last: Mapping[str, Any],
    count: int,
    parent: Mapping[str, str],
    *,
    login: str | None = None,
    reason: str = REASON_PUSH,
    changes: int = 0,
    maxValue: int = MAX_ENV_VALUE,
    maxTotal: int = MAX_ENV_TOTAL,
) -> tuple[dict[str, str], list[str]]:
    """
    The complete environment of one run, built explicitly: ``spawnProcess``
    would hand the whole parent environment, token included, to the child
    if given ``env=None``.

    It is ``parent`` without any ``YADISKPUSH_*`` variable (so never
    ``YADISKPUSH_TOKEN``) or systemd's notification settings, plus the
    variables documented on :class:`ExecSink`, which describe ``last``, the
    newest notification of the run, in its
    :meth:`~yadiskpush.notification.Notification.toJSON` form.

    The server chooses the values, and one over-long value makes every
    ``execve`` fail with E2BIG: a value longer than ``maxValue`` bytes is
    left out, and so are the attributes (in name order) that would take the
    ``YADISKPUSH_*`` variables past ``maxTotal`` bytes. Everything left out
    is still on the run's standard input.

    :param count: how many notifications the run reads.
    :param login: the account of the run, for ``YADISKPUSH_LOGIN``; by
        default the ``login`` of ``last``.
    :param reason: ``YADISKPUSH_REASON``: :data:`REASON_PUSH` or
        :data:`REASON_START`.
    :param changes: ``YADISKPUSH_CHANGES``: how many changes the run's
        notifications list in all.
    :returns: the environment, and the names of the variables left out.
    """
    env = {
        name: value
        for name, value in parent.items()
        if not name.startswith(ENV_PREFIX) and name not in SERVICE_ONLY_VARIABLES
    }
    if login is None:
        login = str(last.get("login", ""))
    receivedAt = last.get("received_at")
    fixed = {
        "YADISKPUSH_LOGIN": login,
        "YADISKPUSH_REASON": reason,
        "YADISKPUSH_COUNT": str(count),
        "YADISKPUSH_CHANGES": str(changes),
        "YADISKPUSH_ID": str(last.get("id", "")),
        "YADISKPUSH_FROM": str(last.get("from", "")),
        "YADISKPUSH_TO": str(last.get("to", "")),
        "YADISKPUSH_ELEMENT": str(last.get("element", "")),
        # Empty for a start run without notifications.
        "YADISKPUSH_RECEIVED_AT": "" if receivedAt is None else repr(receivedAt),
    }
    attributes: dict[str, str] = {}
    for name, value in sorted(dict(last.get("attributes") or {}).items()):
        # Two names may map to one variable: the later name wins, as before.
        attributes[environmentName(name)] = str(value)
    leftOut = []
    total = 0
    # The fixed names first: only attributes are left out for the total.
    for name, value in [*fixed.items(), *attributes.items()]:
        length = len(value.encode("utf-8", "surrogatepass"))
        size = len(name) + length + 2  # "NAME=value\0"
        if length > maxValue or (name in attributes and total + size > maxTotal):
            leftOut.append(name)
            continue
        env[name] = value
        total += size
    return env, leftOut


def _signalName(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _groupHasLiveMembers(pgid: int) -> bool:
    """
    Whether process group ``pgid`` has a member that has not exited.

    ``killpg(pgid, 0)`` also counts zombies, which stay until their parent
    reaps them; an orphan's new parent may take seconds, or never do it (a
    container whose PID 1 does not reap). Where ``/proc`` exists, zombies are
    told apart and do not count.
    """
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        entries = [e.name for e in os.scandir("/proc") if e.name.isdigit()]
    except OSError:
        return True
    for pid in entries:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and ")".
        fields = stat[stat.rindex(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in b"ZX":
            return True
    return False


class _Event:
    """A one-shot event that any number of callers can wait for."""

    def __init__(self) -> None:
        self.happened = False
        self._waiters: list[defer.Deferred[None]] = []

    def wait(self) -> defer.Deferred[None]:
        if self.happened:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append(d)
        return d

    def fire(self) -> None:
        if self.happened:
            return
        self.happened = True
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)


class _Run(ProcessProtocol):
    """
    One run of the command for one account: feeds it its journal entries,
    logs its output and exit, and enforces the timeout (and the stop on
    shutdown). Every event it logs has a ``login`` field, and its text names
    the account (when it has a login), since runs of several accounts may
    interleave in the log.

    ``done`` happens when the run is over for the sink: the shell has exited
    (and, after a timeout or a stop, its process group is gone or has been
    killed).
    ``ended`` happens when its output pipes are closed too, which a
    background process the command started can put off indefinitely.
    """

    def __init__(
        self,
        sink: ExecSink,
        login: str,
        entries: list[Entry],
        last: Mapping[str, Any],
        start: bool = False,
    ) -> None:
        self.sink = sink
        self.reactor = sink.reactor
        self.log = sink._log
        self.login = login
        # Message fragments: " for alice", " of alice"; empty without a login.
        self.forAccount = f" for {login}" if login else ""
        self.ofAccount = f" of {login}" if login else ""
        self.entryIds = [entry.entryId for entry in entries]
        self.stdinData = b"".join(entry.line for entry in entries)
        self.count = len(entries)
        self.lastId = str(last.get("id", ""))
        #: The run after the account's first subscription (``--exec-on-start``).
        self.start = start
        #: What the run is for, as its log lines say it.
        pushes = (
            f"{self.count} notification(s){self.ofAccount} up to push {self.lastId}"
        )
        if not start:
            self.what = pushes
        elif entries:
            self.what = f"the start run and {pushes}"
        else:
            self.what = f"the start run{self.ofAccount}"
        #: Stopped by close(): its entries stay journaled for the next start.
        self.stoppedByShutdown = False
        self.ownGroup = False
        self.pid: int | None = None
        self.startedAt = self.reactor.seconds()
        self.exitedAt: float | None = None
        self.reason: Failure | None = None
        self.timedOut = False
        self.leaderExited = False
        self.done = _Event()
        self.ended = _Event()
        self._timeoutCall: IDelayedCall | None = None
        self._killCall: IDelayedCall | None = None
        self._pollCall: IDelayedCall | None = None
        self._abandonCall: IDelayedCall | None = None
        self._buffers = {1: bytearray(), 2: bytearray()}
        self._discarding = {1: False, 2: False}
        self._linesLogged = 0
        self._linesSuppressed = 0

    # -- process lifecycle ------------------------------------------------

    def connectionMade(self) -> None:
        self.transport.write(self.stdinData)  # type: ignore[union-attr]
        self.stdinData = b""
        self.transport.closeStdin()  # type: ignore[union-attr]

    def started(self, pid: int | None, ownGroup: bool) -> None:
        """Called once ``spawnProcess`` has returned: start the clock."""
        self.pid = pid
        self.ownGroup = ownGroup and pid is not None
        if self.sink.timeout is not None and not self.leaderExited:
            self._timeoutCall = self.reactor.callLater(self.sink.timeout, self._timeOut)

    def _timeOut(self) -> None:
        self._timeoutCall = None
        self.timedOut = True
        self.log.warn(
            "The command{forAccount} has run for {timeout:g} s, its timeout; "
            "stopping it",
            timeout=self.sink.timeout,
            forAccount=self.forAccount,
            login=self.login,
        )
        self._signal(signal.SIGTERM)
        self._killCall = self.reactor.callLater(self.sink.killGrace, self._kill)

    def stop(self) -> None:
        """
        Stop the run because the sink is closing: SIGTERM to its process
        group, SIGKILL ``killGrace`` seconds later. Its entries are then not
        consumed. A run already being stopped by its timeout is left to it.
        """
        if self.done.happened or self.timedOut or self.stoppedByShutdown:
            return
        self.stoppedByShutdown = True
        if self._timeoutCall is not None:
            self._timeoutCall.cancel()
            self._timeoutCall = None
        self.log.warn(
            "The command{forAccount} is still running {grace:g} s after the "
            "service began to stop; stopping it (its {count} notification(s) "
            "stay journaled for the next start)",
            grace=self.sink.closeGrace,
            count=self.count,
            forAccount=self.forAccount,
            login=self.login,
        )
        self._signal(signal.SIGTERM)
        self._killCall = self.reactor.callLater(self.sink.killGrace, self._kill)

    def _kill(self) -> None:
        self._killCall = None
        if self._pollCall is not None:
            self._pollCall.cancel()
            self._pollCall = None
        if self.leaderExited:
            self.log.warn(
                "Processes the command{forAccount} started ignored SIGTERM; "
                "killing them",
                forAccount=self.forAccount,
                login=self.login,
            )
        else:
            self.log.warn(
                "The command{forAccount} ignored SIGTERM; killing it",
                forAccount=self.forAccount,
                login=self.login,
            )
        self._signal(signal.SIGKILL)
        if self.leaderExited:
            self._finish()

    def _signal(self, number: int) -> None:
        if self.ownGroup:
            try:
                os.killpg(self.pid, number)  # type: ignore[arg-type]
                return
            except (ProcessLookupError, PermissionError):
                # Not yet in its own group (a signal within milliseconds of
                # the start) or the group is gone: fall back to the pid.
                pass
        if not self.leaderExited:
            try:
                self.transport.signalProcess(number)  # type: ignore[union-attr]
            except error.ProcessExitedAlready:
                pass

    def _groupAlive(self) -> bool:
        return self.ownGroup and _groupHasLiveMembers(self.pid)  # type: ignore[arg-type]

    def processExited(self, reason: Failure) -> None:
        self.leaderExited = True
        self.exitedAt = self.reactor.seconds()
        self.reason = reason
        if self._timeoutCall is not None:
            self._timeoutCall.cancel()
            self._timeoutCall = None
        if (self.timedOut or self.stoppedByShutdown) and self._killCall is not None:
            # The shell is gone but what it started may still be stopping:
            # the next run waits until they exit or the grace period ends.
            self._waitForGroup()
        else:
            self._finish()

    def _waitForGroup(self) -> None:
        # Polled, because nothing reports the exit of processes that are not
        # our children; and a process just exited stays visible (a zombie)
        # until its new parent reaps it.
        self._pollCall = None
        if self._groupAlive():
            self._pollCall = self.reactor.callLater(
                _GROUP_POLL_INTERVAL, self._waitForGroup
            )
        else:
            self._finish()

    def _finish(self) -> None:
        if self.done.happened:
            return
        for call in (self._killCall, self._pollCall):
            if call is not None and call.active():
                call.cancel()
        self._killCall = self._pollCall = None
        assert self.reason is not None and self.exitedAt is not None
        duration = self.exitedAt - self.startedAt
        value = self.reason.value
        exitStatus = getattr(value, "exitCode", None)
        signalNumber = getattr(value, "signal", None)
        fields: dict[str, Any] = dict(
            exitStatus=exitStatus,
            signal=signalNumber,
            signalName=_signalName(signalNumber) if signalNumber else None,
            timedOut=self.timedOut,
            duration=duration,
            count=self.count,
            id=self.lastId,
            login=self.login,
            forAccount=self.forAccount,
            ofAccount=self.ofAccount,
            what=self.what,
            start=self.start,
        )
        if self.stoppedByShutdown:
            how = (
                f"killed by {fields['signalName']}"
                if signalNumber
                else f"exit status {exitStatus}"
            )
            self.log.warn(
                "The command was stopped for the shutdown ({how}); {what}; "
                "its notifications stay journaled for the next start",
                how=how,
                stoppedByShutdown=True,
                **fields,
            )
        elif self.timedOut:
            how = (
                f"killed by {fields['signalName']}"
                if signalNumber
                else f"exit status {exitStatus}"
            )
            self.log.warn(
                "The command timed out after {timeout:g} s and was stopped "
                "({how}); {what}",
                timeout=self.sink.timeout,
                how=how,
                **fields,
            )
        elif signalNumber:
            self.log.warn(
                "The command was killed by {signalName} after {duration:.2f} s; {what}",
                **fields,
            )
        elif exitStatus:
            self.log.warn(
                "The command failed with exit status {exitStatus} after "
                "{duration:.2f} s; {what}",
                **fields,
            )
        else:
            self.log.info(
                "The command finished after {duration:.2f} s; {what}",
                **fields,
            )
        self.done.fire()

    def processEnded(self, reason: Failure) -> None:
        if not self.leaderExited:
            self.processExited(reason)
        for fd in (1, 2):
            self._flushPartialLine(fd)
        if self._linesSuppressed:
            self.log.warn(
                "{suppressed} more line(s) of command output{forAccount} were "
                "not logged",
                suppressed=self._linesSuppressed,
                forAccount=self.forAccount,
                login=self.login,
            )
        if self._abandonCall is not None and self._abandonCall.active():
            self._abandonCall.cancel()
        self._abandonCall = None
        self.ended.fire()

    def stopReadingSoon(self) -> defer.Deferred[None]:
        """
        Wait, at most ``pipeGrace`` seconds, for the output pipes to close;
        then stop reading them. Used on close, after the run is done.
        """
        if not self.ended.happened and self._abandonCall is None:
            self._abandonCall = self.reactor.callLater(
                self.sink.pipeGrace, self._abandonOutput
            )
        return self.ended.wait()

    def _abandonOutput(self) -> None:
        self._abandonCall = None
        self.log.warn(
            "A process the command{forAccount} left running still holds its "
            "output; no longer reading it",
            forAccount=self.forAccount,
            login=self.login,
        )
        self.transport.loseConnection()  # type: ignore[union-attr]
        self.ended.fire()

    # -- output -----------------------------------------------------------

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD not in self._buffers:
            return
        buffer = self._buffers[childFD]
        buffer += data
        start = 0
        while (newline := buffer.find(b"\n", start)) >= 0:
            line = bytes(buffer[start:newline])
            start = newline + 1
            if self._discarding[childFD]:
                # The rest of a line already logged as truncated.
                self._discarding[childFD] = False
            else:
                self._logLine(childFD, line)
        del buffer[:start]
        limit = self.sink.maxLineLength
        if len(buffer) > limit:
            # Keep no unbounded buffer: log the start, drop the rest.
            if not self._discarding[childFD]:
                self._logLine(childFD, bytes(buffer[:limit]), truncated=True)
                self._discarding[childFD] = True
            buffer.clear()

    def childConnectionLost(self, childFD: int) -> None:
        self._flushPartialLine(childFD)

    def _flushPartialLine(self, childFD: int) -> None:
        buffer = self._buffers.get(childFD)
        if buffer and not self._discarding[childFD]:
            self._logLine(childFD, bytes(buffer))
        if buffer is not None:
            buffer.clear()

    def _logLine(self, childFD: int, line: bytes, truncated: bool = False) -> None:
        if self._linesLogged >= self.sink.maxLoggedLines:
            self._linesSuppressed += 1
            return
        self._linesLogged += 1
        text = line.decode("utf-8", "replace").rstrip("\r")
        if truncated:
            text += " [truncated]"
        if childFD == 1:
            self.log.info(
                "Command output{forAccount}: {line}",
                line=text,
                stream="stdout",
                forAccount=self.forAccount,
                login=self.login,
            )
        else:
            self.log.warn(
                "Command error output{forAccount}: {line}",
                line=text,
                stream="stderr",
                forAccount=self.forAccount,
                login=self.login,
            )


class _Account:
    """
    The runs of one login: the entries no run has taken yet, the debounce
    they wait out, a start run asked for, the run going (at most one), and
    the retry after a failed start. The sink forgets an account once it has
    none of these, so that ten thousand quiet accounts cost nothing.
    """

    __slots__ = (
        "login",
        "untaken",
        "current",
        "retryCall",
        "nextRetryDelay",
        "queued",
        "dueCall",
        "firstPendingAt",
        "startWanted",
    )

    def __init__(self, login: str, retryDelay: float) -> None:
        self.login = login
        #: Journaled entries of this login no run has taken yet, oldest first.
        self.untaken: list[Entry] = []
        self.current: _Run | None = None
        self.retryCall: IDelayedCall | None = None
        self.nextRetryDelay = retryDelay
        #: In the sink's queue of accounts waiting for a free slot.
        self.queued = False
        #: The end of the debounce: no run starts before it fires.
        self.dueCall: IDelayedCall | None = None
        #: When the oldest change no run has taken yet came (for maxDelay).
        self.firstPendingAt: float | None = None
        #: The next run is the start run (``runOnStart``).
        self.startWanted = False

    def idle(self) -> bool:
        return (
            not self.untaken
            and not self.startWanted
            and self.current is None
            and self.retryCall is None
            and self.dueCall is None
            and not self.queued
        )


class ExecSink:
    """
    Runs ``command`` with ``/bin/sh -c`` when notifications arrive: never
    two runs of one account at once, at most ``maxJobs`` runs at once in
    all, and never losing an acknowledged push.

    **Durability.** ``deliver`` writes the notification to ``journal`` and
    fires only once it is on disk: the push is acknowledged to the server
    then, and from then on it survives a crash or SIGKILL. An entry leaves
    the journal when a run that read it has ended, whatever its exit status.
    At :meth:`start`, entries left by an earlier process (a crash, a kill, a
    run cut short by a shutdown) are run first, each account's in runs of
    its own. So every acked push reaches the command at least once; after a
    crash some may reach it twice.

    **Accounts.** Each run carries the notifications of one account only
    (``notification.login``; ``""`` for a notification without one, which
    are an account of their own). An account's journaled notifications
    start a run once they have settled (see *Debounce*), if that account
    has no run going and fewer than ``maxJobs`` runs are going in all.
    Notifications of an account that arrive during its run, or while it
    waits for a free slot, all go to exactly one follow-up run: a hundred
    pushes during one slow run cause one more run, not a hundred.

    **Debounce.** One change on the Disk often comes as several pushes (a
    folder of files uploaded, a file saved twice), and a sync started by
    the first would miss the rest. So an account's run starts once no push
    of that account has come for ``debounce`` seconds, and at the latest
    ``maxDelay`` seconds after the oldest push no run has taken yet (a
    steady stream of pushes still starts runs). Each account has its own
    timer, on the reactor's clock. A follow-up run waits out its debounce
    too, counted from the pushes, so a run that ends after it has passed
    is followed at once. ``debounce=0`` starts runs as soon as the pushes
    are journaled. The debounce never holds an acknowledgement (the push is
    acked once journaled) and loses nothing: pushes waiting it out at a
    crash or a close are in the journal, and run at the next start. Entries
    replayed at start have waited long enough and run at once.

    **Start run.** :meth:`runOnStart` asks for a run with
    ``YADISKPUSH_REASON=start`` for an account (``--exec-on-start``: after
    its first subscription). It is debounced like a push, and pushes of
    the account pending or arriving meanwhile join it in one run.

    **Fairness.** Accounts waiting for a free slot get one in the order
    they became ready (first notification journaled, or previous run
    ended): an account whose pushes never stop goes to the back of the
    line after each run, so it cannot keep the others waiting.

    **Standard input** of a run is its notifications as JSON Lines, oldest
    first: one ``notification.toJSON()`` object per line, UTF-8, exactly
    the lines ``--json-out`` writes; then standard input is closed. A run
    for one push reads a single line (``jq`` or ``json.load`` take it as
    is); a coalesced run reads ``YADISKPUSH_COUNT`` lines.

    **Environment.** The parent's environment without any ``YADISKPUSH_*``
    variable (never the ``YADISKPUSH_TOKEN``), plus:

    - ``YADISKPUSH_LOGIN``: the account the run's notifications belong to
      (empty for notifications without one);
    - ``YADISKPUSH_REASON``: ``push`` for a run for pushes; ``start`` for
      the start run (see :meth:`runOnStart`), which may carry pushes too;
    - ``YADISKPUSH_COUNT``: number of notifications in this run (lines on
      standard input; 0 for a start run without pushes);
    - ``YADISKPUSH_CHANGES``: how many changes their ``changes`` lists
      hold in all (the full lists are on standard input);
    - ``YADISKPUSH_ID``: stanza id of the last (newest) one (this and the
      following are empty for a start run without pushes);
    - ``YADISKPUSH_FROM``, ``YADISKPUSH_TO``: its sender and recipient JIDs;
    - ``YADISKPUSH_ELEMENT``: its payload element name (``query`` today);
    - ``YADISKPUSH_RECEIVED_AT``: when it arrived, seconds since the epoch;
    - ``YADISKPUSH_ATTR_<NAME>`` for each attribute of its payload, the name
      upper-cased and non-alphanumerics turned into ``_`` (see
      :func:`environmentName`), e.g. ``YADISKPUSH_ATTR_TYPE``.

    A value longer than ``maxEnvValue`` bytes is left out, and so are the
    attributes past ``maxEnvTotal`` bytes of ``YADISKPUSH_*`` variables (a
    200 KB value would make every start fail with E2BIG); the data is on
    standard input, and each run logs the names it left out.

    **Logging.** Each run's start and its exit status or signal, duration,
    number of notifications and account are logged, at info level on
    success and warn otherwise (the account is in the text and in a
    ``login`` field). The command's output is logged line by line (stdout
    at info, stderr at warn), lines cut at ``maxLineLength`` bytes and at
    most ``maxLoggedLines`` lines per run; nothing is buffered beyond one
    line.

    **Timeout.** A run still going after ``timeout`` seconds gets SIGTERM,
    and SIGKILL ``killGrace`` seconds later. The command runs in a process
    group of its own and the signals go to the whole group, so the
    programs the shell started stop too; the account's next run starts
    only after they have, and the run holds its slot until then. A run ends
    when the shell exits: background processes it left behind on success
    are not waited for.

    **Failures.** A failing, crashing or hanging command is logged and
    nothing more (its notifications are consumed; it is not run again for
    them). A command that cannot be started at all (E2BIG, a missing
    shell) is tried again for that account after ``retryDelay`` seconds,
    doubling up to ``maxRetryDelay``, with one log line per failure; its
    notifications stay journaled, and the other accounts' runs go on.
    ``deliver`` fails with
    :class:`~yadiskpush.delivery.sinks.base.DeliveryFailed`, so that the
    push is not acknowledged, when the sink is closed, when ``maxPending``
    notifications (of all accounts) are already journaled and not consumed,
    or when the journal cannot be written.

    **Close.** ``close()`` refuses new notifications and gives the runs in
    progress ``closeGrace`` seconds to finish; then the process group of
    each one still going gets SIGTERM, and SIGKILL ``killGrace`` seconds
    later, and its notifications stay journaled. No follow-up run is
    started, nor a run still in its debounce: what is journaled runs at the
    next start, and the number is logged (a start run asked for and not
    started is dropped: the next start asks again). It never fails and
    never waits much longer than ``closeGrace + killGrace + pipeGrace``
    seconds, however many runs are going.

    :param command: shell command, run as ``/bin/sh -c command``.
    :param timeout: seconds a run may take, or ``None`` for no limit.
    :param reactor: provides ``IReactorProcess`` and ``IReactorTime``; the
        global reactor by default.
    :param environ: the parent environment to start from; ``os.environ``
        (read at each run) by default.
    :param journal: where acked notifications wait for a run; by default an
        in-memory one (``Journal(None)``), which does not survive the
        process: ``twistd yadiskpush`` passes one in ``--state-dir``.
    :param maxJobs: most runs going at once, across all accounts.
    :param killGrace: seconds between SIGTERM and SIGKILL after a timeout
        or a stop on close.
    :param closeGrace: seconds ``close()`` lets the runs in progress finish.
    :param retryDelay: seconds before the first new attempt to start the
        command after it could not be started.
    :param maxRetryDelay: the longest wait between such attempts.
    :param maxPending: how many notifications may be journaled and not yet
        consumed (in a run or waiting for one), all accounts together.
    :param maxEnvValue: longest ``YADISKPUSH_*`` value passed, in bytes.
    :param maxEnvTotal: bytes of ``YADISKPUSH_*`` variables per run.
    :param debounce: seconds without a push of an account before its run
        starts; 0 to start at once.
    :param maxDelay: most seconds between an account's oldest push not yet
        run and the start of its run (later only while its previous run
        goes on, or no slot is free).
    :param log: logger to use instead of the class's.
    :raises ValueError: if ``command`` is empty, ``timeout`` not positive,
        ``maxJobs`` less than 1, ``debounce`` negative or ``maxDelay`` less
        than ``debounce``.

    :ivar runs: how many runs have been started so far.
    """

    _log = Logger()

    #: Seconds ``close()`` waits for output pipes a leftover process holds.
    pipeGrace = 2.0
    #: Longest output line logged, in bytes; longer ones are cut.
    maxLineLength = 4096
    #: Output lines logged per run; the rest are counted, not logged.
    maxLoggedLines = 200

    def __init__(
        self,
        command: str,
        timeout: float | None,
        reactor: Any = None,
        environ: Mapping[str, str] | None = None,
        *,
        journal: Journal | None = None,
        maxJobs: int = 4,
        killGrace: float = 5.0,
        closeGrace: float = 5.0,
        retryDelay: float = 5.0,
        maxRetryDelay: float = 300.0,
        maxPending: int = 10_000,
        maxEnvValue: int = MAX_ENV_VALUE,
        maxEnvTotal: int = MAX_ENV_TOTAL,
        debounce: float = 1.0,
        maxDelay: float = 30.0,
        log: Logger | None = None,
    ) -> None:
        if not command.strip():
            raise ValueError("the command is empty")
        if timeout is not None and timeout <= 0:
            raise ValueError("the timeout must be positive")
        if maxJobs < 1:
            raise ValueError("maxJobs must be at least 1")
        if debounce < 0:
            raise ValueError("the debounce must not be negative")
        if maxDelay < debounce:
            raise ValueError("maxDelay must be at least the debounce")
        if reactor is None:
            from twisted.internet import reactor  # type: ignore[no-redef]
        self.command = command
        self.timeout = timeout
        self.reactor = reactor
        self.journal = journal if journal is not None else Journal(None)
        self.maxJobs = maxJobs
        self.killGrace = killGrace
        self.closeGrace = closeGrace
        self.retryDelay = retryDelay
        self.maxRetryDelay = maxRetryDelay
        self.maxPending = maxPending
        self.maxEnvValue = maxEnvValue
        self.maxEnvTotal = maxEnvTotal
        self.debounce = debounce
        self.maxDelay = maxDelay
        if log is not None:
            self._log = log
        self._environ = environ
        # Accounts with entries untaken, a run going or a retry pending.
        self._accounts: dict[str, _Account] = {}
        # Accounts ready for a run, waiting for a free slot, in the order
        # they became ready.
        self._queue: deque[_Account] = deque()
        # Runs holding a slot: started and not done.
        self._running: set[_Run] = set()
        # deliver() calls waiting for the journal to open.
        self._waitingForOpen = 0
        self._started: _Event | None = None
        self._ready = False
        self._broken: Exception | None = None
        self._unended: set[_Run] = set()
        self._closing = False
        self._closed = _Event()
        self.runs = 0

    def __repr__(self) -> str:
        return "<ExecSink>"

    @property
    def running(self) -> int:
        """How many runs are going now (at most ``maxJobs``)."""
        return len(self._running)

    @property
    def waiting(self) -> int:
        """How many accounts are ready for a run and waiting for a slot."""
        return len(self._queue)

    # -- start ------------------------------------------------------------

    def start(self) -> defer.Deferred[None]:
        """
        Open the journal and run what an earlier process left in it. Called
        by the first ``deliver`` if not before; calling it again waits for
        the same start.

        :returns: a Deferred firing once the journal is open, or once
            opening it has failed (logged; ``deliver`` then refuses every
            push). It never fails.
        """
        if self._started is None:
            self._started = _Event()
            try:
                opening = self.journal.open()
            except Exception as e:
                opening = defer.fail(e)
            opening.addCallbacks(self._journalOpened, self._journalFailed)
        return self._started.wait()

    def _journalOpened(self, entries: list[Entry]) -> None:
        # Oldest first: each account's entries stay in order, and accounts
        # become ready in the order of their oldest entry.
        for entry in sorted(entries):
            self._account(entry.login).untaken.append(entry)
        if entries:
            self._log.info(
                "Replaying {count} notification(s) journaled before a restart, "
                "for {accounts} account(s)",
                count=len(entries),
                accounts=len(self._accounts),
            )
        self._ready = True
        # Queued before the deliveries waiting for the start are journaled,
        # so that what an earlier process left runs first.
        for account in list(self._accounts.values()):
            self._markReady(account)
        assert self._started is not None
        self._started.fire()

    def _journalFailed(self, reason: Failure) -> None:
        self._broken = reason.value  # type: ignore[assignment]
        self._log.error(
            "Cannot use the --exec journal: {error}; every push is refused "
            "(not acknowledged) until this is fixed",
            error=reason.getErrorMessage(),
        )
        assert self._started is not None
        self._started.fire()

    # -- deliver ----------------------------------------------------------

    def deliver(self, notification: Notification) -> defer.Deferred[None]:
        """
        Journal the notification and fire once it is on disk (starting a
        run for its account if none is going and a slot is free); fail with
        :class:`~yadiskpush.delivery.sinks.base.DeliveryFailed` if the sink
        is closed, already holds ``maxPending`` notifications, or cannot
        journal it.
        """
        stanzaId = notification.stanzaId
        if self._closing:
            return defer.fail(DeliveryFailed(stanzaId, "the --exec sink is closed"))
        if self._broken is not None:
            return defer.fail(
                DeliveryFailed(stanzaId, f"the --exec journal failed: {self._broken}")
            )
        pending = self.journal.count + self._waitingForOpen
        if pending >= self.maxPending:
            self._log.error(
                "{pending} notifications are already waiting for the command; "
                "refusing push {id} so that it is not acknowledged",
                pending=pending,
                id=stanzaId,
            )
            return defer.fail(
                DeliveryFailed(
                    stanzaId,
                    f"{pending} notifications are already waiting "
                    "for the --exec command",
                )
            )
        line = encodeJSONLine(notification)
        login = notification.login
        self._waitingForOpen += 1
        d = self.start()
        d.addCallback(self._append, line, login, stanzaId)
        return d

    def _append(
        self, _: object, line: bytes, login: str, stanzaId: str
    ) -> defer.Deferred[None]:
        # Called in the turn the journal is ready in (at once when it is
        # already open), so that one turn's pushes share one commit.
        self._waitingForOpen -= 1
        if self._broken is not None:
            raise DeliveryFailed(stanzaId, f"the --exec journal failed: {self._broken}")

        def journaled(entryId: int) -> None:
            account = self._account(login)
            bisect.insort(account.untaken, Entry(entryId, line, login))
            self._changed(account)

        def failed(reason: Failure) -> None:
            if reason.check(JournalClosed):
                raise DeliveryFailed(stanzaId, "the --exec sink is closed")
            self._log.error(
                "Could not journal push {id}, so it is not acknowledged: {error}",
                id=stanzaId,
                error=reason.getErrorMessage(),
            )
            raise DeliveryFailed(stanzaId, reason.getErrorMessage())

        return self.journal.append(line, login).addCallbacks(journaled, failed)

    # -- runs -------------------------------------------------------------

    def _account(self, login: str) -> _Account:
        account = self._accounts.get(login)
        if account is None:
            account = self._accounts[login] = _Account(login, self.retryDelay)
        return account

    def _forgetIfIdle(self, account: _Account) -> None:
        if account.idle() and self._accounts.get(account.login) is account:
            del self._accounts[account.login]

    def runOnStart(self, login: str) -> None:
        """
        Run the command for ``login`` with ``YADISKPUSH_REASON=start``: the
        account has just subscribed for the first time in this process, and
        what changed on its Disk while nothing was subscribed was never
        pushed. The run reads no notification (``YADISKPUSH_COUNT=0``,
        standard input empty) unless pushes of the account are pending or
        arrive within the debounce: they join it, in one run. Nothing is
        journaled for it: after a crash, the next start asks again. Ignored
        once the sink is closing.
        """
        if self._closing:
            return
        # First: a journal opened at once readies its accounts, and this
        # one must not be ready before its debounce.
        self.start()
        account = self._account(login)
        account.startWanted = True
        self._changed(account)

    def _changed(self, account: _Account) -> None:
        """
        ``account`` has a new push (or wants its start run): start its run
        once ``debounce`` seconds pass with no other, or ``maxDelay``
        seconds after the oldest change no run has taken, whichever comes
        first. A run going meanwhile takes nothing: its follow-up run waits
        for the same moment. An account already waiting for a slot, or for
        a new attempt to start its command, just takes the change along.
        """
        if self.debounce <= 0 or account.queued or account.retryCall is not None:
            self._markReady(account)
            return
        now = self.reactor.seconds()
        if account.firstPendingAt is None:
            account.firstPendingAt = now
        delay = max(
            0.0, min(self.debounce, account.firstPendingAt + self.maxDelay - now)
        )
        if account.dueCall is not None and account.dueCall.active():
            account.dueCall.reset(delay)
        else:
            account.dueCall = self.reactor.callLater(delay, self._settled, account)

    def _settled(self, account: _Account) -> None:
        account.dueCall = None
        self._markReady(account)

    def _markReady(self, account: _Account) -> None:
        """Queue ``account`` for a slot if it has something to run and
        nothing stops it; then start what the free slots allow."""
        if (
            self._ready
            and (account.untaken or account.startWanted)
            and account.current is None
            and account.retryCall is None
            and account.dueCall is None
            and not account.queued
            and not self._closing
        ):
            account.queued = True
            self._queue.append(account)
        self._schedule()

    def _schedule(self) -> None:
        while self._queue and len(self._running) < self.maxJobs and not self._closing:
            account = self._queue.popleft()
            account.queued = False
            self._startRun(account)

    def _startRun(self, account: _Account) -> None:
        batch, account.untaken = account.untaken, []
        start, account.startWanted = account.startWanted, False
        account.firstPendingAt = None
        objects = [_parseLine(entry.line) for entry in batch]
        last = objects[-1] if objects else {}
        changes = sum(_countChanges(o) for o in objects)
        run = _Run(self, account.login, batch, last, start)
        if sys.executable:
            executable = sys.executable
            args = [executable, "-I", "-S", "-c", _TRAMPOLINE, self.command]
            ownGroup = True
        else:
            # No interpreter to put it in its own group: only the shell
            # itself can be signalled on timeout.
            executable = "/bin/sh"
            args = [executable, "-c", self.command]
            ownGroup = False
        environ = os.environ if self._environ is None else self._environ
        env, leftOut = childEnvironment(
            last,
            len(batch),
            environ,
            login=account.login,
            reason=REASON_START if start else REASON_PUSH,
            changes=changes,
            maxValue=self.maxEnvValue,
            maxTotal=self.maxEnvTotal,
        )
        if leftOut:
            self._log.warn(
                "Left out of the command's environment{forAccount}, too long (the "
                "values are on its standard input): {names}",
                names=", ".join(leftOut),
                leftOut=leftOut,
                forAccount=run.forAccount,
                login=account.login,
            )
        try:
            transport = self.reactor.spawnProcess(
                run, executable, args, env=env, path=None
            )
        except Exception as e:
            account.untaken[:0] = batch
            account.startWanted = account.startWanted or start
            delay = account.nextRetryDelay
            account.nextRetryDelay = min(delay * 2, self.maxRetryDelay)
            self._log.error(
                "Could not start the command{forAccount} ({error}); {count} "
                "notification(s) stay journaled; next attempt in {delay:g} s",
                error=_describeStartError(e),
                count=len(account.untaken),
                delay=delay,
                spawnFailed=True,
                forAccount=run.forAccount,
                login=account.login,
            )
            account.retryCall = self.reactor.callLater(delay, self._retry, account)
            return
        account.nextRetryDelay = self.retryDelay
        self.runs += 1
        account.current = run
        self._running.add(run)
        self._unended.add(run)
        run.ended.wait().addCallback(lambda _: self._unended.discard(run))
        run.done.wait().addCallback(self._runDone, run, account)
        self._log.info(
            "Running the command for {what}",
            what=run.what,
            count=len(batch),
            changes=changes,
            start=start,
            id=run.lastId,
            login=account.login,
        )
        run.started(getattr(transport, "pid", None), ownGroup)

    def _retry(self, account: _Account) -> None:
        account.retryCall = None
        # Back in line behind the accounts that became ready meanwhile.
        self._markReady(account)
        self._forgetIfIdle(account)

    def _runDone(self, _: object, run: _Run, account: _Account) -> None:
        self._running.discard(run)
        if account.current is run:
            account.current = None
        if not run.stoppedByShutdown and run.entryIds:
            self.journal.remove(run.entryIds).addErrback(self._removeFailed, run)
        # The account's follow-up run (if it has one) queues behind the
        # accounts already waiting; then the freed slot goes to the first.
        self._markReady(account)
        self._forgetIfIdle(account)

    def _removeFailed(self, reason: Failure, run: _Run) -> None:
        self._log.warn(
            "Could not remove {count} consumed notification(s){ofAccount} from "
            "the journal ({error}); they will be passed to the command again "
            "at the next start",
            count=run.count,
            error=reason.getErrorMessage(),
            ofAccount=run.ofAccount,
            login=run.login,
        )

    # -- close ------------------------------------------------------------

    def close(self) -> defer.Deferred[None]:
        """
        Refuse further notifications; let the runs in progress finish
        within ``closeGrace`` seconds, else stop them (their notifications
        stay journaled); close the journal, logging how many notifications
        stay in it for the next start. Never fails.
        """
        if not self._closing:
            self._closing = True
            for account in self._accounts.values():
                # Pushes waiting out their debounce are journaled: they run
                # at the next start, as the close log line counts them.
                for call in (account.retryCall, account.dueCall):
                    if call is not None and call.active():
                        call.cancel()
                account.retryCall = account.dueCall = None
                account.queued = False
            self._queue.clear()
            self._shutDown().addBoth(lambda _: self._closed.fire())
        return self._closed.wait()

    @defer.inlineCallbacks
    def _shutDown(self) -> Any:
        try:
            runs = [run for run in self._running if not run.done.happened]
            if runs:
                self._log.info(
                    "Waiting up to {grace:g} s for the command to finish "
                    "({running} run(s) in progress)",
                    grace=self.closeGrace,
                    running=len(runs),
                )
                yield _waitAtMost(_allDone(runs), self.closeGrace, self.reactor)
                late = [run for run in runs if not run.done.happened]
                for run in late:
                    run.stop()
                if late:
                    yield _waitAtMost(
                        _allDone(late),
                        self.killGrace + self.pipeGrace,
                        self.reactor,
                    )
                for run in late:
                    if not run.done.happened:
                        self._log.error(
                            "The command{forAccount} did not exit even after "
                            "SIGKILL; no longer waiting for it (its "
                            "notifications stay journaled)",
                            forAccount=run.forAccount,
                            login=run.login,
                        )
            yield defer.gatherResults(
                [r.stopReadingSoon() for r in list(self._unended)]
            )
            remaining = self.journal.count
            yield self.journal.close()
            if remaining:
                self._log.info(
                    "{count} notification(s) stay journaled; they go to the "
                    "command at the next start",
                    count=remaining,
                )
        except Exception:
            self._log.failure("Closing the --exec sink failed")


def _parseLine(line: bytes) -> dict[str, Any]:
    """A journaled JSON line as an object; ``{}`` if it is not one."""
    try:
        parsed = json.loads(line)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _countChanges(notification: Mapping[str, Any]) -> int:
    """How many changes a notification's JSON form lists (0 if none, or
    from a release that did not parse them)."""
    changes = notification.get("changes")
    return len(changes) if isinstance(changes, list) else 0


def _allDone(runs: list[_Run]) -> defer.Deferred[None]:
    """Fire once every run in ``runs`` is done."""
    d = defer.gatherResults([run.done.wait() for run in runs])
    return d.addCallback(lambda _: None)


def _waitAtMost(
    waiting: defer.Deferred[None], seconds: float, clock: Any
) -> defer.Deferred[None]:
    """Fire when ``waiting`` fires or ``seconds`` have passed, whichever first."""
    result: defer.Deferred[None] = defer.Deferred()

    def fire(_: object = None) -> None:
        if call.active():
            call.cancel()
        if not result.called:
            result.callback(None)

    call = clock.callLater(seconds, fire)
    waiting.addBoth(fire)
    return result


def _describeStartError(error: Exception) -> str:
    """``Argument list too long (E2BIG)`` for an OSError, else its text."""
    if isinstance(error, OSError) and error.errno is not None:
        name = errno.errorcode.get(error.errno, str(error.errno))
        return f"{os.strerror(error.errno)} ({name})"
    return str(error) or type(error).__name__
