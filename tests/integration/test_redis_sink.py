"""
The Redis Streams sink end to end: pushes from the local server, over
loopback TLS, through the client's whole stack into a real ``redis-server``.

Nothing sleeps: a test waits on the server's answers, on a ping's pong (the
client answers in order on one stream, so whatever it sent before the pong
has reached the server), or on the sink's log lines.
"""

from __future__ import annotations

import json
import os
from collections.abc import Generator
from typing import Any

from twisted.internet import defer, reactor
from twisted.logger import LogLevel, formatEvent

from tests.integration.redisserver import RedisServer, startRedis
from tests.integration.support import LOGIN
from tests.integration.test_pushes import (
    PushTestCase,
    attributesFor,
    childrenFor,
    stopApplication,
)
from tests.test_sinks_execute import LogRecorder
from yadiskpush.application import PushApplication
from yadiskpush.delivery.sinks.redisstream import RedisStreamSink, parseRedisURL
from yadiskpush.localserver import NoAnswer
from yadiskpush.logs import Logger
from yadiskpush.service import PushService

Steps = Generator[defer.Deferred[Any], Any, None]


def isLevel(level: LogLevel, words: str) -> Any:
    def predicate(event: dict[str, Any]) -> bool:
        return event.get("log_level") == level and words in formatEvent(event)

    return predicate


class RedisSinkTests(PushTestCase):
    def sinkFor(
        self, redis: RedisServer, url: str | None = None, **kwargs: Any
    ) -> tuple[RedisStreamSink, LogRecorder]:
        recorder = LogRecorder()
        sink = RedisStreamSink(
            parseRedisURL(url or redis.url),
            reactor,
            log=Logger(observer=recorder),
            **kwargs,
        )
        return sink, recorder

    def assertEntries(self, redis: RedisServer, ids: list[str], stream: str) -> None:
        """The stream holds exactly ``ids``, in order, each once and whole."""
        entries = redis.xrange(stream)
        self.assertEqual([fields["id"] for _, fields in entries], ids)
        for _, fields in entries:
            self.assertEqual(sorted(fields), ["id", "json", "login"])
            self.assertEqual(fields["login"], LOGIN)
            line = json.loads(fields["json"])
            self.assertEqual((line["login"], line["id"]), (LOGIN, fields["id"]))

    @defer.inlineCallbacks
    def test_pushesLandOnceAckedAfterXADD(self) -> Steps:
        redis = startRedis(self)
        sink, _ = self.sinkFor(redis, stream="pushes")
        server, app, session = yield self.connectedApplication([sink])
        answers = yield defer.gatherResults(
            [server.push(LOGIN, attributesFor(n), childrenFor(n)) for n in range(20)]
        )
        self.assertEqual({a["type"] for a in answers}, {"result"})
        ids = [a["id"] for a in answers]
        self.assertEntries(redis, ids, "pushes")
        self.assertAckedOnce(server, ids)
        self.assertEqual(sink.queueDepth, 0)
        self.assertTrue(sink.connected)

    @defer.inlineCallbacks
    def test_redisDownWithholdsAcks(self) -> Steps:
        """With Redis stopped nothing is acked; once it is back every held
        push is written once and acked once."""
        redis = startRedis(self)
        sink, recorder = self.sinkFor(redis)
        server, app, session = yield self.connectedApplication([sink])
        first = yield server.push(LOGIN, attributesFor(0), childrenFor(0))
        self.assertEqual(first["type"], "result")
        redis.stop()
        yield recorder.waitFor(isLevel(LogLevel.warn, "is unavailable"))
        answers = [
            server.push(LOGIN, attributesFor(n), childrenFor(n)) for n in (1, 2, 3)
        ]
        yield self.barrier(session)
        self.assertEqual(list(server.acks), [first["id"]])
        # The pipeline hands a stream's pushes on one at a time: the sink
        # holds the first, the pipeline the others.
        self.assertEqual(sink.queueDepth, 1)
        self.assertFalse(sink.connected)
        redis.start()
        results = yield defer.gatherResults(answers)
        self.assertEqual({r["type"] for r in results}, {"result"})
        # The restarted server kept nothing (no persistence): only the held.
        self.assertEntries(redis, [r["id"] for r in results], "yadiskpush")
        self.assertAckedOnce(server, [first["id"]] + [r["id"] for r in results])
        yield recorder.waitFor(isLevel(LogLevel.info, "is back after"))
        self.assertEqual(len(recorder.matching(isLevel(LogLevel.warn, ""))), 1)

    @defer.inlineCallbacks
    def test_maxlenTrims(self) -> Steps:
        redis = startRedis(self)
        redis.command("CONFIG", "SET", "stream-node-max-entries", "10")
        sink, _ = self.sinkFor(redis, maxlen=10)
        server, app, session = yield self.connectedApplication([sink])
        for n in range(60):
            answer = yield server.push(LOGIN, attributesFor(n), childrenFor(n))
            self.assertEqual(answer["type"], "result")
        length = redis.command("XLEN", "yadiskpush")
        self.assertGreaterEqual(length, 10)
        self.assertLess(length, 30)
        self.assertEqual(redis.xrange("yadiskpush")[-1][1]["id"], answer["id"])

    @defer.inlineCallbacks
    def test_tlsAndPassword(self) -> Steps:
        """rediss:// with the throwaway CA and a password from a file."""
        redis = startRedis(self, tls=True, password="pa ss\tword")
        passwordFile = os.path.join(self.directory, "redis-password")
        with open(passwordFile, "w") as f:
            f.write("pa ss\tword\n")
        sink, recorder = self.sinkFor(
            redis,
            f"rediss://localhost:{redis.port}/2",
            caFile=redis.caFile,
            passwordFile=passwordFile,
        )
        server, app, session = yield self.connectedApplication([sink])
        answer = yield server.push(LOGIN, attributesFor(1), childrenFor(1))
        self.assertEqual(answer["type"], "result")
        self.assertEqual(redis.xrange("yadiskpush"), [])
        [(_, fields)] = redis.xrange("yadiskpush", db=2)
        self.assertEqual(fields["id"], answer["id"])
        self.assertNotIn("pa ss", " ".join(recorder.texts()))

    @defer.inlineCallbacks
    def test_certificateForAnotherHostRefused(self) -> Steps:
        redis = startRedis(self, tls=True, certificateNames=("other.example",))
        sink, recorder = self.sinkFor(
            redis, f"rediss://localhost:{redis.port}", caFile=redis.caFile
        )
        server, app, session = yield self.connectedApplication([sink])
        answer = server.push(LOGIN, attributesFor(1), childrenFor(1))
        [warning] = yield recorder.waitFor(isLevel(LogLevel.warn, "is unavailable"))
        text = formatEvent(warning)
        self.assertIn("TLS with localhost failed", text)
        yield self.barrier(session)
        self.assertEqual(server.acks, {})
        self.assertFalse(sink.connected)
        self.assertEqual(sink.queueDepth, 1)
        self.assertEqual(redis.xrange("yadiskpush"), [])
        # Never answered: the client is stopped at cleanup with it held.
        answer.addErrback(lambda f: f.trap(NoAnswer))

    @defer.inlineCallbacks
    def test_wrongTypeKeyIsOneClearError(self) -> Steps:
        redis = startRedis(self)
        sink, recorder = self.sinkFor(redis)
        server, app, session = yield self.connectedApplication([sink])
        first = yield server.push(LOGIN, attributesFor(1), childrenFor(1))
        self.assertEqual(first["type"], "result")
        redis.command("DEL", "yadiskpush")
        redis.command("SET", "yadiskpush", "not a stream")
        refused = yield server.push(LOGIN, attributesFor(2), childrenFor(2))
        again = yield server.push(LOGIN, attributesFor(3), childrenFor(3))
        self.assertEqual((refused["type"], again["type"]), ("error", "error"))
        [error] = recorder.matching(isLevel(LogLevel.error, "WRONGTYPE"))
        self.assertEqual(len(recorder.matching(isLevel(LogLevel.error, ""))), 1)
        self.assertEqual(sink.queueDepth, 0)
        self.assertTrue(sink.connected)


