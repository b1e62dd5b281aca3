"""
Churn: thousands of pushes across hundreds of forced disconnects, and not one
acked push lost.

The vendor's server is at-least-once: what the client did not acknowledge it
sends again on the next session. So the client may deliver a push twice, but
must never acknowledge one its sinks did not take. This test runs the real
client (``PushService`` and ``PushApplication``) over loopback TLS against the
local server's redelivering queue, while the server cuts the connection in
every way it can (FIN, reset, ``system-shutdown``, malformed XML the client
must refuse, a clean ``</stream:stream>``) at points spread through the run:
after the k-th push sent or acked on a session, never after a wall-clock
wait. Meanwhile the sink refuses some pushes once (the client must answer
with an error, and the server sends them again) and takes others only a
reactor turn later (an ack held back while the link may die).

It then counts, from the server's record of every push and the sink's record
of every delivery: lost (acked but never delivered) must be 0; every push is
delivered at least once; a push delivered twice must have been sent twice.
The figures are printed (``pytest -rA`` shows them).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, reactor, task

from tests.integration.support import LOGIN, LocalServerTestCase
from yadiskpush.application import PushApplication
from yadiskpush.delivery.sinks import DeliveryFailed
from yadiskpush.localserver import LocalServer, ServerSession
from yadiskpush.localserver.hostile import GARBAGE
from yadiskpush.localserver.redelivery import PushRecord
from yadiskpush.notification import Notification

Steps = Generator[defer.Deferred[Any], Any, None]

#: Pushes in the run, at least: half queued before the client connects, the
#: rest a few at each disconnect (while no session is live), and more
#: whenever the queue runs short before the last disconnect.
PUSHES = 2000

#: Pushes in flight per session: well below the server's default, so that a
#: cut catches pushes in flight instead of one session draining a long burst.
WINDOW = 16

#: Below this many unacked pushes, and disconnects still to come, queue more.
LOW_WATER = 2 * WINDOW

#: Forced disconnects; after the last one the queue drains undisturbed.
DISCONNECTS = 300

#: How a disconnect is forced, in turn. ``garbage`` is one the client finds
#: itself (malformed XML: it sends a stream error and closes).
KINDS = ("drop", "abort", "system-shutdown", "garbage", "close")

#: Every REFUSE_EVERY-th push is refused by the sink the first time.
REFUSE_EVERY = 25

#: Every HOLD_EVERY-th push is taken by the sink a reactor turn later.
HOLD_EVERY = 7

#: A session is cut after its k-th send or ack, k drawn from 1..MAX_K.
MAX_K = 12

#: The plan is drawn from this seed, so that every run forces the same cuts.
SEED = 9


@dataclass(frozen=True)
class Cut:
    """One planned disconnect: how, and after the k-th send or ack."""

    kind: str
    after: str
    k: int


def plan() -> list[Cut]:
    """Every kind after sends and after acks, with k spread over 1..MAX_K."""
    rng = random.Random(SEED)
    return [
        Cut(KINDS[i % len(KINDS)], ("sent", "acked")[i % 2], rng.randint(1, MAX_K))
        for i in range(DISCONNECTS)
    ]


class RecordingSink:
    """
    A sink that writes down every push id it takes, in order.

    :ivar delivered: push ids taken, once per delivery.
    :ivar refused: push ids refused (each once).
    :ivar refuseOnce: ids to refuse the next time they come.
    :ivar hold: ids taken only a reactor turn after they came.
    """

    def __init__(self) -> None:
        self.delivered: list[str] = []
        self.refused: list[str] = []
        self.refuseOnce: set[str] = set()
        self.hold: set[str] = set()

    def deliver(self, notification: Notification) -> defer.Deferred[None] | None:
        pushId = notification.stanzaId
        if pushId in self.refuseOnce:
            self.refuseOnce.discard(pushId)
            self.refused.append(pushId)
            return defer.fail(DeliveryFailed(pushId, "refused once by the churn test"))
        if pushId in self.hold:
            return task.deferLater(reactor, 0, self.delivered.append, pushId)
        self.delivered.append(pushId)
        return None

    def close(self) -> defer.Deferred[None]:
        return defer.succeed(None)


class Churn:
    """
    Cuts sessions as planned, from the redelivering queue's observer, and
    queues more pushes at each cut.

    :ivar cuts: ``(session number, cut)`` for every disconnect forced.
    :ivar done: fires after the last planned cut.
    """

    def __init__(self, server: LocalServer, sink: RecordingSink) -> None:
        self.server = server
        self.sink = sink
        self.plan = plan()
        self.cuts: list[tuple[int, Cut]] = []
        self.done: defer.Deferred[None] = defer.Deferred()
        self.enqueued = 0
        self._assigned: dict[int, Cut | None] = {}
        self._counts: Counter[tuple[int, str]] = Counter()
        server.redelivery.addObserver(self.observe)

    def enqueue(self, count: int) -> None:
        """Queue ``count`` more pushes, marking some for the sink to refuse or hold."""
        for _ in range(count):
            n = self.enqueued
            self.enqueued += 1
            pushId = self.server.enqueue(LOGIN, {"t": "diff", "n": str(n)})
            if n % REFUSE_EVERY == REFUSE_EVERY - 1:
                self.sink.refuseOnce.add(pushId)
            elif n % HOLD_EVERY == HOLD_EVERY - 1:
                self.sink.hold.add(pushId)

    def observe(self, what: str, session: ServerSession, record: PushRecord) -> None:
        if what == "refused":
            return
        number = session.number
        if number not in self._assigned:
            # A session's first event is a send: give it the next cut.
            index = len(self._assigned)
            self._assigned[number] = (
                self.plan[index] if index < len(self.plan) else None
            )
        cut = self._assigned[number]
        if cut is not None:
            self._counts[number, what] += 1
            if what == cut.after and self._counts[number, what] == cut.k:
                self._assigned[number] = None
                self.cut(session, cut)
        if (
            what == "acked"
            and len(self.cuts) < DISCONNECTS
            and len(self.server.unacked(LOGIN)) < LOW_WATER
        ):
            # An empty queue would stall the run: no pushes, no cuts.
            self.enqueue(LOW_WATER)

    def cut(self, session: ServerSession, cut: Cut) -> None:
        self.cuts.append((session.number, cut))
        if cut.kind == "drop":
            session.drop()
        elif cut.kind == "abort":
            session.abort()
        elif cut.kind == "system-shutdown":
            session.sendStreamError("system-shutdown")
        elif cut.kind == "garbage":
            session.sendRaw(GARBAGE)
        else:
            session.close()
        remaining = DISCONNECTS - len(self.cuts)
        if remaining:
            self.enqueue((PUSHES - self.enqueued) // (remaining + 1))
        else:
            self.enqueue(max(0, PUSHES - self.enqueued))
            self.done.callback(None)


class ChurnTests(LocalServerTestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_nothingLostAcrossDisconnects(self) -> Steps:
        """Across hundreds of forced disconnects no acked push misses the sink."""
        server = yield self.startServer(window=WINDOW, redeliverDelay=0.0)
        sink = RecordingSink()
        churn = Churn(server, sink)
        # Half of them wait in the queue for the first session.
        churn.enqueue(PUSHES // 2)
        service, policy = self.startFastClient(self.settingsFor(server))
        PushApplication(service, [sink])
        yield churn.done
        yield server.whenAllAcked(LOGIN)
        yield service.stopService()

        records = server.redelivery.records
        delivered = Counter(sink.delivered)
        lost = sorted(i for i, r in records.items() if r.acked and not delivered[i])
        duplicates = {i: n for i, n in delivered.items() if n > 1}
        sends = sum(r.timesSent for r in records.values())
        sessions = len(server.eventsOf("subscribed"))
        kinds = Counter(cut.kind for _, cut in churn.cuts)
        print(
            f"\nchurn: {len(records)} pushes, {len(churn.cuts)} disconnects "
            f"({', '.join(f'{k} {kinds[k]}' for k in KINDS)}), "
            f"{sessions} subscribed sessions; {sends} sends "
            f"({sends - len(records)} re-sends), "
            f"{len(sink.refused)} refused once by the sink "
            f"({sum(r.timesRefused for r in records.values())} error answers "
            f"reached the server before a cut); "
            f"{len(sink.delivered)} deliveries, {len(duplicates)} pushes "
            f"delivered more than once "
            f"({sum(duplicates.values()) - len(duplicates)} extra deliveries); "
            f"lost: {len(lost)}"
        )

        self.assertGreaterEqual(len(records), PUSHES)
        self.assertEqual(len(churn.cuts), DISCONNECTS)
        self.assertEqual(kinds, {k: DISCONNECTS // len(KINDS) for k in KINDS})
        self.assertGreater(sessions, DISCONNECTS)
        self.assertEqual(server.unacked(LOGIN), [])
        self.assertEqual(lost, [])
        self.assertEqual(set(delivered), set(records))
        # A push arrives twice only because the server sent it twice.
        overDelivered = {
            i: (n, records[i].timesSent)
            for i, n in duplicates.items()
            if n > records[i].timesSent
        }
        self.assertEqual(overDelivered, {})
        # A refused push was not acked: it had to come again to be delivered.
        for pushId in sink.refused:
            self.assertGreaterEqual(records[pushId].timesSent, 2)
        self.assertEqual(len(sink.refused), len(records) // REFUSE_EVERY)
