"""
Appends each notification as one JSON line to a file or to standard output,
without ever blocking the reactor.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import stat
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from yadiskpush.delivery.sinks._fdwriter import DescriptorWriter, WriteFailed
from yadiskpush.delivery.sinks.base import DeliveryFailed
from yadiskpush.errors import ConfigurationError
from yadiskpush.logs import Logger
from yadiskpush.notification import Notification

#: Bytes that may wait in memory for a slow reader before pushes are refused.
DEFAULT_MAX_BUFFER = 1024 * 1024

#: Seconds :meth:`JSONLinesSink.close` waits for a slow reader.
DEFAULT_CLOSE_GRACE = 2.0

# json.dumps(ensure_ascii=False) leaves these as they are, and they are line
# breaks to str.splitlines() and to JavaScript: escape them so that any
# line-splitting reader sees exactly one line per notification.
_LINE_BREAKS = {"\u0085": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}

# json.dumps(ensure_ascii=False) builds a new encoder at every call; one is
# enough. _quote is the C function that encoder uses for every string.
_ENCODER = json.JSONEncoder(ensure_ascii=False)
_quote = json.encoder.encode_basestring


def encodeJSONLine(notification: Notification) -> bytes:
    """
    Encode ``notification.toJSON()`` as one UTF-8 JSON line ending in ``\\n``.

    Non-ASCII text is written as itself, not as ``\\u`` escapes, except the
    three characters other than ``\\n`` that some readers take for line
    breaks. Shared by :class:`JSONLinesSink` and the ``--exec`` stdin.

    The line is exactly what ``json.dumps(notification.toJSON(),
    ensure_ascii=False)`` gives, but a push's own fields are written
    directly rather than through a dict, which halves the cost per push.
    """
    try:
        text = _encodeFields(notification)
    except (TypeError, ValueError):
        # A field that is not what the type says (built by hand): let json
        # decide, as before.
        text = _ENCODER.encode(notification.toJSON())
    if not text.isascii():
        for char, escape in _LINE_BREAKS.items():
            text = text.replace(char, escape)
    return text.encode("utf-8") + b"\n"


def _encodeFields(n: Notification) -> str:
    """
    The JSON of ``n.toJSON()``, key for key; raises TypeError (or
    ValueError) where a field is not of its declared type.
    """
    receivedAt = n.receivedAt
    if type(receivedAt) is not float or not math.isfinite(receivedAt):
        raise ValueError(receivedAt)
    attributes = ", ".join(
        [f"{_quote(k)}: {_quote(v)}" for k, v in n.attributes.items()]
    )
    if n.children:
        children = _ENCODER.encode([c.toJSON() for c in n.children])
        changes = n.changes
        changed = _ENCODER.encode([c.toJSON() for c in changes]) if changes else "[]"
    else:
        # A push without children has no changes: nothing to parse.
        children = changed = "[]"
    return (
        f'{{"login": {_quote(n.login)}, "id": {_quote(n.stanzaId)}, '
        f'"from": {_quote(n.sender)}, "to": {_quote(n.recipient)}, '
        f'"received_at": {float.__repr__(receivedAt)}, '
        f'"element": {_quote(n.element)}, "attributes": {{{attributes}}}, '
        f'"changes": {changed}, '
        f'"children": {children}, "raw_xml": {_quote(n.rawXml)}}}'
    )


class JSONLinesSink:
    """
    Writes one JSON object per notification, one per line, to ``path``
    (``"-"``: the process's standard output).

    ``deliver`` returns only once the whole line has been handed to the
    operating system (or returns a Deferred that fires then), so the client
    acknowledges only pushes that are in the file or the pipe, and ``tail
    -f`` sees each one at once. Lines are not ``fsync``-ed; a power loss can
    lose the last few.

    **Never blocking.** A regular file is written at once (one ``O_APPEND``
    descriptor, no user-space buffer). Anything else (a pipe, a FIFO, a
    socket, a terminal) is written in non-blocking mode by the reactor: when
    the reader is slow, lines wait in memory, in order, and their pushes
    wait for their ack. Once more than ``maxBuffer`` bytes wait, further
    pushes are refused at once (the server sends them again later), and
    that is logged once per stall. The client keeps answering the server
    and honours a stop while the reader is stalled.

    **Standard output.** With ``"-"``, the sink takes the original standard
    output for itself (a descriptor of its own) and points descriptor 1 at
    standard error: *with ``-``, the log goes to standard error*, so
    ``twistd``'s log (written to standard output by default) never mixes
    with the JSON lines and never waits on a stalled JSON reader. For a pipe
    the sink reopens it through ``/proc`` (Linux), so that its non-blocking
    mode is its own; elsewhere it uses a duplicate and restores the mode on
    close.

    **Rotation.** Before the first line of each reactor turn, the sink
    checks that ``path`` still names the file it has open (device and
    inode, as Python's ``logging.handlers.WatchedFileHandler`` does before
    each record); if it was renamed or deleted, the sink opens ``path``
    again (creating it), so logrotate works without ``copytruncate``. Once
    per turn rather than once per line: a ``stat`` per line cost a fifth of
    a push's time, and lines of one turn are written back to back anyway.
    :meth:`reopen` does it unconditionally (the SIGHUP convention). If
    opening fails, that push is refused and the next one tries again.

    If a write fails (disk full, closed pipe), the error is logged once and
    every line waiting is refused with
    :class:`~yadiskpush.delivery.sinks.base.DeliveryFailed`; if part of a
    line had been written, the next line starts on a fresh line, so only the
    torn one is unreadable.

    :param path: file to append to, created if missing; ``"-"`` for stdout.
    :param reactor: watches non-blocking descriptors (``IReactorFDSet``);
        the global reactor by default.
    :param clock: times :meth:`close`'s grace; ``reactor`` by default.
    :param maxBuffer: bytes that may wait for a slow reader.
    :param closeGrace: seconds :meth:`close` waits for waiting lines.
    :param stdoutFD: the descriptor ``"-"`` means (for tests).
    :param stderrFD: the descriptor ``stdoutFD`` is pointed at once the sink
        has its own copy; ``None`` leaves ``stdoutFD`` alone (for tests).
    :raises ConfigurationError: if ``path`` cannot be opened for appending,
        or standard output is not open.
    """

    _log = Logger()

    # The system call every regular-file write goes through.
    _write = staticmethod(os.write)

    def __init__(
        self,
        path: str,
        reactor: Any = None,
        clock: IReactorTime | None = None,
        maxBuffer: int = DEFAULT_MAX_BUFFER,
        closeGrace: float = DEFAULT_CLOSE_GRACE,
        stdoutFD: int = 1,
        stderrFD: int | None = 2,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor
        self.path = path
        self.reactor = reactor
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.maxBuffer = maxBuffer
        self.closeGrace = closeGrace
        self._fd: int | None = None
        self._writer: DescriptorWriter | None = None
        self._identity: tuple[int, int] | None = None
        self._restoreFlags: int | None = None
        self._tornLine = False
        self._refusing = False
        self._closed = False
        self._released = False
        self._closeTimer: IDelayedCall | None = None
        self._closeWaiters: list[defer.Deferred[None]] = []
        self._pathCheckedThisTurn = False
        if path == "-":
            self._name = "standard output"
            fd, shared = _claimStdout(stdoutFD, stderrFD)
            self._adopt(fd, shared)
            return
        self._name = path
        try:
            self._openPath()
        except OSError as e:
            if e.errno != errno.ENXIO:
                raise ConfigurationError(
                    f"cannot open the JSON output file {path!r}: {_reason(e)}"
                ) from None
            self._log.warn(
                "Nothing reads the FIFO {output} yet; pushes are refused until "
                "something does",
                output=path,
            )

    def __repr__(self) -> str:
        return f"<JSONLinesSink {self._name}>"

    # -- the sink ---------------------------------------------------------

    def deliver(self, notification: Notification) -> defer.Deferred[None] | None:
        """
        Write the notification's line.

        :returns: ``None`` if all of it is with the operating system already
            (the usual case: a push costs no Deferred); otherwise a Deferred
            that fires once it is, or fails with
            :class:`~yadiskpush.delivery.sinks.base.DeliveryFailed`. An
            expected failure is never raised, always a failed Deferred.
        """
        stanzaId = notification.stanzaId
        if self._closed:
            return defer.fail(DeliveryFailed(stanzaId, f"{self._name} is closed"))
        try:
            self._followPath()
        except OSError as e:
            reason = _reason(e)
            self._log.error(
                "Could not open {output} again: {reason}; trying again at the "
                "next push",
                output=self._name,
                reason=reason,
            )
            return defer.fail(
                DeliveryFailed(stanzaId, f"opening {self._name} failed: {reason}")
            )
        line = encodeJSONLine(notification)
        if self._writer is None:
            return self._writeRegular(stanzaId, line)
        return self._writeNonBlocking(self._writer, stanzaId, line)

    def reopen(self) -> None:
        """
        Close and open ``path`` again, as logrotate expects on SIGHUP; lines
        still waiting for a slow reader are refused. Nothing happens for
        standard output. A failure is logged, and the next push tries again.
        """
        if self.path == "-" or self._closed:
            return
        try:
            self._reopen()
        except OSError as e:
            self._log.error(
                "Could not reopen {output}: {reason}; trying again at the next push",
                output=self._name,
                reason=_reason(e),
            )
        else:
            self._log.info("Reopened {output}", output=self._name)

    def close(self) -> defer.Deferred[None]:
        """
        Wait up to ``closeGrace`` seconds for lines a slow reader has not
        taken yet, drop the rest (their pushes were never acknowledged, so
        the server sends them again), and close the descriptor (descriptor
        1 itself is left open). Never fails.
        """
        d: defer.Deferred[None] = defer.Deferred()
        if self._released:
            d.callback(None)
            return d
        self._closeWaiters.append(d)
        if not self._closed:
            self._closed = True
            writer = self._writer
            if writer is None or not writer.waitingChunks:
                self._finishClose()
            else:
                self._closeTimer = self.clock.callLater(
                    self.closeGrace, self._dropWaiting, writer
                )
                writer.whenDrained().addCallback(lambda _: self._finishClose())
        return d

    # -- opening ----------------------------------------------------------

    def _openPath(self) -> None:
        # O_NONBLOCK: opening a FIFO that nothing reads fails (ENXIO)
        # instead of waiting for a reader; regular files ignore it.
        fd = os.open(
            self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o666
        )
        try:
            self._adopt(fd, shared=False)
        except OSError:
            os.close(fd)
            raise

    def _adopt(self, fd: int, shared: bool) -> None:
        """Write to ``fd`` from now on: directly, or through the reactor."""
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode):
            self._writer = None
        else:
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            if not flags & os.O_NONBLOCK:
                fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
                if shared:
                    # Whoever shares this open file description gets its
                    # blocking mode back when we close.
                    self._restoreFlags = flags
            self._writer = DescriptorWriter(
                fd, self.reactor, self._name, self._writeFailed, self._writerDrained
            )
        self._fd = fd
        self._identity = (info.st_dev, info.st_ino)

    def _followPath(self) -> None:
        """Open ``path`` again if it no longer names our file."""
        if self.path == "-":
            return
        if self._fd is None:
            self._openPath()
            self._log.info("Opened {output}", output=self._name)
            return
        if self._pathCheckedThisTurn:
            return
        self._pathCheckedThisTurn = True
        self.clock.callLater(0, self._newTurn)
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            moved = True
        else:
            moved = (info.st_dev, info.st_ino) != self._identity
        if moved:
            self._reopen()
            self._log.info(
                "Reopened {output} (it was renamed or deleted)", output=self._name
            )

    def _newTurn(self) -> None:
        self._pathCheckedThisTurn = False

    def _reopen(self) -> None:
        self._release("it was reopened before the line was written")
        # A new file does not continue the torn line of the old one.
        self._tornLine = False
        self._openPath()

    def _release(self, reason: str) -> None:
        """Refuse what still waits and close our descriptor."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.abandon(reason)
        fd, self._fd = self._fd, None
        restoreFlags, self._restoreFlags = self._restoreFlags, None
        if fd is None:
            return
        try:
            if restoreFlags is not None:
                fcntl.fcntl(fd, fcntl.F_SETFL, restoreFlags)
            os.close(fd)
        except OSError as e:
            self._log.error(
                "Closing {output} failed: {reason}",
                output=self._name,
                reason=_reason(e),
            )

    # -- writing ----------------------------------------------------------

    def _writeRegular(self, stanzaId: str, line: bytes) -> defer.Deferred[None] | None:
        """
        Write to a regular file at once: it never waits for a reader.
        ``None`` once written, a failed Deferred if it could not be.
        """
        assert self._fd is not None
        if self._tornLine:
            line = b"\n" + line
        view = memoryview(line)
        try:
            while view:
                written = self._write(self._fd, view)
                if written == len(view):
                    # The usual case: all of it in one call.
                    break
                if not written:
                    raise OSError(errno.EIO, f"{self._name} accepted no data")
                view = view[written:]
        except OSError as e:
            if len(view) < len(line):
                self._tornLine = True
            reason = _reason(e)
            self._log.error(
                "Could not write push {id} to {output}: {reason}",
                id=stanzaId,
                output=self._name,
                reason=reason,
            )
            return defer.fail(
                DeliveryFailed(stanzaId, f"writing to {self._name} failed: {reason}")
            )
        self._tornLine = False
        return None

    def _writeNonBlocking(
        self, writer: DescriptorWriter, stanzaId: str, line: bytes
    ) -> defer.Deferred[None] | None:
        """Hand the line to the reactor's writer, unless too much waits."""
        waiting = writer.pending
        if waiting and waiting + len(line) > self.maxBuffer:
            if not self._refusing:
                self._refusing = True
                self._log.warn(
                    "{output} is not reading: {waiting} bytes are waiting, so "
                    "pushes are refused (the server sends them again) until it "
                    "reads again",
                    output=self._name,
                    waiting=waiting,
                )
            return defer.fail(
                DeliveryFailed(
                    stanzaId, f"{self._name} is not reading; {waiting} bytes waiting"
                )
            )
        if writer.torn:
            line = b"\n" + line

        def failed(reason: Failure) -> Failure:
            reason.trap(WriteFailed)
            return Failure(
                DeliveryFailed(
                    stanzaId, f"writing to {self._name} failed: {reason.value.reason}"
                )
            )

        written = writer.write(line)
        if written is None:
            return None
        return written.addErrback(failed)

    def _writeFailed(self, reason: str, lines: int) -> None:
        self._log.error(
            "Could not write to {output}: {reason}; {lines} waiting line(s) "
            "refused (their pushes are not acknowledged)",
            output=self._name,
            reason=reason,
            lines=lines,
        )

    def _writerDrained(self) -> None:
        if self._refusing:
            self._refusing = False
            self._log.info(
                "{output} is reading again; pushes are taken again",
                output=self._name,
            )

    # -- closing ----------------------------------------------------------

    def _dropWaiting(self, writer: DescriptorWriter) -> None:
        self._closeTimer = None
        self._log.warn(
            "Closing {output}: {lines} line(s) were not written within "
            "{grace} seconds and are dropped; their pushes were not "
            "acknowledged, so the server sends them again",
            output=self._name,
            lines=writer.waitingChunks,
            grace=self.closeGrace,
        )
        # Fails the waiting lines; whenDrained then finishes the close.
        writer.abandon("it was closed before the line was written")

    def _finishClose(self) -> None:
        if self._released:
            return
        self._released = True
        if self._closeTimer is not None and self._closeTimer.active():
            self._closeTimer.cancel()
        self._closeTimer = None
        self._release("it was closed before the line was written")
        waiters, self._closeWaiters = self._closeWaiters, []
        for d in waiters:
            d.callback(None)


def _claimStdout(stdoutFD: int, stderrFD: int | None) -> tuple[int, bool]:
    """
    A descriptor of our own for the original standard output, and whether
    its open file description is shared with others; then ``stdoutFD``
    points at ``stderrFD``.

    :raises ConfigurationError: if ``stdoutFD`` is not open.
    """
    try:
        info = os.fstat(stdoutFD)
    except OSError as e:
        raise ConfigurationError(
            f"cannot write JSON lines to standard output: {_reason(e)}"
        ) from None
    fd: int | None = None
    if stat.S_ISFIFO(info.st_mode):
        # Opening the pipe again gives a new open file description, so the
        # non-blocking mode set on it affects no one else (the shell's
        # pipeline, another process writing the same pipe). Without /proc
        # (not Linux), or if nothing reads the pipe (ENXIO), share instead.
        try:
            fd = os.open(f"/proc/self/fd/{stdoutFD}", os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            fd = None
    shared = fd is None
    if fd is None:
        fd = os.dup(stdoutFD)
    if stderrFD is not None:
        os.dup2(stderrFD, stdoutFD)
    return fd, shared


def _reason(error: OSError) -> str:
    if error.errno == errno.ENXIO:
        # What opening a FIFO without a reader in non-blocking mode means.
        return "nothing is reading it"
    return error.strerror or str(error)
