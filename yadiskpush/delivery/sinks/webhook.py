"""
POSTs each notification to a URL as a signed Standard Webhooks message,
up to ``concurrency`` at once and each account's in order, acknowledging
a push once the endpoint has accepted it, or once it is journaled when the
endpoint has not accepted it in time.

**Order.** Each account's notifications reach the receiver in the order
the pushes were handed over (the journal's entries, oldest first, before
them): a push is sent only once every earlier push of the same login was
accepted or refused for good, so one being retried holds back that
account's later ones, and only those. Up to ``concurrency`` POSTs are in
flight at once, for different accounts; across accounts, order is *not*
kept (a receiver must not expect alice's push before bob's because it came
in first). With ``concurrency=1`` deliveries go out one at a time in the
order handed over, all accounts together.

**Backoff.** An attempt that must be tried again (see below) stops new
attempts, for every account, until its backoff delay has passed: an
endpoint in trouble is not hammered by every lane. Attempts already in
flight finish. Then the pushes that failed go first: they keep their place
in line.

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
for no more deliveries: nothing more is sent (the attempts in flight are
abandoned), every push is refused (so the server keeps it), and the
journal is kept for the next start.
"""

from __future__ import annotations

import heapq
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

#: How many POSTs may be in flight at once by default: tens of pushes a
#: second (a fleet of thousands of accounts) to a receiver 100 ms away.
DEFAULT_CONCURRENCY = 8


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

    __slots__ = (
        "message",
        "line",
        "ack",
        "timer",
        "entry",
        "entryId",
        "done",
        "seq",
        "attempt",
    )

    def __init__(
        self,
        message: WebhookMessage,
        line: bytes,
        ack: Deferred[None] | None = None,
        entryId: int | None = None,
    ) -> None:
        self.message = message
        #: The JSON line, for the journal (emptied once it is appended).
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
        #: Accepted, refused for good, or given up: no longer waiting.
        self.done = False
        #: Its place in line (``-1``: not lined up yet, during the start).
        self.seq = -1
        #: The attempt in flight, if any.
        self.attempt: Deferred[Answer] | None = None

    def __lt__(self, other: _Item) -> bool:
        # For the heap of accounts' first pushes: the earlier in line first.
        return self.seq < other.seq


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
    :param concurrency: how many POSTs may be in flight at once (for
        different accounts); 1 sends one at a time, in the order handed over.
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
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        self.sender = WebhookSender(url, secret, reactor, timeout, caFile, agent)
        self.url = describeURL(url)
        self.reactor = reactor
        self.journal = journal
        self.handoffTimeout = handoffTimeout
        self.retryPolicy = retryPolicy or RetryPolicy()
        self.closeGrace = closeGrace
        self.concurrency = concurrency
        if log is not None:
            self._log = log
        #: Why deliveries stopped for good (410 Gone), or ``None``.
        self.stopped: str | None = None
        # Pushes handed over before the journal's entries are lined up.
        self._early: list[_Item] = []
        # Each login's pushes still in line, in order: only the first may
        # be in flight, the others wait for it.
        self._lines: dict[str, deque[_Item]] = {}
        # The first push of each login's line that is not in flight, the
        # earliest in line on top: picking the next to send is O(log n).
        # Items done meanwhile are skipped when they come up.
        self._heads: list[_Item] = []
        self._seq = 0
        # Pushes waiting, in flight or journaled, not yet done.
        self._depth = 0
        self._attempts: dict[_Item, Deferred[Answer]] = {}
        self._starting: Deferred[None] | None = None
        self._started = False
        self._closing = False
        self._closed: Deferred[None] | None = None
        self._retryCall: IDelayedCall | None = None
        # Backoff steps (one per outage round, not per lane that failed)
        # and failed attempts (for the log).
        self._failures = 0
        self._failedAttempts = 0
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
        return self._depth

    @property
    def inFlight(self) -> int:
        """POSTs under way."""
        return len(self._attempts)

    def whenEmpty(self) -> Deferred[None]:
        """
        Fires once no push is waiting for the endpoint (at once if none is):
        every push handed over so far was accepted or refused for good.
        """
        if self._depth == 0:
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
            # Journaled already: the line is not needed again, only the body.
            replayed.append(_Item(message, b"", entryId=entry.entryId))
        if replayed:
            self._log.info(
                "Delivering {count} notification(s) journaled before a restart "
                "to the webhook {url} first",
                count=len(replayed),
                url=self.url,
            )
        self._depth += len(replayed)
        self._lineUp(replayed)
        if replayed:
            # Pushes handed over during the start wait behind the replay:
            # journal them now rather than at their handoff timeout.
            for item in list(self._early):
                if item.entry is None and not item.done:
                    self._journalItem(item)
        self._lineUp(self._early)
        self._early = []
        self._started = True
        self._next()

    def _openFailed(self, reason: Failure) -> None:
        self._log.error(
            "The webhook journal cannot be used ({error}): notifications are "
            "acknowledged only once the webhook {url} accepts them",
            error=reason.getErrorMessage(),
            url=self.url,
        )
        self._lineUp(self._early)
        self._early = []
        self._started = True
        self._next()

    # -- the line ---------------------------------------------------------

    def _lineUp(self, items: list[_Item]) -> None:
        """Put ``items`` at the end of the line, in this order."""
        for item in items:
            if item.done:
                continue
            item.seq = self._seq
            self._seq += 1
            line = self._lines.get(item.message.login)
            if line is None:
                self._lines[item.message.login] = deque([item])
                heapq.heappush(self._heads, item)
            else:
                line.append(item)

    def _leaveLine(self, item: _Item) -> None:
        """
        Take ``item`` (done, not in flight) out of its login's line; the
        next of that login may go.
        """
        login = item.message.login
        line = self._lines.get(login)
        if item.seq < 0 or line is None:
            # Not lined up yet (during the start).
            try:
                self._early.remove(item)
            except ValueError:
                pass
            return
        if line[0] is item:
            line.popleft()
            if line:
                heapq.heappush(self._heads, line[0])
            else:
                del self._lines[login]
        else:
            # Dropped from the middle (its journaling failed): one
            # account's line, not the whole backlog.
            try:
                line.remove(item)
            except ValueError:
                pass

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
        self._depth += 1
        if self._started:
            self._lineUp([item])
        else:
            self._early.append(item)
        if self._started and self.journal.count > 0:
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
        # Written once at most (a failure drops the push): after a long
        # outage, the backlog in memory is the bodies alone.
        item.line = b""

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
        if not item.done:
            item.done = True
            self._depth -= 1
        if item.timer is not None:
            item.timer.cancel()
            item.timer = None

    def _drop(self, item: _Item) -> None:
        """Take ``item`` out of line (not delivered by this process)."""
        self._markDone(item)
        if item.attempt is None:
            self._leaveLine(item)
            self._next()
        # Else it leaves the line once its attempt ends, holding back its
        # login's later pushes until then (a late answer cannot overtake).

    # -- the delivery loop ------------------------------------------------

    def _next(self) -> None:
        """Send the first pushes in line whose login has none in flight."""
        if not self._started or self._closing or self.stopped is not None:
            return
        heads = self._heads
        while (
            heads
            and self._retryCall is None
            and len(self._attempts) < self.concurrency
            and self.stopped is None
            and not self._closing
        ):
            item = heapq.heappop(heads)
            if item.done or item.attempt is not None:
                continue
            if item.entry is None and item.message.msgId in self._handedOver:
                # A push the server sent again while the first was in line
                # (ahead of it: same login), which is done now: accepted
                # or refused. A journaled one is POSTed: its entry must go.
                self._finish(item)
                continue
            attempt = self.sender.send(item.message.msgId, item.message.body)
            item.attempt = attempt
            self._attempts[item] = attempt
            attempt.addCallbacks(
                self._answered, self._attemptStopped, (item,), errbackArgs=(item,)
            )
        if self._depth == 0 and self._emptyWaiters:
            waiters, self._emptyWaiters = self._emptyWaiters, []
            for d in waiters:
                d.callback(None)

    def _attemptEnded(self, item: _Item) -> None:
        item.attempt = None
        self._attempts.pop(item, None)

    def _attemptStopped(self, reason: Failure, item: _Item) -> None:
        # Cancelled by close() or a 410: the push stays journaled or
        # unacknowledged.
        self._attemptEnded(item)
        reason.trap(defer.CancelledError)

    def _answered(self, answer: Answer, item: _Item) -> None:
        self._attemptEnded(item)
        if self._closing or self.stopped is not None:
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
                self._leaveLine(item)
                self._next()
                return
            # It keeps its place: first of its login, and in line by seq.
            heapq.heappush(self._heads, item)
            self._failedAttempts += 1
            if self._retryCall is not None and self._retryCall.active():
                # Another lane failed in the same outage: the backoff under
                # way holds this one too, unless its Retry-After is longer.
                if answer.retryAfter is not None:
                    delay = self.retryPolicy.delay(self._failures, answer.retryAfter)
                    remaining = self._retryCall.getTime() - self.reactor.seconds()
                    if delay > remaining:
                        self._retryCall.reset(delay)
                self._log.debug(
                    "The webhook {url} did not accept {msgId} (notification "
                    "{pushId} of {login}) either: {detail}",
                    url=self.url,
                    msgId=message.msgId,
                    pushId=message.pushId,
                    login=message.login,
                    detail=answer.detail,
                )
                return
            self._failures += 1
            delay = self.retryPolicy.delay(self._failures, answer.retryAfter)
            log = self._log.warn if self._failedAttempts == 1 else self._log.debug
            log(
                "The webhook {url} did not accept {msgId} (notification "
                "{pushId} of {login}): {detail}; attempt {attempt} failed, "
                "trying again in {delay:.1f} s",
                url=self.url,
                msgId=message.msgId,
                pushId=message.pushId,
                login=message.login,
                detail=answer.detail,
                attempt=self._failedAttempts,
                delay=delay,
            )
            self._retryCall = self.reactor.callLater(delay, self._retry)
            return
        if self._failedAttempts:
            self._log.info(
                "The webhook {url} accepts notifications again, after {count} "
                "failed attempt(s)",
                url=self.url,
                count=self._failedAttempts,
            )
            self._failures = 0
            self._failedAttempts = 0
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
        was = item.done
        self._markDone(item)
        self._leaveLine(item)
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

    def _allItems(self) -> list[_Item]:
        """Every push in line or waiting for the start (close and 410)."""
        items = list(self._early)
        for line in self._lines.values():
            items.extend(line)
        return items

    def _abandon(self, why: str) -> int:
        """
        Stop every attempt and refuse every push not journaled with
        ``why``; journaled ones stay in the journal. Returns how many are
        kept there.
        """
        if self._retryCall is not None:
            if self._retryCall.active():
                self._retryCall.cancel()
            self._retryCall = None
        for attempt in list(self._attempts.values()):
            attempt.cancel()
        kept = 0
        for item in self._allItems():
            if item.done:
                continue
            if item.entry is not None:
                kept += 1
                continue
            _fire(item.ack, Failure(DeliveryFailed(item.message.pushId, why)))
            self._markDone(item)
        return kept

    def _stopForGood(self, answer: Answer) -> None:
        self.stopped = (
            f"the webhook {self.url} answered 410 Gone (it asked for no more "
            "deliveries; fix --webhook and restart)"
        )
        kept = self._abandon(self.stopped)
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
        Stop delivering: the attempts under way are abandoned, pushes not
        yet journaled are refused (the server sends them again), journaled
        ones stay for the next start. Closes the journal, waiting at most
        ``closeGrace`` seconds. Never fails; calling it again waits for the
        same close.
        """
        if self._closed is None:
            self._closing = True
            self._abandon("the webhook sink is closing")
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
