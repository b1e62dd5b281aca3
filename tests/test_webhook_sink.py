"""
Tests for yadiskpush.delivery.sinks.webhook: the WebhookSink's acks,
retries, journal and stops, over treq's in-memory HTTP with time on a Clock.
"""

from __future__ import annotations

import json
from typing import Any

from treq.testing import RequestTraversalAgent
from twisted.internet import defer, task
from twisted.logger import LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from tests.test_webhook_signing import notification
from yadiskpush.delivery.journal import Entry, JournalError
from yadiskpush.delivery.sinks.base import DeliveryFailed
from yadiskpush.delivery.sinks.jsonlines import encodeJSONLine
from yadiskpush.delivery.sinks.webhook import WebhookSink, handoffTimeoutFor
from yadiskpush.errors import ConfigurationError
from yadiskpush.logs import Logger
from yadiskpush.webhooks.retry import RetryPolicy
from yadiskpush.webhooks.sender import checkWebhookURL
from yadiskpush.webhooks.signing import verify

SECRET = b"s" * 32
URL = "https://hooks.example/disk?token=hidden"
HANDOFF = 50.0


class Endpoint(Resource):
    """
    A webhook receiver in memory: answers with the statuses of ``script``
    in turn (200 once it runs out); ``None`` holds the answer in ``held``.

    :ivar requests: (headers, body) of every request, in order.
    """

    isLeaf = True

    def __init__(self, script: list[Any] | None = None) -> None:
        super().__init__()
        self.script = list(script or [])
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.held: list[Request] = []

    def render_POST(self, request: Request) -> bytes | int:
        headers = {
            k.decode().lower(): v[0].decode()
            for k, v in request.requestHeaders.getAllRawHeaders()
        }
        self.requests.append((headers, request.content.read()))
        answer = self.script.pop(0) if self.script else 200
        if answer is None:
            self.held.append(request)
            return NOT_DONE_YET
        status, extra = answer if isinstance(answer, tuple) else (answer, {})
        request.setResponseCode(status)
        for name, value in extra.items():
            request.setHeader(name, value)
        return b"answer text"

    def ids(self) -> list[str]:
        return [h["webhook-id"] for h, _ in self.requests]

    def pushIds(self) -> list[str]:
        return [json.loads(body)["data"]["id"] for _, body in self.requests]


class MemoryJournal:
    """The :class:`~yadiskpush.delivery.journal.Journal` interface, in memory."""

    def __init__(self, entries: list[Entry] | None = None) -> None:
        self.entries = {e.entryId: e for e in entries or []}
        self.nextId = max(self.entries, default=0) + 1
        self.count = len(self.entries)
        self.closed = False

    def open(self) -> defer.Deferred[list[Entry]]:
        return defer.succeed(sorted(self.entries.values()))

    def append(self, line: bytes, login: str = "") -> defer.Deferred[int]:
        entryId, self.nextId = self.nextId, self.nextId + 1
        self.entries[entryId] = Entry(entryId, line, login)
        self.count += 1
        return defer.succeed(entryId)

    def remove(self, ids: list[int]) -> defer.Deferred[None]:
        for entryId in ids:
            del self.entries[entryId]
        self.count -= len(ids)
        return defer.succeed(None)

    def close(self) -> defer.Deferred[None]:
        self.closed = True
        return defer.succeed(None)

    def pushIds(self) -> list[str]:
        return [json.loads(e.line)["id"] for e in sorted(self.entries.values())]


class FailingJournal(MemoryJournal):
    """A journal whose disk is full."""

    def append(self, line: bytes, login: str = "") -> defer.Deferred[int]:
        return defer.fail(JournalError("disk full"))


class HandoffTimeoutTests(SynchronousTestCase):
    def test_beforeDeliveryTimeout(self) -> None:
        """Five seconds before the delivery timeout, never under half of it."""
        self.assertEqual(handoffTimeoutFor(60.0), 55.0)
        self.assertEqual(handoffTimeoutFor(6.0), 3.0)


