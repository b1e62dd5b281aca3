"""
From a received push to its answer, for one connection.

The promise users rely on: a push is acknowledged only once every sink has
durably taken it; otherwise it is refused (an error answer) or left
unanswered, and the server sends it again (at-least-once; consumers dedupe
by login and id). :class:`DeliveryPipeline` keeps that promise for one
stream:

- pushes are handed on one at a time, in the order they arrived;
- a hand-off that does not finish within ``timeout`` is refused with one log
  line, and the next push goes on (a sink that never answers cannot silence
  the account);
- at most ``maxWaiting`` pushes wait behind the one being handed on; more
  are refused at once (a stalled consumer makes the server hold the rest);
- when the stream ends, everything still waiting is dropped unanswered and
  late results are ignored: the server re-sends them on the next session;
- sending one answer can never fail the next push.

The answers are serialized from a template, without a domish round trip.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol
from xml.sax.saxutils import quoteattr

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from yadiskpush.errors import YaDiskPushError
from yadiskpush.logs import Logger
from yadiskpush.notification import Notification

#: ``deliver(notification)``: ``None`` or a Deferred that fires once every
#: sink has taken the notification, and fails if one could not.
Deliver = Callable[[Notification], "defer.Deferred[Any] | None"]

DEFAULT_DELIVERY_TIMEOUT = 60.0
DEFAULT_MAX_WAITING = 1000

#: Why a push was refused, as :meth:`PipelineObserver.pushRefused` says it:
#: the sinks took too long, too many pushes waited, or a sink failed.
REFUSED_TIMEOUT = "timeout"
REFUSED_FULL = "full"
REFUSED_SINK_FAILED = "sink_failed"
REFUSED_REASONS = (REFUSED_TIMEOUT, REFUSED_FULL, REFUSED_SINK_FAILED)


class PipelineObserver(Protocol):
    """
    Told what happens to each push (metrics count these). Called on the
    per-push path, so each method must be cheap and must not raise.
    """

    def pushReceived(self) -> None: ...

    def pushAcked(self) -> None: ...

    def pushRefused(self, reason: str) -> None: ...


def _answerHead(iq: Any, answerType: str) -> str:
    """``<iq type='…' id='…' to='…'`` for the answer to ``iq`` (unclosed)."""
    attributes = iq.attributes
    stanzaId = attributes.get("id")
    sender = attributes.get("from")
    head = f"<iq type='{answerType}'"
    if stanzaId is not None:
        head += f" id={_quoteAttribute(stanzaId)}"
    if sender:
        head += f" to={_quoteAttribute(sender)}"
    return head


def _quoteAttribute(value: str) -> str:
    """``quoteattr(value)``, without its cost for a value that needs nothing."""
    if (
        '"' in value
        or "&" in value
        or "<" in value
        or ">" in value
        or "\n" in value
        or "\r" in value
        or "\t" in value
    ):
        return quoteattr(value)
    return f'"{value}"'


def resultAnswer(iq: Any) -> str:
    """``<iq type='result'/>`` for a request, addressed back to its sender."""
    return _answerHead(iq, "result") + "/>"


def errorAnswer(iq: Any, condition: str) -> str:
    """An error answer to a request, with an RFC 6120 stanza condition."""
    errorType = "wait" if condition == "resource-constraint" else "cancel"
    return (
        _answerHead(iq, "error") + f"><error type='{errorType}'><{condition} "
        "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
    )


class DeliveryTimedOut(YaDiskPushError):
    """The sinks did not take a push within the delivery timeout."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the sinks did not take it within {seconds:g} s")


class PipelineFull(YaDiskPushError):
    """Too many pushes wait for the sinks."""

    def __init__(self, waiting: int) -> None:
        super().__init__(f"{waiting} earlier pushes are still waiting for the sinks")


class _Entry:
    __slots__ = ("iq", "notification")

    def __init__(self, iq: Any, notification: Notification) -> None:
        self.iq = iq
        self.notification = notification


