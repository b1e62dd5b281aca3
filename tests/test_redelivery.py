"""
Tests for yadiskpush.localserver.redelivery: the at-least-once push queue.

The end-to-end churn test trusts this server to re-send every push the
client did not acknowledge, so its rules are checked here one by one, on
real loopback TLS, with the raw client of the local server's own tests: it
answers exactly what each test tells it to, and nothing else. Re-send
timers run on a ``task.Clock``.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from twisted.internet import defer, task
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.words.xish import domish

from tests.test_localserver import (
    LOGIN,
    NS_BIND,
    NS_SESSION,
    TOKEN,
    RawClient,
    ServerTestCase,
)
from yadiskpush.localserver import LocalServer, ServerSession
from yadiskpush.localserver.__main__ import CommandProtocol, parseArguments
from yadiskpush.localserver.redelivery import (
    DEFAULT_REDELIVER_DELAY,
    RedeliveringPushQueue,
)

Steps = Generator[defer.Deferred[Any], Any, None]

NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"


class RedeliveryTestCase(ServerTestCase):
    """A server on a Clock, and raw clients that subscribe and answer pushes."""

    window = 64
    timeout = 10

    def setUp(self) -> defer.Deferred[LocalServer]:
        self.clock = task.Clock()
        return self.startServer(clock=self.clock, window=self.window)

    @defer.inlineCallbacks
    def subscribedClient(
        self, resource: str | None = None
    ) -> Generator[defer.Deferred[Any], Any, tuple[RawClient, ServerSession]]:
        """A raw client with an open, subscribed session, and its session."""
        client = yield self.connect(tls=True)
        if resource is None:
            session = yield self.openSession(client)
        else:
            session = yield self.openSessionAs(client, resource)
        yield self.subscribe(client)
        return client, session

    @defer.inlineCallbacks
    def openSessionAs(
        self, client: RawClient, resource: str
    ) -> Generator[defer.Deferred[Any], Any, ServerSession]:
        """Like ``openSession``, binding another resource (a second device)."""
        opened = self.server.whenSessionOpened()
        yield self.authenticate(client, tls=True)
        client.send(
            f"<iq type='set' id='bind_1'><bind xmlns='{NS_BIND}'>"
            f"<resource>{resource}</resource></bind></iq>"
        )
        yield client.next()
        client.send(
            f"<iq type='set' id='session_1'><session xmlns='{NS_SESSION}'/></iq>"
        )
        yield client.next()
        session = yield opened
        return session

    @defer.inlineCallbacks
    def receive(
        self, client: RawClient, count: int
    ) -> Generator[defer.Deferred[Any], Any, list[domish.Element]]:
        """The next ``count`` pushes the client gets, in order."""
        pushes = []
        for _ in range(count):
            push = yield client.next()
            self.assertEqual(push.firstChildElement().uri, "yandex:push:disk")
            pushes.append(push)
        return pushes

    def answer(
        self, client: RawClient, pushId: str, ok: bool = True
    ) -> defer.Deferred[Any]:
        """
        Answer one push with a result (or an error); fires once the server
        has taken the answer.
        """
        taken = self.server.whenEvent(
            "push-acked" if ok else "push-refused",
            match=lambda e: e.details["id"] == pushId,
        )
        if ok:
            client.send(f"<iq type='result' to='{LOGIN}@ya.ru' id='{pushId}'/>")
        else:
            client.send(
                f"<iq type='error' to='{LOGIN}@ya.ru' id='{pushId}'>"
                f"<error type='wait'><internal-server-error xmlns='{NS_STANZAS}'/>"
                "</error></iq>"
            )
        return taken

    def sentIds(self) -> list[str]:
        """Every push id the server sent, once per send, in order."""
        return [p.id for p in self.server.pushLog]


class QueueTests(RedeliveryTestCase):
    @defer.inlineCallbacks
    def test_queuedUntilSubscribed(self) -> Steps:
        """Pushes queued with no session go out, in order, on subscription."""
        ids = [self.server.enqueue(LOGIN, {"t": "diff", "n": str(n)}) for n in range(3)]
        self.assertEqual(len(set(ids)), 3)
        self.assertEqual(self.server.unacked(LOGIN), ids)
        self.assertEqual(self.server.pushLog, [])
        client, session = yield self.subscribedClient()
        pushes = yield self.receive(client, 3)
        self.assertEqual([p["id"] for p in pushes], ids)
        self.assertEqual([p.firstChildElement()["n"] for p in pushes], ["0", "1", "2"])
        self.assertEqual(self.server.redelivery.inFlight(session), ids)

    @defer.inlineCallbacks
    def test_sharesIdsWithPush(self) -> Steps:
        """An enqueued push and a one-off push() never share an id."""
        client, session = yield self.subscribedClient()
        queued = self.server.enqueue(LOGIN)
        oneOff = self.server.push(LOGIN)
        pushes = yield self.receive(client, 2)
        self.assertEqual(pushes[0]["id"], queued)
        self.assertNotEqual(pushes[1]["id"], queued)
        yield self.answer(client, pushes[1]["id"])
        yield oneOff
        self.assertEqual(self.server.unacked(LOGIN), [queued])

    @defer.inlineCallbacks
    def test_resultRemoves(self) -> Steps:
        """Only a result takes a push off the queue; whenAllAcked then fires."""
        client, session = yield self.subscribedClient()
        ids = [self.server.enqueue(LOGIN) for _ in range(2)]
        yield self.receive(client, 2)
        allAcked = self.server.whenAllAcked(LOGIN)
        yield self.answer(client, ids[0])
        self.assertEqual(self.server.unacked(LOGIN), ids[1:])
        self.assertFalse(allAcked.called)
        yield self.answer(client, ids[1])
        self.assertTrue(allAcked.called)
        self.assertEqual(self.server.unacked(LOGIN), [])
        record = self.server.pushRecord(ids[1])
        self.assertEqual(
            (record.timesSent, record.timesAcked, record.sessions),
            (1, 1, [session.number]),
        )
        self.assertTrue(record.acked)
        self.assertEqual(self.server.redelivery.inFlight(session), [])
        # Nothing queued: it fires at once.
        self.assertTrue(self.server.whenAllAcked(LOGIN).called)

    @defer.inlineCallbacks
    def test_observerSeesSendsAndAnswers(self) -> Steps:
        """An observer hears of every send and answer, after the queue took it."""
        seen: list[tuple[str, int, str, list[str]]] = []

        def observer(what: str, session: ServerSession, record: Any) -> None:
            seen.append((what, session.number, record.id, self.server.unacked(LOGIN)))

        self.server.redelivery.addObserver(observer)
        client, session = yield self.subscribedClient()
        ids = [self.server.enqueue(LOGIN) for _ in range(2)]
        yield self.receive(client, 2)
        yield self.answer(client, ids[0], ok=False)
        yield self.answer(client, ids[1])
        n = session.number
        self.assertEqual(
            seen,
            [
                ("sent", n, ids[0], ids[:1]),
                ("sent", n, ids[1], ids),
                ("refused", n, ids[0], ids),
                ("acked", n, ids[1], ids[:1]),
            ],
        )

    @defer.inlineCallbacks
    def test_nothingAfterServerClose(self) -> Steps:
        """After the server's closing tag, queued pushes wait for a new session."""
        client, session = yield self.subscribedClient()
        session.close()
        pushId = self.server.enqueue(LOGIN)
        self.assertEqual(self.sentIds(), [])
        client.send("</stream:stream>")
        yield session.whenClosed()
        second, later = yield self.subscribedClient()
        [push] = yield self.receive(second, 1)
        self.assertEqual(push["id"], pushId)
        self.assertEqual(self.server.pushRecord(pushId).sessions, [later.number])

    def test_badArguments(self) -> None:
        """A window below one or a negative delay is refused when built."""
        with self.assertRaises(ValueError):
            RedeliveringPushQueue(self.server, window=0)
        with self.assertRaises(ValueError):
            RedeliveringPushQueue(self.server, redeliverDelay=-1)

    def test_unknownRecord(self) -> None:
        """An id enqueue() did not return has no record."""
        with self.assertRaises(KeyError):
            self.server.pushRecord("push-404")


