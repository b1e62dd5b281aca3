"""
One DNS resolution shared by every connection to the same host.

``HostnameEndpoint`` resolves the host name on every connection. With
10,000 accounts on one push server that is 10,000 identical look-ups at
start and again after every mass reconnect, each one a thread of
``getaddrinfo``. :class:`SharedResolver` answers all connections to a host
from one resolution, kept for ``ttl`` seconds; look-ups made while one is
in flight wait for it instead of starting their own. A failed look-up is
not kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import (
    IHostnameResolver,
    IHostResolution,
    IReactorPluggableNameResolver,
    IResolutionReceiver,
)
from zope.interface import directlyProvides, implementer, providedBy

#: Seconds a resolution is used for. getaddrinfo does not tell the record's
#: TTL; a minute keeps a moved server reachable soon enough.
DEFAULT_TTL = 60.0

_Key = tuple[str, int, Any, Any, str]


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        """A shared look-up goes on for the others."""


class _Collector:
    """Receives one real resolution's addresses."""

    def __init__(self) -> None:
        self.addresses: list[Any] = []
        self.done: defer.Deferred[list[Any]] = defer.Deferred()

    def resolutionBegan(self, resolution: IHostResolution) -> None:
        pass

    def addressResolved(self, address: Any) -> None:
        self.addresses.append(address)

    def resolutionComplete(self) -> None:
        self.done.callback(self.addresses)


@implementer(IHostnameResolver)
class SharedResolver:
    """
    An ``IHostnameResolver`` that shares look-ups of the same name.

    :param reactor: whose ``nameResolver`` does the real look-ups, and whose
        clock ages them.
    :param ttl: seconds a resolution is reused.
    """

    def __init__(self, reactor: Any, ttl: float = DEFAULT_TTL) -> None:
        self.reactor = reactor
        self.ttl = ttl
        self.lookups = 0
        self._known: dict[_Key, tuple[float, list[Any]]] = {}
        self._inFlight: dict[_Key, defer.Deferred[list[Any]]] = {}

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Sequence[Any] | None = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        key: _Key = (
            hostName,
            portNumber,
            None if addressTypes is None else tuple(addressTypes),
            None,
            transportSemantics,
        )
        resolution = _Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        known = self._known.get(key)
        if known is not None and self.reactor.seconds() - known[0] < self.ttl:
            _deliver(resolutionReceiver, known[1])
            return resolution
        shared = self._inFlight.get(key)
        if shared is None:
            shared = self._lookUp(key, hostName, portNumber, addressTypes)
        # Each waiter gets its own Deferred, so one's callbacks cannot
        # change what the next one receives.
        waiter: defer.Deferred[list[Any]] = defer.Deferred()
        shared.addBoth(_passOn, waiter)
        waiter.addBoth(_deliverOrNothing, resolutionReceiver)
        return resolution

    def _lookUp(
        self,
        key: _Key,
        hostName: str,
        portNumber: int,
        addressTypes: Sequence[Any] | None,
    ) -> defer.Deferred[list[Any]]:
        self.lookups += 1
        collector = _Collector()
        self._inFlight[key] = collector.done

        def keep(addresses: list[Any]) -> list[Any]:
            del self._inFlight[key]
            if addresses:
                self._known[key] = (self.reactor.seconds(), addresses)
            return addresses

        collector.done.addCallback(keep)
        self.reactor.nameResolver.resolveHostName(
            collector, hostName, portNumber, addressTypes, "TCP"
        )
        return collector.done


def _passOn(result: Any, waiter: defer.Deferred[list[Any]]) -> Any:
    waiter.callback(result if isinstance(result, list) else [])
    return result


def _deliverOrNothing(addresses: list[Any], receiver: IResolutionReceiver) -> None:
    _deliver(receiver, addresses)


def _deliver(receiver: IResolutionReceiver, addresses: list[Any]) -> None:
    for address in addresses:
        receiver.addressResolved(address)
    receiver.resolutionComplete()


class ResolvingReactor:
    """
    The reactor as ``HostnameEndpoint`` sees it: the real one, whose name
    resolver is the shared one. ``HostnameEndpoint`` takes its resolver
    from the reactor it is given (``IReactorPluggableNameResolver``); this is
    the public way to hand it another.
    """

    def __init__(self, reactor: Any, resolver: SharedResolver) -> None:
        self._reactor = reactor
        self.nameResolver = resolver

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


def resolvingReactor(reactor: Any, resolver: SharedResolver) -> Any:
    """``reactor`` with ``resolver`` as its name resolver, keeping its interfaces."""
    proxy = ResolvingReactor(reactor, resolver)
    interfaces = set(providedBy(reactor)) | {IReactorPluggableNameResolver}
    directlyProvides(proxy, *interfaces)
    return proxy
