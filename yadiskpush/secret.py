"""
The OAuth token, held so that it cannot leak by accident.

A :class:`Secret` shows ``<redacted>`` in ``repr``, ``str`` and formatting, and
refuses to be pickled, so a token passed through logs, tracebacks (``locals``)
or exception messages never appears in clear. Only :meth:`Secret.reveal` gives
the value, and only the SASL mechanism calls it.
"""

from __future__ import annotations

import os
from typing import NoReturn

from yadiskpush.errors import ConfigurationError

TOKEN_ENVIRONMENT_VARIABLE = "YADISKPUSH_TOKEN"


class Secret:
    """A string that is never shown: use :meth:`reveal` where it must be sent."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not value:
            raise ConfigurationError("the OAuth token is empty")
        if any(c in value for c in "\0\r\n"):
            raise ConfigurationError(
                "the OAuth token contains a NUL or line break; check the token file"
            )
        self._value = value

    def reveal(self) -> str:
        """Return the secret itself; call only where it is put on the wire."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('<redacted>')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return self._value == other._value

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Secret cannot be pickled")

    @classmethod
    def fromFile(cls, path: str) -> tuple[Secret, list[str]]:
        """
        Read the access token from a token file: the JSON file that
        ``yadiskpush token`` writes, or the first line of a plain one.

        :return: the secret and a list of warnings for the user (a file that
            other users can read).
        :raises ConfigurationError: if the file cannot be read, is empty, or
            is JSON without a usable ``access_token``.
        """
        # Imported here: the token file module builds on this one.
        from yadiskpush.oauth.tokenfile import readTokenFile

        tokenFile, warnings = readTokenFile(path)
        return tokenFile.accessToken, warnings

    @classmethod
    def fromEnvironment(cls, environ: dict[str, str] | None = None) -> Secret | None:
        """Return the token from ``YADISKPUSH_TOKEN``, or ``None`` if unset."""
        value = (
            (os.environ if environ is None else environ)
            .get(TOKEN_ENVIRONMENT_VARIABLE, "")
            .strip()
        )
        return cls(value) if value else None
