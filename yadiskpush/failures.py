"""
The one place that says what a failure means.

Twisted reports failures in many shapes: a ``StreamError`` element, a
``StanzaError`` from bind, an OpenSSL error list, a service-identity
``VerificationError``, a bare ``ConnectionDone``. :func:`describeFailure`
and :func:`describeLoss` turn each shape into one
:class:`~yadiskpush.errors.YaDiskPushError` whose message a person reads.
:func:`decide` then says what the service does about it: give up, retry
(with which floor on the delay), follow a redirect, prefer the TLS port
next time. The single-account service and a service of many accounts
apply the same decisions.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import error as netError
from twisted.python.failure import Failure
from twisted.words.protocols.jabber import error as jabberError
from twisted.words.protocols.jabber import sasl, xmlstream

from yadiskpush.connection.attempt import STARTTLS, Attempt
from yadiskpush.errors import (
    AuthenticationFailed,
    CertificateError,
    ConfigurationError,
    ConnectionClosedDuringHandshake,
    ConnectionLostError,
    HandshakeFailed,
    HandshakeTimeout,
    StartTLSNotOffered,
    StartTLSRefused,
    StreamErrorReceived,
    YaDiskPushError,
)

# Minimum delays for stream errors where retrying at once cannot help.
MINIMUM_DELAY_BY_CONDITION = {
    # Another client holds our resource; coming straight back would kick it
    # off, and it would kick us off again.
    "conflict": 60.0,
    "policy-violation": 30.0,
    # The whole server is going down: its clients must not all come back
    # at the same instant (the jitter spreads them over the floor again).
    "system-shutdown": 5.0,
}

# After this many conflicts in a row, stop instead of fighting the other
# client for the resource forever.
MAX_CONSECUTIVE_CONFLICTS = 3


def describeSSLError(value: SSL.Error, verifyProblem: str | None = None) -> str:
    """Pick the readable reason out of OpenSSL's error list."""
    reasons = []
    entries = value.args[0] if value.args and isinstance(value.args[0], list) else []
    for entry in entries:
        if isinstance(entry, tuple) and len(entry) == 3:
            reasons.append(str(entry[2]))
    text = "; ".join(r for r in reasons if r) or str(value)
    if "certificate verify failed" in text:
        problem = (
            verifyProblem or "the server's certificate is not signed by a trusted CA"
        )
        return f"{problem} ({text})"
    return text


def describeFailure(
    reason: Failure, host: str, step: str, verifyProblem: str | None = None
) -> YaDiskPushError:
    """
    Map a failure seen while connecting to a user-facing error.

    :param reason: what Twisted handed us.
    :param host: the host dialled, named in TLS errors.
    :param step: the handshake step in progress, named in generic errors.
    :param verifyProblem: why OpenSSL refused the certificate chain, if it
        did (expired, not yet valid, unknown CA), in words.
    """
    value = reason.value
    if isinstance(value, YaDiskPushError):
        return value
    if isinstance(value, VerificationError):
        names = ", ".join(str(e) for e in value.errors) or str(value)
        return CertificateError(
            host, f"the certificate is not valid for {host!r} ({names})"
        )
    if isinstance(value, SSL.Error):
        return CertificateError(host, describeSSLError(value, verifyProblem))
    if isinstance(value, jabberError.StreamError):
        return StreamErrorReceived(value.condition, value.text)
    if isinstance(value, jabberError.StanzaError):
        return HandshakeFailed(step, value.condition)
    if isinstance(value, xmlstream.TLSFailed):
        return StartTLSRefused(host)
    if isinstance(value, sasl.SASLError):
        return HandshakeFailed("authentication", type(value).__name__)
    if isinstance(value, xmlstream.FeatureNotAdvertized):
        return HandshakeFailed(step, "the server did not offer it")
    if isinstance(value, netError.ConnectionDone | netError.ConnectionLost):
        return ConnectionClosedDuringHandshake(step)
    if isinstance(value, netError.TimeoutError):
        return YaDiskPushError(f"the connection timed out during {step}")
    return YaDiskPushError(f"{step} failed: {value}")


def describeLoss(reason: Failure) -> ConnectionLostError:
    """An open session ended without any error of its own: say how."""
    if reason.check(netError.ConnectionDone):
        detail = "the server closed the connection"
    elif reason.check(SSL.Error):
        # Not OpenSSL's list of tuples: its reasons, readable.
        detail = "TLS error: " + describeSSLError(reason.value)
    else:
        detail = str(reason.value) or type(reason.value).__name__
    return ConnectionLostError(detail)


