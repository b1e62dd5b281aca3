"""
PushHandler as a plain wokkel handler, in an XMPP client of your own.

Use this when you already hold an XMPP stream (your own StreamManager, your
own authentication) on which ``yandex:push:disk`` IQs arrive, for example a
relay. PushHandler turns each one into a Notification, hands it to your
callback and acknowledges it; it does not subscribe, so this example adds a
small handler that does.

Run it: ``XMPP_PASSWORD=... python ownstream.py JID [HOST]`` (a password on
the command line could be read by every user of the machine).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, task
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish
from wokkel.client import XMPPClient
from wokkel.subprotocols import XMPPHandler

from yadiskpush import Notification, PushHandler

NS_DISK_PUSH = "yandex:push:disk"


class DiskSubscriber(XMPPHandler):
    """Subscribes to Disk pushes each time the stream is (re)initialized."""

    def connectionInitialized(self) -> None:
        iq = domish.Element((None, "iq"))
        iq["type"] = "set"
        iq["to"] = self.parent.jid.userhost()
        iq["id"] = "subscribe-disk"
        iq.addElement((NS_DISK_PUSH, "s"))
        self.send(iq)


def makeClient(
    jid: JID,
    password: str,
    onNotification: Callable[[Notification], defer.Deferred[Any] | None],
    host: str | None = None,
    port: int = 5222,
) -> XMPPClient:
    """A wokkel client (a StreamManager) that receives Disk pushes."""
    client = XMPPClient(jid, password, host, port)
    PushHandler(onNotification).setHandlerParent(client)
    DiskSubscriber().setHandlerParent(client)
    return client


def main(reactor: Any, jid: str, host: str | None = None) -> Any:
    password = os.environ["XMPP_PASSWORD"]
    client = makeClient(
        JID(jid), password, lambda n: print(n.summary(), flush=True), host
    )
    client.startService()
    reactor.addSystemEventTrigger("before", "shutdown", client.stopService)
    return defer.Deferred()  # run until Ctrl-C


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
