"""
The facts of one connection attempt, carried by the attempt itself.

The first release read the dialled host and its TLS options from the
endpoint after ``connect()`` returned, so each connection was verified
against what the *previous* attempt meant: after a ``see-other-host``, the
next connection to ``--host`` accepted a certificate naming only the
redirect target. An :class:`Attempt` is made by the dialer before it dials
and is handed, whole, to the stream and the authenticator of that
connection; nothing reads these facts from anywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

from yadiskpush.connection.tls import VerifyingConnector
from yadiskpush.secret import Secret

STARTTLS = "STARTTLS"
DIRECT_TLS = "direct TLS"


@dataclass(frozen=True, eq=False)
class Attempt:
    """
    One try at one port.

    :ivar host: the host dialled; the certificate must name it.
    :ivar port: the port dialled.
    :ivar mode: :data:`STARTTLS` or :data:`DIRECT_TLS`.
    :ivar tls: makes and verifies this attempt's TLS connection.
    :ivar token: the OAuth token read for this attempt (token files are
        re-read at every attempt, so a rotated token is used at once).
    :ivar redirected: this attempt follows a ``see-other-host``.
    """

    host: str
    port: int
    mode: str
    tls: VerifyingConnector
    token: Secret
    redirected: bool = False

    @property
    def tlsFromFirstByte(self) -> bool:
        return self.mode == DIRECT_TLS

    def __str__(self) -> str:
        return f"{self.host}:{self.port} ({self.mode})"
