"""
At-least-once pushes: a queue per login that sends each push until it is acked.

The vendor's server does not forget a push the client did not acknowledge:
it sends it again, with the same id, on the login's next session. A client
that acks before it has handed a push on loses it for good; one that never
acks gets it twice. :class:`RedeliveringPushQueue` plays that server for
the tests (and for anyone checking their own code against it), and keeps a
:class:`PushRecord` per push (times sent, times acked, sessions it went to)
so that a test can count lost and duplicated pushes.

The rules, as the vendor's server behaves:

- a push stays queued until a ``result`` answers it, on any session;
- queued pushes go, in queue order, to every subscribed session of the
  login: now, or as soon as a session subscribes;
- at most ``window`` pushes are unanswered on one session at a time (the
  server does not wait for each ack before the next push, but not for ever);
- an ``error`` answer leaves the push queued: it is sent again on the same
  session ``redeliverDelay`` seconds later (on the server's clock), or on
  the next session if this one ends first;
- a session that ends leaves what it did not answer queued for the next.

:meth:`LocalServer.push() <yadiskpush.localserver.server.LocalServer.push>`
stays fire-and-forget: only pushes from :meth:`RedeliveringPushQueue.enqueue`
are redelivered. Both take their ids from the same sequence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.words.xish import domish

if TYPE_CHECKING:
    from yadiskpush.localserver.server import LocalServer
    from yadiskpush.localserver.session import ServerSession

#: Pushes unanswered on one session before the server waits for an answer.
DEFAULT_WINDOW = 64

#: Seconds before a push refused with an ``error`` is sent again.
DEFAULT_REDELIVER_DELAY = 1.0

#: ``observer(what, session, record)``, ``what`` being ``"sent"``,
#: ``"acked"`` or ``"refused"``.
PushObserver = Callable[[str, "ServerSession", "PushRecord"], None]


@dataclass
class PushRecord:
    """
    Everything that happened to one queued push.

    :ivar id: the IQ id, the same on every send.
    :ivar login: the account it is for.
    :ivar attributes: the ``yandex:push:disk`` query's attributes.
    :ivar childrenXml: the raw XML inside the query.
    :ivar enqueuedAt: the server clock's time when queued.
    :ivar sessions: the connection number of every send, in order (the same
        number twice means a re-send on one session after an error answer).
    :ivar timesAcked: ``result`` answers (more than one only if the push
        was in flight on two sessions at once).
    :ivar timesRefused: ``error`` answers.
    :ivar ackedAt: the clock's time of the first ``result``, or ``None``.
    """

    id: str
    login: str
    attributes: dict[str, str]
    childrenXml: str
    enqueuedAt: float
    sessions: list[int] = field(default_factory=list)
    timesAcked: int = 0
    timesRefused: int = 0
    ackedAt: float | None = None

    @property
    def timesSent(self) -> int:
        """How many times the push went out, on any session."""
        return len(self.sessions)

    @property
    def acked(self) -> bool:
        """A ``result`` came, so the push left the queue."""
        return self.ackedAt is not None


class _SessionState:
    """What one subscribed session has of the queue."""

    def __init__(self) -> None:
        # Sent here and not answered yet, in send order; counts to the window.
        self.inFlight: dict[str, None] = {}
        # Refused here; sent again here when its timer fires.
        self.refused: dict[str, IDelayedCall] = {}


class RedeliveringPushQueue:
    """
    The server's at-least-once push queues, one per login.

    The :class:`~yadiskpush.localserver.server.LocalServer` owns one and
    tells it about subscriptions, answers and closed connections; tests
    normally use the server's :meth:`enqueue`, :meth:`unacked` and
    :meth:`whenAllAcked`, and read :attr:`records`.

    :ivar window: pushes unanswered on one session at most.
    :ivar redeliverDelay: seconds before a refused push is sent again on the
        same session.
    :ivar records: push id -> :class:`PushRecord`, for every push ever
        enqueued (acked ones too).
    """

    def __init__(
        self,
        server: LocalServer,
        window: int = DEFAULT_WINDOW,
        redeliverDelay: float = DEFAULT_REDELIVER_DELAY,
    ) -> None:
        """
        :raises ValueError: if ``window`` is below 1 or the delay negative.
        """
        if window < 1:
            raise ValueError(f"window must be at least 1, not {window}")
        if redeliverDelay < 0:
            raise ValueError(f"redeliverDelay must not be negative: {redeliverDelay}")
        self.server = server
        self.window = window
        self.redeliverDelay = redeliverDelay
        self.records: dict[str, PushRecord] = {}
        # login -> unacked push ids in queue order (a dict keeps the order
        # and removes an acked push from the middle in O(1)).
        self._queues: dict[str, dict[str, None]] = {}
        self._sessions: dict[ServerSession, _SessionState] = {}
        self._emptyWaiters: dict[str, list[defer.Deferred[None]]] = {}
        self._observers: list[PushObserver] = []

    # -- the public side ------------------------------------------------------

    def enqueue(
        self,
        login: str,
        attributes: dict[str, str] | None = None,
        childrenXml: str = "",
    ) -> str:
        """
        Queue one Disk push for ``login`` and send it to every subscribed
        session that has room in its window.

        :param attributes: attributes of the ``yandex:push:disk`` query.
        :param childrenXml: raw XML put inside the query, unchecked.
        :returns: the push's id, unique on the server and the same on every
            send.
        """
        pushId = self.server._nextPushId()
        self.records[pushId] = PushRecord(
            pushId,
            login,
            dict(attributes or {}),
            childrenXml,
            self.server.clock.seconds(),
        )
        self._queues.setdefault(login, {})[pushId] = None
        self._pump(login)
        return pushId

    def unacked(self, login: str) -> list[str]:
        """The ids of ``login``'s pushes not acked yet, in queue order."""
        return list(self._queues.get(login, ()))

    def whenAllAcked(self, login: str) -> defer.Deferred[None]:
        """
        Fires once ``login`` has no unacked push (at once if it has none).
        It does not fail; a test that never gets there ends by its timeout.
        """
        if not self._queues.get(login):
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._emptyWaiters.setdefault(login, []).append(d)
        return d

    def inFlight(self, session: ServerSession) -> list[str]:
        """Queued pushes sent on ``session`` and not answered there, in order."""
        state = self._sessions.get(session)
        return list(state.inFlight) if state is not None else []

    def addObserver(self, observer: PushObserver) -> None:
        """
        Call ``observer(what, session, record)`` right after every send of
        a queued push (``"sent"``, first sends and re-sends alike) and every
        answer to one (``"acked"``, ``"refused"``), once the queue has
        taken it into account. For tests that act at a given point of a
        run, e.g. drop the connection after every k-th push: an observer
        may close the session or enqueue more. The server's event log can
        do the same for a few events; this stays cheap for thousands.
        """
        self._observers.append(observer)

    def _notify(self, what: str, session: ServerSession, record: PushRecord) -> None:
        for observer in list(self._observers):
            observer(what, session, record)

    def stop(self) -> None:
        """Cancel every pending re-send timer (the server is stopping)."""
        for session in list(self._sessions):
            self._forget(session)

    # -- what the server tells us ---------------------------------------------

    def sessionSubscribed(self, session: ServerSession) -> None:
        """``session`` subscribed: send it what is queued for its login."""
        self._sessions.setdefault(session, _SessionState())
        if session.login is not None:
            self._pump(session.login)

    def pushAnswered(
        self, session: ServerSession, requestId: str, iq: domish.Element
    ) -> None:
        """
        The client answered a push on ``session``: a ``result`` takes it
        off the queue; an ``error`` schedules its re-send on this session.
        Answers to pushes not from :meth:`enqueue` are not ours.
        """
        record = self.records.get(requestId)
        if record is None:
            return
        state = self._sessions.get(session)
        wasInFlight = False
        if state is not None and requestId in state.inFlight:
            del state.inFlight[requestId]
            wasInFlight = True
        queue = self._queues.get(record.login, {})
        ok = iq.getAttribute("type") == "result"
        if ok:
            record.timesAcked += 1
            if record.ackedAt is None:
                record.ackedAt = self.server.clock.seconds()
            if requestId in queue:
                del queue[requestId]
                if not queue:
                    waiters = self._emptyWaiters.pop(record.login, [])
                    for d in waiters:
                        d.callback(None)
        else:
            record.timesRefused += 1
            if wasInFlight and state is not None and requestId in queue:
                state.refused[requestId] = self.server.clock.callLater(
                    self.redeliverDelay, self._retry, session, requestId
                )
        self._pump(record.login)
        self._notify("acked" if ok else "refused", session, record)

    def sessionClosed(self, session: ServerSession) -> None:
        """
        ``session`` is gone: what it did not answer stays queued, for the
        login's next session.
        """
        self._forget(session)

    # -- sending --------------------------------------------------------------

    def _forget(self, session: ServerSession) -> None:
        state = self._sessions.pop(session, None)
        if state is None:
            return
        for call in state.refused.values():
            if call.active():
                call.cancel()
        state.refused.clear()

    def _retry(self, session: ServerSession, requestId: str) -> None:
        state = self._sessions.get(session)
        if state is None:
            return
        state.refused.pop(requestId, None)
        if session.login is not None:
            self._pump(session.login)

    def _live(self, session: ServerSession) -> bool:
        """Whether ``session`` takes pushes now."""
        return (
            session.subscribed
            and session.jid is not None
            and not (
                session.closed
                or session.closing
                or session.stalled
                or session.serverClosed
            )
        )

    def _pump(self, login: str) -> None:
        """Fill every subscribed session's window of ``login`` from the queue."""
        queue = self._queues.get(login)
        if not queue:
            return
        for session in list(self._sessions):
            if session.login == login:
                self._fill(session, queue)

    def _fill(self, session: ServerSession, queue: dict[str, None]) -> None:
        state = self._sessions.get(session)
        if state is None or not self._live(session):
            return
        room = self.window - len(state.inFlight)
        if room <= 0:
            return
        # Pick first, send after: an observer may close the session or
        # enqueue (changing the queue) while we send.
        batch: list[str] = []
        for pushId in queue:
            if pushId not in state.inFlight and pushId not in state.refused:
                batch.append(pushId)
                if len(batch) == room:
                    break
        for pushId in batch:
            if (
                self._sessions.get(session) is not state
                or not self._live(session)
                or len(state.inFlight) >= self.window
            ):
                return
            if (
                pushId not in queue
                or pushId in state.inFlight
                or pushId in state.refused
            ):
                continue
            record = self.records[pushId]
            state.inFlight[pushId] = None
            record.sessions.append(session.number)
            session.sendPush(pushId, record.attributes, record.childrenXml)
            self._notify("sent", session, record)
