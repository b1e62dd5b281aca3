"""
POSTs each notification to a URL as a signed Standard Webhooks message,
one at a time and in order, acknowledging a push once the endpoint has
accepted it, or once it is journaled when the endpoint has not accepted it
in time.

**Order.** Deliveries go out one at a time, in the order the pushes were
handed over (and the journal's entries, oldest first, before them): the
simplest way to keep each account's notifications in order at the
receiver. A push being retried holds back the ones behind it.

**Acknowledgement.** A push is acknowledged once the endpoint answered 2xx.
If that has not happened within ``handoffTimeout`` seconds (the endpoint is
down or slow), the push is appended to the journal and acknowledged once
that is on disk; it stays in line and is removed from the journal once
accepted. While the journal holds entries, a new push is journaled at once:
it would wait behind them anyway. At start the entries a crash (or a stop)
left are delivered first, with the ``webhook-id`` they had.

**Answers.** 2xx: accepted. 5xx, 408, 429 (after ``Retry-After``), a
redirect (never followed), a timeout, no connection: tried again with
exponential backoff and full jitter, for as long as it takes (nothing is
dropped for an endpoint that is down). Any other 4xx: the receiver refused
that message; it is logged as an error, naming the status and the
``webhook-id``, and dropped (acknowledged). 410 Gone: the endpoint asked
for no more deliveries: nothing more is sent, every push is refused (so
the server keeps it), and the journal is kept for the next start.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure

from yadiskpush.delivery.journal import Entry, Journal
from yadiskpush.delivery.sinks.base import DeliveryFailed
from yadiskpush.delivery.sinks.jsonlines import encodeJSONLine
from yadiskpush.logs import Logger
from yadiskpush.notification import Notification
from yadiskpush.webhooks.message import WebhookMessage, messageFromLine
from yadiskpush.webhooks.retry import Outcome, RetryPolicy
from yadiskpush.webhooks.sender import Answer, WebhookSender, describeURL

#: The journal's file name in the state directory.
WEBHOOK_JOURNAL_NAME = "webhook-journal.sqlite3"

#: Seconds :meth:`WebhookSink.close` waits for the journal to close.
DEFAULT_CLOSE_GRACE = 5.0

#: Seconds left, before the delivery timeout, to journal a push.
HANDOFF_MARGIN = 5.0

#: How many recently handed-over messages are remembered, so that a push
#: the server sends again is acknowledged without a second POST.
DEFAULT_REMEMBER = 100_000


def handoffTimeoutFor(deliveryTimeout: float) -> float:
    """
    The ``handoffTimeout`` for a pipeline whose ``--delivery-timeout`` is
    ``deliveryTimeout``: :data:`HANDOFF_MARGIN` seconds earlier, so that the
    journal's write (an fsync) ends before the pipeline gives up on the
    push, but never less than half of it.
    """
    return max(deliveryTimeout - HANDOFF_MARGIN, deliveryTimeout / 2)


class _Item:
    """One push in line: its message, its ack, and its journal entry."""

    __slots__ = ("message", "line", "ack", "timer", "entry", "entryId", "done")

    def __init__(
        self,
        message: WebhookMessage,
        line: bytes,
        ack: Deferred[None] | None = None,
        entryId: int | None = None,
    ) -> None:
        self.message = message
        self.line = line
        #: Fires once the push may be acknowledged (``None``: replayed).
        self.ack = ack
        #: The handoff timer.
        self.timer: IDelayedCall | None = None
        #: Fires with the entry's id once journaled (``None``: not journaled).
        self.entry: Deferred[int] | None = (
            None if entryId is None else defer.succeed(entryId)
        )
        self.entryId = entryId
        #: Accepted, refused for good, or given up: no longer in line.
        self.done = False


def _fire(d: Deferred[None] | None, result: Any = None) -> None:
    # The pipeline may have given up on the ack already; nothing to tell then.
    if d is not None and not d.called:
        if isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(None)


def _waitAtMost(d: Deferred[Any], seconds: float, reactor: Any) -> Deferred[bool]:
    """Fires with ``True`` once ``d`` has, or ``False`` after ``seconds``."""
    result: Deferred[bool] = Deferred()

    def finished(_: object) -> None:
        if not result.called:
            timer.cancel()
            result.callback(True)

    def late() -> None:
        if not result.called:
            result.callback(False)

    timer = reactor.callLater(seconds, late)
    d.addBoth(finished)
    return result


class WebhookSink:
    """
    Delivers notifications to the webhook at ``url``. See the module's
    documentation for order, acknowledgement and answers.

    :param url: the endpoint (checked by
        :func:`~yadiskpush.webhooks.sender.checkWebhookURL`).
    :param secret: the key bytes from
        :func:`~yadiskpush.webhooks.signing.readWebhookSecret`.
    :param reactor: for HTTP, timers and the journal.
    :param journal: where pushes not accepted in time are kept; opened by
        :meth:`start`, closed by :meth:`close`.
    :param timeout: seconds for one attempt.
    :param handoffTimeout: seconds a push may wait for the endpoint before
        it is journaled and acknowledged; less than the delivery timeout.
    :param caFile: a PEM file whose CAs replace the system's for https.
    :param log: the logger to use.
    :param retryPolicy: the backoff between attempts.
    :param agent: an ``IAgent`` to send with (tests).
    :raises ConfigurationError: for an unusable URL or CA file.
    """

    _log = Logger()

    def __init__(
        self,
        url: str,
        secret: bytes,
        reactor: Any,
        journal: Journal,
        timeout: float = 15.0,
        handoffTimeout: float = 55.0,
        caFile: str | None = None,
        log: Logger | None = None,
        *,
        retryPolicy: RetryPolicy | None = None,
        agent: Any = None,
        closeGrace: float = DEFAULT_CLOSE_GRACE,
        remember: int = DEFAULT_REMEMBER,
    ) -> None:
        self.sender = WebhookSender(url, secret, reactor, timeout, caFile, agent)
        self.url = describeURL(url)
        self.reactor = reactor
        self.journal = journal
        self.handoffTimeout = handoffTimeout
        self.retryPolicy = retryPolicy or RetryPolicy()
        self.closeGrace = closeGrace
        if log is not None:
            self._log = log
        #: Why deliveries stopped for good (410 Gone), or ``None``.
        self.stopped: str | None = None
        self._items: deque[_Item] = deque()
        self._starting: Deferred[None] | None = None
        self._ready = False
        self._closing = False
        self._closed: Deferred[None] | None = None
        self._attempt: Deferred[Answer] | None = None
        self._retryCall: IDelayedCall | None = None
        self._failures = 0
        self._journalingLogged = False
        self._emptyWaiters: list[Deferred[None]] = []
        # webhook-ids accepted or journaled, oldest first: a push the
        # server sends again (its ack was lost on a reconnect, or refused
        # after a slow hand-off) is acknowledged at once, not POSTed again.
        self._handedOver: OrderedDict[str, None] = OrderedDict()
        self._remember = remember

    def __repr__(self) -> str:
        return f"<WebhookSink {self.url}>"

    @property
    def queueDepth(self) -> int:
        """Pushes held in memory or journaled, not yet accepted."""
        # Only the first item can be done and still in line (given up on
        # while it was being sent); every other is taken out at once.
        return len(self._items) - (1 if self._items and self._items[0].done else 0)

    def whenEmpty(self) -> Deferred[None]:
        """
        Fires once no push is waiting for the endpoint (at once if none is):
        every push handed over so far was accepted or refused for good.
        """
        if self.queueDepth == 0:
            return defer.succeed(None)
        d: Deferred[None] = Deferred()
        self._emptyWaiters.append(d)
        return d

    # -- start ------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """
        Open the journal and line up what an earlier process left in it,
        before any push. Called by the first ``deliver`` if not before.

        :returns: a Deferred firing once that is done (or opening the
            journal failed, which is logged: pushes are then acknowledged
            only once accepted). It never fails.
        """
        if self._starting is None:
            try:
                opening = self.journal.open()
            except Exception as e:
                opening = defer.fail(e)
            self._starting = opening.addCallbacks(self._opened, self._openFailed)
        d: Deferred[None] = Deferred()
        self._starting.addBoth(lambda _: d.callback(None))
        return d

    def _opened(self, entries: list[Entry]) -> None:
        replayed = []
        for entry in sorted(entries):
            try:
                message = messageFromLine(entry.line)
            except ValueError:
                self._log.error(
                    "Webhook journal entry {entryId} is not a notification; dropped",
                    entryId=entry.entryId,
                )
                self.journal.remove([entry.entryId]).addErrback(self._removeFailed)
                continue
            replayed.append(_Item(message, entry.line, entryId=entry.entryId))
        if replayed:
            self._log.info(
                "Delivering {count} notification(s) journaled before a restart "
                "to the webhook {url} first",
                count=len(replayed),
                url=self.url,
            )
        self._items.extendleft(reversed(replayed))
        self._ready = True
        if replayed:
            # Pushes handed over during the start wait behind the replay:
            # journal them now rather than at their handoff timeout.
            for item in self._items:
                if item.entry is None and not item.done:
                    self._journalItem(item)
        self._next()

    def _openFailed(self, reason: Failure) -> None:
        self._log.error(
            "The webhook journal cannot be used ({error}): notifications are "
            "acknowledged only once the webhook {url} accepts them",
            error=reason.getErrorMessage(),
            url=self.url,
        )
        self._ready = True
        self._next()

    # -- deliver ----------------------------------------------------------

    def deliver(self, notification: Notification) -> Deferred[None]:
        """
        Line the notification up for delivery.

        :returns: a Deferred firing once the endpoint accepted it or it is
            journaled; failing with :class:`DeliveryFailed` after 410 Gone,
            when closing, or when it could not be journaled.
        """
        if self.stopped is not None:
            return defer.fail(DeliveryFailed(notification.stanzaId, self.stopped))
        if self._closing:
            return defer.fail(
                DeliveryFailed(notification.stanzaId, "the webhook sink is closed")
            )
        if self._starting is None:
            self.start()
        line = encodeJSONLine(notification)
        try:
            message = messageFromLine(line)
        except ValueError as e:
            return defer.fail(DeliveryFailed(notification.stanzaId, str(e)))
        if message.msgId in self._handedOver:
            return defer.succeed(None)
        item = _Item(message, line, Deferred())
        self._items.append(item)
        if self._ready and self.journal.count > 0:
            self._journalItem(item)
        else:
            item.timer = self.reactor.callLater(
                self.handoffTimeout, self._handoffTimedOut, item
            )
        self._next()
        assert item.ack is not None
        return item.ack

    def _handoffTimedOut(self, item: _Item) -> None:
        item.timer = None
        if not self._journalingLogged:
            self._journalingLogged = True
            self._log.warn(
                "The webhook {url} has not accepted a notification within "
                "{timeout:g} s; journaling notifications until it does "
                "(acknowledged once on disk, delivered in order later)",
                url=self.url,
                timeout=self.handoffTimeout,
            )
        self._journalItem(item)

    def _journalItem(self, item: _Item) -> None:
        if item.timer is not None:
            item.timer.cancel()
            item.timer = None
        message = item.message
        entry = self.journal.append(item.line, message.login)
        item.entry = entry

        def journaled(entryId: int) -> int:
            item.entryId = entryId
            if item.done:
                # Accepted (or refused for good) while it was being written.
                self.journal.remove([entryId]).addErrback(self._removeFailed)
            self._handOver(item)
            return entryId

        def failed(reason: Failure) -> None:
            item.entry = None
            if item.done:
                return None
            self._log.error(
                "Could not journal notification {pushId} of {login} for the "
                "webhook: {error}; it is not acknowledged (the server sends it "
                "again)",
                pushId=message.pushId,
                login=message.login,
                error=reason.getErrorMessage(),
            )
            _fire(
                item.ack,
                Failure(DeliveryFailed(message.pushId, "could not journal it")),
            )
            self._drop(item)
            return None

        entry.addCallbacks(journaled, failed)

    def _markDone(self, item: _Item) -> None:
        item.done = True
        if item.timer is not None:
            item.timer.cancel()
            item.timer = None

    def _drop(self, item: _Item) -> None:
        """Take ``item`` out of line (not delivered by this process)."""
        self._markDone(item)
        if not (self._items and self._items[0] is item and self._attempt is not None):
            try:
                self._items.remove(item)
            except ValueError:
                pass

    # -- the delivery loop ------------------------------------------------

    def _next(self) -> None:
        """Send the first push in line, unless something is under way."""
        if (
            not self._ready
            or self._closing
            or self.stopped is not None
            or self._attempt is not None
            or self._retryCall is not None
        ):
            return
        while self._items and self._items[0].done:
            self._items.popleft()
        if not self._items:
            waiters, self._emptyWaiters = self._emptyWaiters, []
            for d in waiters:
                d.callback(None)
            return
        item = self._items[0]
        attempt = self.sender.send(item.message.msgId, item.message.body)
        self._attempt = attempt
        attempt.addCallbacks(self._answered, self._attemptStopped, (item,))

    def _attemptStopped(self, reason: Failure) -> None:
        # Cancelled by close(): the push stays journaled or unacknowledged.
        self._attempt = None
        reason.trap(defer.CancelledError)

    def _answered(self, answer: Answer, item: _Item) -> None:
        self._attempt = None
        if self._closing:
            # The agent may report a cancelled request as a failed one.
            return
        message = item.message
        if answer.outcome is Outcome.GONE:
            self._stopForGood(answer)
            return
        if answer.outcome is Outcome.RETRY:
            if item.done:
                # Given up while sent (it could not be journaled): the
                # server sends it again.
                self._finish(item)
                self._next()
                return
            self._failures += 1
            delay = self.retryPolicy.delay(self._failures, answer.retryAfter)
            log = self._log.warn if self._failures == 1 else self._log.debug
            log(
                "The webhook {url} did not accept {msgId} (notification "
                "{pushId} of {login}): {detail}; attempt {attempt} failed, "
                "trying again in {delay:.1f} s",
                url=self.url,
                msgId=message.msgId,
                pushId=message.pushId,
                login=message.login,
                detail=answer.detail,
                attempt=self._failures,
                delay=delay,
            )
            self._retryCall = self.reactor.callLater(delay, self._retry)
            return
        if self._failures:
            self._log.info(
                "The webhook {url} accepts notifications again, after {count} "
                "failed attempt(s)",
                url=self.url,
                count=self._failures,
            )
            self._failures = 0
            self._journalingLogged = False
        if answer.outcome is Outcome.REJECTED:
            self._log.error(
                "The webhook {url} refused {msgId} (notification {pushId} of "
                "{login}) with {detail}; it is dropped, as a 4xx answer means "
                "the receiver will not take it: see the receiver's log",
                url=self.url,
                msgId=message.msgId,
                pushId=message.pushId,
                login=message.login,
                detail=answer.detail,
            )
        else:
            self._log.debug(
                "The webhook accepted {msgId} (notification {pushId} of {login})",
                msgId=message.msgId,
                pushId=message.pushId,
                login=message.login,
            )
        self._finish(item)
        self._next()

    def _retry(self) -> None:
        self._retryCall = None
        self._next()

    def _finish(self, item: _Item) -> None:
        """``item`` is delivered (or refused for good): out of line, acked."""
        if self._items and self._items[0] is item:
            self._items.popleft()
        was = item.done
        item.done = True
        if item.timer is not None:
            item.timer.cancel()
            item.timer = None
        if was:
            return
        self._handOver(item)
        if item.entryId is not None:
            self.journal.remove([item.entryId]).addErrback(self._removeFailed)
        # An entry still being written is removed once written (journaled()).

    def _handOver(self, item: _Item) -> None:
        """Acknowledge ``item`` (accepted, or journaled) and remember it."""
        handedOver = self._handedOver
        handedOver[item.message.msgId] = None
        if len(handedOver) > self._remember:
            handedOver.popitem(last=False)
        _fire(item.ack)

    def _removeFailed(self, reason: Failure) -> None:
        # The entry comes back at the next start: delivered twice, with the
        # same webhook-id, never lost.
        self._log.warn(
            "Could not remove a delivered notification from the webhook "
            "journal ({error}); it is delivered again at the next start",
            error=reason.getErrorMessage(),
        )

    def _stopForGood(self, answer: Answer) -> None:
        self.stopped = (
            f"the webhook {self.url} answered 410 Gone (it asked for no more "
            "deliveries; fix --webhook and restart)"
        )
        kept = 0
        for item in list(self._items):
            if item.done:
                continue
            if item.entry is not None:
                kept += 1
                continue
            _fire(item.ack, Failure(DeliveryFailed(item.message.pushId, self.stopped)))
            self._markDone(item)
        self._items = deque(item for item in self._items if not item.done)
        self._log.error(
            "The webhook {url} answered {detail}: it asked for no more deliveries. "
            "Nothing more is sent, and every push is refused (the server keeps "
            "it); {kept} journaled notification(s) are kept. Fix --webhook (or "
            "the receiver) and restart yadiskpush",
            url=self.url,
            detail=answer.detail,
            kept=kept,
        )

    # -- close ------------------------------------------------------------

    def close(self) -> Deferred[None]:
        """
        Stop delivering: the attempt under way is abandoned, pushes not yet
        journaled are refused (the server sends them again), journaled ones
        stay for the next start. Closes the journal, waiting at most
        ``closeGrace`` seconds. Never fails; calling it again waits for the
        same close.
        """
        if self._closed is None:
            self._closing = True
            if self._retryCall is not None:
                self._retryCall.cancel()
                self._retryCall = None
            if self._attempt is not None:
                self._attempt.cancel()
            for item in list(self._items):
                if item.entry is None and not item.done:
                    _fire(
                        item.ack,
                        Failure(
                            DeliveryFailed(
                                item.message.pushId, "the webhook sink is closing"
                            )
                        ),
                    )
                    self._markDone(item)
            self._items = deque(item for item in self._items if not item.done)
            self._closed = self._shutDown()
        d: Deferred[None] = Deferred()
        self._closed.addBoth(lambda _: d.callback(None))
        return d

    @defer.inlineCallbacks
    def _shutDown(self) -> Any:
        try:
            remaining = self.journal.count
            closed = yield _waitAtMost(
                self.journal.close(), self.closeGrace, self.reactor
            )
            if not closed:
                self._log.warn(
                    "The webhook journal did not close within {grace:g} s",
                    grace=self.closeGrace,
                )
            yield _waitAtMost(self.sender.close(), self.closeGrace, self.reactor)
            if remaining:
                self._log.info(
                    "{count} notification(s) for the webhook {url} stay "
                    "journaled; they are delivered at the next start",
                    count=remaining,
                    url=self.url,
                )
        except Exception:
            self._log.failure("Closing the webhook sink failed")
