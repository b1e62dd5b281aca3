"""
The immutable value a Disk push becomes.

The vendor does not document the payload of a push, and may change it, so a
:class:`Notification` keeps everything: every attribute of the
``yandex:push:disk`` element, every child element, and the raw XML of the
whole stanza. Nothing is parsed into a guessed schema and nothing is dropped.

A push may nest elements as deep as the stanza size cap allows (a megabyte
of ``<a>`` is 300,000 levels), while Python's recursion limit is about a
thousand frames. So nothing here recurses once per level of the XML: the
child tree is built with an explicit stack, structured only down to
:data:`MAX_STRUCTURED_DEPTH` (deeper parts are kept as XML text), and XML is
serialized by :func:`serializeElement`, a loop that writes exactly what
domish's recursive ``toXml()`` writes.

What changed on the Disk is read from the kept children, not instead of
them: :attr:`Notification.changes` lists the ``<op>`` elements of the
payload as :class:`Change` values, parsed only when first asked for, and
tolerant of any shape (see :func:`changesFromChildren`).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType
from typing import Any

from twisted.words.xish import domish

NS_DISK_PUSH = "yandex:push:disk"

#: How many levels below the payload element are kept as :class:`PushChild`
#: values. An element at this depth keeps its whole subtree as XML text in
#: :attr:`PushChild.xml`, with no ``children`` and ``truncated`` set. Deep
#: enough for any payload the vendor has sent; shallow enough that every
#: structure built from a notification (``toJSON()``, ``json.dumps``,
#: ``repr``) stays far below the recursion limit.
MAX_STRUCTURED_DEPTH = 32

# domish's own: the prefixes every serializer starts with.
_GLOBAL_PREFIXES = {"http://www.w3.org/XML/1998/namespace": "xml"}


class _Close:
    """Marks the end of an element's children on the serializer's stack."""

    __slots__ = ("tag",)

    def __init__(self, tag: str) -> None:
        self.tag = tag


def serializeElement(element: domish.Element) -> str:
    """
    Serialize ``element`` and everything below it, without recursion.

    Stanzas without namespace prefixes or namespaced attributes (every push
    the vendor sends) take a shorter loop that needs no prefix bookkeeping;
    anything else is written by the general one. Both give the same text.

    The result is character for character what ``element.toXml()`` gives
    (same prefixes, namespace declarations, escaping and self-closing tags):
    this is domish's ``_ListSerializer.serialize`` with its recursion turned
    into a work stack, so an element nested any number of levels deep is
    serialized in time and memory proportional to its size. Each namespace
    prefix's scope is counted instead of searched for, which keeps deeply
    nested prefixed elements linear too.

    :param element: a domish element; its children may be elements, text,
        or ``domish.SerializedXML``.
    :returns: the XML text.
    """
    simple = _serializeUnprefixed(element)
    if simple is not None:
        return simple
    return _serializeAny(element)


def _serializeUnprefixed(element: domish.Element) -> str | None:
    """
    :func:`serializeElement` for a tree that declares no prefixes, has no
    namespaced attribute and puts every element in its default namespace;
    ``None`` as soon as it meets anything else.

    What domish writes for such a tree is only ``<name``, an ``xmlns`` where
    the default namespace changes, the attributes, and the children (the
    prefix branches of :func:`_serializeAny` are never taken there). A
    stanza whose children have no children of their own (a push) needs no
    work stack at all.
    """
    start = _startTag(element, "")
    if start is None:
        return None
    tag, defaultUri = start
    children = element.children
    if not children:
        return tag + "/>"
    parts = [tag, ">"]
    for child in children:
        if isinstance(child, str):
            parts.append(
                child
                if isinstance(child, domish.SerializedXML)
                else domish.escapeToXml(child)
            )
        elif child.children:
            return _serializeNested(element)
        else:
            start = _startTag(child, defaultUri)
            if start is None:
                return None
            parts.append(start[0])
            parts.append("/>")
    parts.append(f"</{element.name}>")
    return "".join(parts)


def _serializeNested(element: domish.Element) -> str | None:
    """:func:`_serializeUnprefixed` for any depth, with a work stack."""
    out: list[str] = []
    write = out.append
    # Items: (node, default namespace of its parent), or an end tag to write.
    work: list[tuple[Any, str] | str] = [(element, "")]
    pop = work.pop
    while work:
        item = pop()
        if type(item) is str:
            write(item)
            continue
        node, currentDefaultUri = item  # type: ignore[misc]
        if isinstance(node, str):
            write(
                node
                if isinstance(node, domish.SerializedXML)
                else domish.escapeToXml(node)
            )
            continue
        start = _startTag(node, currentDefaultUri)
        if start is None:
            return None
        tag, defaultUri = start
        write(tag)
        children = node.children
        if children:
            write(">")
            work.append(f"</{node.name}>")
            work.extend([(child, defaultUri) for child in reversed(children)])
        else:
            write("/>")
    return "".join(out)


def _startTag(node: domish.Element, parentDefaultUri: str) -> tuple[str, str] | None:
    """
    The start tag of ``node`` without its closing ``>`` or ``/>``, and its
    default namespace; ``None`` if it needs a prefix (then only
    :func:`_serializeAny` can write it).
    """
    if node.localPrefixes:
        return None
    defaultUri = node.defaultUri
    if defaultUri is None:
        defaultUri = parentDefaultUri
    uri = node.uri
    if uri is None:
        uri = defaultUri
    if uri != defaultUri or uri in _GLOBAL_PREFIXES:
        return None
    if defaultUri != parentDefaultUri:
        tag = f"<{node.name} xmlns='{defaultUri}'"
    else:
        tag = f"<{node.name}"
    attributes = node.attributes
    if not attributes:
        return tag, defaultUri
    try:
        # Concatenation raises TypeError on a namespaced (tuple) name or a
        # value that is not text: those are left to _serializeAny.
        text = "".join([" " + k + "='" + v + "'" for k, v in attributes.items()])
    except TypeError:
        return None
    # Looking once at all the values costs less than escaping each; every
    # quote beyond the two around each value is in a value.
    if (
        "&" in text
        or "<" in text
        or ">" in text
        or '"' in text
        or text.count("'") != 2 * len(attributes)
    ):
        text = "".join(
            [f" {k}='{domish.escapeToXml(v, 1)}'" for k, v in attributes.items()]
        )
    return tag + text, defaultUri


def _serializeAny(element: domish.Element) -> str:
    """:func:`serializeElement` for any tree, prefixes and all."""
    out: list[str] = []
    write = out.append
    prefixes: dict[str, str] = dict(_GLOBAL_PREFIXES)
    # One frame of declared prefixes per open element, as domish keeps, and
    # how many open frames declare each prefix (domish searches the frames).
    frames: list[list[str]] = [list(_GLOBAL_PREFIXES.values())]
    inScope: dict[str, int] = {p: 1 for p in _GLOBAL_PREFIXES.values()}
    counter = 0

    def getPrefix(uri: str) -> str:
        nonlocal counter
        if uri not in prefixes:
            prefixes[uri] = f"xn{counter}"
            counter += 1
        return prefixes[uri]

    def declare(prefix: str) -> None:
        frames[-1].append(prefix)
        inScope[prefix] = inScope.get(prefix, 0) + 1

    def closeFrame() -> None:
        for prefix in frames.pop():
            inScope[prefix] -= 1

    work: list[tuple[Any, str] | _Close] = [(element, "")]
    while work:
        item = work.pop()
        if isinstance(item, _Close):
            if item.tag:
                write(item.tag)
            closeFrame()
            continue
        node, currentDefaultUri = item
        if isinstance(node, domish.SerializedXML):
            write(node)
            continue
        if isinstance(node, str):
            write(domish.escapeToXml(node))
            continue

        name = node.name
        uri = node.uri
        defaultUri = node.defaultUri
        for p, u in node.localPrefixes.items():
            prefixes[u] = p
        frames.append([])
        for p in node.localPrefixes:
            declare(p)
        if defaultUri is None:
            defaultUri = currentDefaultUri
        if uri is None:
            uri = defaultUri

        prefix = None
        prefixInScope = False
        if uri != defaultUri or uri in prefixes:
            prefix = getPrefix(uri)
            prefixInScope = inScope.get(prefix, 0) > 0

        if not prefix:
            write(f"<{name}")
        else:
            write(f"<{prefix}:{name}")
            if not prefixInScope:
                write(f" xmlns:{prefix}='{uri}'")
                declare(prefix)
                prefixInScope = True

        if defaultUri != currentDefaultUri and (
            uri != defaultUri or not prefix or not prefixInScope
        ):
            write(f" xmlns='{defaultUri}'")

        for p, u in node.localPrefixes.items():
            write(f" xmlns:{p}='{u}'")

        for k, v in node.attributes.items():
            if isinstance(k, tuple):
                attributeUri, attributeName = k
                attributePrefix = getPrefix(attributeUri)
                if not inScope.get(attributePrefix, 0):
                    write(f" xmlns:{attributePrefix}='{attributeUri}'")
                    declare(attributePrefix)
                write(
                    f" {attributePrefix}:{attributeName}='{domish.escapeToXml(v, 1)}'"
                )
            else:
                write(f" {k}='{domish.escapeToXml(v, 1)}'")

        if node.children:
            write(">")
            work.append(_Close(f"</{prefix}:{name}>" if prefix else f"</{name}>"))
            work.extend((child, defaultUri) for child in reversed(node.children))
        else:
            write("/>")
            closeFrame()
    return "".join(out)


class _SerializedOnFirstUse:
    """
    A dataclass field holding XML text, given either as text or as the
    element itself; an element is serialized (without recursion) the first
    time the field is read, and only the text is kept from then on.

    Set through the dataclass's ``__init__`` (Python's descriptor-typed
    fields), so the constructor still takes plain text, ``replace()``,
    equality and ``repr`` see text, and the frozen instance stays
    unassignable from outside. Reading it from two threads at once may
    serialize twice; both get the same text.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        #: Where the instance dict keeps the source (text or element).
        self.key = f"_{name}Source"

    def __get__(self, instance: object, owner: type | None = None) -> str:
        if instance is None:
            # No class-level default: the field is required.
            raise AttributeError(self.key)
        source = instance.__dict__[self.key]
        if not isinstance(source, str):
            source = serializeElement(source)
            instance.__dict__[self.key] = source
        return source

    def __set__(self, instance: object, value: str | domish.Element) -> None:
        # Only the dataclass __init__ gets here: frozen instances refuse
        # assignment before a descriptor is consulted.
        instance.__dict__[self.key] = value


