"""Answers the server's XEP-0092 software version query."""

from __future__ import annotations

import functools
import platform

from twisted.words.protocols.jabber.xmlstream import toResponse
from twisted.words.xish import domish
from wokkel.subprotocols import XMPPHandler

from yadiskpush.handlers.guard import answersExactlyOnce, sendAnswer
from yadiskpush.logs import Logger

NS_VERSION = "jabber:iq:version"
VERSION_QUERY = f"/iq[@type='get']/query[@xmlns='{NS_VERSION}']"


def operatingSystem() -> str:
    """A short OS description, e.g. ``Linux 6.1.0``."""
    return " ".join(p for p in (platform.system(), platform.release()) if p)


@functools.cache
def _thisOperatingSystem() -> str:
    # One string for every handler of the process, not one per account.
    return operatingSystem()


class VersionHandler(XMPPHandler):
    """
    Answers ``jabber:iq:version`` gets with name, version and OS.

    Modelled on ``wokkel.generic.VersionHandler``, which leaves out ``<os>``.
    The vendor asks right after the session opens. Answered exactly once:
    if building the answer fails, the query gets ``internal-server-error``.
    """

    _log = Logger()

    def __init__(
        self, name: str, version: str, os: str | None = None, log: Logger | None = None
    ) -> None:
        super().__init__()
        self.name = name
        self.version = version
        self.os = _thisOperatingSystem() if os is None else os
        if log is not None:
            self._log = log

    def connectionInitialized(self) -> None:
        # Routed straight here on our stream, as pings are (see PingHandler):
        # no XPath observer kept per connection for one query per session.
        routeStanzas = getattr(self.xmlstream, "routeStanzas", None)
        if routeStanzas is not None:
            routeStanzas("iq", "get", NS_VERSION, self.onVersion)
        else:
            self.xmlstream.addObserver(VERSION_QUERY, self.onVersion)

    @answersExactlyOnce
    def onVersion(self, iq: domish.Element) -> None:
        response = toResponse(iq, "result")
        query = response.addElement((NS_VERSION, "query"))
        query.addElement("name", content=self.name)
        query.addElement("version", content=self.version)
        if self.os:
            query.addElement("os", content=self.os)
        sendAnswer(self.xmlstream, iq, response)
        self._log.debug(
            "Answered the version query from {sender}: {name} {version}",
            sender=iq.getAttribute("from", "the server"),
            name=self.name,
            version=self.version,
        )