class URLTests(SynchronousTestCase):
    def test_httpElsewhereWarns(self) -> None:
        """http:// to another machine is allowed with a warning; to this one, not."""
        _, warnings = checkWebhookURL("http://hooks.example/x?key=secret")
        [warning] = warnings
        self.assertIn("unencrypted", warning)
        self.assertNotIn("secret", warning)
        self.assertEqual(checkWebhookURL("http://127.0.0.1:8080/")[1], [])
        self.assertEqual(checkWebhookURL("https://hooks.example/")[1], [])

    def test_refused(self) -> None:
        """Credentials in the URL, other schemes and bad ports are refused."""
        for url, words in [
            ("https://user:pw@hooks.example/", "user name or password"),
            ("ftp://hooks.example/", "https://"),
            ("https:///path", "https://"),
            ("https://hooks.example:99999/", "not a valid URL"),
        ]:
            with self.assertRaises(ConfigurationError) as caught:
                checkWebhookURL(url)
            self.assertIn(words, str(caught.exception))
            self.assertNotIn("pw", str(caught.exception).replace("password", ""))


class WebhookSinkTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.events: list[dict[str, Any]] = []

    def makeSink(
        self, endpoint: Endpoint, journal: MemoryJournal | None = None, **kw: Any
    ) -> WebhookSink:
        self.agent = RequestTraversalAgent(endpoint)
        self.journal = journal or MemoryJournal()
        kw.setdefault("handoffTimeout", HANDOFF)
        sink = WebhookSink(
            URL,
            SECRET,
            self.clock,
            self.journal,  # type: ignore[arg-type]
            timeout=15.0,
            log=Logger(observer=self.events.append),
            retryPolicy=RetryPolicy(initialDelay=1.0, maxDelay=8.0, random=lambda: 1),
            agent=self.agent,
            **kw,
        )
        self.successResultOf(sink.start())
        return sink

    def messages(self, level: LogLevel) -> list[str]:
        return [formatEvent(e) for e in self.events if e["log_level"] == level]

    def test_resentPushNotPostedAgain(self) -> None:
        """
        A push the server sends again after it was accepted (its ack lost on
        a reconnect) is acknowledged at once, without a second POST; the
        memory is bounded, and a push it forgot is POSTed again (with the
        same webhook-id).
        """
        endpoint = Endpoint()
        sink = self.makeSink(endpoint, remember=1)
        self.successResultOf(sink.deliver(notification(stanzaId="push-1")))
        self.successResultOf(sink.deliver(notification(stanzaId="push-1")))
        self.assertEqual(endpoint.pushIds(), ["push-1"])
        self.successResultOf(sink.deliver(notification(stanzaId="push-2")))
        self.successResultOf(sink.deliver(notification(stanzaId="push-1")))
        self.assertEqual(endpoint.pushIds(), ["push-1", "push-2", "push-1"])
        self.assertEqual(endpoint.ids()[0], endpoint.ids()[2])

    def test_resentJournaledPushNotPostedAgain(self) -> None:
        """A push journaled (acked) and re-sent is acked at once too."""
        endpoint = Endpoint([None])
        sink = self.makeSink(endpoint)
        first = sink.deliver(notification(stanzaId="push-1"))
        self.clock.advance(HANDOFF)
        self.successResultOf(first)
        self.assertEqual(self.journal.pushIds(), ["push-1"])
        self.successResultOf(sink.deliver(notification(stanzaId="push-1")))
        self.assertEqual(self.journal.pushIds(), ["push-1"])
        self.assertEqual(endpoint.pushIds(), ["push-1"])

    def test_acceptedWithSignedHeaders(self) -> None:
        """A 2xx acks the push; the request is signed for its own moment."""
        endpoint = Endpoint()
        sink = self.makeSink(endpoint)
        ack = sink.deliver(notification())
        self.assertIsNone(self.successResultOf(ack))
        [(headers, body)] = endpoint.requests
        self.assertEqual(headers["content-type"], "application/json")
        self.assertEqual(headers["webhook-timestamp"], str(int(self.clock.seconds())))
        verify(SECRET, headers, body, now=self.clock.seconds())
        self.assertEqual(json.loads(body)["data"]["login"], "alice")
        self.assertEqual(sink.queueDepth, 0)
        self.assertEqual(self.journal.count, 0)

    def test_retriesKeepIdAndHoldAck(self) -> None:
        """503 then 429 with Retry-After: retried with the same webhook-id
        and fresh timestamps; acked only after the 200, Retry-After honoured."""
        endpoint = Endpoint([503, (429, {"Retry-After": "7"}), 200])
        sink = self.makeSink(endpoint)
        ack = sink.deliver(notification())
        self.assertNoResult(ack)
        self.assertEqual(len(endpoint.requests), 1)
        self.clock.advance(1.0)  # first backoff bound, jitter fixed at 1
        self.assertEqual(len(endpoint.requests), 2)
        self.assertNoResult(ack)
        self.clock.advance(6.9)
        self.assertEqual(len(endpoint.requests), 2)
        self.clock.advance(0.1)
        self.assertEqual(len(endpoint.requests), 3)
        self.successResultOf(ack)
        self.assertEqual(len(set(endpoint.ids())), 1)
        stamps = [int(h["webhook-timestamp"]) for h, _ in endpoint.requests]
        self.assertEqual(stamps, sorted(set(stamps)))
        for headers, body in endpoint.requests:
            verify(SECRET, headers, body, now=int(headers["webhook-timestamp"]))
        [warning] = self.messages(LogLevel.warn)
        self.assertIn("HTTP 503", warning)
        self.assertNotIn("hidden", warning)  # the URL's query stays out
        [info] = self.messages(LogLevel.info)
        self.assertIn("accepts notifications again, after 2", info)

    def test_attemptTimeout(self) -> None:
        """An endpoint that does not answer within the timeout is tried again."""
        endpoint = Endpoint([None, 200])
        sink = self.makeSink(endpoint)
        ack = sink.deliver(notification())
        self.clock.advance(15.0)
        self.assertIn("no answer within 15 s", self.messages(LogLevel.warn)[0])
        self.clock.advance(1.0)
        self.successResultOf(ack)
        self.assertEqual(len(endpoint.requests), 2)

    def test_redirectNotFollowed(self) -> None:
        """A 3xx is not followed; it is retried and logged as a URL to fix."""
        endpoint = Endpoint([(301, {"Location": "https://elsewhere.example/"})])
        sink = self.makeSink(endpoint)
        ack = sink.deliver(notification())
        self.assertNoResult(ack)
        [warning] = self.messages(LogLevel.warn)
        self.assertIn("HTTP 301 redirecting to 'https://elsewhere.example/'", warning)
        self.assertIn("not followed; fix --webhook", warning)
        self.clock.advance(1.0)
        self.successResultOf(ack)

    def test_handoffTimeoutJournalsAndAcks(self) -> None:
        """Not accepted within the handoff timeout: journaled, then acked;
        later pushes are journaled at once; all delivered in order later and
        removed from the journal."""
        # Attempts at 0, 1, 3, 7, 15, 23, 31, 39 and 47 s fail.
        endpoint = Endpoint([503] * 9)
        sink = self.makeSink(endpoint)
        first = sink.deliver(notification(stanzaId="push-1"))
        self.clock.pump([1.0] * int(HANDOFF - 1))
        self.assertNoResult(first)
        self.assertEqual(self.journal.count, 0)
        self.clock.advance(1)
        self.successResultOf(first)
        self.assertEqual(self.journal.pushIds(), ["push-1"])
        second = sink.deliver(notification(stanzaId="push-2"))
        self.successResultOf(second)
        self.assertEqual(self.journal.pushIds(), ["push-1", "push-2"])
        self.assertEqual(sink.queueDepth, 2)
        self.clock.advance(8.0)
        self.assertEqual(self.journal.count, 0)
        self.assertEqual(sink.queueDepth, 0)
        self.assertEqual(endpoint.pushIds(), ["push-1"] * 10 + ["push-2"])
        warnings = " ".join(self.messages(LogLevel.warn))
        self.assertIn("journaling notifications", warnings)

    def test_rejectedIsDroppedWithError(self) -> None:
        """A 4xx other than 408/410/429 acks the push with an error naming
        the status and webhook-id; the next push goes out."""
        endpoint = Endpoint([422])
        sink = self.makeSink(endpoint)
        self.successResultOf(sink.deliver(notification(stanzaId="push-1")))
        self.successResultOf(sink.deliver(notification(stanzaId="push-2")))
        [error] = self.messages(LogLevel.error)
        msgId = endpoint.ids()[0]
        self.assertIn("HTTP 422: answer text", error)
        self.assertIn(msgId, error)
        self.assertIn("dropped", error)
        self.assertEqual(endpoint.pushIds(), ["push-1", "push-2"])

    def test_goneStopsForGood(self) -> None:
        """410 refuses the push and every later one, keeps the journal, and
        says how to fix it."""
        endpoint = Endpoint([503] * 9 + [410])
        sink = self.makeSink(endpoint)
        journaled = sink.deliver(notification(stanzaId="push-1"))
        self.clock.pump([1.0] * int(HANDOFF))
        self.successResultOf(journaled)
        held = sink.deliver(notification(stanzaId="push-2"))
        self.successResultOf(held)  # journaled at once, behind push-1
        self.clock.advance(8.0)
        self.assertEqual(len(endpoint.requests), 10)
        refused = sink.deliver(notification(stanzaId="push-3"))
        failure = self.failureResultOf(refused, DeliveryFailed)
        self.assertIn("410 Gone", str(failure.value))
        [error] = self.messages(LogLevel.error)
        self.assertIn("Fix --webhook", error)
        self.assertIn("restart", error)
        self.clock.advance(1000)
        self.assertEqual(len(endpoint.requests), 10)
        self.assertEqual(self.journal.pushIds(), ["push-1", "push-2"])

    def test_goneRefusesWaitingPush(self) -> None:
        """A push waiting (not journaled) when 410 comes is refused, not acked."""
        endpoint = Endpoint([410])
        sink = self.makeSink(endpoint)
        self.failureResultOf(sink.deliver(notification()), DeliveryFailed)
        self.assertEqual(sink.queueDepth, 0)

    def test_startReplaysJournalFirst(self) -> None:
        """Entries an earlier process left go out first, with their id, then
        new pushes (journaled at once meanwhile), and leave the journal."""
        old = [
            Entry(4, encodeJSONLine(notification(stanzaId="old-1")), "alice"),
            Entry(9, encodeJSONLine(notification(stanzaId="old-2")), "alice"),
        ]
        endpoint = Endpoint([None])
        sink = self.makeSink(endpoint, MemoryJournal(old))
        new = sink.deliver(notification(stanzaId="new"))
        self.successResultOf(new)  # journaled behind the replay
        self.assertEqual(endpoint.pushIds(), ["old-1"])
        endpoint.held[0].setResponseCode(204)
        endpoint.held[0].finish()
        self.agent.flush()
        self.assertEqual(endpoint.pushIds(), ["old-1", "old-2", "new"])
        self.assertEqual(self.journal.count, 0)

    def test_closeKeepsJournalRefusesRest(self) -> None:
        """close() stops retrying, refuses the push not journaled, keeps the
        journaled one and closes the journal."""
        endpoint = Endpoint([503] * 10)
        sink = self.makeSink(endpoint)
        journaled = sink.deliver(notification(stanzaId="push-1"))
        self.clock.advance(HANDOFF)
        self.successResultOf(journaled)
        self.journal.count = 0  # as if push-2 had come before the outage
        waiting = sink.deliver(notification(stanzaId="push-2"))
        self.journal.count = 1
        self.assertNoResult(waiting)
        closed = sink.close()
        self.successResultOf(closed)
        self.failureResultOf(waiting, DeliveryFailed)
        self.assertTrue(self.journal.closed)
        self.assertEqual(self.journal.pushIds(), ["push-1"])
        sent = len(endpoint.requests)
        self.clock.advance(1000)
        self.assertEqual(len(endpoint.requests), sent)
        self.failureResultOf(sink.deliver(notification()), DeliveryFailed)
        self.assertIn("stay journaled", self.messages(LogLevel.info)[-1])

    def test_journalFailureRefusesPush(self) -> None:
        """A push that cannot be journaled at its handoff timeout is refused
        (not acked) and leaves the line, even while being sent; the next one
        goes out once that attempt ends, and push-1 is not sent again."""
        endpoint = Endpoint([None, 200])
        sink = self.makeSink(endpoint, FailingJournal(), handoffTimeout=10.0)
        first = sink.deliver(notification(stanzaId="push-1"))
        self.clock.advance(10.0)
        failure = self.failureResultOf(first, DeliveryFailed)
        self.assertIn("could not journal", str(failure.value))
        self.assertEqual(sink.queueDepth, 0)
        self.assertIn("disk full", self.messages(LogLevel.error)[0])
        second = sink.deliver(notification(stanzaId="push-2"))
        self.assertEqual(sink.queueDepth, 1)
        self.clock.advance(5.0)  # the held attempt at push-1 times out
        self.assertEqual(endpoint.pushIds(), ["push-1", "push-2"])
        self.successResultOf(second)

    def test_closeDuringAttempt(self) -> None:
        """close() during an attempt abandons it and finishes at once."""
        endpoint = Endpoint([None])
        sink = self.makeSink(endpoint)
        ack = sink.deliver(notification())
        self.successResultOf(sink.close())
        self.failureResultOf(ack, DeliveryFailed)
        self.assertEqual(self.clock.getDelayedCalls(), [])


