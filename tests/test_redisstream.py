"""
Units of the Redis Streams sink and its client: URL parsing, RESP encoding
and parsing, the dedupe memory, the backoff on a Clock, the settling of
XADDs whose outcome a lost connection left unknown.

Redis is played by :class:`FakeRedis`: it reads the commands the client
writes to a memory transport and answers them from a list of entries, or
holds its answers, or drops the connection, as a test tells it.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import defer
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.test_sinks_execute import LOGIN, makeNotification
from yadiskpush.delivery.sinks.base import DeliveryFailed
from yadiskpush.delivery.sinks.jsonlines import encodeJSONLine
from yadiskpush.delivery.sinks.redisstream import (
    RedisStreamSink,
    parseRedisURL,
    xaddArguments,
)
from yadiskpush.errors import ConfigurationError
from yadiskpush.logs import Logger
from yadiskpush.redis.address import RedisAddress, readPasswordFile
from yadiskpush.redis.connection import backoffDelay
from yadiskpush.redis.protocol import (
    RedisProtocolError,
    RedisReplyError,
    ReplyParser,
    encodeCommand,
)

PASSWORD = "s3cret-Redis-pass"


class URLTests(SynchronousTestCase):
    def test_plain(self) -> None:
        self.assertEqual(
            parseRedisURL("redis://localhost"), RedisAddress("localhost", 6379)
        )

    def test_everything(self) -> None:
        self.assertEqual(
            parseRedisURL("rediss://worker@redis.example:6380/3"),
            RedisAddress("redis.example", 6380, True, "worker", 3),
        )

    def test_ipv6(self) -> None:
        address = parseRedisURL("redis://[::1]:7000/")
        self.assertEqual((address.host, address.port, address.db), ("::1", 7000, 0))
        self.assertEqual(str(address), "redis://[::1]:7000/0")

    def test_passwordRefusedWithoutShowingIt(self) -> None:
        for url in (f"redis://:{PASSWORD}@host", f"rediss://user:{PASSWORD}@host/1"):
            e = self.assertRaises(ConfigurationError, parseRedisURL, url)
            self.assertIn("--redis-password-file", str(e))
            self.assertIn("--redis", str(e))
            self.assertNotIn(PASSWORD, str(e))

    def test_badURLs(self) -> None:
        for url, words in [
            ("http://host", "redis:// or rediss://"),
            ("unix:///run/redis/redis.sock", "redis:// or rediss://"),
            ("redis://", "no host"),
            ("redis://host:99999", "port"),
            ("redis://host:0", "port"),
            ("redis://host/one", "database"),
            ("redis://host/1?timeout=3", "options"),
        ]:
            e = self.assertRaises(ConfigurationError, parseRedisURL, url)
            self.assertIn(words, str(e), url)
            self.assertTrue(str(e).startswith("--redis"), url)

    def test_passwordFile(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(PASSWORD + "\nignored\n")
        self.assertEqual(readPasswordFile(path).reveal(), PASSWORD)
        self.assertNotIn(PASSWORD, repr(readPasswordFile(path)))

    def test_passwordFileMissingOrEmpty(self) -> None:
        path = self.mktemp()
        e = self.assertRaises(ConfigurationError, readPasswordFile, path)
        self.assertIn("--redis-password-file: cannot read", str(e))
        with open(path, "w") as f:
            f.write("\n")
        e = self.assertRaises(ConfigurationError, readPasswordFile, path)
        self.assertIn("holds no password", str(e))

    def test_userNeedsPasswordFile(self) -> None:
        e = self.assertRaises(
            ConfigurationError,
            RedisStreamSink,
            parseRedisURL("redis://worker@host"),
            Clock(),
        )
        self.assertIn("--redis-password-file", str(e))

    def test_caFileChecked(self) -> None:
        e = self.assertRaises(
            ConfigurationError,
            RedisStreamSink,
            parseRedisURL("rediss://host"),
            Clock(),
            caFile=self.mktemp(),
        )
        self.assertIn("cannot read the CA file", str(e))
        e = self.assertRaises(
            ConfigurationError,
            RedisStreamSink,
            parseRedisURL("redis://host"),
            Clock(),
            caFile=self.mktemp(),
        )
        self.assertIn("rediss://", str(e))


class RESPTests(SynchronousTestCase):
    def test_encode(self) -> None:
        self.assertEqual(
            encodeCommand("XADD", b"s", 5, "й"),
            b"*4\r\n$4\r\nXADD\r\n$1\r\ns\r\n$1\r\n5\r\n$2\r\n\xd0\xb9\r\n",
        )

    def test_parseSplitAnywhere(self) -> None:
        """Replies come out the same however the bytes were split."""
        wire = (
            b"+OK\r\n:42\r\n$-1\r\n*-1\r\n$5\r\nab\r\nc\r\n"
            b"*2\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\na\r\n$0\r\n\r\n-ERR inner\r\n"
            b"-WRONGTYPE Operation against a key\r\n"
        )
        for cut in range(len(wire) + 1):
            parser = ReplyParser()
            replies = parser.feed(wire[:cut]) + parser.feed(wire[cut:])
            self.assertEqual(replies[:5], [b"OK", 42, None, None, b"ab\r\nc"])
            self.assertEqual(replies[5][0], [b"1-0", [b"a", b""]])
            self.assertIsInstance(replies[5][1], RedisReplyError)
            self.assertEqual(replies[6].code, "WRONGTYPE")
            self.assertEqual(len(replies), 7)

    def test_garbage(self) -> None:
        self.assertRaises(RedisProtocolError, ReplyParser().feed, b"?what\r\n")
        self.assertRaises(RedisProtocolError, ReplyParser().feed, b":x\r\n")
        self.assertRaises(RedisProtocolError, ReplyParser().feed, b"$1\r\nab\r\n")


class BackoffTests(SynchronousTestCase):
    def test_windowDoublesToCap(self) -> None:
        delays = [backoffDelay(n, lambda: 1.0) for n in range(1, 10)]
        self.assertEqual(delays, [0.5, 1, 2, 4, 8, 16, 30, 30, 30])
        self.assertEqual(backoffDelay(10_000, lambda: 0.5), 15)
        self.assertEqual(backoffDelay(3, lambda: 0.0), 0)


# -- a Redis played in memory ---------------------------------------------------


class FakeTransport:
    """The client's side of a connection to :class:`FakeRedis`."""

    def __init__(self, server: FakeRedis, protocol: Any) -> None:
        self.server = server
        self.protocol = protocol
        self.parser = ReplyParser()
        self.closed = False

    def write(self, data: bytes) -> None:
        for command in self.parser.feed(data):
            self.server.received(self, command)

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self.close()

    def abortConnection(self) -> None:
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.protocol.connectionLost(Failure(ConnectionDone("closed")))