def _attributeName(key: str | tuple[str, str]) -> str:
    """Render a domish attribute key; namespaced ones in Clark notation."""
    if isinstance(key, tuple):
        uri, name = key
        return f"{{{uri}}}{name}" if uri else name
    return key


def _freezeAttributes(element: domish.Element) -> Mapping[str, str]:
    attributes = element.attributes
    try:
        # What the parser gives: plain names and text values, copied as they
        # are (both joins raise TypeError on anything else).
        "".join(attributes)
        "".join(attributes.values())
    except TypeError:
        return MappingProxyType(
            {_attributeName(k): str(v) for k, v in attributes.items()}
        )
    return MappingProxyType(dict(attributes))


def _ownText(element: domish.Element) -> str:
    return "".join(c for c in element.children if isinstance(c, str))


@dataclass(frozen=True)
class PushChild:
    """
    One child element of a push payload, kept whole.

    Built without recursion, however deep the element nests. Elements more
    than :data:`MAX_STRUCTURED_DEPTH` levels below the payload are not
    turned into values: the child at that depth has no ``children`` and
    ``truncated`` set, and its whole subtree is in :attr:`xml` (and in the
    notification's ``rawXml``), so nothing is lost.

    :ivar name: local name.
    :ivar uri: namespace URI.
    :ivar attributes: attribute name to value (namespaced ones as
        ``{uri}name``).
    :ivar text: the element's own character data, stripped of nothing.
    :ivar children: nested elements, in order (empty if ``truncated``).
    :ivar xml: the element serialized, with everything below it. Given an
        element instead of text, it is serialized the first time it is read.
    :ivar truncated: whether child elements below this one were left out of
        ``children`` because of the depth limit; they are in ``xml``.
    """

    name: str
    uri: str | None
    attributes: Mapping[str, str]
    text: str
    children: tuple[PushChild, ...]
    xml: str = _SerializedOnFirstUse()  # type: ignore[assignment]
    truncated: bool = False

    @classmethod
    def fromElement(
        cls, element: domish.Element, depth: int = MAX_STRUCTURED_DEPTH
    ) -> PushChild:
        """
        Build the value of ``element`` and of its descendants down to
        ``depth`` levels (``element`` itself is level 1), iteratively.

        The element is kept until :attr:`xml` is first read; it must not be
        changed in the meantime.

        :param depth: how many levels to structure, at least 1.
        """
        # Each frame: the element, its level, its finished children, and the
        # child elements still to visit (None once below the depth limit).
        Frame = tuple[domish.Element, int, list[PushChild], Iterator[Any] | None]

        def frame(e: domish.Element, level: int) -> Frame:
            pending = e.elements() if level < depth else None
            return (e, level, [], pending)

        stack: list[Frame] = [frame(element, 1)]
        while True:
            current, level, built, pending = stack[-1]
            if pending is not None:
                nextElement = next(pending, None)
                if nextElement is not None:
                    stack.append(frame(nextElement, level + 1))
                    continue
            stack.pop()
            value = cls(
                name=current.name,
                uri=current.uri,
                attributes=_freezeAttributes(current),
                text=_ownText(current),
                children=tuple(built),
                xml=current,
                truncated=pending is None
                and next(current.elements(), None) is not None,
            )
            if not stack:
                return value
            stack[-1][2].append(value)

    def toJSON(self) -> dict[str, Any]:
        """
        A JSON-serializable dict: ``name``, ``uri``, ``attributes``, ``text``
        and ``children``; a truncated child also has ``"truncated": true``
        and its subtree as ``xml``. Nests at most as deep as the value
        (:data:`MAX_STRUCTURED_DEPTH` for a received push).
        """
        data: dict[str, Any] = {
            "name": self.name,
            "uri": self.uri,
            "attributes": dict(self.attributes),
            "text": self.text,
            "children": [c.toJSON() for c in self.children],
        }
        if self.truncated:
            data["truncated"] = True
            data["xml"] = self.xml
        return data


