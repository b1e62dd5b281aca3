"""
The exceptions yadiskpush raises, each carrying the sentence a user reads.

Every failure a user can meet while connecting ends in one of these classes, so
that the service can log one specific line instead of a traceback, and can tell
from the class alone whether trying again could help (``fatal``).
"""

from __future__ import annotations


class YaDiskPushError(Exception):
    """
    Base class: an expected failure with a message meant for a person.

    :ivar fatal: ``True`` when reconnecting cannot help (the service stops
        instead of retrying, e.g. a rejected token).
    """

    fatal = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigurationError(YaDiskPushError):
    """A setting is missing or unusable (token file unreadable, bad port)."""

    fatal = True


class ConnectFailed(YaDiskPushError):
    """Neither the STARTTLS port nor the direct-TLS port could be reached."""


class StartTLSNotOffered(YaDiskPushError):
    """
    The server did not offer STARTTLS, so the client will not authenticate.

    Credentials are never sent over an unencrypted stream; this may be a
    middlebox stripping STARTTLS, so the next attempt prefers the TLS port.
    """

    def __init__(self, host: str, port: int) -> None:
        super().__init__(
            f"{host}:{port} did not offer STARTTLS; refusing to send the token "
            "over an unencrypted connection"
        )
        self.host = host
        self.port = port


class StartTLSRefused(YaDiskPushError):
    """The server answered ``<starttls/>`` with ``<failure/>``."""

    def __init__(self, host: str) -> None:
        super().__init__(f"{host} refused to start TLS")


class CertificateError(YaDiskPushError):
    """
    The TLS handshake failed: untrusted CA, wrong host name, expired
    certificate, or another TLS-level error.
    """

    def __init__(self, host: str, detail: str) -> None:
        super().__init__(
            f"TLS with {host} failed: {detail} (check --host and --ca-file; "
            "the certificate must be valid for the host name dialled)"
        )
        self.host = host
        self.detail = detail


class InsecureAuthenticationRefused(YaDiskPushError):
    """A guard: authentication was about to happen on an unencrypted stream."""

    def __init__(self) -> None:
        super().__init__("refusing to authenticate: the connection is not encrypted")


#: SASL conditions (RFC 6120 §6.5) for which trying the same token again
#: cannot help: the service stops. Every other condition
#: (``temporary-auth-failure``, ``aborted``, …) is retried with backoff.
FATAL_SASL_CONDITIONS = frozenset(
    {"not-authorized", "credentials-expired", "account-disabled", "invalid-mechanism"}
)


class AuthenticationFailed(YaDiskPushError):
    """
    The server did not accept the login and OAuth token (SASL ``<failure/>``).

    Fatal (:attr:`fatal`) for the conditions in :data:`FATAL_SASL_CONDITIONS`,
    and when the server gives no condition: the same token would be rejected
    again, and retrying a rejected token in a loop can get an account locked.
    Other conditions are the server's own trouble and are retried.
    """

    def __init__(self, login: str, condition: str | None, text: str = "") -> None:
        detail = condition or "no condition given"
        if text:
            detail = f"{detail}: {text}"
        self.login = login
        self.condition = condition
        self.fatal = condition is None or condition in FATAL_SASL_CONDITIONS
        if self.fatal:
            message = (
                f"the server rejected the OAuth token for login {login!r} ({detail});"
                " get a new OAuth token and check --login"
            )
        else:
            message = (
                f"the server could not check the OAuth token for login {login!r} "
                f"right now ({detail}); trying again later"
            )
        super().__init__(message)


class StreamErrorReceived(YaDiskPushError):
    """The server ended the stream with a ``<stream:error/>``."""

    def __init__(
        self, condition: str, text: str | None = None, encrypted: bool = True
    ) -> None:
        message = f"the server closed the stream with error {condition!r}"
        if text:
            message += f": {text}"
        if not encrypted:
            message += " (before TLS, so anyone on the path could have sent it)"
        super().__init__(message)
        self.condition = condition
        self.text = text
        #: Whether it arrived over TLS; one that did not is never trusted.
        self.encrypted = encrypted


class ProtocolViolation(YaDiskPushError):
    """
    The server sent something this client cannot accept: malformed or
    restricted XML, a stanza over the size limit, invalid UTF-8.

    :ivar condition: the RFC 6120 stream error condition the client sent back.
    """

    def __init__(self, condition: str, detail: str) -> None:
        super().__init__(f"the server sent invalid data ({condition}): {detail}")
        self.condition = condition
        self.detail = detail


class HandshakeFailed(YaDiskPushError):
    """A step of the connection sequence (bind, session, ...) was refused."""

    def __init__(self, step: str, condition: str | None) -> None:
        super().__init__(
            f"the server refused {step} ({condition or 'no condition given'})"
        )
        self.step = step
        self.condition = condition


class HandshakeTimeout(YaDiskPushError):
    """The server stopped answering before the session was open."""

    def __init__(self, seconds: float, step: str) -> None:
        super().__init__(
            f"the server did not complete the handshake within {seconds:g} s "
            f"(stalled at: {step})"
        )
        self.step = step


class ConnectionClosedDuringHandshake(YaDiskPushError):
    """The connection was closed before the session was open."""

    def __init__(self, step: str) -> None:
        super().__init__(f"the server closed the connection during {step}")
        self.step = step


class SubscriptionFailed(YaDiskPushError):
    """The server answered the ``yandex:push:disk`` subscription with an error."""

    def __init__(self, condition: str | None) -> None:
        super().__init__(
            "the server refused the Disk push subscription "
            f"({condition or 'no condition given'}); no pushes will arrive"
        )
        self.condition = condition


class ConnectionStalled(YaDiskPushError):
    """The server stopped answering: the keepalive ping got no reply."""

    def __init__(self, idle: float) -> None:
        super().__init__(
            f"the server sent nothing for {idle:g} s, not even a ping answer; "
            "the connection is dead"
        )


class ConnectionLostError(YaDiskPushError):
    """An open session ended without a stream error (FIN, RST, TLS close)."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"the connection was lost ({detail})")
        self.detail = detail


class ServerStoppedReading(YaDiskPushError):
    """Our outgoing data stayed unsent: the server no longer reads it."""

    def __init__(self, seconds: float) -> None:
        super().__init__(
            f"the server has not read what the client sent for {seconds:g} s; "
            "the connection is stuck"
        )


class ServiceStopped(YaDiskPushError):
    """The service was stopped before what was waited for happened."""

    def __init__(self) -> None:
        super().__init__("the push service was stopped")
