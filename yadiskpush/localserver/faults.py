"""
The faults the local server can inject into one connection.

Fault-injection tests need the server to misbehave at a precise point of the
handshake, the way real servers and middleboxes do: drop the connection,
stop answering, end the stream with an error, or send bytes no client should
accept. A :class:`Faults` value names each misbehaviour and the *step* at
which it replaces the server's normal answer. The server applies one
``Faults`` per connection: ``LocalServer.faults`` for every connection, or
the next value queued with ``LocalServer.faultNextConnection()``.

Faults later in a session (after it opened) are easier to trigger from the
test itself, on the live session: ``session.sendStreamError(...)``,
``session.sendRaw(...)``, ``session.stall()``, ``session.drop()``.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The steps a fault can be attached to, in handshake order. Each names the
#: moment the server has just *received* something from the client and would
#: answer it; the fault happens instead of that answer.
STEPS = (
    # TCP (or TLS, on the TLS port) connected; nothing received yet.
    "connect",
    # The client's first stream header arrived.
    "header",
    # <starttls/> arrived (instead of <proceed/>).
    "starttls",
    # The client's stream header over the new TLS layer arrived (STARTTLS port).
    "tls",
    # <compress/> arrived (instead of <compressed/>).
    "compress",
    # <auth/> arrived over TLS (instead of <success/> or <failure/>).
    "auth",
    # The client's stream header after SASL success arrived.
    "authed",
    # The resource bind IQ arrived.
    "bind",
    # The session IQ arrived.
    "session",
    # The session result was just sent (before the version query): the
    # session is open.
    "opened",
    # The yandex:push:disk subscription IQ arrived.
    "subscribe",
)

#: Steps whose request is an IQ, so ``iqErrorAt`` can answer it with an error.
IQ_STEPS = ("bind", "session", "subscribe")


@dataclass(frozen=True)
class Faults:
    """
    How one connection misbehaves. The default value is a faithful server.

    At most one action happens at a step; if several name the same step the
    first in this order wins: ``rawAt``, ``streamErrorAt``, ``closeAt``,
    ``abortAt``, ``stallAt``, ``iqErrorAt``.

    :ivar offerStartTLS: list ``<starttls/>`` on the STARTTLS port (a
        middlebox stripping it is ``False``); ``<starttls/>`` is then refused.
    :ivar offerCompression: list XEP-0138 zlib among the features.
    :ivar closeAt: at this step, close TCP without ``</stream:stream>``.
    :ivar abortAt: at this step, reset the connection (RST).
    :ivar stallAt: from this step on, answer nothing and send nothing
        (no pings either); the connection stays open.
    :ivar streamErrorAt: at this step, send ``<stream:error/>`` with
        ``streamError`` (and ``streamErrorText``) and close.
    :ivar streamError: the condition: ``conflict``, ``see-other-host``,
        ``system-shutdown``, ``policy-violation``, ...
    :ivar seeOtherHost: for ``see-other-host``: the content of the condition
        element, ``host`` or ``host:port``.
    :ivar rawAt: at this step, send ``raw`` verbatim instead of the answer
        (garbage, a DOCTYPE with entities, an oversized stanza) and then go
        on reading; the client is expected to close.
    :ivar iqErrorAt: one of :data:`IQ_STEPS`: answer that IQ with a stanza
        error of condition ``iqError`` instead of a result.
    :ivar closeAfterStanzas: when this many top-level elements (stanzas,
        ``<starttls/>``, ``<auth/>``...) have been received on the
        connection, close it without answering the last one.
    """

    offerStartTLS: bool = True
    offerCompression: bool = True
    closeAt: str | None = None
    abortAt: str | None = None
    stallAt: str | None = None
    streamErrorAt: str | None = None
    streamError: str = "system-shutdown"
    streamErrorText: str | None = None
    seeOtherHost: str | None = None
    rawAt: str | None = None
    raw: bytes = b""
    iqErrorAt: str | None = None
    iqError: str = "internal-server-error"
    closeAfterStanzas: int | None = None

    def __post_init__(self) -> None:
        for name in ("closeAt", "abortAt", "stallAt", "streamErrorAt", "rawAt"):
            step = getattr(self, name)
            if step is not None and step not in STEPS:
                raise ValueError(f"{name}={step!r} is not one of {STEPS}")
        if self.iqErrorAt is not None and self.iqErrorAt not in IQ_STEPS:
            raise ValueError(f"iqErrorAt={self.iqErrorAt!r} is not one of {IQ_STEPS}")
        if self.streamError == "see-other-host" and self.streamErrorAt:
            if not self.seeOtherHost:
                raise ValueError("see-other-host needs seeOtherHost")