class ResendTests(PushTestCase):
    @defer.inlineCallbacks
    def test_resentWhileXADDSlowWrittenOnce(self) -> Steps:
        """XADD stalls past the delivery timeout: the push is refused; Redis
        answers before the server sends it again, and the copy is
        acknowledged at once from memory, without a second XADD."""
        redis = startRedis(self)
        sink = RedisStreamSink(parseRedisURL(redis.url), reactor)
        server = yield self.startServer(redeliverDelay=1.0)
        settings = self.settingsFor(server, deliveryTimeout=0.3)
        app = PushApplication(PushService(settings, reactor=reactor), [sink])
        app.startService()
        self.addCleanup(stopApplication, app)
        yield server.whenSubscribed(1)
        first = server.enqueue(LOGIN, attributesFor(1), childrenFor(1))
        yield server.whenAllAcked(LOGIN)
        # Writes wait 0.6 s: past the delivery timeout (0.3 s), and done
        # before the server sends the refused push again (1.3 s).
        redis.command("CLIENT", "PAUSE", 600, "WRITE")
        slow = server.enqueue(LOGIN, attributesFor(2), childrenFor(2))
        yield server.whenAllAcked(LOGIN)
        record = server.pushRecord(slow)
        self.assertEqual(record.timesRefused, 1)
        self.assertEqual(record.timesAcked, 1)
        self.assertEqual(
            [fields["id"] for _, fields in redis.xrange("yadiskpush")], [first, slow]
        )