#: The element that describes one change, in any namespace.
OP_ELEMENT = "op"

#: Attributes that may name where a moved resource came from, in the order
#: they are tried (the vendor's name is not documented; ``from`` is what
#: clients have seen).
_FROM_ATTRIBUTES = ("from", "from_key", "old_key", "src")

#: A storage area other than the Disk itself (``trash:/``, ``app:/``): such
#: keys are kept as sent, since removing the area would make them look like
#: Disk paths.
_AREA = re.compile(r"[A-Za-z][A-Za-z0-9_-]*:/")


def diskPath(key: str | None) -> str:
    """
    The path of a change's ``key`` as a person reads it: ``disk:`` or
    ``/disk`` removed, starting with ``/``; ``""`` for no key.

    ``disk:/Docs/a.txt``, ``/disk/Docs/a.txt`` and ``Docs/a.txt`` all give
    ``/Docs/a.txt``; ``disk:``, ``disk:/`` and ``/disk`` give ``/``. A key of
    another area (``trash:/Old``) is kept as sent, and ``/diskette`` is not
    the Disk.
    """
    if not key:
        return ""
    if key.startswith("disk:"):
        key = key[5:]
    elif key.startswith("/disk") and (len(key) == 5 or key[5] == "/"):
        key = key[5:]
    elif _AREA.match(key):
        return key
    if not key.startswith("/"):
        key = "/" + key
    return key


