"""
The local server's event log, and Deferreds that wait on it.

Tests must not sleep: they wait for the server to *report* that something
happened (a session opened, a push was acknowledged). Every step the server
takes is appended here with a timestamp from an injectable clock, and
:meth:`EventLog.whenEvent` turns "the n-th event of this kind" into a
Deferred that fires at once if it already happened.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime


@dataclass(frozen=True)
class Event:
    """
    One thing the server did or saw.

    :ivar at: ``clock.seconds()`` when it happened.
    :ivar kind: what happened, e.g. ``session-opened``, ``push-acked``
        (see ``LocalServer`` for the list).
    :ivar session: the number of the connection it belongs to (1 for the
        first accepted connection), or ``None`` for server-wide events.
    :ivar details: the facts of the event (``jid``, ``id``, ``condition``...).
    """

    at: float
    kind: str
    session: int | None
    details: dict[str, Any] = field(default_factory=dict)


Matcher = Callable[[Event], bool]


class EventLog:
    """
    An append-only list of :class:`Event`, with waiters.

    :ivar events: every event, oldest first.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.events: list[Event] = []
        self._waiters: list[tuple[str, Matcher | None, int, defer.Deferred[Event]]] = []

    def record(self, kind: str, session: int | None = None, **details: Any) -> Event:
        """Append an event and fire the waiters it satisfies."""
        event = Event(self.clock.seconds(), kind, session, details)
        self.events.append(event)
        waiting = self._waiters
        self._waiters = []
        for waiter in waiting:
            wanted, match, count, d = waiter
            if self._nth(wanted, match, count) is event:
                d.callback(event)
            else:
                self._waiters.append(waiter)
        return event

    def ofKind(self, kind: str, match: Matcher | None = None) -> list[Event]:
        """The events of one kind (that ``match`` accepts), oldest first."""
        return [
            e for e in self.events if e.kind == kind and (match is None or match(e))
        ]

    def _nth(self, kind: str, match: Matcher | None, count: int) -> Event | None:
        found = self.ofKind(kind, match)
        return found[count - 1] if len(found) >= count else None

    def whenEvent(
        self, kind: str, count: int | None = None, match: Matcher | None = None
    ) -> defer.Deferred[Event]:
        """
        Wait for an event.

        :param kind: the event kind.
        :param count: fire on the ``count``-th such event since the server
            started (at once if it already happened); ``None`` means the next
            one after this call.
        :param match: only count events this predicate accepts.
        """
        if count is None:
            count = len(self.ofKind(kind, match)) + 1
        if count < 1:
            raise ValueError("count starts at 1")
        found = self._nth(kind, match, count)
        if found is not None:
            return defer.succeed(found)
        d: defer.Deferred[Event] = defer.Deferred()
        self._waiters.append((kind, match, count, d))
        return d