class FakeRedis:
    """
    An endpoint and the Redis behind it.

    :ivar entries: the stream, as (id, [field, value, ...]).
    :ivar commands: every command received, decoded.
    :ivar refuse: refuse new connections.
    :ivar hold: apply commands but keep their replies in :attr:`held`.
    :ivar swallow: neither apply nor answer commands.
    """

    def __init__(self) -> None:
        self.entries: list[tuple[bytes, list[bytes]]] = []
        self.commands: list[list[str]] = []
        self.connections: list[FakeTransport] = []
        self.refuse = False
        self.hold = False
        self.swallow = False
        self.held: list[tuple[FakeTransport, bytes]] = []
        self.failNext: str | None = None
        self.password: str | None = None
        self.sequence = 0

    def endpoint(self) -> FakeRedis:
        return self

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        if self.refuse:
            return defer.fail(ConnectionRefusedError("refused"))
        protocol = factory.buildProtocol(None)
        transport = FakeTransport(self, protocol)
        self.connections.append(transport)
        protocol.makeConnection(transport)
        return defer.succeed(protocol)

    def xadds(self) -> list[list[str]]:
        return [c for c in self.commands if c[0] == "XADD"]

    def received(self, transport: FakeTransport, command: list[bytes]) -> None:
        decoded = [c.decode() for c in command]
        self.commands.append(decoded)
        if self.swallow:
            return
        reply = self.apply(decoded)
        if self.hold:
            self.held.append((transport, reply))
        else:
            transport.protocol.dataReceived(reply)

    def release(self) -> None:
        held, self.held = self.held, []
        for transport, reply in held:
            if not transport.closed:
                transport.protocol.dataReceived(reply)

    def drop(self) -> None:
        for transport in self.connections:
            transport.close()

    def apply(self, command: list[str]) -> bytes:
        name = command[0]
        if self.failNext is not None:
            error, self.failNext = self.failNext, None
            return f"-{error}\r\n".encode()
        if name == "AUTH":
            return b"+OK\r\n" if command[-1] == self.password else b"-WRONGPASS\r\n"
        if name in ("PING", "SELECT"):
            return b"+PONG\r\n" if name == "PING" else b"+OK\r\n"
        if name == "XADD":
            self.sequence += 1
            entryId = b"1000-%d" % self.sequence
            self.entries.append((entryId, [c.encode() for c in command[6:]]))
            return b"$%d\r\n%s\r\n" % (len(entryId), entryId)
        if name == "XREVRANGE":
            return self.array(self.entries[-1:])
        if name == "XRANGE":
            after = int(command[2].lstrip("(").split("-")[1])
            count = int(command[5])
            newer = [e for e in self.entries if int(e[0].split(b"-")[1]) > after]
            return self.array(newer[:count])
        return b"-ERR unknown command\r\n"

    @staticmethod
    def array(entries: list[tuple[bytes, list[bytes]]]) -> bytes:
        out = [b"*%d\r\n" % len(entries)]
        for entryId, fields in entries:
            out.append(b"*2\r\n" + encodeCommand(entryId)[4:] + encodeCommand(*fields))
        return b"".join(out)