def _size(value: str | None) -> int | None:
    """A byte count written as plain decimal digits; ``None`` otherwise."""
    if value is None:
        return None
    value = value.strip()
    if not (value.isascii() and value.isdigit()):
        return None
    try:
        return int(value)
    except ValueError:
        # More digits than Python converts (about 4,300): not a size.
        return None


@dataclass(frozen=True)
class Change:
    """
    One change the Disk reported: an ``<op>`` element of a push.

    The vendor documents neither the element nor its attributes, so only what
    every client needs is picked out, and :attr:`attributes` keeps all of
    them as sent (the raw ``key`` included); an attribute that is missing or
    unreadable gives an empty or ``None`` field, never an error.

    :ivar type: the ``type`` attribute as sent (``new``, ``changed``,
        ``deleted``, ``moved``, ``published``, ``unpublished``, or whatever
        else the server says); ``""`` if absent.
    :ivar path: the ``key`` without its ``disk:`` or ``/disk`` prefix,
        starting with ``/`` (see :func:`diskPath`); ``""`` if absent.
    :ivar fromPath: for a move, where it was (``from``, same form); ``None``
        if the op does not say.
    :ivar fid: the resource's ``fid``, or ``None``.
    :ivar size: ``size`` in bytes, or ``None`` if absent or not a
        non-negative decimal number.
    :ivar resourceType: ``resource_type`` (``file`` or ``dir``), or ``None``.
    :ivar attributes: every attribute of the op, name to value, as sent.
    """

    type: str
    path: str
    fromPath: str | None
    fid: str | None
    size: int | None
    resourceType: str | None
    attributes: Mapping[str, str]

    @classmethod
    def fromChild(cls, child: PushChild) -> Change:
        """The change an ``<op>`` describes; never raises."""
        attributes = child.attributes
        get = attributes.get
        fromKey = None
        for name in _FROM_ATTRIBUTES:
            fromKey = get(name)
            if fromKey is not None:
                break
        return cls(
            type=get("type") or "",
            path=diskPath(get("key")),
            fromPath=None if fromKey is None else diskPath(fromKey),
            fid=get("fid"),
            size=_size(get("size")),
            resourceType=get("resource_type"),
            attributes=attributes,
        )

    def toJSON(self) -> dict[str, Any]:
        """
        A JSON-serializable dict with the same keys for every change:
        ``type``, ``path``, ``from``, ``fid``, ``size``, ``resource_type``
        and ``attributes`` (absent ones are ``null``).
        """
        return {
            "type": self.type,
            "path": self.path,
            "from": self.fromPath,
            "fid": self.fid,
            "size": self.size,
            "resource_type": self.resourceType,
            "attributes": dict(self.attributes),
        }

    def describe(self, limit: int = 120) -> str:
        """
        A few words for a log line: ``created /Docs/a.txt``, ``moved /Old
        -> /New``. Control characters are left out and each path is cut to
        about ``limit`` characters.
        """
        verb = _VERBS.get(self.type.lower()) or _printable(self.type)[:30] or "changed"
        path = _shorten(_printable(self.path), limit) or "(no path)"
        if self.fromPath is not None:
            return f"{verb} {_shorten(_printable(self.fromPath), limit)} -> {path}"
        return f"{verb} {path}"


