"""
Where yadiskpush keeps what must outlive the process (the ``--exec``
journal): the ``--state-dir`` option, else the conventions users already
know, systemd's ``$STATE_DIRECTORY`` and the XDG base directories.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from yadiskpush.errors import ConfigurationError

#: The directory name under ``$XDG_STATE_HOME`` or ``~/.local/state``.
APPLICATION_NAME = "yadiskpush"


def resolveStateDir(option: str | None, environ: Mapping[str, str]) -> Path:
    """
    The state directory to use; nothing is created or checked here.

    In order: ``option`` (``--state-dir``) if given; else the first entry
    of ``$STATE_DIRECTORY``, which systemd sets for ``StateDirectory=``
    (a colon-separated list when the unit names several); else
    ``$XDG_STATE_HOME/yadiskpush``; else ``~/.local/state/yadiskpush``,
    the XDG default. Relative values of the variables are ignored, as the
    XDG specification asks.

    :param option: the ``--state-dir`` value, or ``None``.
    :param environ: the process environment (``HOME`` is read from it for
        ``~``, falling back to the password database).
    """
    if option:
        return Path(option).expanduser()
    systemd = environ.get("STATE_DIRECTORY", "")
    first = systemd.split(":")[0]
    if first and os.path.isabs(first):
        return Path(first)
    xdg = environ.get("XDG_STATE_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / APPLICATION_NAME
    home = environ.get("HOME") or os.path.expanduser("~")
    return Path(home) / ".local" / "state" / APPLICATION_NAME


def ensureStateDir(path: Path) -> Path:
    """
    Create ``path`` (and its missing parents) with mode 0700, and check
    that a file can be created in it, so that a bad directory is one clear
    error at startup rather than a refused push later.

    An existing directory keeps its mode: systemd, or the user, chose it.

    :returns: ``path``.
    :raises ConfigurationError: naming ``path``, if it cannot be created,
        is not a directory, or cannot be written.
    """
    try:
        # Parents too: Path.mkdir(parents=True) would give the missing
        # parents the umask's mode, not 0700.
        missing = [p for p in (path, *path.parents) if not p.exists()]
        for directory in reversed(missing):
            directory.mkdir(mode=0o700, exist_ok=True)
        if not path.is_dir():
            raise FileExistsError(path)
    except FileExistsError:
        raise ConfigurationError(
            f"the state directory {path} exists but is not a directory "
            "(give another one with --state-dir)"
        ) from None
    except OSError as e:
        raise ConfigurationError(
            f"cannot create the state directory {path}: {e.strerror or e} "
            "(give another one with --state-dir)"
        ) from None
    try:
        with tempfile.TemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as e:
        raise ConfigurationError(
            f"cannot write in the state directory {path}: {e.strerror or e} "
            "(give another one with --state-dir)"
        ) from None
    return path
