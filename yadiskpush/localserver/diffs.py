"""
Realistic "what changed" pushes for the local server to send.

The vendor's pushes carry a ``<diff>`` of ``<op>`` elements inside the
``yandex:push:disk`` payload, one per change (see the protocol page of the
docs for what is known of them). The server itself only sends what it is
given (:meth:`~yadiskpush.localserver.LocalServer.push` takes the payload's
attributes and its inner XML), so this module builds both, as the vendor
writes them: keys with the ``/disk`` prefix, a ``fid``, ``resource_type``,
and for files ``size``, ``md5`` and ``sha256``. Identifiers and hashes are
derived from the path, so the same change always looks the same::

    ops = [created("/Docs/Отчёт.odt", size=1024), deleted("/Old", folder=True)]
    server.push(login, diffAttributes(1, 2), diffXml(ops))
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from twisted.words.xish import domish

from yadiskpush.notification import NS_DISK_PUSH, serializeElement

__all__ = [
    "SamplePush",
    "changed",
    "created",
    "deleted",
    "diffAttributes",
    "diffElement",
    "diffXml",
    "moved",
    "op",
    "parseChange",
    "published",
    "samplePushes",
    "unpublished",
]

#: The user id the vendor puts in ``uid``; any number will do here.
DEFAULT_UID = "4242"

#: The order the vendor's attributes come in, for a diff that reads like one.
_ORDER = ("type", "key", "from", "fid", "resource_type", "size", "md5", "sha256")


class SamplePush(NamedTuple):
    """One push: the payload's attributes and its inner XML."""

    attributes: dict[str, str]
    childrenXml: str


def diskKey(path: str, prefix: str = "/disk") -> str:
    """``/Docs/a.txt`` as the vendor keys it: ``/disk/Docs/a.txt``."""
    return prefix + "/" + path.lstrip("/") if path.strip("/") else prefix


def op(
    opType: str,
    path: str,
    *,
    folder: bool = False,
    size: int | None = None,
    fromPath: str | None = None,
    prefix: str = "/disk",
    **extra: str,
) -> dict[str, str]:
    """
    The attributes of one ``<op>``, as the vendor writes them.

    :param opType: ``new``, ``changed``, ``deleted``, ``moved``,
        ``published``, ``unpublished``, or anything else to try.
    :param path: the Disk path, with or without a leading ``/``.
    :param folder: a folder (``resource_type="dir"``, no size or hashes).
    :param size: a file's size in bytes; a size derived from the path if not
        given. Deleted files carry none.
    :param fromPath: where a moved resource was.
    :param prefix: ``/disk`` (the vendor's usual) or ``disk:``.
    :param extra: more attributes, added as they are.
    """
    key = diskKey(path, prefix)
    # A resource keeps its fid when it moves; its hashes follow its content.
    fid = hashlib.sha256(diskKey(fromPath or path).encode("utf-8")).hexdigest()
    attributes = {"type": opType, "key": key}
    if fromPath is not None:
        attributes["from"] = diskKey(fromPath, prefix)
    attributes["fid"] = fid
    attributes["resource_type"] = "dir" if folder else "file"
    if not folder and opType not in ("deleted", "moved"):
        if size is None:
            size = 1 + int(fid[:5], 16)
        content = f"{fid} {size}".encode()
        attributes["size"] = str(size)
        attributes["md5"] = hashlib.md5(content, usedforsecurity=False).hexdigest()
        attributes["sha256"] = hashlib.sha256(content).hexdigest()
    attributes.update(extra)
    return attributes


def created(path: str, **options: object) -> dict[str, str]:
    """A new file or folder (``type="new"``, as the vendor says)."""
    return op("new", path, **options)  # type: ignore[arg-type]


def changed(path: str, **options: object) -> dict[str, str]:
    """A file whose content changed."""
    return op("changed", path, **options)  # type: ignore[arg-type]


def deleted(path: str, **options: object) -> dict[str, str]:
    """A file or folder deleted (moved to the trash)."""
    return op("deleted", path, **options)  # type: ignore[arg-type]