class LogList(list):  # type: ignore[type-arg]
    def __call__(self, event: dict[str, Any]) -> None:
        self.append(event)

    def lines(self, level: LogLevel | None = None) -> list[str]:
        return [
            formatEvent(e) for e in self if level is None or e["log_level"] == level
        ]


class SinkTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.redis = FakeRedis()
        self.log = LogList()

    def sink(self, url: str = "redis://localhost", **kwargs: Any) -> RedisStreamSink:
        kwargs.setdefault("random", lambda: 1.0)
        sink = RedisStreamSink(
            parseRedisURL(url),
            self.clock,
            log=Logger(observer=self.log),
            endpoint=self.redis.endpoint,
            **kwargs,
        )
        sink.start()
        return sink

    def loginsAndIds(self) -> list[tuple[str, str]]:
        return [
            (dict(zip(f[::2], f[1::2], strict=True))[b"login"].decode(),
             dict(zip(f[::2], f[1::2], strict=True))[b"id"].decode())
            for _, f in self.redis.entries
        ]  # fmt: skip


class WritingTests(SinkTestCase):
    def test_entryShape(self) -> None:
        """One XADD with MAXLEN ~, login, id and the JSON line."""
        sink = self.sink(stream="pushes", maxlen=500)
        n = makeNotification(1, login="alice")
        self.assertIsNone(self.successResultOf(sink.deliver(n)))
        [xadd] = self.redis.xadds()
        self.assertEqual(xadd[:6], ["XADD", "pushes", "MAXLEN", "~", "500", "*"])
        self.assertEqual(xadd[6:10], ["login", "alice", "id", "push1"])
        self.assertEqual(xadd[10], "json")
        self.assertEqual(xadd[11].encode(), encodeJSONLine(n).rstrip(b"\n"))
        self.assertEqual(json.loads(xadd[11])["login"], "alice")
        self.assertEqual(xaddArguments("pushes", 500, n)[-1], xadd[11].encode())

    def test_ackOnlyAfterReply(self) -> None:
        sink = self.sink()
        self.redis.hold = True
        d = sink.deliver(makeNotification(1))
        self.assertEqual(len(self.redis.xadds()), 1)
        self.assertNoResult(d)
        self.assertEqual(sink.queueDepth, 1)
        self.redis.release()
        self.successResultOf(d)
        self.assertEqual(sink.queueDepth, 0)

    def test_resentWrittenPushAnsweredAtOnce(self) -> None:
        sink = self.sink()
        self.successResultOf(sink.deliver(makeNotification(1)))
        self.successResultOf(sink.deliver(makeNotification(1)))
        self.assertEqual(len(self.redis.xadds()), 1)
        # Another account's push with the same id is another push.
        self.successResultOf(sink.deliver(makeNotification(1, login="bob")))
        self.assertEqual(len(self.redis.xadds()), 2)

    def test_resentWhileInFlightWaitsForIt(self) -> None:
        """The pipeline gave up on a slow XADD (cancelled), the server sends
        the push again: it waits for the same XADD, no second one."""
        sink = self.sink()
        self.redis.hold = True
        first = sink.deliver(makeNotification(1))
        first.cancel()
        self.failureResultOf(first, defer.CancelledError)
        again = sink.deliver(makeNotification(1))
        self.assertNoResult(again)
        self.redis.release()
        self.successResultOf(again)
        self.assertEqual(len(self.redis.xadds()), 1)

    def test_memoryIsBounded(self) -> None:
        sink = self.sink(remember=2)
        for n in (1, 2, 3):
            self.successResultOf(sink.deliver(makeNotification(n)))
        self.successResultOf(sink.deliver(makeNotification(3)))
        self.assertEqual(len(self.redis.xadds()), 3)
        # push1 is forgotten: written again (consumers dedupe).
        self.successResultOf(sink.deliver(makeNotification(1)))
        self.assertEqual(len(self.redis.xadds()), 4)

    def test_errorReplyRefusesWithOneLine(self) -> None:
        sink = self.sink()
        self.redis.failNext = "OOM command not allowed when used memory > 'maxmemory'"
        f = self.failureResultOf(sink.deliver(makeNotification(1)), DeliveryFailed)
        self.assertIn("OOM", str(f.value))
        self.redis.failNext = "OOM command not allowed when used memory > 'maxmemory'"
        self.failureResultOf(sink.deliver(makeNotification(2)), DeliveryFailed)
        self.successResultOf(sink.deliver(makeNotification(3)))
        errors = self.log.lines(LogLevel.error)
        self.assertEqual(len(errors), 1)
        self.assertIn(
            "Redis refused to add pushes to stream yadiskpush: OOM", errors[0]
        )
        self.assertIn("again", self.log.lines(LogLevel.info)[-1])
        self.assertEqual(sink.queueDepth, 0)


