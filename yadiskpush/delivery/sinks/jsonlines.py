"""
Appends each notification as one JSON line to a file or to standard output.
"""

from __future__ import annotations

import json
from typing import BinaryIO

from twisted.internet import defer
from twisted.logger import Logger

from yadiskpush.delivery.sinks.base import DeliveryFailed
from yadiskpush.errors import ConfigurationError
from yadiskpush.notification import Notification

# json.dumps(ensure_ascii=False) leaves these as they are, and they are line
# breaks to str.splitlines() and to JavaScript: escape them so that any
# line-splitting reader sees exactly one line per notification.
_LINE_BREAKS = {"\u0085": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def encodeJSONLine(notification: Notification) -> bytes:
    """
    Encode ``notification.toJSON()`` as one UTF-8 JSON line ending in ``\\n``.

    Non-ASCII text is written as itself, not as ``\\u`` escapes, except the
    three characters other than ``\\n`` that some readers take for line
    breaks. Shared by :class:`JSONLinesSink` and the ``--exec`` stdin.
    """
    text = json.dumps(notification.toJSON(), ensure_ascii=False)
    for char, escape in _LINE_BREAKS.items():
        text = text.replace(char, escape)
    return text.encode("utf-8") + b"\n"


class JSONLinesSink:
    """
    Writes one JSON object per notification, one per line, to ``path``
    (``"-"``: the process's standard output).

    Each line is written whole and flushed to the operating system before
    ``deliver`` fires, so the client acknowledges only pushes that are in the
    file, and ``tail -f`` sees each one at once. The file is opened in append
    mode without a user-space buffer: every line is a single ``write`` on an
    ``O_APPEND`` descriptor. Lines are not ``fsync``-ed; a power loss can lose
    the last few.

    ``"-"`` means file descriptor 1 itself, not ``sys.stdout``: ``twistd``
    redirects ``sys.stdout`` into its log. Unless ``twistd`` logs to a file
    (``--logfile``), its log lines share that descriptor with the JSON lines.

    If a write fails (disk full, closed pipe), the error is logged and
    ``deliver`` fails with :class:`~yadiskpush.delivery.sinks.base.DeliveryFailed`; if
    part of the line had been written, the next line starts on a fresh line,
    so only the torn one is unreadable.

    :param path: file to append to, created if missing; ``"-"`` for stdout.
    :param stdout: the binary stream ``"-"`` writes to instead of descriptor
        1 (for tests); it is flushed but never closed.
    :raises ConfigurationError: if ``path`` cannot be opened for appending.
    """

    _log = Logger()

    def __init__(self, path: str, stdout: BinaryIO | None = None) -> None:
        self.path = path
        self._ownsStream = False
        self._tornLine = False
        self._closed = False
        if path == "-":
            self._name = "standard output"
            if stdout is not None:
                self._stream: BinaryIO = stdout
            else:
                self._stream = open(1, "wb", buffering=0, closefd=False)
        else:
            self._name = path
            try:
                self._stream = open(path, "ab", buffering=0)
            except OSError as e:
                raise ConfigurationError(
                    f"cannot open the JSON output file {path!r}: {e.strerror or e}"
                ) from None
            self._ownsStream = True

    def __repr__(self) -> str:
        return f"<JSONLinesSink {self._name}>"

    def deliver(self, notification: Notification) -> defer.Deferred[None]:
        """
        Write and flush the notification's line; fire when done, or fail
        with :class:`~yadiskpush.delivery.sinks.base.DeliveryFailed`.
        """
        if self._closed:
            return defer.fail(
                DeliveryFailed(notification.stanzaId, f"{self._name} is closed")
            )
        line = encodeJSONLine(notification)
        if self._tornLine:
            line = b"\n" + line
        try:
            self._writeAll(line)
            self._stream.flush()
        except (OSError, ValueError) as e:
            # ValueError: the stream was closed under us.
            reason = getattr(e, "strerror", None) or str(e)
            self._log.error(
                "Could not write push {id} to {output}: {reason}",
                id=notification.stanzaId,
                output=self._name,
                reason=reason,
            )
            return defer.fail(
                DeliveryFailed(
                    notification.stanzaId, f"writing to {self._name} failed: {reason}"
                )
            )
        self._tornLine = False
        return defer.succeed(None)

    def _writeAll(self, data: bytes) -> None:
        # An unbuffered file may take only part of the data per call.
        view = memoryview(data)
        while view:
            try:
                written = self._stream.write(view)
            except OSError:
                if len(view) < len(data):
                    self._tornLine = True
                raise
            if not written:
                raise OSError(f"{self._name} accepted no data")
            view = view[written:]

    def close(self) -> defer.Deferred[None]:
        """Flush, and close the file (standard output is left open)."""
        if not self._closed:
            self._closed = True
            try:
                if self._ownsStream:
                    self._stream.close()
                else:
                    self._stream.flush()
            except (OSError, ValueError) as e:
                self._log.error(
                    "Closing {output} failed: {reason}",
                    output=self._name,
                    reason=getattr(e, "strerror", None) or str(e),
                )
        return defer.succeed(None)
