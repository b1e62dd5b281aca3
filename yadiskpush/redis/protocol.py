"""
RESP2, the Redis wire protocol: commands out, replies in, matched in order.

A command is an array of bulk strings. Redis answers every command of a
connection in the order it received them, so a FIFO of Deferreds is all the
bookkeeping pipelining needs. A reply that takes longer than
``replyTimeout`` means the server is stuck (or the network is): the
connection is aborted, and every command still waiting fails with
:class:`RedisConnectionLost`, whose outcome the caller must treat as unknown.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Union

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

from yadiskpush.errors import YaDiskPushError

#: What a reply decodes to: bytes, int, None (nil), a list of replies, or a
#: :class:`RedisReplyError` (inside an array; a top-level one fails the call).
Reply = Union[bytes, int, None, list[Any], "RedisReplyError"]

#: Longest line (a simple string, an error or a length) accepted.
MAX_LINE = 64 * 1024

#: Largest bulk string accepted (Redis's own proto-max-bulk-len default).
MAX_BULK = 512 * 1024 * 1024


class RedisReplyError(YaDiskPushError):
    """
    Redis answered a command with an error (``-WRONGTYPE ...``, ``-NOAUTH``).

    :ivar code: the first word (``WRONGTYPE``, ``NOAUTH``, ``OOM``, ``ERR``).
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = message.split(" ", 1)[0]


class RedisConnectionLost(YaDiskPushError):
    """The connection ended before this command's reply: it may have run."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"connection to Redis lost before the reply ({reason})")


class RedisProtocolError(YaDiskPushError):
    """Redis sent something that is not RESP2; the connection is dropped."""


def encodeCommand(*arguments: bytes | str | int) -> bytes:
    """A command as RESP2: an array of bulk strings (``str`` as UTF-8)."""
    parts = [b"*%d\r\n" % len(arguments)]
    for argument in arguments:
        if isinstance(argument, int):
            data = b"%d" % argument
        elif isinstance(argument, str):
            data = argument.encode("utf-8")
        else:
            data = argument
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Incomplete(Exception):
    """More bytes are needed to finish the reply at hand."""


class ReplyParser:
    """
    Turns received bytes into replies, whatever way they were split.

    :meth:`feed` returns every reply that is complete; a partial one waits
    for the next bytes. Each call parses from the start of the unconsumed
    buffer, so a reply split over many segments is re-read; replies here are
    small (one stream entry, one page of entries).
    """

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[Reply]:
        self._buffer += data
        replies = []
        while self._buffer:
            try:
                reply, end = self._parse(0)
            except _Incomplete:
                break
            self._buffer = self._buffer[end:]
            replies.append(reply)
        return replies

    def _line(self, start: int) -> tuple[bytes, int]:
        end = self._buffer.find(b"\r\n", start)
        if end < 0:
            if len(self._buffer) - start > MAX_LINE:
                raise RedisProtocolError("a line from Redis is too long")
            raise _Incomplete()
        return self._buffer[start:end], end + 2

    def _parse(self, start: int) -> tuple[Reply, int]:
        line, end = self._line(start)
        if not line:
            raise RedisProtocolError("an empty line from Redis")
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest, end
        if kind == b"-":
            return RedisReplyError(rest.decode("utf-8", "replace")), end
        if kind == b":":
            return self._integer(rest), end
        if kind == b"$":
            length = self._integer(rest)
            if length < 0:
                return None, end
            if length > MAX_BULK:
                raise RedisProtocolError("a bulk string from Redis is too long")
            if len(self._buffer) < end + length + 2:
                raise _Incomplete()
            if self._buffer[end + length : end + length + 2] != b"\r\n":
                raise RedisProtocolError("a bulk string from Redis is not terminated")
            return self._buffer[end : end + length], end + length + 2
        if kind == b"*":
            count = self._integer(rest)
            if count < 0:
                return None, end
            items: list[Any] = []
            for _ in range(count):
                item, end = self._parse(end)
                items.append(item)
            return items, end
        raise RedisProtocolError(f"unknown reply type {kind!r} from Redis")

    @staticmethod
    def _integer(text: bytes) -> int:
        try:
            return int(text)
        except ValueError:
            raise RedisProtocolError(
                f"not a number from Redis: {text[:20]!r}"
            ) from None


class RedisProtocol(Protocol):
    """
    One connection to Redis: :meth:`execute` sends a command and returns a
    Deferred for its reply; commands may be pipelined.

    A top-level error reply fails that command's Deferred with
    :class:`RedisReplyError`; the connection goes on. The end of the
    connection fails every waiting command with :class:`RedisConnectionLost`.

    :param clock: runs the reply timeout.
    :param replyTimeout: seconds the oldest command may wait for its reply
        before the connection is aborted.
    """

    def __init__(self, clock: IReactorTime, replyTimeout: float = 30.0) -> None:
        self.clock = clock
        self.replyTimeout = replyTimeout
        self._parser = ReplyParser()
        self._waiting: deque[defer.Deferred[Any]] = deque()
        self._timer: IDelayedCall | None = None
        self.whenLost: defer.Deferred[Failure] = defer.Deferred()
        self.lost = False
        self.timedOut = False
        self._abortReason: str | None = None
        #: Why the connection ended, in words and as it came (once it has).
        self.lostBecause = ""
        self.lostFailure: Failure | None = None

    @property
    def inFlight(self) -> int:
        """Commands sent whose reply has not come yet."""
        return len(self._waiting)

    def execute(self, *arguments: bytes | str | int) -> defer.Deferred[Any]:
        """Send one command; the Deferred fires with its reply."""
        if self.lost:
            return defer.fail(RedisConnectionLost("connection closed"))
        d: defer.Deferred[Any] = defer.Deferred()
        self._waiting.append(d)
        if self._timer is None:
            self._timer = self.clock.callLater(self.replyTimeout, self._timeOut)
        assert self.transport is not None
        self.transport.write(encodeCommand(*arguments))
        return d

    def dataReceived(self, data: bytes) -> None:
        try:
            replies = self._parser.feed(data)
        except RedisProtocolError as e:
            self._abort(str(e))
            return
        for reply in replies:
            if not self._waiting:
                self._abort("Redis sent a reply nobody asked for")
                return
            d = self._waiting.popleft()
            self._restartTimer()
            if isinstance(reply, RedisReplyError):
                d.errback(reply)
            else:
                d.callback(reply)

    def _restartTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._waiting and not self.lost:
            self._timer = self.clock.callLater(self.replyTimeout, self._timeOut)

    def _timeOut(self) -> None:
        self._timer = None
        self.timedOut = True
        self._abort(f"no reply from Redis within {self.replyTimeout:g} s")

    def _abort(self, reason: str) -> None:
        self._abortReason = reason
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        why = self._abortReason or reason.getErrorMessage()
        self.lostBecause = why
        self.lostFailure = reason
        waiting, self._waiting = self._waiting, deque()
        for d in waiting:
            d.errback(RedisConnectionLost(why))
        self.whenLost.callback(reason)