def moved(fromPath: str, path: str, **options: object) -> dict[str, str]:
    """A file or folder moved or renamed from ``fromPath`` to ``path``."""
    return op("moved", path, fromPath=fromPath, **options)  # type: ignore[arg-type]


def published(path: str, **options: object) -> dict[str, str]:
    """A file or folder given a public link."""
    return op("published", path, **options)  # type: ignore[arg-type]


def unpublished(path: str, **options: object) -> dict[str, str]:
    """A public link removed."""
    return op("unpublished", path, **options)  # type: ignore[arg-type]


def diffAttributes(old: int, new: int, uid: str = DEFAULT_UID) -> dict[str, str]:
    """The payload's attributes for a diff from revision ``old`` to ``new``."""
    return {"t": "diff", "uid": uid, "old": str(old), "new": str(new)}


def diffElement(ops: Iterable[Mapping[str, str]]) -> domish.Element:
    """``<diff>`` holding one ``<op>`` per mapping, attributes in vendor order."""
    diff = domish.Element((NS_DISK_PUSH, "diff"))
    for attributes in ops:
        element = diff.addElement("op")
        for name in sorted(attributes, key=_rank):
            element[name] = str(attributes[name])
    return diff


def diffXml(ops: Iterable[Mapping[str, str]]) -> str:
    """
    :func:`diffElement` as the XML :meth:`LocalServer.push
    <yadiskpush.localserver.LocalServer.push>` takes for ``childrenXml``
    (inside the payload, so without a namespace declaration of its own).
    """
    diff = diffElement(ops)
    # Written as a child of the payload: it inherits the payload's namespace.
    diff.defaultUri = diff.uri = None
    for child in diff.elements():
        child.defaultUri = child.uri = None
    return serializeElement(diff)


def _rank(name: str) -> tuple[int, str]:
    return (_ORDER.index(name) if name in _ORDER else len(_ORDER), name)


def parseChange(text: str) -> dict[str, str]:
    """
    One change written on a command line: ``TYPE:PATH``, a folder as
    ``TYPE:PATH/``, a move as ``moved:FROM->TO``.

    ``new:/Docs/a.txt``, ``deleted:/Old/``, ``moved:/Old name.txt->/New
    name.txt``.

    :raises ValueError: with one sentence naming the form, if ``text`` is not
        one.
    """
    opType, separator, path = text.partition(":")
    if not separator or not opType or not path:
        raise ValueError(
            f"{text!r} is not a change: write TYPE:PATH, e.g. new:/Docs/a.txt "
            "or moved:/Old.txt->/New.txt"
        )
    fromPath = None
    if "->" in path:
        fromPath, _, path = path.partition("->")
    folder = path.endswith("/") and path.strip("/") != ""
    return op(opType, path.rstrip("/") or "/", folder=folder, fromPath=fromPath)


def samplePushes(firstRevision: int = 1, uid: str = DEFAULT_UID) -> list[SamplePush]:
    """
    A short day on a Disk, one push per step: a folder and a file created
    (Cyrillic and spaces in their names); the file changed and a photo
    renamed; a folder and a file deleted; then photos created, a folder
    shared and unshared. Revisions count up from ``firstRevision`` (the
    first push goes from ``firstRevision - 1`` to it).
    """
    steps = [
        [
            created("/Документы", folder=True),
            created("/Документы/Отчёт за ноябрь.odt", size=48213),
        ],
        [
            changed("/Документы/Отчёт за ноябрь.odt", size=51877),
            moved("/Photos/2026-11-24 12-00-00.jpg", "/Photos/Море на закате.jpg"),
        ],
        [deleted("/Old drafts", folder=True), deleted("/notes.txt")],
        [
            created("/Photos/2026-11-25 09-30-00.jpg", size=3481920),
            created("/Photos/2026-11-25 09-30-05.jpg", size=3502117),
        ],
        [published("/Photos", folder=True)],
        [unpublished("/Photos", folder=True)],
    ]
    return [
        SamplePush(
            diffAttributes(firstRevision + i - 1, firstRevision + i, uid),
            diffXml(ops),
        )
        for i, ops in enumerate(steps)
    ]
