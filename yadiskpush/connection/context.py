"""
What the connections of many accounts share: the reactor (and clock), the
TLS contexts, the handshake gate, one DNS resolution per host, and how an
attempt's endpoint is made.

A :class:`~yadiskpush.service.PushService` builds a context of its own when
given none; services made with the same context (a
:class:`~yadiskpush.fleet.PushFleet` hands its own to every account) share
one TLS context per trust root instead of building one each (about 900 KiB
with the system trust store), wait in one line for a handshake slot, and
resolve the server's name once.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from yadiskpush.connection.endpoint import EndpointFactory, hostnameEndpoint
from yadiskpush.connection.handshakes import DEFAULT_MAX_HANDSHAKES, HandshakeGate
from yadiskpush.connection.resolver import SharedResolver, resolvingReactor
from yadiskpush.connection.tls import TLSContexts


@dataclass
class ConnectionContext:
    """
    :ivar reactor: connects, and schedules every timer (a ``Clock`` in tests).
    :ivar tlsContexts: the process's TLS contexts.
    :ivar handshakes: the process-wide limit on handshakes in flight.
    :ivar endpointFactory: makes the endpoint each attempt dials; by default
        ``HostnameEndpoint`` through :attr:`resolver`.
    :ivar resolver: the shared DNS cache of the default endpoint factory.
    """

    reactor: Any
    tlsContexts: TLSContexts = field(default_factory=TLSContexts)
    endpointFactory: EndpointFactory | None = None
    handshakes: HandshakeGate = field(
        default_factory=lambda: HandshakeGate(DEFAULT_MAX_HANDSHAKES)
    )
    resolver: SharedResolver | None = None

    def __post_init__(self) -> None:
        if self.endpointFactory is None:
            if self.resolver is None:
                self.resolver = SharedResolver(self.reactor)
            dialVia = resolvingReactor(self.reactor, self.resolver)
            self.endpointFactory = functools.partial(_viaSharedResolver, dialVia)


def _viaSharedResolver(dialVia: Any, reactor: Any, attempt: Any, timeout: float) -> Any:
    return hostnameEndpoint(dialVia, attempt, timeout)
