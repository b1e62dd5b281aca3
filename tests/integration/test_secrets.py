"""
Issue 5, end to end: the OAuth token appears in no log line, event, repr or
traceback, whatever happens to the connection.

One test drives clients with the raw traffic log on through everything that
logs a lot: a full session with pushes, a stream error, hostile bytes, a TLS
failure under a live session, a certificate failure, and a rejected token.
Every log event of the run is then searched, in every form an observer could
write it, for the token and for the SASL payload that carries it.
"""

from __future__ import annotations

import base64
from collections.abc import Generator
from typing import Any

from twisted.internet import defer

from tests.integration.support import LOGIN, LocalServerTestCase, closedPort
from yadiskpush.connection.sasl import oauthPayload
from yadiskpush.errors import (
    AuthenticationFailed,
    CertificateError,
    ConnectionLostError,
    ProtocolViolation,
    StreamErrorReceived,
    YaDiskPushError,
)
from yadiskpush.localserver import CertificateAuthority, hostile
from yadiskpush.localserver.session import TLS_PORT
from yadiskpush.secret import Secret

Steps = Generator[defer.Deferred[Any], Any, None]


class TokenNeverShownTests(LocalServerTestCase):
    def secretForms(self) -> list[str]:
        """The token as it could leak: plain, and the base64 forms on the wire."""
        payload = oauthPayload(LOGIN, Secret(self.token))
        return [
            self.token,
            base64.b64encode(payload).decode("ascii"),
            base64.b64encode(self.token.encode()).decode("ascii"),
        ]

    def assertNoSecret(self, texts: list[str], what: str) -> None:
        for secret in self.secretForms():
            leaks = [t for t in texts if secret in t]
            self.assertEqual(leaks, [], f"the token leaked into {what}")

    @defer.inlineCallbacks
    def test_tokenNowhere(self) -> Steps:
        """Traffic log, stream errors, TLS failures, a rejected token: no token."""
        logs = self.captureLogs()
        errors: list[YaDiskPushError] = []
        server = yield self.startServer()

        # STARTTLS, traffic logged: a session with a push, a stream error,
        # hostile bytes; then the token is revoked and the client stops.
        starttls, _ = self.startFastClient(
            self.settingsFor(server, logTraffic=True, resource="starttls")
        )
        yield starttls.whenReady()
        [session] = server.openSessions(LOGIN)
        answer = yield server.push(LOGIN, {"t": "diff"})
        self.assertEqual(answer["type"], "result")
        failed = starttls.whenConnectionFailed()
        session.sendStreamError("system-shutdown")
        errors.append((yield failed))
        yield starttls.whenReady()
        [session] = server.openSessions(LOGIN)
        failed = starttls.whenConnectionFailed()
        session.sendRaw(hostile.GARBAGE)
        errors.append((yield failed))
        yield starttls.whenReady()

        # Direct TLS, traffic logged: the TLS layer breaks under the session.
        direct, _ = self.startFastClient(
            self.settingsFor(
                server, port=closedPort(), logTraffic=True, resource="direct"
            )
        )
        yield direct.whenReady()
        [tlsSession] = [s for s in server.openSessions(LOGIN) if s.port == TLS_PORT]
        failed = direct.whenConnectionFailed()
        tlsSession.xmlstream.transport.transport.write(b"\x17\x03\x03\x00\x05HELLO")
        errors.append((yield failed))
        yield direct.whenReady()
        liveAuthenticator = direct.streamManager.xmlstream.authenticator
        liveStream = vars(direct.streamManager.xmlstream)
        liveState = [
            repr(liveStream),
            repr(vars(liveAuthenticator)),
        ]

        # A certificate from a CA the client does not trust.
        other = CertificateAuthority.generate("someone else's CA")
        untrusted = yield self.startServer(
            certificate=other.issueServerCertificate(["localhost", "127.0.0.1"])
        )
        certificateClient, _ = self.startFastClient(
            self.settingsFor(untrusted, logTraffic=True, tlsPort=0)
        )
        errors.append((yield certificateClient.whenConnectionFailed()))
        yield certificateClient.stopService()

        # The token is revoked: the next connection is refused for good.
        server.accounts[LOGIN] = "a-token-issued-later"
        [session] = [s for s in server.openSessions(LOGIN) if s.port != TLS_PORT]
        gaveUp = starttls.whenGaveUp()
        session.drop()
        errors.append((yield gaveUp))
        yield starttls.stopService()
        yield direct.stopService()

        self.assertEqual(
            [type(e) for e in errors],
            [
                StreamErrorReceived,
                ProtocolViolation,
                ConnectionLostError,
                CertificateError,
                AuthenticationFailed,
            ],
        )

        # Every form an observer could write an event in.
        formatted = logs.messages()
        raw = [repr(event) for event in logs.events]
        tracebacks = [
            event["log_failure"].getTraceback(detail="verbose")
            for event in logs.events
            if event.get("log_failure") is not None
        ]
        self.assertNoSecret(formatted, "a formatted log event")
        self.assertNoSecret(raw, "a log event's fields")
        self.assertNoSecret(tracebacks, "a logged traceback")
        self.assertNoSecret(liveState, "the live stream's state")
        objects: list[Any] = [
            starttls,
            starttls.settings,
            starttls.dialer,
            starttls.factory,
            starttls.jid,
            liveAuthenticator,
            liveAuthenticator.attempt,
            *errors,
        ]
        self.assertNoSecret(
            [repr(o) for o in objects] + [str(o) for o in objects],
            "a repr or str",
        )
        self.assertNoSecret(
            [repr(vars(o)) for o in (starttls, starttls.dialer, starttls.factory)],
            "an object's attributes",
        )

        # And the search had something to search: the traffic was logged,
        # the SASL payload redacted in place.
        sent = [m for m in formatted if m.startswith("SEND ")]
        self.assertTrue(any("X-YANDEX-OAUTH" in m for m in sent))
        self.assertTrue(
            any("[redacted]</auth>" in m for m in sent),
            "the SASL payload was not logged in redacted form",
        )
        self.assertTrue(any("yandex:push:disk" in m for m in formatted))
        for error in errors:
            self.assertIn(str(error), "\n".join(formatted))
