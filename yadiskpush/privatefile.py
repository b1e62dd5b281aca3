"""
Writing a file that holds a secret (a token, a private key) so that no
reader ever sees half of it and no other user ever can: the one way the
package does it, for the token file and the local server's kept keys.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def writePrivateFile(path: str | Path, data: bytes, mode: int = 0o600) -> None:
    """
    Replace ``path`` with ``data``, atomically.

    A temporary file is created in the same directory with exactly ``mode``
    (never wider, whatever the umask; never through a symbolic link),
    written, fsync'd and renamed over ``path``; then the directory is
    fsync'd, so that the rename survives a crash.

    :raises OSError: when a step fails; no temporary file is left behind.
    """
    directory, name = os.path.split(os.path.abspath(path))
    temporary = os.path.join(directory, f".{name}.{secrets.token_hex(8)}.tmp")
    try:
        descriptor = os.open(
            temporary,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
            mode,
        )
        try:
            # The umask can only narrow the mode; make it exactly ``mode``.
            os.fchmod(descriptor, mode)
            view = memoryview(data)
            while view:
                written = os.write(descriptor, view)
                view = view[written:]
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, path)
    except OSError:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    _fsyncDirectory(directory)


def _fsyncDirectory(directory: str) -> None:
    """Make a rename durable; a filesystem that cannot fsync a directory is
    left as it is (the file itself is already synced)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
