"""
Every IQ get or set the server sends gets exactly one answer.

RFC 6120 (section 8.2.3) requires an answer to every IQ request, whatever
happens inside the code that handles it. Twisted's dispatcher catches an
exception raised by an observer and logs its whole traceback (a push nested
600 levels deep once printed 1,959 lines), but nobody answers: the server
waits forever and, for a push, resends it. So every IQ observer of our
handlers is wrapped in :func:`answersExactlyOnce`, and every answer goes
through :func:`sendAnswer`, which records on the request that it was
answered. A second answer is never sent, by the same handler or another.

Usage in a wokkel ``XMPPHandler``::

    @answersExactlyOnce
    def onPing(self, iq: domish.Element) -> None:
        sendAnswer(self.xmlstream, iq, toResponse(iq, "result"))
"""

from __future__ import annotations

import functools
import os
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.protocols.jabber.xmlstream import toResponse
from twisted.words.xish import domish
from wokkel.subprotocols import XMPPHandler

from yadiskpush.logs import Logger

# A Python attribute on the request element, like wokkel's ``handled``. It
# starts with an underscore because domish answers any other unknown
# attribute with the child element of that name, which the sender chooses.
_ANSWERED = "_yadiskpushAnswered"

# Longest exception message quoted in the log line.
_MAX_MESSAGE = 200

_log = Logger(namespace="yadiskpush.handlers.guard")

HandlerT = TypeVar("HandlerT", bound=XMPPHandler)
IQObserver = Callable[[HandlerT, domish.Element], Any]


def isAnswered(iq: domish.Element) -> bool:
    """Whether :func:`sendAnswer` has already answered ``iq``."""
    return getattr(iq, _ANSWERED, False) is True


def canSend(xs: Any) -> bool:
    """
    Whether ``xs`` can still carry an answer: connected, its stream not
    ended, and (for our stream) no ``</stream:stream>`` sent yet, after which
    RFC 6120 allows nothing more.
    """
    return (
        xs is not None
        and getattr(xs, "transport", None) is not None
        and getattr(xs, "stream", None) is not None
        and not getattr(xs, "closing", False)
    )


def sendAnswer(xs: Any, iq: domish.Element, response: domish.Element | str) -> bool:
    """
    Send ``response`` (an element, or its XML text) on ``xs`` as the one
    answer to ``iq``, and mark ``iq`` answered and handled (so wokkel's
    ``FallbackHandler`` stays silent).

    Nothing is sent if ``iq`` was answered before, or if ``xs`` can no
    longer carry it (see :func:`canSend`): the stream that brought the
    request is gone, and the server will send the request again on the next
    one. Pass the stream the request came on, not the handler's current one,
    when answering later.

    :returns: whether the answer was sent.
    :raises Exception: whatever ``xs.send`` raises (an answer that cannot be
        serialized); ``iq`` then stays unanswered.
    """
    if isAnswered(iq) or not canSend(xs):
        return False
    # Serializing happens before anything is written: if send raises,
    # nothing went out, and the request is still unanswered.
    xs.send(response)
    setattr(iq, _ANSWERED, True)
    iq.handled = True
    return True


def errorAnswer(iq: domish.Element, condition: str) -> domish.Element:
    """
    An error answer to ``iq`` with the RFC 6120 stanza error ``condition``.

    ``StanzaError(condition).toResponse(iq)``, without the copy of the
    request's payload Twisted puts in (RFC 6120 makes it optional): the
    payload may be a megabyte, or nested too deep for domish to serialize
    without exceeding the recursion limit.
    """
    response = toResponse(iq, "error")
    response.addChild(StanzaError(condition).getElement())
    return response


def _oneLine(reason: BaseException | Failure) -> str:
    """The exception's type, message and innermost frame, on one line."""
    if isinstance(reason, Failure):
        exception = reason.value
        # A Failure may have dropped its traceback; it keeps its frames.
        frames = [(name, path, line) for name, path, line, *_ in reason.frames]
    else:
        exception = reason
        frames = [
            (f.name, f.filename, f.lineno)
            for f in traceback.extract_tb(reason.__traceback__)
        ]
    message = " ".join(str(exception).split())
    if len(message) > _MAX_MESSAGE:
        message = message[:_MAX_MESSAGE] + "…"
    described = type(exception).__name__
    if message:
        described += f": {message}"
    if frames:
        name, path, line = frames[-1]
        described += f" (at {os.path.basename(path)}:{line} in {name})"
    return described


def _refuse(
    handler: XMPPHandler,
    xs: Any,
    iq: domish.Element,
    reason: BaseException | Failure,
) -> None:
    """Log one line and answer ``internal-server-error`` unless answered."""
    log = getattr(handler, "_log", None)
    if not isinstance(log, Logger):
        log = _log
    fields = {
        "handler": type(handler).__name__,
        "kind": f"IQ {iq.getAttribute('type', '')}".rstrip(),
        "id": iq.getAttribute("id", ""),
        "sender": iq.getAttribute("from", "the server"),
        "error": _oneLine(reason),
    }
    if isAnswered(iq):
        log.error(
            "{handler} failed on {kind} {id!r} from {sender} after answering "
            "it: {error}",
            **fields,
        )
        return
    try:
        sent = sendAnswer(xs, iq, errorAnswer(iq, "internal-server-error"))
    except Exception as e:
        log.error(
            "{handler} failed on {kind} {id!r} from {sender}: {error}; the "
            "error answer could not be sent either: {sendError}",
            sendError=_oneLine(e),
            **fields,
        )
        return
    iq.handled = True
    log.error(
        "{handler} failed on {kind} {id!r} from {sender}: {error}; "
        + (
            "answered with internal-server-error"
            if sent
            else "not answered, the stream is closed"
        ),
        **fields,
    )


def answersExactlyOnce(method: IQObserver[HandlerT]) -> IQObserver[HandlerT]:
    """
    Wrap an IQ observer method of an ``XMPPHandler`` so that the request is
    answered exactly once, whatever the method does.

    If the method raises (or returns a Deferred that fails), the exception
    is logged as one line (type, message and where it was raised; no
    traceback) on the handler's ``_log`` and, unless the request was already
    answered through :func:`sendAnswer`, it is answered with
    ``internal-server-error`` on the stream it arrived on and marked
    handled. The exception does not propagate: the dispatcher goes on to
    the next observer (wokkel's ``FallbackHandler`` sees ``handled``).

    A method that returns normally is trusted: it answered, will answer
    later through :func:`sendAnswer`, or left the request to another
    observer (then it must not set ``iq.handled``).
    """

    @functools.wraps(method)
    def guarded(self: HandlerT, iq: domish.Element) -> None:
        xs = self.xmlstream
        try:
            result = method(self, iq)
        except Exception as e:
            _refuse(self, xs, iq, e)
            return
        if isinstance(result, defer.Deferred):

            def failed(reason: Failure) -> None:
                _refuse(self, xs, iq, reason)

            result.addErrback(failed)

    return guarded
