"""
Where Redis is: the ``redis://`` / ``rediss://`` URL of ``--redis``, checked.

A password in the URL would be on the command line, which every user of the
machine can read (``ps``), so a URL with one is refused: the password comes
from a file instead (:func:`readPasswordFile`). The user name of a Redis 6
ACL may stay in the URL.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from yadiskpush.errors import ConfigurationError
from yadiskpush.secret import Secret

DEFAULT_PORT = 6379


@dataclass(frozen=True)
class RedisAddress:
    """
    A Redis server and how to talk to it.

    :ivar host: the host dialled, and the name its certificate must carry.
    :ivar port: its TCP port.
    :ivar tls: ``True`` for ``rediss://``.
    :ivar username: the ACL user for ``AUTH user password``, or ``None``.
    :ivar db: the database selected with ``SELECT`` (0 by default).
    """

    host: str
    port: int = DEFAULT_PORT
    tls: bool = False
    username: str | None = None
    db: int = 0

    def __str__(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = f"{self.username}@" if self.username else ""
        return f"{scheme}://{user}{host}:{self.port}/{self.db}"


def parseRedisURL(url: str) -> RedisAddress:
    """
    Read ``redis://[user@]host[:port][/db]`` (or ``rediss://`` for TLS).

    :raises ConfigurationError: naming ``--redis``, for another scheme, a
        missing host, a bad port or database, options after ``?``, or a
        password (which would be readable in the process list).
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigurationError(
            "--redis: the port must be a number from 1 to 65535"
        ) from None
    if parts.scheme not in ("redis", "rediss"):
        raise ConfigurationError(
            "--redis must be a redis:// or rediss:// URL, such as "
            "redis://localhost:6379/0"
        )
    if parts.password is not None:
        # The password itself goes into no message.
        raise ConfigurationError(
            "--redis: the URL holds a password, which any user of this machine "
            "could read in the process list; remove it from the URL and put it "
            "in a file given with --redis-password-file"
        )
    if not parts.hostname:
        raise ConfigurationError("--redis: the URL names no host")
    if parts.query or parts.fragment:
        raise ConfigurationError(
            "--redis: options after '?' or '#' in the URL are not supported"
        )
    if port == 0:
        raise ConfigurationError("--redis: the port must be a number from 1 to 65535")
    path = parts.path.strip("/")
    if path:
        if not path.isdigit() or not path.isascii():
            raise ConfigurationError(
                f"--redis: the database after the host must be a number, not {path!r}"
            )
        db = int(path)
    else:
        db = 0
    username = unquote(parts.username) if parts.username else None
    return RedisAddress(
        host=parts.hostname,
        port=port or DEFAULT_PORT,
        tls=parts.scheme == "rediss",
        username=username,
        db=db,
    )


def readPasswordFile(path: str) -> Secret:
    """
    The Redis password: the first line of ``path``, without its line break.

    :raises ConfigurationError: naming ``--redis-password-file``, if the file
        cannot be read or its first line is empty.
    """
    try:
        with open(path, encoding="utf-8") as f:
            line = f.readline()
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise ConfigurationError(
            f"--redis-password-file: cannot read {path}: {reason}"
        ) from None
    password = line.rstrip("\r\n")
    if not password or "\0" in password:
        raise ConfigurationError(
            f"--redis-password-file: the first line of {path} holds no password"
        )
    return Secret(password)


__all__ = ["DEFAULT_PORT", "RedisAddress", "parseRedisURL", "readPasswordFile"]
