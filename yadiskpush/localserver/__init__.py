"""
A local stand-in for the vendor's push server, and its throwaway CA.

It plays the vendor's side of the XMPP exchange as the vendor's page shows
it, on loopback ports chosen by the kernel, for the client's end-to-end and
fault-injection tests and for ``twistd yadiskpush --demo``. Like
``treq.testing``, it ships with the package so that users can test their own
code against it. Modules: ``ca`` (throwaway CA), ``server`` (listeners,
pushes, waiting), ``session`` (one connection), ``faults`` (misbehaviour per
connection), ``hostile`` (raw payloads for faults), ``events`` (the log),
``stanzas`` (the vendor's elements), ``service`` (for twistd).
"""

from __future__ import annotations

from yadiskpush.localserver.ca import CertificateAuthority, ServerCertificate
from yadiskpush.localserver.events import Event, EventLog
from yadiskpush.localserver.faults import IQ_STEPS, STEPS, Faults
from yadiskpush.localserver.server import LocalServer, NoOpenSession, SentPush
from yadiskpush.localserver.service import LocalServerService
from yadiskpush.localserver.session import VERSION_QUERY_ID, NoAnswer, ServerSession

__all__ = [
    "IQ_STEPS",
    "STEPS",
    "VERSION_QUERY_ID",
    "CertificateAuthority",
    "Event",
    "EventLog",
    "Faults",
    "LocalServer",
    "LocalServerService",
    "NoAnswer",
    "NoOpenSession",
    "SentPush",
    "ServerCertificate",
    "ServerSession",
]
