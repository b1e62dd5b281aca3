"""
The frozen settings value shared by the twistd plugin and the Python API.

One value describes one account's connection; the plugin builds it from the
command line, an application builds it in code, and both hand it to
:class:`yadiskpush.PushService`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from yadiskpush.errors import ConfigurationError
from yadiskpush.secret import Secret

DEFAULT_HOST = "push.xmpp.yandex.ru"
DEFAULT_PORT = 5222
DEFAULT_TLS_PORT = 443
DEFAULT_DOMAIN = "ya.ru"
DEFAULT_MAX_STANZA_SIZE = 1024 * 1024


def defaultResource() -> str:
    """
    A resource unique to this process: two clients of the same login (a laptop
    and a server, or two accounts' services in one process) must not bind the
    same resource, or the server ends the older stream with ``conflict``.
    The same service keeps its resource across reconnects.
    """
    return "yadiskpush-" + secrets.token_hex(4)


@dataclass(frozen=True)
class Settings:
    """
    Everything needed to hold one account's push connection.

    :ivar login: Yandex login without a domain (``test``, not ``test@ya.ru``).
    :ivar token: the OAuth token, as a :class:`~yadiskpush.secret.Secret`.
    :ivar tokenFile: a file to read the token from again at every connection
        attempt (token rotation without a restart); ``token`` is used while
        the file cannot be read.
    :ivar host: the host dialled; the TLS certificate is checked against it.
    :ivar port: the STARTTLS port.
    :ivar tlsPort: the port where TLS starts with the first byte, tried when
        ``port`` cannot be reached; ``0`` disables the fallback.
    :ivar domain: the XMPP domain (the stream's ``to`` and the JID's host).
    :ivar resource: the resource to bind; the JID the server assigns is kept.
    :ivar caFile: PEM file of CA certificates to trust instead of the
        system trust store.
    :ivar compress: request XEP-0138 zlib compression when offered.
    :ivar connectTimeout: seconds to wait for a TCP connection to a port.
    :ivar handshakeTimeout: seconds from TCP connect to an open session.
    :ivar closeTimeout: seconds to wait for the server's ``</stream:stream>``
        on stop before dropping the connection.
    :ivar maxStanzaSize: bytes one stanza (or the stream header) may take.
    :ivar logTraffic: log the raw XML, with the SASL payload redacted.
    :ivar idleTimeout: seconds of silence from the server before the client
        pings it to check that the link is alive (checked every half of it:
        the ping goes out after 1 to 1.5 times this silence).
    :ivar pingTimeout: seconds to wait for that ping's answer before
        dropping the connection and reconnecting; also how long the server
        may leave the client's outgoing data unread.
    :ivar deliveryTimeout: seconds the sinks may take to take one push
        before it is refused (the server sends it again).
    """

    login: str
    token: Secret
    tokenFile: str | None = None
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    tlsPort: int = DEFAULT_TLS_PORT
    domain: str = DEFAULT_DOMAIN
    resource: str = field(default_factory=defaultResource)
    caFile: str | None = None
    compress: bool = False
    connectTimeout: float = 10.0
    handshakeTimeout: float = 30.0
    closeTimeout: float = 2.0
    maxStanzaSize: int = DEFAULT_MAX_STANZA_SIZE
    logTraffic: bool = False
    idleTimeout: float = 90.0
    pingTimeout: float = 20.0
    deliveryTimeout: float = 60.0

    def __post_init__(self) -> None:
        if (
            not self.login
            or "@" in self.login
            or any(c.isspace() or c == "\0" for c in self.login)
        ):
            raise ConfigurationError(
                f"invalid login {self.login!r}: give the Yandex login without "
                "a domain, e.g. --login test"
            )
        if not isinstance(self.token, Secret):
            raise ConfigurationError("the token must be a yadiskpush.Secret")
        for name in ("port", "tlsPort"):
            value = getattr(self, name)
            low = 1 if name == "port" else 0
            if not isinstance(value, int) or not low <= value <= 65535:
                raise ConfigurationError(f"invalid {name} {value!r}")
        if not self.host:
            raise ConfigurationError("the host must not be empty")
        if not self.domain:
            raise ConfigurationError("the XMPP domain must not be empty")
        if not self.resource or "/" in self.resource:
            raise ConfigurationError(f"invalid resource {self.resource!r}")
        if self.maxStanzaSize < 4096:
            raise ConfigurationError(
                "the stanza size limit (--max-stanza-size) must be at least 4096 bytes"
            )
