"""
Writes chunks of bytes to a non-blocking descriptor (a pipe, a FIFO, a
socket, a terminal) through the reactor, and says when each chunk is out.

Twisted's own ``FileDescriptor`` buffers writes but cannot say when a given
chunk has reached the operating system, which is what a sink must know
before its push is acknowledged; this small writer keeps one Deferred per
chunk instead.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IWriteDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer


class WriteFailed(Exception):
    """
    A chunk was not written: the descriptor failed, or the chunk was
    dropped before it could be written.

    :ivar reason: why, as a user reads it ("Broken pipe").
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Chunk:
    __slots__ = ("data", "written", "done")

    def __init__(self, data: bytes, canceller: Callable[[_Chunk], None]) -> None:
        self.data = data
        self.written = 0
        self.done: defer.Deferred[None] = defer.Deferred(lambda _: canceller(self))


@implementer(IWriteDescriptor)
class DescriptorWriter:
    """
    Writes chunks, in order, to a descriptor that is already in non-blocking
    mode; what does not fit waits in memory and is written when the reactor
    reports the descriptor writable.

    The writer does not own the descriptor: whoever made it closes it, after
    :meth:`stopWriting`.

    :ivar torn: the last chunk was cut off after part of it had been
        written (a write error, or :meth:`abandon`); cleared when a chunk is
        written whole.
    """

    def __init__(
        self,
        fd: int,
        reactor: Any,
        name: str,
        onFailure: Callable[[str, int], None],
        onDrained: Callable[[], None],
    ) -> None:
        """
        :param fd: a descriptor in non-blocking mode.
        :param reactor: an ``IReactorFDSet``.
        :param name: what the descriptor is, for the reactor's log prefix.
        :param onFailure: called once per write error, with the reason and
            how many chunks it failed.
        :param onDrained: called when chunks that had to wait are all
            gone (written, failed or dropped).
        """
        self.fd = fd
        self.reactor = reactor
        self.name = name
        self.torn = False
        self._onFailure = onFailure
        self._onDrained = onDrained
        self._queue: deque[_Chunk] = deque()
        self._pending = 0
        self._writing = False
        self._backlogged = False
        self._drainWaiters: list[defer.Deferred[None]] = []

    @property
    def pending(self) -> int:
        """Bytes accepted by :meth:`write` and not yet written."""
        return self._pending

    @property
    def waitingChunks(self) -> int:
        """How many chunks are not (completely) written yet."""
        return len(self._queue)

    def write(self, data: bytes) -> defer.Deferred[None] | None:
        """
        Write ``data`` after every chunk before it.

        :returns: ``None`` if all of ``data`` was written at once (nothing
            waited before it and the descriptor took it whole: the usual
            case with a reader that keeps up, which then costs no
            Deferred); otherwise a Deferred that fires once every byte of
            ``data`` was written to the descriptor, or fails with
            :class:`WriteFailed`. Cancelling it drops ``data`` if none of it
            was written yet; a chunk already partly written is finished
            regardless, so that the output is not torn.
        """
        written = 0
        if not self._queue:
            # Nothing waits before it: try at once, so a reader that keeps
            # up sees the line (and the push is acknowledged) without
            # waiting for the next reactor turn.
            try:
                written = os.write(self.fd, data)
            except BlockingIOError:
                pass
            except OSError:
                # _flush meets the error again and fails the chunk as it
                # fails any.
                written = 0
            else:
                if written == len(data):
                    self.torn = False
                    return None
        chunk = _Chunk(data, self._cancel)
        chunk.written = written
        self._queue.append(chunk)
        self._pending += len(data) - written
        if len(self._queue) == 1:
            self._flush()
        return chunk.done

    def whenDrained(self) -> defer.Deferred[None]:
        """Fire once nothing is waiting (written, failed or dropped)."""
        if not self._queue:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._drainWaiters.append(d)
        return d

    def abandon(self, reason: str) -> int:
        """
        Drop every waiting chunk (failing it with :class:`WriteFailed`) and
        stop writing.

        :returns: how many chunks were dropped.
        """
        return self._fail(reason)

    def stopWriting(self) -> None:
        """Stop watching the descriptor (before it is closed)."""
        if self._writing:
            self._writing = False
            self.reactor.removeWriter(self)

    # -- IWriteDescriptor -------------------------------------------------

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return self.name

    def doWrite(self) -> None:
        self._flush()

    def connectionLost(self, reason: Failure) -> None:
        # The reactor saw the descriptor hang up or fail (the reader of a
        # pipe closed it) and has already stopped watching it.
        self._writing = False
        if self._queue:
            self._fail("the reader closed it", report=True)

    # -- internals --------------------------------------------------------

    def _flush(self) -> None:
        written: list[_Chunk] = []
        error: OSError | None = None
        while self._queue:
            chunk = self._queue[0]
            try:
                count = os.write(self.fd, memoryview(chunk.data)[chunk.written :])
            except BlockingIOError:
                break
            except OSError as e:
                error = e
                break
            chunk.written += count
            self._pending -= count
            if chunk.written < len(chunk.data):
                # Partly taken: the descriptor is full for now.
                break
            self._queue.popleft()
            self.torn = False
            written.append(chunk)
        # Settle the state before any callback runs: a callback may write.
        if error is None and self._queue and not self._writing:
            self._writing = True
            self._backlogged = True
            self.reactor.addWriter(self)
        drained = error is None and not self._queue and self._backlogged
        if drained:
            self.stopWriting()
            self._backlogged = False
            self._onDrained()
        for chunk in written:
            if not chunk.done.called:  # cancelled while partly written
                chunk.done.callback(None)
        if error is not None:
            self._fail(_describe(error), report=True)
        elif drained:
            self._fireDrainWaiters()

    def _fail(self, reason: str, report: bool = False) -> int:
        self.stopWriting()
        self._backlogged = False
        chunks, self._queue = list(self._queue), deque()
        self._pending = 0
        if chunks and chunks[0].written:
            self.torn = True
        if report:
            self._onFailure(reason, len(chunks))
        if chunks:
            self._onDrained()
        for chunk in chunks:
            if not chunk.done.called:
                chunk.done.errback(WriteFailed(reason))
        if chunks:
            self._fireDrainWaiters()
        return len(chunks)

    def _cancel(self, chunk: _Chunk) -> None:
        # Deferred.cancel then fails chunk.done with CancelledError.
        if chunk.written or chunk not in self._queue:
            return
        self._queue.remove(chunk)
        self._pending -= len(chunk.data)
        if not self._queue:
            self.stopWriting()
            self._backlogged = False
            self._onDrained()
            self._fireDrainWaiters()

    def _fireDrainWaiters(self) -> None:
        waiters, self._drainWaiters = self._drainWaiters, []
        for d in waiters:
            d.callback(None)


def _describe(error: BaseException) -> str:
    """The reason of an error as a user reads it: the OS's words if any."""
    return getattr(error, "strerror", None) or str(error) or type(error).__name__
