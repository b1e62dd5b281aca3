"""
One POST of one webhook message, signed for this attempt, and what its
answer means: the only module that speaks HTTP to the endpoint.

TLS is verified against the host dialled, with the system's CAs or only
those of a CA file. Redirects are not followed. Every attempt, answer body
included, has a timeout on the given reactor. :meth:`WebhookSender.send`
never fails: every problem becomes an :class:`Answer` to retry.
"""

from __future__ import annotations

from typing import Any, NamedTuple
from urllib.parse import urlsplit, urlunsplit

from OpenSSL import SSL
from service_identity import VerificationError
from treq.client import HTTPClient
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, ResponseDone
from twisted.web.http import PotentialDataLoss

from yadiskpush import __version__
from yadiskpush.connection.tls import loadTrustRoot
from yadiskpush.errors import ConfigurationError
from yadiskpush.httpclient import (
    ImmediateBody,
    QuietPool,
    VerifyingPolicy,
    cancelAfter,
)
from yadiskpush.oauth.client import cleanServerText
from yadiskpush.oauth.loopback import isLoopbackHost
from yadiskpush.webhooks.retry import Outcome, classifyStatus, parseRetryAfter
from yadiskpush.webhooks.signing import sign

#: Bytes of an answer's body read for the log; the rest is not read.
MAX_SHOWN_BODY = 4096


class Answer(NamedTuple):
    """
    What one attempt came to.

    :ivar status: the HTTP status, ``None`` when there was no answer.
    :ivar retryAfter: seconds from the answer's ``Retry-After``, if any.
    :ivar detail: a few words for the log (the status and the start of the
        body, or why there was no answer), cleaned of control characters
        and anything token-like.
    """

    outcome: Outcome
    status: int | None
    retryAfter: float | None
    detail: str


def checkWebhookURL(url: str) -> tuple[str, list[str]]:
    """
    Check ``--webhook``'s URL.

    :returns: the URL, and warnings for the user: plain ``http://`` to a
        host other than this machine sends the notifications (file names)
        in clear; it is allowed, since the signature still proves who sent
        them, but said once.
    :raises ConfigurationError: for a URL that is not ``http(s)://`` with a
        host, has a bad port, or carries a user name or password (which
        would show in the process list and the log).
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ConfigurationError(f"--webhook {url!r} is not a valid URL") from None
    if parts.scheme not in ("https", "http") or not host:
        raise ConfigurationError(
            f"--webhook must be an https:// (or http://) URL with a host, not {url!r}"
        )
    if parts.username is not None or parts.password is not None:
        raise ConfigurationError(
            "--webhook must not carry a user name or password; the receiver "
            "authenticates requests by their signature (--webhook-secret-file)"
        )
    warnings = []
    if parts.scheme == "http" and not isLoopbackHost(host):
        warnings.append(
            f"--webhook {describeURL(url)} is plain http:// to another machine: "
            "notifications (file names) cross the network unencrypted; use "
            "https:// unless that network is trusted"
        )
    return url, warnings


def describeURL(url: str) -> str:
    """``url`` without its query and fragment, which may hold a secret: for logs."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


