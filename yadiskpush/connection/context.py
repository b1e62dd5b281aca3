"""
What the connections of many accounts share: the reactor (and clock), the
TLS contexts, and how an attempt's endpoint is made.

A :class:`~yadiskpush.service.PushService` builds a context of its own when
given none; services made with the same context share one TLS context per
trust root instead of building one each (about 900 KiB with the system
trust store).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from yadiskpush.connection.endpoint import EndpointFactory, hostnameEndpoint
from yadiskpush.connection.tls import TLSContexts


@dataclass
class ConnectionContext:
    """
    :ivar reactor: connects, and schedules every timer (a ``Clock`` in tests).
    :ivar tlsContexts: the process's TLS contexts.
    :ivar endpointFactory: makes the endpoint each attempt dials.
    """

    reactor: Any
    tlsContexts: TLSContexts = field(default_factory=TLSContexts)
    endpointFactory: EndpointFactory = hostnameEndpoint
