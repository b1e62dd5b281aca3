"""
Handlers attached to a client stream over a ``StringTransport``, with a real
wokkel ``StreamManager`` (so ``request()`` works) on a ``task.Clock``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.words.protocols.jabber import xmlstream
from twisted.words.xish.xmlstream import XmlStreamFactoryMixin
from wokkel.subprotocols import StreamManager

from tests.support import SERVER_HEADER, FakeAuthenticator
from yadiskpush.connection.authenticator import CONNECTION_FAILED_EVENT
from yadiskpush.connection.stream import PushXmlStream


class _Factory(XmlStreamFactoryMixin):
    def __init__(self) -> None:
        XmlStreamFactoryMixin.__init__(self)


def managedStream(
    clock: Clock, *handlers: Any
) -> tuple[PushXmlStream, StringTransport, list[object]]:
    """
    A client stream with an open session whose handlers run under a
    ``StreamManager``; the list collects what is dispatched on
    ``CONNECTION_FAILED_EVENT``.
    """
    factory = _Factory()
    manager = StreamManager(factory, reactor=clock)
    for handler in handlers:
        handler.setHandlerParent(manager)
    xs = PushXmlStream(FakeAuthenticator())
    factory.installBootstraps(xs)
    failures: list[object] = []
    xs.addObserver(CONNECTION_FAILED_EVENT, failures.append)
    transport = StringTransport()
    xs.makeConnection(transport)
    xs.dataReceived(SERVER_HEADER)
    transport.clear()
    xs.dispatch(xs, xmlstream.STREAM_AUTHD_EVENT)
    return xs, transport, failures
