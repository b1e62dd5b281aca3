"""
The level filter of yadiskpush's own log lines (``--log-level``).

A library should leave log policy to the application, but ``twistd`` prints
every event, debug ones included, and at 10,000 accounts the handshake steps
of each account would bury everything else. Every logger of this package is
a :class:`Logger` whose events pass one level filter before they reach
Twisted's global log publisher. By default the filter lets everything
through, as before; the twistd plugin sets it from ``--log-level`` (``info``
unless told otherwise), and an application may call :func:`setLogLevel`.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)
from twisted.logger import Logger as _TwistedLogger

_levels = LogLevelFilterPredicate(defaultLogLevel=LogLevel.debug)
_filtered = FilteringLogObserver(globalLogPublisher, [_levels])


#: The priority below which events are dropped before they are even built:
#: a filtered-out debug line per ping costs more than the ping's answer.
_PRIORITY = {level: n for n, level in enumerate(LogLevel.iterconstants())}
_least = [_PRIORITY[LogLevel.debug]]


def setLogLevel(level: str | LogLevel) -> None:
    """Log yadiskpush's events of ``level`` (a name such as ``"info"``) and up."""
    if isinstance(level, str):
        level = LogLevel.levelWithName(level.lower())
    _levels.setLogLevelForNamespace(None, level)  # type: ignore[arg-type]
    _least[0] = _PRIORITY[level]


class Logger(_TwistedLogger):
    """Twisted's ``Logger``, whose events pass the package's level filter."""

    def __init__(
        self, namespace: str | None = None, source: Any = None, observer: Any = None
    ) -> None:
        super().__init__(namespace, source, _filtered if observer is None else observer)

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: Any) -> None:
        if self.observer is _filtered and _PRIORITY[level] < _least[0]:
            return
        super().emit(level, format, **kwargs)
