"""
The elements the vendor's server sends, built as its page shows them.

Kept apart from the connection logic so that each element can be compared
with the vendor page at a glance (the empty ``<mechanisms/>`` is on purpose).
"""

from __future__ import annotations

from twisted.words.protocols.jabber import error
from twisted.words.protocols.jabber.xmlstream import NS_STREAMS
from twisted.words.xish import domish

from yadiskpush.connection.compression import NS_COMPRESS_FEATURE, NS_COMPRESS_PROTOCOL
from yadiskpush.notification import NS_DISK_PUSH

NS_CLIENT = "jabber:client"
NS_XMPP_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_XMPP_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_XMPP_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_XMPP_SESSION = "urn:ietf:params:xml:ns:xmpp-session"
NS_VERSION = "jabber:iq:version"
NS_PING = "urn:xmpp:ping"
MECHANISM = "X-YANDEX-OAUTH"

__all__ = [
    "NS_CLIENT",
    "NS_DISK_PUSH",
    "NS_PING",
    "NS_VERSION",
    "NS_XMPP_BIND",
    "NS_XMPP_SASL",
    "NS_XMPP_SESSION",
    "NS_XMPP_TLS",
    "MECHANISM",
    "features",
    "saslFailure",
    "compressionFailure",
    "streamError",
    "request",
]


def features(
    starttls: bool, compression: bool, mechanisms: bool, bind: bool
) -> domish.Element:
    """
    ``<stream:features/>`` for one stream.

    The vendor lists no SASL mechanism at all (an empty ``<mechanisms/>``),
    yet accepts ``X-YANDEX-OAUTH``; clients must cope, so this copies it.
    """
    element = domish.Element((NS_STREAMS, "features"))
    if starttls:
        element.addElement((NS_XMPP_TLS, "starttls"))
    if compression:
        offer = element.addElement((NS_COMPRESS_FEATURE, "compression"))
        offer.addElement("method", content="zlib")
    if mechanisms:
        element.addElement((NS_XMPP_SASL, "mechanisms"))
    if bind:
        element.addElement((NS_XMPP_BIND, "bind"))
        element.addElement((NS_XMPP_SESSION, "session"))
    return element


def saslFailure(condition: str, text: str | None = None) -> domish.Element:
    """``<failure xmlns=sasl><condition/><text/></failure>``."""
    element = domish.Element((NS_XMPP_SASL, "failure"))
    element.addElement(condition)
    if text:
        element.addElement("text", content=text)
    return element


def compressionFailure(condition: str) -> domish.Element:
    """XEP-0138 ``<failure><condition/></failure>``."""
    element = domish.Element((NS_COMPRESS_PROTOCOL, "failure"))
    element.addElement(condition)
    return element


def streamError(
    condition: str, text: str | None = None, host: str | None = None
) -> domish.Element:
    """
    ``<stream:error/>``; for ``see-other-host`` the condition element holds
    the new host (Twisted's ``StreamError`` has no place for it).
    """
    element = error.StreamError(condition, text=text).getElement()
    if host is not None:
        element.firstChildElement().addContent(host)
    return element


def request(
    iqType: str, iqId: str, sender: str, recipient: str, payload: tuple[str, str]
) -> tuple[domish.Element, domish.Element]:
    """An IQ the server sends, and its payload element to fill in."""
    iq = domish.Element((None, "iq"))
    iq["type"] = iqType
    iq["from"] = sender
    iq["to"] = recipient
    iq["id"] = iqId
    return iq, iq.addElement(payload)
