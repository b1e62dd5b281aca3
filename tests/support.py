"""
Small helpers shared by the unit tests: an XML stream on a memory transport.

Unit tests of a single initializer or handler run on Twisted's
``StringTransport``; everything that crosses a socket is tested end to end in
``tests/integration``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import StringTransport
from twisted.logger import Logger
from twisted.words.protocols.jabber import xmlstream
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish

from yadiskpush.connection.stream import PushXmlStream
from yadiskpush.secret import Secret

SERVER_HEADER = (
    b"<stream:stream xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams' "
    b"from='ya.ru' id='1' version='1.0'>"
)


class FakeAuthenticator(xmlstream.ConnectAuthenticator):
    """The attributes our initializers read, without the real chain."""

    namespace = "jabber:client"
    _log = Logger()

    def __init__(self, encrypted: bool = True) -> None:
        xmlstream.ConnectAuthenticator.__init__(self, "ya.ru")
        self.login = "test"
        self.token = Secret("c4181a7c2cf4521964a72ff57a34a07")
        self.encrypted = encrypted
        self.step = "test"
        self.jid = JID("test@ya.ru/r")

    def redact(self, text: str | None) -> str | None:
        return text

    def streamStarted(self, rootElement: Any) -> None:
        # Record the header only; tests drive initializers by hand.
        xmlstream.Authenticator.streamStarted(self, rootElement)


def connectedStream(encrypted: bool = True) -> tuple[PushXmlStream, StringTransport]:
    """A client stream that has sent its header and read the server's."""
    xs = PushXmlStream(FakeAuthenticator(encrypted))
    transport = StringTransport()
    xs.makeConnection(transport)
    xs.dataReceived(SERVER_HEADER)
    transport.clear()
    return xs, transport


def sentElements(data: bytes) -> list[domish.Element]:
    """Parse what a stream wrote (after its header) into elements."""
    elements: list[domish.Element] = []
    stream = domish.elementStream()
    stream.DocumentStartEvent = lambda root: None
    stream.ElementEvent = elements.append
    stream.DocumentEndEvent = lambda: None
    stream.parse(
        b"<stream:stream xmlns='jabber:client' "
        b"xmlns:stream='http://etherx.jabber.org/streams'>" + data
    )
    return elements


def watchedStream(
    maxStanzaSize: int,
) -> tuple[PushXmlStream, StringTransport, list[object]]:
    """
    A fresh client stream with a stanza limit, before any input, and the
    list its stream errors are collected in.
    """
    xs = PushXmlStream(FakeAuthenticator())
    xs.maxStanzaSize = maxStanzaSize
    errors: list[object] = []
    xs.addObserver(xmlstream.STREAM_ERROR_EVENT, errors.append)
    transport = StringTransport()
    xs.makeConnection(transport)
    transport.clear()
    return xs, transport, errors