class DeliveryPipeline:
    """
    Hands the pushes of one stream to ``deliver`` and answers each.

    :param deliver: hands one notification to every sink.
    :param send: ``send(iq, xml)`` sends the answer to ``iq`` on this stream
        (at most once per request); the pipeline stops sending once
        :meth:`close` was called.
    :param clock: runs the delivery timeout.
    :param timeout: seconds one hand-off may take before it is refused.
    :param maxWaiting: pushes allowed to wait behind the current one.
    :param observer: told of every push received, acknowledged and refused
        (with one of :data:`REFUSED_REASONS`); ``None`` costs one attribute
        check per event.
    """

    def __init__(
        self,
        deliver: Deliver,
        send: Callable[[Any, str], object],
        clock: IReactorTime,
        log: Logger,
        timeout: float = DEFAULT_DELIVERY_TIMEOUT,
        maxWaiting: int = DEFAULT_MAX_WAITING,
        observer: PipelineObserver | None = None,
    ) -> None:
        self.deliver = deliver
        self.observer = observer
        self.send = send
        self.clock = clock
        self.log = log
        self.timeout = timeout
        self.maxWaiting = maxWaiting
        self._waiting: deque[_Entry] = deque()
        self._current: _Entry | None = None
        self._timer: IDelayedCall | None = None
        self._closed = False
        self._handingOff = False
        self._overflowLogged = False

    @property
    def waiting(self) -> int:
        """Pushes received and not yet answered."""
        return len(self._waiting) + (self._current is not None)

    def receive(self, iq: Any, notification: Notification) -> None:
        """A push arrived: hand it on now, or after those before it."""
        if self._closed:
            return
        if self.observer is not None:
            self.observer.pushReceived()
        if self._current is not None and len(self._waiting) >= self.maxWaiting:
            if not self._overflowLogged:
                self._overflowLogged = True
                self.log.warn(
                    "Refusing pushes: {waiting} are waiting for the sinks "
                    "(the server will send them again)",
                    waiting=self.waiting,
                )
            if self.observer is not None:
                self.observer.pushRefused(REFUSED_FULL)
            self._answer(iq, errorAnswer(iq, "resource-constraint"))
            return
        self._waiting.append(_Entry(iq, notification))
        self._pump()

    def close(self) -> None:
        """
        The stream ended: drop what waits, unanswered (the server sends it
        again), and ignore results still to come.
        """
        self._closed = True
        self._waiting.clear()
        self._current = None
        self._cancelTimer()

    def _pump(self) -> None:
        # A loop, not recursion: sinks that take pushes at once settle each
        # hand-off inside it, however many pushes wait.
        while self._current is None and self._waiting and not self._closed:
            entry = self._current = self._waiting.popleft()
            self._handingOff = True
            try:
                self._handOff(entry)
            finally:
                self._handingOff = False
            if self._current is entry:
                self._timer = self.clock.callLater(self.timeout, self._timedOut, entry)
                return
        if not self._waiting:
            self._overflowLogged = False

    def _handOff(self, entry: _Entry) -> None:
        try:
            result = self.deliver(entry.notification)
        except Exception:
            self._settled(Failure(), entry)
            return
        # None first: isinstance against Deferred (an ABC) is slow for None.
        if result is not None and isinstance(result, defer.Deferred):
            result.addBoth(self._settled, entry)
        else:
            self._settled(None, entry)

    def _timedOut(self, entry: _Entry) -> None:
        self._timer = None
        self._settled(Failure(DeliveryTimedOut(self.timeout)), entry)

    def _settled(self, result: Any, entry: _Entry) -> None:
        if entry is not self._current:
            # Late: the push was already refused on timeout, or the stream
            # ended. A failure is swallowed so it is not logged as unhandled.
            return None
        self._cancelTimer()
        self._current = None
        if isinstance(result, Failure):
            self._refuse(entry, result)
        else:
            if self.observer is not None:
                self.observer.pushAcked()
            self._answer(entry.iq, resultAnswer(entry.iq))
        if not self._handingOff:
            self._pump()
        return None

    def _refuse(self, entry: _Entry, reason: Failure) -> None:
        reason = _unwrap(reason)
        if self.observer is not None:
            self.observer.pushRefused(
                REFUSED_TIMEOUT
                if isinstance(reason.value, DeliveryTimedOut)
                else REFUSED_SINK_FAILED
            )
        if isinstance(reason.value, YaDiskPushError):
            # Expected (disk full, a stalled consumer, a timeout): one line.
            self.log.error(
                "Could not deliver push {id}: {problem}; answering with an "
                "error so the server sends it again",
                id=entry.notification.stanzaId,
                problem=str(reason.value),
            )
        else:
            self.log.failure(
                "Could not deliver push {id}; answering with an error so the "
                "server sends it again",
                reason,
                id=entry.notification.stanzaId,
            )
        self._answer(entry.iq, errorAnswer(entry.iq, "internal-server-error"))

    def _answer(self, iq: Any, xml: str) -> None:
        if self._closed:
            return
        try:
            self.send(iq, xml)
        except Exception:
            self.log.failure("Could not send an answer to the server")

    def _cancelTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


def _unwrap(reason: Failure) -> Failure:
    """The original failure inside ``gatherResults``' ``FirstError`` layers."""
    while isinstance(reason.value, defer.FirstError):
        reason = reason.value.subFailure
    return reason


def fanOut(receivers: list[Deliver], notification: Notification) -> Any:
    """
    Hand a notification to every receiver; ``None`` when all took it at
    once, else a Deferred that fires when all have (and fails if one
    failed). One receiver costs no Deferred machinery at all.
    """
    if len(receivers) == 1:
        return receivers[0](notification)
    pending = []
    for receive in receivers:
        try:
            result = receive(notification)
        except Exception:
            pending.append(defer.fail())
            continue
        if isinstance(result, defer.Deferred):
            pending.append(result)
    if not pending:
        return None
    if len(pending) == 1:
        return pending[0]
    return defer.gatherResults(pending, consumeErrors=True)