class OutageTests(SinkTestCase):
    def test_heldWhileDownBoundedThenWritten(self) -> None:
        self.redis.refuse = True
        sink = self.sink(maxHeld=2)
        self.assertFalse(sink.connected)
        held = [sink.deliver(makeNotification(n)) for n in (1, 2)]
        f = self.failureResultOf(sink.deliver(makeNotification(3)), DeliveryFailed)
        self.assertIn("2 pushes are already waiting for Redis", str(f.value))
        for d in held:
            self.assertNoResult(d)
        self.assertEqual(sink.queueDepth, 2)
        self.redis.refuse = False
        self.clock.advance(0.5)
        self.assertTrue(sink.connected)
        for d in held:
            self.successResultOf(d)
        self.assertEqual(self.loginsAndIds(), [(LOGIN, "push1"), (LOGIN, "push2")])

    def test_backoffOnClockAndQuietLog(self) -> None:
        self.redis.refuse = True
        self.sink()
        self.assertEqual(len(self.redis.connections), 0)
        delays = []
        for _ in range(8):
            delays.append(
                self.clock.getDelayedCalls()[0].getTime() - self.clock.seconds()
            )
            self.clock.advance(delays[-1])
        self.assertEqual(delays, [0.5, 1, 2, 4, 8, 16, 30, 30])
        [warning] = self.log.lines(LogLevel.warn)
        self.assertIn("Redis at redis://localhost:6379/0 is unavailable", warning)
        self.assertIn("not acknowledged", warning)
        self.redis.refuse = False
        self.clock.advance(30)
        infos = self.log.lines(LogLevel.info)
        self.assertEqual(len(infos), 1)
        self.assertIn("is back after", infos[0])

    def test_lostAfterXADDAppliedIsNotWrittenAgain(self) -> None:
        """The XADD ran but its reply was lost with the connection: found on
        reconnect, not added again, and acked."""
        sink = self.sink()
        self.successResultOf(sink.deliver(makeNotification(0)))
        self.redis.hold = True
        d = sink.deliver(makeNotification(1))
        self.redis.held.clear()
        self.redis.hold = False
        self.redis.drop()
        self.assertNoResult(d)
        self.assertFalse(sink.connected)
        later = sink.deliver(makeNotification(2))
        self.clock.advance(0.5)
        self.successResultOf(d)
        self.successResultOf(later)
        self.assertEqual(
            self.loginsAndIds(),
            [(LOGIN, "push0"), (LOGIN, "push1"), (LOGIN, "push2")],
        )
        scans = [c for c in self.redis.commands if c[0] == "XRANGE"]
        self.assertEqual(scans[0][2], "(1000-1")
        self.assertEqual(
            self.log.lines(LogLevel.warn)[0].count("connection was lost"), 1
        )

    def test_lostBeforeXADDAppliedIsWrittenOnceInOrder(self) -> None:
        sink = self.sink()
        self.redis.swallow = True
        d1 = sink.deliver(makeNotification(1))
        d2 = sink.deliver(makeNotification(2))
        self.redis.drop()
        self.redis.swallow = False
        d3 = sink.deliver(makeNotification(3))
        self.clock.advance(0.5)
        for d in (d1, d2, d3):
            self.successResultOf(d)
        self.assertEqual(
            self.loginsAndIds(),
            [(LOGIN, "push1"), (LOGIN, "push2"), (LOGIN, "push3")],
        )

    def test_scanPagesAndLimit(self) -> None:
        """Other writers' entries are paged through; past the limit the
        push is added again, with a warning."""
        sink = self.sink(scanLimit=600)
        self.redis.swallow = True
        d = sink.deliver(makeNotification(1))
        self.redis.swallow = False
        for n in range(700):
            self.redis.apply(["XADD", "yadiskpush", "MAXLEN", "~", "1", "*",
                              "login", "other", "id", str(n)])  # fmt: skip
        self.redis.drop()
        self.clock.advance(0.5)
        self.successResultOf(d)
        scans = [c for c in self.redis.commands if c[0] == "XRANGE"]
        self.assertEqual([s[2] for s in scans], ["(0-0", "(1000-500"])
        self.assertIn("adding them again", self.log.lines(LogLevel.warn)[-1])
        self.assertEqual(self.loginsAndIds()[-1], (LOGIN, "push1"))

    def test_replyTimeoutDropsConnection(self) -> None:
        sink = self.sink(replyTimeout=10)
        self.redis.swallow = True
        d = sink.deliver(makeNotification(1))
        self.clock.advance(10)
        self.assertFalse(sink.connected)
        self.assertIn(
            "no reply from Redis within 10 s", self.log.lines(LogLevel.warn)[0]
        )
        self.redis.swallow = False
        self.clock.advance(0.5)
        self.successResultOf(d)
        self.assertEqual(self.loginsAndIds(), [(LOGIN, "push1")])

    def test_wrongTypeAtConnect(self) -> None:
        original = self.redis.apply

        def apply(command: list[str]) -> bytes:
            if command[0] == "XREVRANGE":
                return b"-WRONGTYPE Operation against a key holding the wrong kind\r\n"
            return original(command)

        self.redis.apply = apply  # type: ignore[method-assign]
        sink = self.sink(stream="taken")
        d = sink.deliver(makeNotification(1))
        self.assertNoResult(d)
        self.assertFalse(sink.connected)
        [warning] = self.log.lines(LogLevel.warn)
        self.assertIn("WRONGTYPE", warning)
        self.assertIn("the key 'taken' is not a stream", warning)
        self.assertIn("--redis-stream", warning)


