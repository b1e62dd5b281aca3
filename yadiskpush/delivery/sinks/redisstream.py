"""
Adds every notification to a Redis stream (``--redis``), and acknowledges
the push only once Redis has answered the ``XADD``.

Each notification is one entry::

    XADD <stream> MAXLEN ~ <maxlen> * login <login> id <push id> json <JSON line>

where the JSON is :func:`~yadiskpush.delivery.sinks.jsonlines.encodeJSONLine`
without its final newline. ``MAXLEN ~`` lets Redis trim whole macro nodes,
which is cheap; the stream keeps at least ``maxlen`` entries.

Redis down or slow
    Pushes are held, in order, and not acknowledged; at most ``maxHeld`` of
    them (beyond that a push is refused at once, and the server sends it
    again later). The pipeline in front of the sinks refuses a hand-off that
    takes longer than its delivery timeout; what this sink holds is still
    written when Redis is back. The connection comes back by itself
    (:mod:`yadiskpush.redis.connection`).

Nothing written twice by one process
    (a) The server sends a push again when it got no ack: because the
    pipeline refused it on timeout while its ``XADD`` was slow, or because
    the ack was lost with the XMPP connection. The sink remembers the last
    ``remember`` (login, id) pairs it wrote, and answers such a push at once
    without a new ``XADD``; one whose ``XADD`` is still in flight (or held)
    waits for that one.

    (b) The Redis connection drops after an ``XADD`` was sent but before its
    reply: whether Redis added the entry is unknown. The sink remembers the
    id of the newest entry it has seen in the stream (``XREVRANGE <stream> +
    - COUNT 1`` at the first connect, then every ``XADD`` reply). On
    reconnect, before anything else is sent, it reads what was added after
    that id (``XRANGE <stream> (<id> + COUNT 500`` pages, at most
    ``scanLimit`` entries): the uncertain pushes found there are done; the
    others are added again, ahead of the pushes that came since. Exclusive
    ranges (``(``) need Redis 6.2 or later. Only a scan that reaches its
    limit (other writers added that much meanwhile) can still write a push
    twice; that is logged.

What the sink cannot help: a Redis that loses acknowledged writes (no
persistence, a failover to a replica that had not received them). Consumers
should deduplicate by (login, id) anyway: the delivery is at least once.
"""

from __future__ import annotations

import random as _random
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IStreamClientEndpoint

from yadiskpush.delivery.sinks.base import DeliveryFailed
from yadiskpush.delivery.sinks.jsonlines import encodeJSONLine
from yadiskpush.errors import ConfigurationError
from yadiskpush.logs import Logger
from yadiskpush.notification import Notification
from yadiskpush.redis.address import RedisAddress, parseRedisURL, readPasswordFile
from yadiskpush.redis.connection import RedisConnection
from yadiskpush.redis.protocol import (
    RedisConnectionLost,
    RedisProtocol,
    RedisReplyError,
)

__all__ = ["RedisAddress", "RedisStreamSink", "parseRedisURL", "xaddArguments"]

#: The stream written when ``--redis-stream`` is not given.
DEFAULT_STREAM = "yadiskpush"

#: The approximate length the stream is trimmed to (``MAXLEN ~``).
DEFAULT_MAXLEN = 1_000_000

#: Pushes held (waiting for Redis or for its reply) before more are refused.
DEFAULT_MAX_HELD = 10_000

#: Written (login, id) pairs remembered to answer a re-sent push at once.
DEFAULT_REMEMBER = 100_000

#: Entries read at most, on reconnect, to find pushes whose XADD is unknown.
DEFAULT_SCAN_LIMIT = 100_000

#: Entries per XRANGE page of that scan.
SCAN_PAGE = 500

#: Seconds :meth:`RedisStreamSink.close` waits for the replies in flight.
CLOSE_TIMEOUT = 5.0

Key = tuple[str, str]


def xaddArguments(
    stream: str, maxlen: int, notification: Notification
) -> tuple[bytes | str | int, ...]:
    """The ``XADD`` command that writes ``notification`` to ``stream``."""
    return (
        "XADD",
        stream,
        "MAXLEN",
        "~",
        maxlen,
        "*",
        "login",
        notification.login,
        "id",
        notification.stanzaId,
        "json",
        encodeJSONLine(notification).rstrip(b"\n"),
    )


def _entryKey(fields: Any) -> Key | None:
    """The (login, id) of a stream entry's field list, if it has both."""
    if not isinstance(fields, list):
        return None
    pairs = dict(zip(fields[::2], fields[1::2], strict=False))
    login, stanzaId = pairs.get(b"login"), pairs.get(b"id")
    if not isinstance(login, bytes) or not isinstance(stanzaId, bytes):
        return None
    return login.decode("utf-8", "replace"), stanzaId.decode("utf-8", "replace")