class Action(Enum):
    """What the service does after a connection ended."""

    #: Connect again after a delay.
    RETRY = "retry"
    #: Connect to another host next (``see-other-host``), at once.
    REDIRECT = "redirect"
    #: Stop for good; only a new token or new settings can help.
    GIVE_UP = "give up"


@dataclass(frozen=True)
class Decision:
    """
    The meaning of one failure.

    :ivar action: what to do.
    :ivar error: the error to report (its message is the log line).
    :ivar floor: the shortest delay before the next attempt, in seconds.
    :ivar preferDirectTLS: start the next connection on the TLS port.
    :ivar redirectTo: for :attr:`Action.REDIRECT`, the ``(host, port)``.
    :ivar conflict: the failure was a resource ``conflict``.
    """

    action: Action
    error: YaDiskPushError
    floor: float = 0.0
    preferDirectTLS: bool = False
    redirectTo: tuple[str, int] | None = None
    conflict: bool = False


def decide(
    error: YaDiskPushError,
    attempt: Attempt | None,
    *,
    redirectTarget: str | None = None,
    consecutiveConflicts: int = 0,
    resource: str = "",
    domain: str = "",
    port: int = 5222,
) -> Decision:
    """
    Say what ``error`` means for the next connection.

    :param attempt: the attempt it ended (``None``: no port could be reached).
    :param redirectTarget: a ``see-other-host`` target received over TLS.
    :param consecutiveConflicts: resource conflicts in a row before this one.
    :param resource: the resource bound, named in the conflict message.
    :param domain: the XMPP domain, named in the host-unknown message.
    :param port: the port of a redirect target that names none.
    """
    if isinstance(error, AuthenticationFailed | ConfigurationError) and error.fatal:
        return Decision(Action.GIVE_UP, error)
    if isinstance(error, StartTLSNotOffered):
        # A middlebox may be stripping STARTTLS: the TLS port has no such step.
        return Decision(Action.RETRY, error, preferDirectTLS=True)
    if isinstance(error, HandshakeTimeout) and attempt is not None:
        # Stalled STARTTLS is a middlebox's trick too.
        return Decision(Action.RETRY, error, preferDirectTLS=attempt.mode == STARTTLS)
    if isinstance(error, StreamErrorReceived):
        return _decideStreamError(
            error, redirectTarget, consecutiveConflicts, resource, domain, port
        )
    return Decision(Action.RETRY, error)


def _decideStreamError(
    error: StreamErrorReceived,
    redirectTarget: str | None,
    consecutiveConflicts: int,
    resource: str,
    domain: str,
    port: int,
) -> Decision:
    condition = error.condition
    if not error.encrypted:
        # Anyone on the path can send a stream error before TLS: never
        # fatal, never a redirect; the TLS port is harder to tamper with.
        return Decision(Action.RETRY, error, preferDirectTLS=True)
    floor = MINIMUM_DELAY_BY_CONDITION.get(condition, 0.0)
    if condition == "conflict":
        if consecutiveConflicts + 1 >= MAX_CONSECUTIVE_CONFLICTS:
            return Decision(
                Action.GIVE_UP,
                ConfigurationError(
                    "another client keeps taking over the resource "
                    f"{resource!r} of this login; stopping so the two do not "
                    "fight over it (give each client its own --resource)"
                ),
                conflict=True,
            )
        return Decision(
            Action.RETRY,
            StreamErrorReceived(
                condition,
                "another client connected with the same resource "
                f"{resource!r}; reconnecting in a minute",
            ),
            floor=floor,
            conflict=True,
        )
    if condition == "see-other-host" and redirectTarget:
        host, targetPort = splitHostPort(redirectTarget, port)
        return Decision(
            Action.REDIRECT,
            StreamErrorReceived(
                condition, f"the server redirects to {host}:{targetPort}"
            ),
            redirectTo=(host, targetPort),
        )
    if condition in ("host-unknown", "host-gone"):
        return Decision(
            Action.GIVE_UP,
            ConfigurationError(
                f"the server does not serve the XMPP domain {domain!r}"
                f" ({condition}); check --domain"
            ),
        )
    if condition == "system-shutdown":
        return Decision(
            Action.RETRY,
            StreamErrorReceived(condition, "the server is shutting down; reconnecting"),
            floor=floor,
        )
    return Decision(Action.RETRY, error, floor=floor)


def splitHostPort(target: str, defaultPort: int) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port`` from a see-other-host."""
    if target.startswith("["):
        host, _, rest = target[1:].partition("]")
        port = rest.lstrip(":")
    elif target.count(":") == 1:
        host, _, port = target.partition(":")
    else:
        host, port = target, ""
    return host, int(port) if port.isdigit() else defaultPort
