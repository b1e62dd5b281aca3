"""
The local server as a Twisted service, for ``twistd yadiskpush --demo``.

A ``MultiService`` starts its children in order, so the demo adds this
before the client's service; stopping returns the server's Deferred, so
``twistd`` waits until every connection is closed.
"""

from __future__ import annotations

from twisted.application import service
from twisted.internet import defer

from yadiskpush.localserver.server import LocalServer


class LocalServerService(service.Service):
    """
    Runs a :class:`LocalServer` while the service runs.

    :ivar server: the server.
    :ivar started: fires with the server once both ports listen (the ports
        are known only then); set by ``startService``.
    """

    name = "yadiskpush-localserver"

    def __init__(self, server: LocalServer) -> None:
        self.server = server
        self.started: defer.Deferred[LocalServer] | None = None

    def startService(self) -> None:
        service.Service.startService(self)
        self.started = self.server.start()

    def stopService(self) -> defer.Deferred[None]:
        service.Service.stopService(self)
        return self.server.stop()