#: Words for the op types the server is known to send (and their likely
#: spellings); any other type is shown as sent.
_VERBS = {
    "new": "created",
    "create": "created",
    "created": "created",
    "add": "created",
    "added": "created",
    "changed": "changed",
    "change": "changed",
    "modified": "changed",
    "update": "changed",
    "updated": "changed",
    "deleted": "deleted",
    "delete": "deleted",
    "removed": "deleted",
    "moved": "moved",
    "move": "moved",
    "renamed": "moved",
    "published": "published",
    "unpublished": "unpublished",
}


def _printable(text: str) -> str:
    """``text`` without control characters (line breaks become spaces)."""
    if text.isprintable():
        return text
    return "".join(
        c
        if c.isprintable()
        else " "
        if unicodedata.category(c)[0] == "Z" or c in "\t\n\r\v\f"
        else ""
        for c in text
    )


def _shorten(text: str, limit: int) -> str:
    """``text`` cut in the middle to at most ``limit`` characters."""
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2
    return text[:head] + "\u2026" + text[len(text) - (limit - 1 - head) :]


def changesFromChildren(children: Iterable[PushChild]) -> tuple[Change, ...]:
    """
    The changes among a payload's children, in document order.

    Every element named ``op`` (in any namespace) is one change, wherever it
    is: directly under the payload, in a ``<diff>``, in nested diffs or in
    any other element. Elements inside an ``op`` are not changes of their
    own, other elements are not changes at all, and ops deeper than
    :data:`MAX_STRUCTURED_DEPTH` (kept only as XML) are not read. No op at
    all gives an empty tuple; nothing here raises.
    """
    found: list[Change] = []
    # Children to visit, last first; walked without recursion.
    stack = list(children)
    stack.reverse()
    while stack:
        child = stack.pop()
        if not isinstance(child, PushChild):
            continue
        if child.name == OP_ELEMENT:
            found.append(Change.fromChild(child))
        elif child.children:
            stack.extend(reversed(child.children))
    return tuple(found)