class ResendTests(RedeliveryTestCase):
    @defer.inlineCallbacks
    def resentAfter(self, end: str) -> Steps:
        """
        Three pushes, the first acked, then the connection ends (``end``):
        the next session gets the other two again, same ids, same order.
        """
        first, session = yield self.subscribedClient()
        ids = [self.server.enqueue(LOGIN, {"n": str(n)}) for n in range(3)]
        yield self.receive(first, 3)
        yield self.answer(first, ids[0])
        if end == "drop":
            session.drop()
        elif end == "abort":
            session.abort()
        elif end == "stream-error":
            session.sendStreamError("system-shutdown")
        else:
            # The client leaves without a word and without answering.
            first.transport.abortConnection()
        yield session.whenClosed()
        self.assertEqual(self.server.unacked(LOGIN), ids[1:])
        second, later = yield self.subscribedClient()
        pushes = yield self.receive(second, 2)
        self.assertEqual([p["id"] for p in pushes], ids[1:])
        self.assertEqual([p.firstChildElement()["n"] for p in pushes], ["1", "2"])
        for pushId in ids[1:]:
            yield self.answer(second, pushId)
        yield self.server.whenAllAcked(LOGIN)
        self.assertEqual(self.sentIds(), [*ids, *ids[1:]])
        self.assertEqual(self.server.pushRecord(ids[0]).sessions, [session.number])
        for pushId in ids[1:]:
            record = self.server.pushRecord(pushId)
            self.assertEqual(record.sessions, [session.number, later.number])
            self.assertEqual((record.timesSent, record.timesAcked), (2, 1))
        self.assertEqual(self.server.acks[ids[1]], 1)

    def test_resentAfterDrop(self) -> defer.Deferred[None]:
        """Unanswered pushes are re-sent on the next session after a drop."""
        return self.resentAfter("drop")

    def test_resentAfterAbort(self) -> defer.Deferred[None]:
        """Unanswered pushes are re-sent on the next session after a reset."""
        return self.resentAfter("abort")

    def test_resentAfterStreamError(self) -> defer.Deferred[None]:
        """Unanswered pushes are re-sent after a system-shutdown stream error."""
        return self.resentAfter("stream-error")

    def test_resentAfterClientLeaves(self) -> defer.Deferred[None]:
        """Pushes a client left without answering go to its next session."""
        return self.resentAfter("client")

    @defer.inlineCallbacks
    def test_errorResentAfterDelay(self) -> Steps:
        """An error answer brings the push back on the same session, later."""
        client, session = yield self.subscribedClient()
        pushId = self.server.enqueue(LOGIN)
        yield self.receive(client, 1)
        yield self.answer(client, pushId, ok=False)
        self.assertEqual(self.server.unacked(LOGIN), [pushId])
        self.assertEqual(self.server.redelivery.inFlight(session), [])
        self.clock.advance(DEFAULT_REDELIVER_DELAY - 0.01)
        self.assertEqual(self.sentIds(), [pushId])
        self.clock.advance(0.01)
        self.assertEqual(self.sentIds(), [pushId, pushId])
        [again] = yield self.receive(client, 1)
        self.assertEqual(again["id"], pushId)
        yield self.answer(client, pushId)
        yield self.server.whenAllAcked(LOGIN)
        record = self.server.pushRecord(pushId)
        self.assertEqual(
            (record.sessions, record.timesRefused, record.timesAcked),
            ([session.number, session.number], 1, 1),
        )
        self.assertEqual(
            [a["type"] for a in session.answers[pushId]], ["error", "result"]
        )

    @defer.inlineCallbacks
    def test_errorThenCloseResentOnce(self) -> Steps:
        """A refused push whose session ends goes to the next session, once."""
        first, session = yield self.subscribedClient()
        pushId = self.server.enqueue(LOGIN)
        yield self.receive(first, 1)
        yield self.answer(first, pushId, ok=False)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        session.drop()
        yield session.whenClosed()
        # The same-session re-send died with the session.
        self.assertEqual(self.clock.getDelayedCalls(), [])
        second, later = yield self.subscribedClient()
        yield self.receive(second, 1)
        self.clock.advance(DEFAULT_REDELIVER_DELAY * 10)
        self.assertEqual(self.sentIds(), [pushId, pushId])
        self.assertEqual(
            self.server.pushRecord(pushId).sessions, [session.number, later.number]
        )

    @defer.inlineCallbacks
    def test_resultWhileRefusedStopsResend(self) -> Steps:
        """A push acked on a second session is not re-sent to the first."""
        first, one = yield self.subscribedClient(resource="phone")
        second, two = yield self.subscribedClient(resource="laptop")
        pushId = self.server.enqueue(LOGIN)
        [onFirst] = yield self.receive(first, 1)
        [onSecond] = yield self.receive(second, 1)
        self.assertEqual(onFirst["id"], onSecond["id"])
        yield self.answer(first, pushId, ok=False)
        yield self.answer(second, pushId)
        self.clock.advance(DEFAULT_REDELIVER_DELAY)
        self.assertEqual(self.sentIds(), [pushId, pushId])
        self.assertEqual(self.server.unacked(LOGIN), [])
        record = self.server.pushRecord(pushId)
        self.assertEqual((record.timesRefused, record.timesAcked), (1, 1))
        self.assertEqual(sorted(record.sessions), [one.number, two.number])

    @defer.inlineCallbacks
    def test_oneOffPushNotResent(self) -> Steps:
        """A push() answered with an error is not re-sent: only enqueue redelivers."""
        client, session = yield self.subscribedClient()
        answer = self.server.push(LOGIN)
        [push] = yield self.receive(client, 1)
        yield self.answer(client, push["id"], ok=False)
        yield answer
        self.clock.advance(DEFAULT_REDELIVER_DELAY * 10)
        self.assertEqual(self.sentIds(), [push["id"]])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    @defer.inlineCallbacks
    def test_stopCancelsResends(self) -> Steps:
        """Stopping the server cancels the pending re-send timers."""
        client, session = yield self.subscribedClient()
        pushId = self.server.enqueue(LOGIN)
        yield self.receive(client, 1)
        yield self.answer(client, pushId, ok=False)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        yield self.server.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class WindowTests(RedeliveryTestCase):
    window = 2

    @defer.inlineCallbacks
    def test_windowBoundsPushesInFlight(self) -> Steps:
        """No more than ``window`` pushes are unanswered on a session at once."""
        client, session = yield self.subscribedClient()
        ids = [self.server.enqueue(LOGIN) for _ in range(5)]
        # Sending is synchronous: what is not sent now waits for an answer.
        self.assertEqual(self.sentIds(), ids[:2])
        yield self.receive(client, 2)
        yield self.answer(client, ids[1])
        self.assertEqual(self.sentIds(), ids[:3])
        self.assertEqual(self.server.redelivery.inFlight(session), [ids[0], ids[2]])
        yield self.answer(client, ids[0], ok=False)
        # An error frees the slot too; the refused push waits for its timer.
        self.assertEqual(self.sentIds(), ids[:4])
        self.clock.advance(DEFAULT_REDELIVER_DELAY)
        # Its timer fired, but the window is full.
        self.assertEqual(self.sentIds(), ids[:4])
        yield self.receive(client, 2)
        yield self.answer(client, ids[2])
        self.assertEqual(self.sentIds(), [*ids[:4], ids[0]])
        self.assertEqual(self.server.redelivery.inFlight(session), [ids[3], ids[0]])

    @defer.inlineCallbacks
    def test_orderKeptAcrossSessions(self) -> Steps:
        """A new session gets what is left in queue order, window by window."""
        first, session = yield self.subscribedClient()
        ids = [self.server.enqueue(LOGIN) for _ in range(4)]
        yield self.receive(first, 2)
        yield self.answer(first, ids[1])
        yield self.receive(first, 1)
        session.drop()
        yield session.whenClosed()
        second, later = yield self.subscribedClient()
        received = []
        while len(received) < 3:
            [push] = yield self.receive(second, 1)
            received.append(push["id"])
            yield self.answer(second, push["id"])
        self.assertEqual(received, [ids[0], ids[2], ids[3]])
        yield self.server.whenAllAcked(LOGIN)


class CommandLineTests(SynchronousTestCase):
    def test_enqueueAndUnacked(self) -> None:
        """The enqueue command queues a push for the next session; unacked lists it."""
        server = LocalServer({LOGIN: TOKEN}, window=4)
        transport = StringTransport()
        commands = CommandProtocol(server, defer.Deferred())
        commands.makeConnection(transport)
        transport.clear()
        commands.dataReceived(b"enqueue t=diff uid=7\nunacked\n")
        [pushId] = server.unacked(LOGIN)
        self.assertEqual(
            transport.value().decode().splitlines(), [f"{pushId}: queued", pushId]
        )
        self.assertEqual(
            server.pushRecord(pushId).attributes, {"t": "diff", "uid": "7"}
        )

    def test_queueOptions(self) -> None:
        """--window and --redeliver-delay are read, and nonsense refused."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(f"{LOGIN}:{TOKEN}\n")
        args = parseArguments(
            ["--accounts-file", path, "--window", "8", "--redeliver-delay", "0.5"]
        )
        self.assertEqual((args.window, args.redeliver_delay), (8, 0.5))
        with self.assertRaises(SystemExit):
            parseArguments(["--accounts-file", path, "--window", "0"])
