"""
The token file: what ``yadiskpush token`` writes and ``--token-file`` reads.

Two formats are accepted. The JSON one keeps everything needed to use the
token and to refresh it later without asking the user again::

    {"access_token": "...", "refresh_token": "...", "expires_at": 1790000000.0,
     "login": "alice", "client_id": "...", "client_secret": "...",
     "oauth_url": "https://oauth.yandex.ru"}

Only ``access_token`` is required. The plain format of earlier releases (the
token on the first line) still works, so existing files keep working; such a
file cannot be refreshed.

Writing is atomic (a 0600 temporary file in the same directory, fsync'd and
renamed over the old one) so that a crash or a full disk in the middle of a
refresh never leaves a half-written file, and the token is never readable by
other users, not even for an instant.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from typing import Any

from yadiskpush.errors import ConfigurationError
from yadiskpush.privatefile import writePrivateFile
from yadiskpush.secret import Secret

#: Larger files are not token files; reading stops there.
MAX_TOKEN_FILE_SIZE = 64 * 1024

# The file's keys in the order they are written, mapped to whether they hold
# a secret.
_STRING_KEYS = ("login", "client_id", "oauth_url")
_SECRET_KEYS = ("access_token", "refresh_token", "client_secret")


@dataclass(frozen=True)
class TokenFile:
    """
    The content of a token file.

    The secrets are :class:`~yadiskpush.secret.Secret` instances, so the
    dataclass's ``repr`` never shows them.

    :ivar accessToken: the OAuth token sent to the XMPP server.
    :ivar refreshToken: exchanged for a new access token; ``None`` in a
        plain-token file.
    :ivar expiresAt: when the access token expires, in seconds since the
        epoch, or ``None`` when unknown.
    :ivar login: the Yandex login the token belongs to, when known.
    :ivar clientId: the OAuth application that issued the token.
    :ivar clientSecret: that application's secret, needed to refresh.
    :ivar oauthUrl: the OAuth server to refresh at.
    """

    accessToken: Secret
    refreshToken: Secret | None = None
    expiresAt: float | None = None
    login: str | None = None
    clientId: str | None = None
    clientSecret: Secret | None = None
    oauthUrl: str | None = None

    def canRefresh(self) -> bool:
        """
        Whether the file holds all a refresh needs: the refresh token, the
        client id and secret and the OAuth server's URL.
        """
        return (
            self.refreshToken is not None
            and bool(self.clientId)
            and self.clientSecret is not None
            and bool(self.oauthUrl)
        )

    def withGrant(
        self,
        accessToken: Secret,
        refreshToken: Secret | None,
        expiresIn: float | None,
        now: float,
    ) -> TokenFile:
        """
        Return a copy holding a newly issued token, keeping the other fields.

        A server that issues no new refresh token leaves the old one in use;
        one that gives no lifetime leaves the expiry unknown.

        :param now: the current time (seconds since the epoch), from the
            caller's clock so that tests control it.
        """
        return TokenFile(
            accessToken=accessToken,
            refreshToken=refreshToken
            if refreshToken is not None
            else self.refreshToken,
            expiresAt=None if expiresIn is None else now + expiresIn,
            login=self.login,
            clientId=self.clientId,
            clientSecret=self.clientSecret,
            oauthUrl=self.oauthUrl,
        )

    def toJSON(self) -> dict[str, Any]:
        """
        The file's JSON object, secrets revealed: for writing the file only.
        """
        return {
            "access_token": self.accessToken.reveal(),
            "refresh_token": _reveal(self.refreshToken),
            "expires_at": self.expiresAt,
            "login": self.login,
            "client_id": self.clientId,
            "client_secret": _reveal(self.clientSecret),
            "oauth_url": self.oauthUrl,
        }


def _reveal(secret: Secret | None) -> str | None:
    return None if secret is None else secret.reveal()


def readTokenFile(path: str) -> tuple[TokenFile, list[str]]:
    """
    Read a token file in either format.

    A file whose first non-blank character is ``{`` is JSON; any other is
    the plain format, whose first line is the token.

    :return: the content and a list of warnings for the user (a file other
        users can read, with the ``chmod`` that fixes it).
    :raises ConfigurationError: naming the file and what is wrong with it
        (unreadable, empty, bad JSON, no ``access_token``, a value of the
        wrong type); the message never contains a token.
    """
    warnings: list[str] = []
    try:
        with open(path, encoding="utf-8") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            content = handle.read(MAX_TOKEN_FILE_SIZE)
    except OSError as e:
        raise ConfigurationError(
            f"cannot read the token file {path}: {e.strerror or e}"
        ) from None
    except UnicodeDecodeError:
        raise ConfigurationError(f"the token file {path} is not UTF-8 text") from None
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        warnings.append(
            f"the token file {path} can be read by other users; run: chmod 600 {path}"
        )
    stripped = content.strip()
    if not stripped:
        raise ConfigurationError(f"the token file {path} is empty")
    if stripped.startswith("{"):
        return _parseJSON(path, stripped), warnings
    firstLine = stripped.splitlines()[0].strip()
    return TokenFile(accessToken=_secret(path, "token", firstLine)), warnings


def _parseJSON(path: str, text: str) -> TokenFile:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        # e.msg and the position only: the message must not quote the content.
        raise ConfigurationError(
            f"the token file {path} is not valid JSON ({e.msg} at line {e.lineno}"
            f" column {e.colno})"
        ) from None
    except RecursionError:
        raise ConfigurationError(
            f"the token file {path} is not valid JSON (nested too deeply)"
        ) from None
    if not isinstance(data, dict):
        raise ConfigurationError(f"the token file {path} is not a JSON object")
    for key in _SECRET_KEYS + _STRING_KEYS:
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigurationError(f'the token file {path} has a non-string "{key}"')
    if not data.get("access_token"):
        raise ConfigurationError(
            f'the token file {path} has no "access_token"; run yadiskpush token'
        )
    expiresAt = data.get("expires_at")
    if expiresAt is not None and (
        isinstance(expiresAt, bool) or not isinstance(expiresAt, (int, float))
    ):
        raise ConfigurationError(
            f'the token file {path} has an "expires_at" that is not a number '
            "(seconds since the epoch)"
        )

    def optionalSecret(key: str) -> Secret | None:
        value = data.get(key)
        return _secret(path, key, value) if value else None

    return TokenFile(
        accessToken=_secret(path, "access_token", data["access_token"]),
        refreshToken=optionalSecret("refresh_token"),
        expiresAt=None if expiresAt is None else float(expiresAt),
        login=data.get("login") or None,
        clientId=data.get("client_id") or None,
        clientSecret=optionalSecret("client_secret"),
        oauthUrl=data.get("oauth_url") or None,
    )


def _secret(path: str, what: str, value: str) -> Secret:
    """Wrap ``value``, naming the file and the key if it cannot be a token."""
    try:
        return Secret(value)
    except ConfigurationError:
        raise ConfigurationError(
            f"the {what} in the token file {path} contains a NUL or line break"
        ) from None


def writeTokenFile(path: str, tokenFile: TokenFile) -> None:
    """
    Write ``tokenFile`` to ``path`` as JSON, atomically and readable by its
    owner only.

    A temporary file is created in the same directory with mode 0600 (never
    wider, whatever the umask), written, fsync'd and renamed over ``path``;
    then the directory is fsync'd so the rename survives a crash. Missing
    parent directories are created with mode 0700.

    :raises ConfigurationError: naming the file when any step fails; no
        temporary file is left behind.
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        _makeDirectories(directory)
    except OSError as e:
        raise ConfigurationError(
            f"cannot create the directory {directory} for the token file: "
            f"{e.strerror or e}"
        ) from None
    data = (json.dumps(tokenFile.toJSON(), indent=2) + "\n").encode("utf-8")
    try:
        writePrivateFile(path, data)
    except OSError as e:
        raise ConfigurationError(
            f"cannot write the token file {path}: {e.strerror or e}"
        ) from None


def _makeDirectories(directory: str) -> None:
    """Create ``directory`` and missing parents with 0700 (makedirs would not)."""
    if os.path.isdir(directory):
        return
    parent = os.path.dirname(directory)
    if parent and parent != directory:
        _makeDirectories(parent)
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