@dataclass(eq=False)
class _Held:
    """A push the sink holds: queued, in flight, or of unknown outcome."""

    key: Key
    command: tuple[bytes | str | int, ...]
    waiters: list[defer.Deferred[None]] = field(default_factory=list)


class RedisStreamSink:
    """
    Adds notifications to the Redis stream ``stream`` (see the module).

    :param address: where Redis is (:func:`parseRedisURL`).
    :param reactor: the reactor (its clock runs the backoff and timeouts).
    :param stream: the stream's key.
    :param maxlen: the approximate length it is trimmed to.
    :param passwordFile: a file whose first line is the password for
        ``AUTH`` (with the URL's user name, if any).
    :param caFile: the CAs trusted for ``rediss://``; the system's if
        ``None``.
    :param log: the logger for this sink's lines.
    :param maxHeld: pushes held before more are refused.
    :param remember: written (login, id) pairs kept to answer re-sends.
    :param scanLimit: entries read at most to settle uncertain ``XADD``\\ s.
    :param endpoint: makes each connection's endpoint (tests).
    :param random: the jitter's random source (tests).
    :raises ConfigurationError: if the password file or the CA file is
        unusable, a CA file comes with a plain ``redis://`` URL, or the URL
        names a user and no password file is given.
    """

    _log = Logger()

    def __init__(
        self,
        address: RedisAddress,
        reactor: Any,
        stream: str = DEFAULT_STREAM,
        maxlen: int = DEFAULT_MAXLEN,
        passwordFile: str | None = None,
        caFile: str | None = None,
        log: Logger | None = None,
        *,
        maxHeld: int = DEFAULT_MAX_HELD,
        remember: int = DEFAULT_REMEMBER,
        scanLimit: int = DEFAULT_SCAN_LIMIT,
        replyTimeout: float = 30.0,
        endpoint: Callable[[], IStreamClientEndpoint] | None = None,
        random: Callable[[], float] = _random.random,
    ) -> None:
        if not stream:
            raise ConfigurationError("--redis-stream must not be empty")
        if maxlen < 1:
            raise ConfigurationError("--redis-maxlen must be a positive number")
        if address.username and passwordFile is None:
            raise ConfigurationError(
                f"--redis names the user {address.username!r}: give its password "
                "with --redis-password-file"
            )
        if caFile is not None and not address.tls:
            raise ConfigurationError(
                "--redis-ca-file is for TLS: use a rediss:// URL with it"
            )
        password = None if passwordFile is None else readPasswordFile(passwordFile)
        if log is not None:
            self._log = log
        self.address = address
        self.reactor = reactor
        self.stream = stream
        self.maxlen = maxlen
        self.maxHeld = maxHeld
        self.remember = remember
        self.scanLimit = scanLimit
        self._connection = RedisConnection(
            address,
            reactor,
            onReady=self._connectionReady,
            onLost=self._connectionLost,
            password=password,
            caFile=caFile,
            replyTimeout=replyTimeout,
            random=random,
            endpoint=endpoint,
            log=self._log,
        )
        self._protocol: RedisProtocol | None = None
        self._held: dict[Key, _Held] = {}
        self._queue: deque[_Held] = deque()
        self._uncertain: list[_Held] = []
        self._written: OrderedDict[Key, None] = OrderedDict()
        self._lastId: bytes | None = None
        self._loggedRefusal: str | None = None
        self._closed = False

    @property
    def queueDepth(self) -> int:
        """Pushes held and not yet known to be written."""
        return len(self._held)

    @property
    def connected(self) -> bool:
        """Whether a connection to Redis is up and taking entries."""
        return self._protocol is not None

    def start(self) -> None:
        """Connect to Redis (and keep reconnecting until :meth:`close`)."""
        self._connection.start()

    def deliver(self, notification: Notification) -> defer.Deferred[None]:
        key = (notification.login, notification.stanzaId)
        if key in self._written:
            return defer.succeed(None)
        held = self._held.get(key)
        if held is None:
            if self._closed:
                return defer.fail(
                    DeliveryFailed(notification.stanzaId, "the Redis sink is closed")
                )
            if len(self._held) >= self.maxHeld:
                return defer.fail(
                    DeliveryFailed(
                        notification.stanzaId,
                        f"{len(self._held):,} pushes are already waiting for Redis",
                    )
                )
            command = xaddArguments(self.stream, self.maxlen, notification)
            held = _Held(key, command)
            self._held[key] = held
            self._queue.append(held)
        d: defer.Deferred[None] = defer.Deferred()
        held.waiters.append(d)
        self._pump()
        return d

    def close(self) -> defer.Deferred[None]:
        """
        Wait (a few seconds at most) for the replies in flight, disconnect,
        and refuse what was not written: the server sends it again.
        """
        self._closed = True
        protocol = self._protocol
        if protocol is not None and protocol.inFlight:
            # Replies come in order: the PING's means the XADDs before it
            # have been answered.
            drained = protocol.execute("PING")
            drained.addTimeout(CLOSE_TIMEOUT, self.reactor)
            drained.addErrback(lambda _: None)
        else:
            drained = defer.succeed(None)
        drained.addCallback(lambda _: self._connection.stop())
        drained.addCallback(lambda _: self._refuseHeld("the Redis sink closed first"))
        return drained

    # -- writing --------------------------------------------------------------

    def _pump(self) -> None:
        protocol = self._protocol
        if protocol is None:
            return
        while self._queue:
            held = self._queue.popleft()
            d = protocol.execute(*held.command)
            d.addCallbacks(self._added, self._notAdded, (held,), None, (held,))

    def _added(self, entryId: Any, held: _Held) -> None:
        if isinstance(entryId, bytes):
            self._lastId = entryId
        if self._loggedRefusal is not None:
            self._log.info(
                "Redis takes entries for stream {stream} again", stream=self.stream
            )
            self._loggedRefusal = None
        self._settle(held)

    def _notAdded(self, failure: Any, held: _Held) -> None:
        if failure.check(RedisConnectionLost):
            # Maybe added, maybe not: settled on reconnect.
            self._uncertain.append(held)
            return
        if failure.check(RedisReplyError):
            reason = failure.value.message
        else:
            reason = failure.getErrorMessage()
        if reason != self._loggedRefusal:
            self._loggedRefusal = reason
            self._log.error(
                "Redis refused to add pushes to stream {stream}: {reason}; they "
                "are not acknowledged",
                stream=self.stream,
                reason=reason,
            )
        del self._held[held.key]
        self._fire(held, DeliveryFailed(held.key[1], f"Redis refused it: {reason}"))

    def _settle(self, held: _Held) -> None:
        """``held`` is in the stream: remember it and answer its waiters."""
        self._held.pop(held.key, None)
        self._written[held.key] = None
        while len(self._written) > self.remember:
            self._written.popitem(last=False)
        self._fire(held, None)

    @staticmethod
    def _fire(held: _Held, error: Exception | None) -> None:
        waiters, held.waiters = held.waiters, []
        for d in waiters:
            if d.called:
                # Refused by the pipeline on timeout (cancelled) meanwhile.
                continue
            if error is None:
                d.callback(None)
            else:
                d.errback(error)

    def _refuseHeld(self, reason: str) -> None:
        held, self._held = list(self._held.values()), {}
        self._queue.clear()
        self._uncertain = []
        for h in held:
            self._fire(h, DeliveryFailed(h.key[1], reason))

    # -- the connection -------------------------------------------------------

    @defer.inlineCallbacks
    def _connectionReady(self, protocol: RedisProtocol) -> Any:
        try:
            if self._lastId is None:
                newest = yield protocol.execute(
                    "XREVRANGE", self.stream, "+", "-", "COUNT", 1
                )
                self._lastId = newest[0][0] if newest else b"0-0"
            if self._uncertain:
                yield self._settleUncertain(protocol)
        except RedisReplyError as e:
            if e.code == "WRONGTYPE":
                raise RedisReplyError(
                    f"{e.message} (the key {self.stream!r} is not a stream; "
                    "choose another with --redis-stream)"
                ) from None
            raise
        if self._closed:
            return
        self._protocol = protocol
        self._pump()

    def _connectionLost(self) -> None:
        self._protocol = None

    @defer.inlineCallbacks
    def _settleUncertain(self, protocol: RedisProtocol) -> Any:
        """
        Find the uncertain pushes among the entries added since the newest
        one seen; queue the others again, first, in their order.
        """
        wanted = {h.key: h for h in self._uncertain}
        scanned = 0
        try:
            while wanted and scanned < self.scanLimit:
                start = self._lastId or b"0-0"
                page = yield protocol.execute(
                    "XRANGE", self.stream, b"(" + start, "+", "COUNT", SCAN_PAGE
                )
                page = page or []
                for entryId, fields in page:
                    held = wanted.pop(_entryKey(fields), None)  # type: ignore[arg-type]
                    if held is not None:
                        self._settle(held)
                    # A lost connection resumes the scan after this entry.
                    self._lastId = entryId
                scanned += len(page)
                if len(page) < SCAN_PAGE:
                    break
        finally:
            self._uncertain = [h for h in self._uncertain if h.key in wanted]
        again, self._uncertain = self._uncertain, []
        if again and scanned >= self.scanLimit:
            self._log.warn(
                "Could not tell whether {count} pushes reached stream {stream} "
                "before the connection was lost ({scanned:,} newer entries read); "
                "adding them again, so consumers may see them twice",
                count=len(again),
                stream=self.stream,
                scanned=scanned,
            )
        self._queue.extendleft(reversed(again))