class AuthAndCloseTests(SinkTestCase):
    def passwordFile(self) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(PASSWORD + "\n")
        os.chmod(path, 0o600)
        return path

    def test_authWithUserAndSelect(self) -> None:
        self.redis.password = PASSWORD
        sink = self.sink("redis://worker@localhost/4", passwordFile=self.passwordFile())
        self.successResultOf(sink.deliver(makeNotification(1)))
        self.assertEqual(self.redis.commands[0], ["AUTH", "worker", PASSWORD])
        self.assertEqual(self.redis.commands[1], ["SELECT", "4"])

    def test_wrongPasswordLoggedWithoutIt(self) -> None:
        self.redis.password = "another"
        sink = self.sink(passwordFile=self.passwordFile())
        d = sink.deliver(makeNotification(1))
        for delay in (0.5, 1, 2):
            self.clock.advance(delay)
        self.assertNoResult(d)
        self.assertEqual(len(self.redis.connections), 4)
        [warning] = self.log.lines(LogLevel.warn)
        self.assertIn("WRONGPASS", warning)
        self.assertNotIn(PASSWORD, repr(self.log))

    def test_closeRefusesHeldAndNeverFails(self) -> None:
        self.redis.refuse = True
        sink = self.sink()
        d = sink.deliver(makeNotification(1))
        self.successResultOf(sink.close())
        f = self.failureResultOf(d, DeliveryFailed)
        self.assertIn("closed", str(f.value))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.failureResultOf(sink.deliver(makeNotification(2)), DeliveryFailed)

    def test_closeWaitsForRepliesInFlight(self) -> None:
        sink = self.sink()
        self.redis.hold = True
        d = sink.deliver(makeNotification(1))
        closed = sink.close()
        self.assertNoResult(closed)
        self.redis.release()
        self.successResultOf(d)
        self.successResultOf(closed)
        self.assertTrue(self.redis.connections[0].closed)

    def test_closeGivesUpOnSilentRedis(self) -> None:
        sink = self.sink()
        self.redis.swallow = True
        d = sink.deliver(makeNotification(1))
        closed = sink.close()
        self.clock.advance(5)
        self.successResultOf(closed)
        self.failureResultOf(d, DeliveryFailed)
