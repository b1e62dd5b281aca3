"""
The immutable value a Disk push becomes.

The vendor does not document the payload of a push, and may change it, so a
:class:`Notification` keeps everything: every attribute of the
``yandex:push:disk`` element, every child element, and the raw XML of the
whole stanza. Nothing is parsed into a guessed schema and nothing is dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from twisted.words.xish import domish

NS_DISK_PUSH = "yandex:push:disk"


def _attributeName(key: str | tuple[str, str]) -> str:
    """Render a domish attribute key; namespaced ones in Clark notation."""
    if isinstance(key, tuple):
        uri, name = key
        return f"{{{uri}}}{name}" if uri else name
    return key


def _freezeAttributes(element: domish.Element) -> Mapping[str, str]:
    return MappingProxyType(
        {_attributeName(k): str(v) for k, v in element.attributes.items()}
    )


@dataclass(frozen=True)
class PushChild:
    """
    One child element of a push payload, kept whole.

    :ivar name: local name.
    :ivar uri: namespace URI.
    :ivar attributes: attribute name to value (namespaced ones as
        ``{uri}name``).
    :ivar text: the element's own character data, stripped of nothing.
    :ivar children: nested elements, in order.
    :ivar xml: the element serialized.
    """

    name: str
    uri: str | None
    attributes: Mapping[str, str]
    text: str
    children: tuple[PushChild, ...]
    xml: str

    @classmethod
    def fromElement(cls, element: domish.Element) -> PushChild:
        return cls(
            name=element.name,
            uri=element.uri,
            attributes=_freezeAttributes(element),
            text="".join(c for c in element.children if isinstance(c, str)),
            children=tuple(cls.fromElement(c) for c in element.elements()),
            xml=element.toXml(),
        )

    def toJSON(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "uri": self.uri,
            "attributes": dict(self.attributes),
            "text": self.text,
            "children": [c.toJSON() for c in self.children],
        }


@dataclass(frozen=True)
class Notification:
    """
    One Disk push, as received.

    :ivar stanzaId: the IQ's ``id`` (the server's, acknowledged with it).
    :ivar sender: the IQ's ``from`` (empty if the server left it out).
    :ivar recipient: the IQ's ``to``.
    :ivar receivedAt: when it was received, seconds since the epoch.
    :ivar element: name of the payload element (``query`` today).
    :ivar attributes: every attribute of the payload element.
    :ivar children: every child element of the payload, in order.
    :ivar rawXml: the whole IQ stanza serialized.
    """

    stanzaId: str
    sender: str
    recipient: str
    receivedAt: float
    element: str
    attributes: Mapping[str, str]
    children: tuple[PushChild, ...]
    rawXml: str

    @classmethod
    def fromStanza(cls, iq: domish.Element, receivedAt: float) -> Notification:
        """
        Build a notification from an IQ set carrying a ``yandex:push:disk``
        payload.

        :raises ValueError: if the stanza has no such payload.
        """
        payload = next((e for e in iq.elements() if e.uri == NS_DISK_PUSH), None)
        if payload is None:
            raise ValueError("the stanza carries no yandex:push:disk payload")
        return cls(
            stanzaId=iq.getAttribute("id", ""),
            sender=iq.getAttribute("from", ""),
            recipient=iq.getAttribute("to", ""),
            receivedAt=receivedAt,
            element=payload.name,
            attributes=_freezeAttributes(payload),
            children=tuple(PushChild.fromElement(c) for c in payload.elements()),
            rawXml=iq.toXml(),
        )

    def toJSON(self) -> dict[str, Any]:
        """A JSON-serializable dict with every field (used by the sinks)."""
        return {
            "id": self.stanzaId,
            "from": self.sender,
            "to": self.recipient,
            "received_at": self.receivedAt,
            "element": self.element,
            "attributes": dict(self.attributes),
            "children": [c.toJSON() for c in self.children],
            "raw_xml": self.rawXml,
        }

    def summary(self) -> str:
        """A readable one-line form for logs."""
        shown = " ".join(f"{k}={v!r}" for k, v in sorted(self.attributes.items()))
        parts = [f"Disk changed: id={self.stanzaId!r}", shown]
        for child in self.children[:3]:
            details = " ".join(f"{k}={v!r}" for k, v in child.attributes.items())
            parts.append(f"[{child.name} {details}]".replace(" ]", "]"))
        if len(self.children) > 3:
            parts.append(f"(+{len(self.children) - 3} more)")
        return " ".join(p for p in parts if p)
