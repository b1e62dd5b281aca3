"""
Runs a shell command for notifications: one run at a time, with the pushes
that arrive during a run coalesced into one follow-up run.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet import defer, error
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from yadiskpush.delivery.sinks.base import DeliveryFailed
from yadiskpush.delivery.sinks.jsonlines import encodeJSONLine
from yadiskpush.notification import Notification

#: Never passed to the command, whatever the parent's environment holds.
TOKEN_VARIABLE = "YADISKPUSH_TOKEN"

#: Inherited variables with this prefix are dropped, so that the child sees
#: only the ones this run sets (and no setting that might hold a secret).
ENV_PREFIX = "YADISKPUSH_"

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


def environmentName(attribute: str) -> str:
    """
    The variable an attribute of the push payload is passed in:
    ``YADISKPUSH_ATTR_`` and the name upper-cased, with every character other
    than ASCII letters and digits replaced by ``_`` (``new-revision`` becomes
    ``YADISKPUSH_ATTR_NEW_REVISION``).
    """
    return "YADISKPUSH_ATTR_" + _NOT_ALPHANUMERIC.sub("_", attribute.upper())


def childEnvironment(
    notifications: Sequence[Notification], parent: Mapping[str, str]
) -> dict[str, str]:
    """
    The complete environment of one run, built explicitly: ``spawnProcess``
    would hand the whole parent environment, token included, to the child
    if given ``env=None``.

    It is ``parent`` without any ``YADISKPUSH_*`` variable (so never
    ``YADISKPUSH_TOKEN``), plus the variables documented on
    :class:`ExecSink`, which describe the last of ``notifications``.
    """
    env = {
        name: value
        for name, value in parent.items()
        if name != TOKEN_VARIABLE and not name.startswith(ENV_PREFIX)
    }
    last = notifications[-1]
    # Attributes first, so that the fixed names win a (strange) collision.
    for name, value in sorted(last.attributes.items()):
        env[environmentName(name)] = value
    env.update(
        YADISKPUSH_COUNT=str(len(notifications)),
        YADISKPUSH_ID=last.stanzaId,
        YADISKPUSH_FROM=last.sender,
        YADISKPUSH_TO=last.recipient,
        YADISKPUSH_ELEMENT=last.element,
        YADISKPUSH_RECEIVED_AT=repr(last.receivedAt),
    )
    return env


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
    One run of the command: feeds it its notifications, logs its output and
    exit, and enforces the timeout.

    ``done`` happens when the run is over for the sink: the shell has exited
    (and, after a timeout, its process group is gone or has been killed).
    ``ended`` happens when its output pipes are closed too, which a
    background process the command started can put off indefinitely.
    """

    def __init__(self, sink: ExecSink, notifications: list[Notification]) -> None:
        self.sink = sink
        self.reactor = sink.reactor
        self.log = sink._log
        self.stdinData = b"".join(encodeJSONLine(n) for n in notifications)
        self.count = len(notifications)
        self.lastId = notifications[-1].stanzaId
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
            "The command has run for {timeout:g} s, its timeout; stopping it",
            timeout=self.sink.timeout,
        )
        self._signal(signal.SIGTERM)
        self._killCall = self.reactor.callLater(self.sink.killGrace, self._kill)

    def _kill(self) -> None:
        self._killCall = None
        if self._pollCall is not None:
            self._pollCall.cancel()
            self._pollCall = None
        if self.leaderExited:
            self.log.warn("Processes the command started ignored SIGTERM; killing them")
        else:
            self.log.warn("The command ignored SIGTERM; killing it")
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
        if self.timedOut and self._killCall is not None:
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
        )
        if self.timedOut:
            how = (
                f"killed by {fields['signalName']}"
                if signalNumber
                else f"exit status {exitStatus}"
            )
            self.log.warn(
                "The command timed out after {timeout:g} s and was stopped "
                "({how}); {count} notification(s) up to push {id}",
                timeout=self.sink.timeout,
                how=how,
                **fields,
            )
        elif signalNumber:
            self.log.warn(
                "The command was killed by {signalName} after {duration:.2f} s; "
                "{count} notification(s) up to push {id}",
                **fields,
            )
        elif exitStatus:
            self.log.warn(
                "The command failed with exit status {exitStatus} after "
                "{duration:.2f} s; {count} notification(s) up to push {id}",
                **fields,
            )
        else:
            self.log.info(
                "The command finished after {duration:.2f} s; "
                "{count} notification(s) up to push {id}",
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
                "{suppressed} more line(s) of command output were not logged",
                suppressed=self._linesSuppressed,
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
            "A process the command left running still holds its output; "
            "no longer reading it"
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
            self.log.info("Command output: {line}", line=text, stream="stdout")
        else:
            self.log.warn("Command error output: {line}", line=text, stream="stderr")


class ExecSink:
    """
    Runs ``command`` with ``/bin/sh -c`` when notifications arrive, never
    more than one run at a time and never losing a notification.

    **Coalescing.** A notification arriving while no run is in progress
    starts one at once. Notifications arriving during a run are queued, and
    when it ends they all go to exactly one follow-up run: a hundred pushes
    during one slow run cause one more run, not a hundred. ``deliver`` fires
    as soon as the notification is queued, not when the command has run, so
    a slow command does not hold back the acknowledgement of pushes.

    **Standard input** of a run is its notifications as JSON Lines, oldest
    first: one ``notification.toJSON()`` object per line, UTF-8, exactly
    the lines ``--json-out`` writes; then standard input is closed. A run
    for one push reads a single line (``jq`` or ``json.load`` take it as
    is); a coalesced run reads ``YADISKPUSH_COUNT`` lines.

    **Environment.** The parent's environment without any ``YADISKPUSH_*``
    variable (never the ``YADISKPUSH_TOKEN``), plus:

    - ``YADISKPUSH_COUNT``: number of notifications in this run (lines on
      standard input);
    - ``YADISKPUSH_ID``: stanza id of the last (newest) one;
    - ``YADISKPUSH_FROM``, ``YADISKPUSH_TO``: its sender and recipient JIDs;
    - ``YADISKPUSH_ELEMENT``: its payload element name (``query`` today);
    - ``YADISKPUSH_RECEIVED_AT``: when it arrived, seconds since the epoch;
    - ``YADISKPUSH_ATTR_<NAME>`` for each attribute of its payload, the name
      upper-cased and non-alphanumerics turned into ``_`` (see
      :func:`environmentName`), e.g. ``YADISKPUSH_ATTR_TYPE``.

    **Logging.** Each run's exit status or signal, duration and number of
    notifications is logged, at info level on success and warn otherwise.
    The command's output is logged line by line (stdout at info, stderr at
    warn), lines cut at ``maxLineLength`` bytes and at most
    ``maxLoggedLines`` lines per run; nothing is buffered beyond one line.

    **Timeout.** A run still going after ``timeout`` seconds gets SIGTERM,
    and SIGKILL ``killGrace`` seconds later. The command runs in a process
    group of its own and the signals go to the whole group, so the
    programs the shell started stop too; the next run starts only after
    they have. A run ends when the shell exits: background processes it
    left behind on success are not waited for.

    **Failures.** A failing, crashing or hanging command is logged and
    nothing more: the next notification starts a new run as usual. If the
    command cannot be started at all, its notifications stay queued for the
    next attempt. Only a full queue (``maxPending`` notifications waiting)
    or a closed sink makes ``deliver`` fail, with
    :class:`~yadiskpush.delivery.sinks.base.DeliveryFailed`, so the push is not
    acknowledged.

    **Close.** ``close()`` refuses new notifications, lets the current run
    finish (within its timeout) and then runs the follow-up for the
    notifications still queued, so the last change is not lost on shutdown.
    With no timeout, it waits as long as the command takes.

    :param command: shell command, run as ``/bin/sh -c command``.
    :param timeout: seconds a run may take, or ``None`` for no limit.
    :param reactor: provides ``IReactorProcess`` and ``IReactorTime``; the
        global reactor by default.
    :param environ: the parent environment to start from; ``os.environ``
        (read at each run) by default.
    :param killGrace: seconds between SIGTERM and SIGKILL after a timeout.
    :param maxPending: how many notifications may wait for the next run.
    :param log: logger to use instead of the class's.
    :raises ValueError: if ``command`` is empty or ``timeout`` not positive.

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
        killGrace: float = 5.0,
        maxPending: int = 10_000,
        log: Logger | None = None,
    ) -> None:
        if not command.strip():
            raise ValueError("the command is empty")
        if timeout is not None and timeout <= 0:
            raise ValueError("the timeout must be positive")
        if reactor is None:
            from twisted.internet import reactor  # type: ignore[no-redef]
        self.command = command
        self.timeout = timeout
        self.reactor = reactor
        self.killGrace = killGrace
        self.maxPending = maxPending
        if log is not None:
            self._log = log
        self._environ = environ
        self._pending: list[Notification] = []
        self._current: _Run | None = None
        self._unended: set[_Run] = set()
        self._idleWaiters: list[defer.Deferred[None]] = []
        self._closing = False
        self.runs = 0

    def __repr__(self) -> str:
        return "<ExecSink>"

    def deliver(self, notification: Notification) -> defer.Deferred[None]:
        """
        Queue the notification for a run (starting one if none is going)
        and fire at once; fail with
        :class:`~yadiskpush.delivery.sinks.base.DeliveryFailed` if the sink is
        closed or the queue is full.
        """
        if self._closing:
            return defer.fail(
                DeliveryFailed(notification.stanzaId, "the --exec sink is closed")
            )
        if len(self._pending) >= self.maxPending:
            self._log.error(
                "{pending} notifications are already waiting for the command; "
                "refusing push {id} so that it is not acknowledged",
                pending=len(self._pending),
                id=notification.stanzaId,
            )
            return defer.fail(
                DeliveryFailed(
                    notification.stanzaId,
                    f"{len(self._pending)} notifications are already waiting "
                    "for the --exec command",
                )
            )
        self._pending.append(notification)
        if self._current is None:
            self._startRun()
        return defer.succeed(None)

    def _startRun(self) -> None:
        batch, self._pending = self._pending, []
        run = _Run(self, batch)
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
        try:
            env = childEnvironment(batch, environ)
            transport = self.reactor.spawnProcess(
                run, executable, args, env=env, path=None
            )
        except Exception:
            self._log.failure(
                "Could not start the command; {count} notification(s) stay "
                "queued for the next attempt",
                count=len(batch),
            )
            self._pending[:0] = batch
            return
        self.runs += 1
        self._current = run
        self._unended.add(run)
        run.ended.wait().addCallback(lambda _: self._unended.discard(run))
        run.done.wait().addCallback(self._runDone, run)
        self._log.info(
            "Running the command for {count} notification(s) up to push {id}",
            count=len(batch),
            id=run.lastId,
        )
        run.started(getattr(transport, "pid", None), ownGroup)

    def _runDone(self, _: object, run: _Run) -> None:
        if self._current is run:
            self._current = None
        if self._pending:
            self._startRun()
        if self._current is None:
            waiters, self._idleWaiters = self._idleWaiters, []
            for d in waiters:
                d.callback(None)

    def _whenIdle(self) -> defer.Deferred[None]:
        if self._current is None:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._idleWaiters.append(d)
        return d

    def close(self) -> defer.Deferred[None]:
        """
        Refuse further notifications, and fire once the current run and the
        follow-up for queued notifications have finished (each within the
        timeout) and their output has been read. Never fails.
        """
        if not self._closing:
            self._closing = True
            if self._pending and self._current is None:
                # Left over from a failed start: one last try.
                self._startRun()

        def idle(_: object) -> defer.Deferred[Any]:
            if self._pending:
                self._log.error(
                    "{count} notification(s) were never passed to the command",
                    count=len(self._pending),
                )
                self._pending = []
            return defer.gatherResults(
                [run.stopReadingSoon() for run in list(self._unended)]
            )

        d = self._whenIdle().addCallback(idle)
        d.addCallback(lambda _: None)
        return d