class _BodyStart(Protocol):
    """Keep the first bytes of an answer's body; the rest is discarded."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self.finished: Deferred[bytes] = Deferred(self._cancel)

    def _cancel(self, _: Deferred[bytes]) -> None:
        if self.transport is not None:
            self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if self._size < MAX_SHOWN_BODY:
            self._chunks.append(data[: MAX_SHOWN_BODY - self._size])
            self._size += len(self._chunks[-1])

    def connectionLost(self, reason: Failure) -> None:
        if not self.finished.called:
            # Reading the whole body lets the connection be reused; a body
            # cut short still says enough for the log.
            self.finished.callback(b"".join(self._chunks))


def _describeFailure(failure: Failure, host: str) -> str:
    """A few words for why an attempt got no answer."""
    reasons = list(getattr(failure.value, "reasons", None) or [failure])
    for reason in reasons:
        if reason.check(VerificationError):
            return f"TLS failed: the server's certificate does not name {host}"
        if reason.check(SSL.Error):
            text = str(reason.value)
            if "certificate verify failed" in text:
                return (
                    "TLS failed: the server's certificate is not signed by a trusted CA"
                )
            return "TLS failed: " + cleanServerText(text, 120)
    reason = reasons[0]
    if reason.check(ResponseDone, PotentialDataLoss):
        return "the connection closed before an answer"
    return cleanServerText(
        f"{type(reason.value).__name__}: {reason.getErrorMessage()}", 160
    )


class WebhookSender:
    """
    POSTs messages to ``url``, one request per :meth:`send`.

    :param secret: the key bytes (see
        :func:`~yadiskpush.webhooks.signing.readWebhookSecret`).
    :param reactor: for connections, the timeout and the timestamps
        (``reactor.seconds()``).
    :param timeout: seconds for one attempt, from connecting to the end of
        the answer.
    :param caFile: a PEM file whose CAs replace the system's.
    :param agent: an ``IAgent`` to use instead of one built here (tests).
    :raises ConfigurationError: for a URL :func:`checkWebhookURL` refuses
        or an unusable ``caFile``.
    """

    def __init__(
        self,
        url: str,
        secret: bytes,
        reactor: Any,
        timeout: float = 15.0,
        caFile: str | None = None,
        agent: Any = None,
    ) -> None:
        self.url, _ = checkWebhookURL(url)
        self._host = urlsplit(url).hostname or url
        self._secret = secret
        self._reactor = reactor
        self.timeout = timeout
        self._pool: QuietPool | None = None
        if agent is None:
            # One request at a time to one host: one kept-alive connection
            # saves a TLS handshake per push.
            self._pool = QuietPool(reactor, persistent=True)
            self._pool.maxPersistentPerHost = 1
            agent = Agent(
                reactor,
                contextFactory=VerifyingPolicy(loadTrustRoot(caFile)),
                connectTimeout=timeout,
                pool=self._pool,
            )
        self._http = HTTPClient(agent, data_to_body_producer=ImmediateBody)

    def __repr__(self) -> str:
        return f"<WebhookSender {describeURL(self.url)}>"

    def headersFor(self, msgId: str, body: bytes) -> dict[str, str]:
        """The headers of one attempt made now, signature included."""
        timestamp = int(self._reactor.seconds())
        return {
            "Content-Type": "application/json",
            "User-Agent": f"yadiskpush/{__version__}",
            "webhook-id": msgId,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self._secret, msgId, timestamp, body),
        }

    def send(self, msgId: str, body: bytes) -> Deferred[Answer]:
        """
        POST ``body`` as message ``msgId``, signed with this moment's
        timestamp.

        :returns: a Deferred firing with the :class:`Answer`; it never
            fails. Cancelling it stops the attempt (it then fails with
            ``CancelledError``).
        """
        headers = self.headersFor(msgId, body)

        async def exchange() -> Answer:
            response = await self._http.request(
                "POST",
                self.url,
                data=body,
                headers=headers,
                allow_redirects=False,
                unbuffered=True,
                reactor=self._reactor,
            )
            text = b""
            if response.length != 0:
                reader = _BodyStart()
                response.deliverBody(reader)
                text = await reader.finished
            return self._answer(response, text)

        d = Deferred.fromCoroutine(exchange())
        timedOut = cancelAfter(d, self.timeout, self._reactor)

        def failed(failure: Failure) -> Answer | Failure:
            if timedOut():
                return Answer(
                    Outcome.RETRY,
                    None,
                    None,
                    f"no answer within {self.timeout:g} s",
                )
            if failure.check(defer.CancelledError):
                return failure
            return Answer(
                Outcome.RETRY, None, None, _describeFailure(failure, self._host)
            )

        return d.addErrback(failed)

    def _answer(self, response: Any, body: bytes) -> Answer:
        status = int(response.code)
        outcome = classifyStatus(status)
        detail = f"HTTP {status}"
        if 300 <= status < 400:
            location = response.headers.getRawHeaders("location", [""])[0]
            detail += (
                f" redirecting to {cleanServerText(location, 120)!r}, which is not "
                "followed; fix --webhook"
            )
        retryAfter = None
        if outcome is Outcome.RETRY:
            raw = response.headers.getRawHeaders("retry-after")
            retryAfter = parseRetryAfter(
                raw[0] if raw else None, self._reactor.seconds()
            )
        text = cleanServerText(body.decode("utf-8", "replace"))
        if text and outcome is not Outcome.ACCEPTED:
            detail += f": {text}"
        return Answer(outcome, status, retryAfter, detail)

    def close(self) -> Deferred[None]:
        """Close the kept-alive connection. Never fails."""
        if self._pool is None:
            return defer.succeed(None)
        return self._pool.closeCachedConnections().addErrback(lambda _: None)
