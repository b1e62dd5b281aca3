"""
Turning whatever ended a connection attempt into one specific error.

Twisted reports failures in many shapes: a ``StreamError`` element, a
``StanzaError`` from bind, an OpenSSL error list, a service-identity
``VerificationError``, a bare ``ConnectionDone``. The user must see one
sentence that names the cause, so every shape is mapped here to a
:class:`~yadiskpush.errors.YaDiskPushError`.
"""

from __future__ import annotations

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import error as netError
from twisted.python.failure import Failure
from twisted.words.protocols.jabber import error as jabberError
from twisted.words.protocols.jabber import sasl, xmlstream

from yadiskpush.errors import (
    CertificateError,
    ConnectionClosedDuringHandshake,
    HandshakeFailed,
    StartTLSRefused,
    StreamErrorReceived,
    YaDiskPushError,
)


def describeSSLError(value: SSL.Error) -> str:
    """Pick the readable reason out of OpenSSL's error list."""
    reasons = []
    entries = value.args[0] if value.args and isinstance(value.args[0], list) else []
    for entry in entries:
        if isinstance(entry, tuple) and len(entry) == 3:
            reasons.append(str(entry[2]))
    text = "; ".join(r for r in reasons if r) or str(value)
    if "certificate verify failed" in text:
        return "the server's certificate is not signed by a trusted CA (" + text + ")"
    return text


def describeFailure(reason: Failure, host: str, step: str) -> YaDiskPushError:
    """
    Map a failure seen while connecting (or connected) to a user-facing error.

    :param reason: what Twisted handed us.
    :param host: the host dialled, named in TLS errors.
    :param step: the handshake step in progress, named in generic errors.
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
        return CertificateError(host, describeSSLError(value))
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