#: How many changes :meth:`Notification.summary` names; the rest are counted.
SUMMARY_CHANGES = 5

#: How long a path may be in :meth:`Notification.summary` before it is cut.
SUMMARY_PATH_LENGTH = 120


@dataclass(frozen=True)
class Notification:
    """
    One Disk push, as received.

    Immutable; equal notifications have equal fields, ``rawXml`` included.
    Building one from a stanza of any depth does not recurse (see
    :class:`PushChild` for what is structured and what is kept as XML).

    :ivar stanzaId: the IQ's ``id`` (the server's, acknowledged with it).
    :ivar sender: the IQ's ``from`` (empty if the server left it out).
    :ivar recipient: the IQ's ``to``.
    :ivar receivedAt: when it was received, seconds since the epoch.
    :ivar element: name of the payload element (``query`` today).
    :ivar attributes: every attribute of the payload element.
    :ivar children: every child element of the payload, in order.
    :ivar rawXml: the whole IQ stanza serialized. :meth:`fromStanza` keeps
        the stanza and serializes it the first time this is read (a sink that
        only logs a summary never pays for it); the text is kept from then on.
    :ivar login: the account the push belongs to (empty if whoever built the
        notification did not say). Last, with a default, so that positional
        construction written before it existed still works.

    What changed is :attr:`changes`, read from ``children`` (a property, not
    a field: it cannot disagree with them, and a push nobody asks about
    costs nothing more).
    """

    stanzaId: str
    sender: str
    recipient: str
    receivedAt: float
    element: str
    attributes: Mapping[str, str]
    children: tuple[PushChild, ...]
    rawXml: str = _SerializedOnFirstUse()  # type: ignore[assignment]
    login: str = ""

    @classmethod
    def fromStanza(
        cls, iq: domish.Element, receivedAt: float, login: str = ""
    ) -> Notification:
        """
        Build a notification from an IQ set carrying a ``yandex:push:disk``
        payload, whatever its depth, for the account ``login``.

        The stanza is kept, not copied, until ``rawXml`` is first read: it
        must not be changed afterwards (nothing in this package changes a
        received stanza).

        :raises ValueError: if the stanza has no such payload.
        """
        for payload in iq.children:
            if not isinstance(payload, str) and payload.uri == NS_DISK_PUSH:
                break
        else:
            raise ValueError("the stanza carries no yandex:push:disk payload")
        attributes = iq.attributes
        fields = {
            "stanzaId": attributes.get("id", ""),
            "sender": attributes.get("from", ""),
            "recipient": attributes.get("to", ""),
            "receivedAt": receivedAt,
            "element": payload.name,
            "attributes": _freezeAttributes(payload),
            "children": tuple([PushChild.fromElement(c) for c in payload.elements()])
            if payload.children
            else (),
            "login": login,
        }
        if cls is not Notification:
            return cls(rawXml=iq, **fields)
        # A frozen dataclass's __init__ sets each field through
        # object.__setattr__, which costs more than all the rest of this
        # method; the instance dict gets the same values at once (the
        # descriptor of rawXml keeps its source under its own key).
        notification = object.__new__(cls)
        fields[_RAW_XML.key] = iq
        notification.__dict__.update(fields)
        return notification

    @cached_property
    def changes(self) -> tuple[Change, ...]:
        """
        What changed, one :class:`Change` per ``<op>`` of the payload, in
        order; empty if the push says nothing about it (no ``<diff>``, or a
        shape not known yet: ``children`` and ``rawXml`` still have it all).

        Parsed from ``children`` the first time it is read, then kept; see
        :func:`changesFromChildren` for the shapes it accepts.
        """
        children = self.children
        if not children:
            return ()
        return changesFromChildren(children)

    def toJSON(self) -> dict[str, Any]:
        """
        A JSON-serializable dict with every field (used by the sinks),
        ``login`` first: a consumer of many accounts dedupes by login and id.
        ``changes`` comes right after ``attributes``: most readers need only
        those.
        """
        return {
            "login": self.login,
            "id": self.stanzaId,
            "from": self.sender,
            "to": self.recipient,
            "received_at": self.receivedAt,
            "element": self.element,
            "attributes": dict(self.attributes),
            "changes": [c.toJSON() for c in self.changes],
            "children": [c.toJSON() for c in self.children],
            "raw_xml": self.rawXml,
        }

    def summary(self) -> str:
        """
        A readable one-line form for logs: what changed (at most
        :data:`SUMMARY_CHANGES` changes, each path cut to
        :data:`SUMMARY_PATH_LENGTH` characters), or, for a push that does
        not say, its attributes and first children.
        """
        changes = self.changes
        if changes:
            count = len(changes)
            shown = ", ".join(
                c.describe(SUMMARY_PATH_LENGTH) for c in changes[:SUMMARY_CHANGES]
            )
            more = (
                f" (+{count - SUMMARY_CHANGES} more)" if count > SUMMARY_CHANGES else ""
            )
            noun = "change" if count == 1 else "changes"
            return f"Disk changed: id={self.stanzaId!r} {count} {noun}: {shown}{more}"
        shown = " ".join(f"{k}={v!r}" for k, v in sorted(self.attributes.items()))
        parts = [f"Disk changed: id={self.stanzaId!r}", shown]
        for child in self.children[:3]:
            details = " ".join(f"{k}={v!r}" for k, v in child.attributes.items())
            parts.append(f"[{child.name} {details}]".replace(" ]", "]"))
        if len(self.children) > 3:
            parts.append(f"(+{len(self.children) - 3} more)")
        return " ".join(p for p in parts if p)


# The rawXml descriptor, whose key fromStanza fills directly.
_RAW_XML: _SerializedOnFirstUse = Notification.__dict__["rawXml"]
