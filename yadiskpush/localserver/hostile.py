"""
Bytes a hostile or broken server sends, for ``Faults(rawAt=..., raw=...)``.

The client must answer each with the RFC 6120 stream error that names the
problem and close, without expanding, buffering or trusting anything. These
helpers make the payloads the client's fault tests need, so that each test
does not hand-write its own slightly different attack.
"""

from __future__ import annotations

#: Bytes that are not XML at all (a parser rejects them at once).
GARBAGE = b"<<this is not XML>>"


def streamHeader(domain: str = "ya.ru") -> bytes:
    """A well-formed server stream header, as the vendor sends it."""
    return (
        "<stream:stream xmlns='jabber:client' "
        "xmlns:stream='http://etherx.jabber.org/streams' "
        f"id='1' from='{domain}' version='1.0' xml:lang='en'>"
    ).encode()


def doctypeWithEntities(domain: str = "ya.ru") -> bytes:
    """
    A stream that opens with a DTD declaring nested entities (the seed of a
    "billion laughs") and uses them; use it with ``rawAt="header"``. XMPP
    forbids DTDs, so a client must stop at the DOCTYPE (``restricted-xml``)
    before expanding anything.
    """
    return (
        b"<?xml version='1.0'?>"
        b"<!DOCTYPE stream:stream ["
        b"<!ENTITY a 'aaaaaaaaaaaaaaaa'>"
        b"<!ENTITY b '&a;&a;&a;&a;&a;&a;&a;&a;'>"
        b"<!ENTITY c '&b;&b;&b;&b;&b;&b;&b;&b;'>"
        b"]>" + streamHeader(domain) + b"<stream:features><x>&c;</x></stream:features>"
    )


def oversizedStanza(size: int) -> bytes:
    """
    One push-like IQ of at least ``size`` bytes; send it after the header
    (e.g. ``rawAt="opened"``) to a client whose stanza limit is below
    ``size``: it must answer ``policy-violation`` and close.
    """
    return (
        b"<iq type='set' id='oversized'><query xmlns='yandex:push:disk' pad='"
        + b"x" * size
        + b"'/></iq>"
    )
