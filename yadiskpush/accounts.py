"""
The accounts file of ``--accounts``: one ``LOGIN:TOKEN`` per line.

Blank lines and lines starting with ``#`` are ignored. The file holds
credentials, so it is refused when its group or others may read it, as ssh
refuses a private key. A bad line is reported by its number and what is
wrong with it; the token itself never appears in a message.

:func:`readAccounts` parses the file; :func:`compareAccounts` says what a
reload changes, so that unchanged accounts are not touched.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass

from yadiskpush.errors import ConfigurationError
from yadiskpush.secret import Secret


class AccountsFileError(ConfigurationError):
    """The accounts file cannot be used; the message says where and why."""


def _invalidLogin(login: str) -> str | None:
    """Why ``login`` is not a Yandex login without a domain, or ``None``."""
    if not login:
        return "the login is empty"
    if "@" in login:
        return "give the login without a domain (test, not test@ya.ru)"
    if any(c.isspace() or c in "\0/" for c in login):
        return "the login has a space, a slash or a control character"
    return None


def parseAccounts(text: str, path: str = "the accounts file") -> dict[str, Secret]:
    """
    Parse the text of an accounts file.

    :returns: login -> token, in the file's order.
    :raises AccountsFileError: naming the first bad line by its number.
    """
    accounts: dict[str, Secret] = {}
    firstSeen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue

        def bad(problem: str, number: int = number) -> AccountsFileError:
            return AccountsFileError(f"{path}, line {number}: {problem}")

        login, colon, token = line.partition(":")
        login, token = login.strip(), token.strip()
        if not colon:
            raise bad("expected LOGIN:TOKEN")
        problem = _invalidLogin(login)
        if problem is not None:
            raise bad(problem)
        if not token:
            raise bad(f"no token after {login}:")
        if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in token):
            raise bad(f"the token of {login} has a space or a control character")
        if login in accounts:
            raise bad(f"{login} is already on line {firstSeen[login]}")
        accounts[login] = Secret(token)
        firstSeen[login] = number
    return accounts


def readAccounts(path: str) -> dict[str, Secret]:
    """
    Read and check an accounts file.

    :returns: login -> token, in the file's order.
    :raises AccountsFileError: if the file cannot be read, is readable by
        group or others, is not UTF-8, or has a bad line.
    """
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise AccountsFileError(f"{path} is not a regular file")
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise AccountsFileError(
                    f"{path} holds tokens but group or others may read it "
                    f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
                )
            data = f.read()
    except OSError as e:
        raise AccountsFileError(
            f"cannot read the accounts file {path}: {e.strerror or e}"
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise AccountsFileError(f"{path}, line {line}: not UTF-8 text") from None
    return parseAccounts(text, path)


@dataclass(frozen=True)
class AccountsChange:
    """What a reload changes: logins added, removed, with a new token, kept."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    tokensChanged: tuple[str, ...] = ()
    unchanged: int = 0

    def __str__(self) -> str:
        return (
            f"{len(self.added):,} added, {len(self.removed):,} removed, "
            f"{len(self.tokensChanged):,} tokens changed, "
            f"{self.unchanged:,} unchanged"
        )


def compareAccounts(
    old: Mapping[str, Secret], new: Mapping[str, Secret]
) -> AccountsChange:
    """What changes when the accounts ``old`` become ``new``."""
    added = tuple(login for login in new if login not in old)
    removed = tuple(login for login in old if login not in new)
    changed = tuple(login for login in new if login in old and new[login] != old[login])
    unchanged = len(new) - len(added) - len(changed)
    return AccountsChange(added, removed, changed, unchanged)
