"""
Whether a host or URL is this machine: the one place that decides where
plain ``http://`` is allowed (the client) and where ``--ca-file`` applies to
the OAuth server (the daemon's refresher). Kept apart from the client so
that the refresher can ask without importing treq.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def isLoopbackHost(host: str) -> bool:
    """Whether ``host`` is this machine: ``localhost``, 127.0.0.0/8 or ::1."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def isLoopbackURL(url: str) -> bool:
    """Whether ``url``'s host is this machine (see :func:`isLoopbackHost`)."""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return False
    return isLoopbackHost(host)