def push(stanzaId: str) -> Any:
    """A notification for the login before the dash of ``stanzaId``."""
    return notification(stanzaId=stanzaId, login=stanzaId.split("-")[0])


class ConcurrentDeliveryTests(SynchronousTestCase):
    """Up to ``concurrency`` POSTs at once, each login's in order."""

    setUp = WebhookSinkTests.setUp
    makeSink = WebhookSinkTests.makeSink
    messages = WebhookSinkTests.messages

    def release(self, endpoint: Endpoint, stanzaId: str, status: int = 200) -> None:
        """Answer the held request carrying ``stanzaId`` with ``status``."""
        for request in endpoint.held:
            request.content.seek(0)
            if json.loads(request.content.read())["data"]["id"] == stanzaId:
                break
        else:
            self.fail(f"{stanzaId} is not held")
        endpoint.held.remove(request)
        request.setResponseCode(status)
        request.finish()
        self.agent.flush()

    def test_loginsInParallelEachInOrder(self) -> None:
        """Two logins' first pushes go out at once; each login's second
        goes only once its first is accepted, whichever login answers first."""
        endpoint = Endpoint([None] * 10)
        sink = self.makeSink(endpoint)
        acks = {
            name: sink.deliver(push(name))
            for name in ["alice-1", "alice-2", "bob-1", "bob-2", "carol-1"]
        }
        self.assertEqual(endpoint.pushIds(), ["alice-1", "bob-1", "carol-1"])
        self.assertEqual(sink.inFlight, 3)
        self.assertEqual(sink.queueDepth, 5)
        self.release(endpoint, "bob-1")
        self.successResultOf(acks["bob-1"])
        self.assertNoResult(acks["alice-1"])
        self.assertEqual(endpoint.pushIds()[3:], ["bob-2"])
        self.release(endpoint, "alice-1")
        self.assertEqual(endpoint.pushIds()[4:], ["alice-2"])
        for name in ["bob-2", "carol-1", "alice-2"]:
            self.release(endpoint, name)
        for ack in acks.values():
            self.successResultOf(ack)
        self.assertEqual(sink.queueDepth, 0)
        self.assertEqual(sink.inFlight, 0)
        self.successResultOf(sink.whenEmpty())

    def test_heldFirstBlocksOnlyItsLogin(self) -> None:
        """alice's held first push holds back her second, not bob's pushes."""
        endpoint = Endpoint([None])
        sink = self.makeSink(endpoint)
        first = sink.deliver(push("alice-1"))
        second = sink.deliver(push("alice-2"))
        bobs = [sink.deliver(push("bob-1")), sink.deliver(push("bob-2"))]
        for ack in bobs:
            self.successResultOf(ack)
        self.assertEqual(endpoint.pushIds(), ["alice-1", "bob-1", "bob-2"])
        self.assertNoResult(second)
        self.assertEqual(sink.queueDepth, 2)
        self.release(endpoint, "alice-1")
        self.successResultOf(first)
        self.successResultOf(second)
        self.assertEqual(endpoint.pushIds()[3:], ["alice-2"])

    def test_concurrencyCapsInFlight(self) -> None:
        """No more than ``concurrency`` POSTs at once; a freed lane takes the
        next push in line."""
        endpoint = Endpoint([None] * 10)
        sink = self.makeSink(endpoint, concurrency=3)
        for login in ["a", "b", "c", "d", "e"]:
            sink.deliver(push(f"{login}-1"))
        self.assertEqual(endpoint.pushIds(), ["a-1", "b-1", "c-1"])
        self.assertEqual(sink.inFlight, 3)
        self.release(endpoint, "b-1")
        self.assertEqual(endpoint.pushIds()[3:], ["d-1"])
        self.assertEqual(sink.inFlight, 3)
        self.assertEqual(sink.queueDepth, 4)

    def test_concurrencyOneIsOneAtATime(self) -> None:
        """With ``concurrency=1`` bob waits for alice: one at a time, in the
        order handed over."""
        endpoint = Endpoint([None])
        sink = self.makeSink(endpoint, concurrency=1)
        sink.deliver(push("alice-1"))
        bob = sink.deliver(push("bob-1"))
        self.assertEqual(endpoint.pushIds(), ["alice-1"])
        self.assertNoResult(bob)
        self.release(endpoint, "alice-1")
        self.successResultOf(bob)
        self.assertEqual(endpoint.pushIds(), ["alice-1", "bob-1"])

    def test_backoffStopsNewAttemptsFailedGoesFirst(self) -> None:
        """After a 503 no new attempt starts until the backoff delay, though
        a lane is free; the one in flight finishes; then the failed push is
        tried first, ahead of those that came in during the backoff."""
        endpoint = Endpoint([None, 503, None, None])
        sink = self.makeSink(endpoint, concurrency=2)
        alice = sink.deliver(push("alice-1"))
        bob = sink.deliver(push("bob-1"))
        self.assertEqual(endpoint.pushIds(), ["alice-1", "bob-1"])
        carol = sink.deliver(push("carol-1"))
        sink.deliver(push("dave-1"))
        self.release(endpoint, "alice-1")  # in flight: finishes
        self.successResultOf(alice)
        self.clock.advance(0.99)
        self.assertEqual(endpoint.pushIds(), ["alice-1", "bob-1"])
        self.assertNoResult(carol)
        self.clock.advance(0.01)  # the backoff's 1 s
        self.assertEqual(endpoint.pushIds()[2:], ["bob-1", "carol-1"])
        self.release(endpoint, "bob-1")
        self.successResultOf(bob)
        self.assertEqual(endpoint.pushIds()[4:], ["dave-1"])

    def test_failuresInOneOutageShareTheBackoff(self) -> None:
        """Several lanes failing in the same outage do not escalate the
        backoff: one warning, one delay of the first step."""
        endpoint = Endpoint([None, None, 503])
        sink = self.makeSink(endpoint)
        sink.deliver(push("alice-1"))
        sink.deliver(push("bob-1"))
        self.release(endpoint, "alice-1", 503)
        self.release(endpoint, "bob-1", 503)
        self.assertEqual(len(self.messages(LogLevel.warn)), 1)
        self.clock.advance(1.0)  # the first step, not the second (2 s)
        self.assertEqual(endpoint.pushIds()[2:], ["alice-1"])  # 503 again
        self.clock.advance(2.0)  # the second step
        self.assertEqual(endpoint.pushIds()[3:], ["alice-1", "bob-1"])
        self.assertEqual(sink.queueDepth, 0)
        self.assertIn("after 3 failed", self.messages(LogLevel.info)[0])

    def test_journalReplayedInParallel(self) -> None:
        """At start the journal's entries of several logins go out at once,
        each login's in order, before a new push of theirs."""
        old = [
            Entry(1, encodeJSONLine(push("alice-1")), "alice"),
            Entry(2, encodeJSONLine(push("alice-2")), "alice"),
            Entry(3, encodeJSONLine(push("bob-1")), "bob"),
        ]
        endpoint = Endpoint([None] * 10)
        sink = self.makeSink(endpoint, MemoryJournal(old))
        self.assertEqual(endpoint.pushIds(), ["alice-1", "bob-1"])
        self.successResultOf(sink.deliver(push("bob-2")))  # journaled at once
        self.assertEqual(self.journal.count, 4)
        self.assertEqual(sink.queueDepth, 4)
        self.release(endpoint, "bob-1")
        self.release(endpoint, "alice-1")
        self.assertEqual(endpoint.pushIds()[2:], ["bob-2", "alice-2"])
        self.release(endpoint, "alice-2")
        self.release(endpoint, "bob-2")
        self.assertEqual(self.journal.count, 0)
        self.assertEqual(sink.queueDepth, 0)

    def test_closeWithSeveralInFlight(self) -> None:
        """close() abandons every attempt in flight, refuses those pushes
        and the ones waiting, keeps the journaled one, and leaves no timer."""
        old = [Entry(1, encodeJSONLine(push("alice-1")), "alice")]
        endpoint = Endpoint([None] * 10)
        sink = self.makeSink(endpoint, MemoryJournal(old), concurrency=2)
        self.journal.count = 0  # as if the rest had come before the outage
        acks = [sink.deliver(push(n)) for n in ["alice-2", "bob-1", "carol-1"]]
        self.journal.count = 1
        self.assertEqual(sink.inFlight, 2)
        self.assertEqual(endpoint.pushIds(), ["alice-1", "bob-1"])
        self.successResultOf(sink.close())
        for ack in acks:
            self.failureResultOf(ack, DeliveryFailed)
        self.assertEqual(sink.inFlight, 0)
        self.assertTrue(self.journal.closed)
        self.assertEqual(self.journal.pushIds(), ["alice-1"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(endpoint.pushIds(), ["alice-1", "bob-1"])

    def test_goneWithSeveralInFlight(self) -> None:
        """A 410 for one lane abandons the others' attempts and refuses
        every push not journaled; nothing more is sent."""
        endpoint = Endpoint([None, None, 410])
        sink = self.makeSink(endpoint)
        acks = [sink.deliver(push(n)) for n in ["alice-1", "bob-1", "alice-2"]]
        carol = sink.deliver(push("carol-1"))
        self.failureResultOf(carol, DeliveryFailed)
        for ack in acks:
            failure = self.failureResultOf(ack, DeliveryFailed)
            self.assertIn("410 Gone", str(failure.value))
        self.assertEqual(sink.inFlight, 0)
        self.assertEqual(sink.queueDepth, 0)
        self.clock.advance(1000)
        self.assertEqual(endpoint.pushIds(), ["alice-1", "bob-1", "carol-1"])

    def test_resentWhileInLineNotConcurrent(self) -> None:
        """A push the server sends again while the first is in flight waits
        behind it (same login) and is acked without a second POST."""
        endpoint = Endpoint([None])
        sink = self.makeSink(endpoint)
        first = sink.deliver(push("alice-1"))
        again = sink.deliver(push("alice-1"))
        self.assertEqual(sink.inFlight, 1)
        self.release(endpoint, "alice-1")
        self.successResultOf(first)
        self.successResultOf(again)
        self.assertEqual(endpoint.pushIds(), ["alice-1"])
        self.assertEqual(sink.queueDepth, 0)

    def test_concurrencyAtLeastOne(self) -> None:
        """A concurrency under 1 is a programming error, said at once."""
        with self.assertRaises(ValueError):
            self.makeSink(Endpoint(), concurrency=0)
