"""
Issue 5, end to end: the client against a server that misbehaves on purpose.

Each test injects one fault with the local server (hostile bytes, a stream
error, a stalled handshake, a rejected token) and asserts both halves of the
outcome: what the client did about it (the stream error it sent back, the
error it reported, the delay its reconnect policy asked for, or that it
stopped for good) and how many pushes got through afterwards.

Reconnect waits are compressed (:class:`CompressedTimePolicy`): a test
asserts the delay the policy asked for (a minute after ``conflict``) and the
client then waits a hundredth of it. Every other wait is on a server event or
a service Deferred, bounded by trial's per-test timeout.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.logger import LogLevel

from tests.integration.support import (
    LOGIN,
    CompressedTimePolicy,
    LocalServerTestCase,
)
from yadiskpush.errors import (
    AuthenticationFailed,
    ConfigurationError,
    HandshakeTimeout,
    ProtocolViolation,
    StreamErrorReceived,
)
from yadiskpush.failures import MINIMUM_DELAY_BY_CONDITION
from yadiskpush.localserver import Faults, LocalServer, ServerSession, hostile
from yadiskpush.notification import Notification
from yadiskpush.service import PushService

Steps = Generator[defer.Deferred[Any], Any, None]

#: The client's stanza limit in these tests (the smallest it accepts).
STANZA_LIMIT = 4096


class FaultTestCase(LocalServerTestCase):
    """A server, a client with compressed reconnect waits, and what it got."""

    @defer.inlineCallbacks
    def connected(
        self, faults: Faults | None = None, **settings: Any
    ) -> Generator[
        Any,
        Any,
        tuple[LocalServer, PushService, CompressedTimePolicy, list[Notification]],
    ]:
        """
        Start a server whose first connection plays ``faults`` and a client
        for it; fire once the client is started (not necessarily ready).
        """
        server = yield self.startServer()
        if faults is not None:
            server.faultNextConnection(faults)
        received: list[Notification] = []
        service, policy = self.startFastClient(
            self.settingsFor(server, **settings), received.append
        )
        return server, service, policy, received

    @defer.inlineCallbacks
    def assertPushesArrive(
        self,
        server: LocalServer,
        received: list[Notification],
        count: int = 1,
    ) -> Steps:
        """``count`` new pushes reach the observer and are each acked once."""
        before = len(received)
        ids = []
        for n in range(count):
            answer = yield server.push(LOGIN, {"t": "diff", "n": str(n)})
            self.assertEqual(answer["type"], "result")
            ids.append(answer["id"])
        self.assertEqual([p.stanzaId for p in received[before:]], ids)
        self.assertEqual({i: server.acks[i] for i in ids}, {i: 1 for i in ids})


class HostileBytesTests(FaultTestCase):
    """
    Bytes no client should accept: it answers with the stream error that
    names the problem, logs one line, and reconnects.
    """

    @defer.inlineCallbacks
    def assertRefusedThenRecovered(
        self,
        faults: Faults | None,
        condition: str,
        inDetail: str,
        inject: Callable[[ServerSession], defer.Deferred[None]] | None = None,
    ) -> Steps:
        """
        The connection that plays ``faults`` (or the first session, once
        subscribed, into which ``inject`` sends its bytes) ends with the
        client's stream error ``condition``; the next session gets pushes.
        """
        logs = self.captureLogs()
        server, service, policy, received = yield self.connected(
            faults, maxStanzaSize=STANZA_LIMIT
        )
        failed = service.whenConnectionFailed()
        if inject is not None:
            live = yield self.readySession(server, service)
            yield inject(live)
        error = yield failed
        self.assertIsInstance(error, ProtocolViolation)
        self.assertEqual(error.condition, condition)
        self.assertIn(inDetail, error.detail)

        # The client told the server why, with the RFC 6120 condition.
        sent = yield server.whenEvent("stream-error-received", 1)
        self.assertEqual(sent.details["condition"], condition)
        first = server.sessionOf(sent)
        self.assertEqual(first.number, 1)
        yield first.whenClosed()

        # One clear line, at warning level, naming the condition.
        warnings = [
            m
            for m in logs.clientMessages(LogLevel.warn)
            if f"invalid data ({condition})" in m
        ]
        self.assertEqual(warnings, [str(error)])
        self.assertEqual(
            [e for e in logs.events if e.get("log_failure") is not None], []
        )

        # And it is back: a new session, where pushes arrive.
        session = yield self.readySession(server, service)
        self.assertGreater(session.number, first.number)
        yield self.assertPushesArrive(server, received)
        self.assertEqual(len(policy.requested), 1)

    def test_garbage(self) -> defer.Deferred[Any]:
        """Bytes that are not XML, mid-session: not-well-formed, reconnect."""
        return self.assertRefusedThenRecovered(
            Faults(rawAt="opened", raw=hostile.GARBAGE), "not-well-formed", ""
        )

    def test_garbageInsteadOfHeader(self) -> defer.Deferred[Any]:
        """Bytes that are not XML instead of the stream header: the same."""
        return self.assertRefusedThenRecovered(
            Faults(rawAt="header", raw=hostile.GARBAGE), "not-well-formed", ""
        )

    def test_doctypeWithEntities(self) -> defer.Deferred[Any]:
        """A DTD declaring entities is refused as restricted-xml, unexpanded."""
        return self.assertRefusedThenRecovered(
            Faults(rawAt="header", raw=hostile.doctypeWithEntities()),
            "restricted-xml",
            "document type declarations",
        )

    def test_oversizedStanza(self) -> defer.Deferred[Any]:
        """A stanza over --max-stanza-size is a policy-violation."""
        return self.assertRefusedThenRecovered(
            Faults(rawAt="opened", raw=hostile.oversizedStanza(4 * STANZA_LIMIT)),
            "policy-violation",
            f"exceeded {STANZA_LIMIT} bytes",
        )

    def test_invalidUTF8(self) -> defer.Deferred[Any]:
        """A push whose bytes are not UTF-8 is not-well-formed."""
        raw = (
            b"<iq type='set' id='latin1'>"
            b"<query xmlns='yandex:push:disk' path='disk:/\xff\xfe'/></iq>"
        )
        return self.assertRefusedThenRecovered(
            Faults(rawAt="opened", raw=raw), "not-well-formed", ""
        )

    def test_endlessElement(self) -> defer.Deferred[Any]:
        """An element that never ends is cut off at the size limit."""
        opened = b"<iq type='set' id='endless'><query xmlns='yandex:push:disk'>"
        chunk = b"a" * 512

        @defer.inlineCallbacks
        def inject(session: ServerSession) -> Steps:
            server = session.server
            session.sendRaw(opened)
            # Far more than the limit, one chunk per reactor turn, until the
            # client hangs up.
            for _ in range(16 * STANZA_LIMIT // len(chunk)):
                if session.closed:
                    break
                session.sendRaw(chunk)
                yield task.deferLater(reactor, 0, lambda: None)
            self.assertLess(
                sum(e.details["size"] for e in server.eventsOf("raw-sent")),
                16 * STANZA_LIMIT,
                "the client kept reading an endless element",
            )

        return self.assertRefusedThenRecovered(
            None, "policy-violation", f"exceeded {STANZA_LIMIT} bytes", inject
        )

    @defer.inlineCallbacks
    def test_trickledPushArrives(self) -> Steps:
        """A valid push sent one byte at a time is delivered and acked once."""
        logs = self.captureLogs()
        server, service, policy, received = yield self.connected(logTraffic=True)
        session = yield self.readySession(server, service)
        assert session.jid is not None
        stanza = (
            f"<iq type='set' from='{session.jid.userhost()}' "
            f"to='{session.jid.full()}' id='trickle-1'>"
            "<query xmlns='yandex:push:disk' t='diff' path='disk:/Фото'/></iq>"
        ).encode()
        # Registered as a push, so the server counts the client's answer.
        session.requests["trickle-1"] = "push"
        answered = session.whenAnswered("trickle-1")
        readsBefore = len(logs.clientMessages(LogLevel.debug))
        for byte in stanza:
            session.sendRaw(bytes([byte]))
            yield task.deferLater(reactor, 0, lambda: None)
        answer = yield answered
        self.assertEqual(answer["type"], "result")
        self.assertEqual(server.acks["trickle-1"], 1)
        [notification] = received
        self.assertEqual(notification.stanzaId, "trickle-1")
        self.assertEqual(
            dict(notification.attributes), {"t": "diff", "path": "disk:/Фото"}
        )
        # It really came in pieces (each read is one RECV line in the log).
        reads = [
            m
            for m in logs.clientMessages(LogLevel.debug)[readsBefore:]
            if m.startswith("RECV")
        ]
        self.assertGreater(len(reads), len(stanza) // 4)
        self.assertEqual(server.eventsOf("stream-error-received"), [])
        self.assertEqual(len(server.sessions), 1)
        self.assertEqual(policy.requested, [])


class StreamErrorTests(FaultTestCase):
    """Each stream error from the server gets its own treatment."""

    @defer.inlineCallbacks
    def endSessionWith(
        self, condition: str, **settings: Any
    ) -> Generator[
        Any,
        Any,
        tuple[
            LocalServer,
            PushService,
            CompressedTimePolicy,
            list[Notification],
            StreamErrorReceived,
        ],
    ]:
        """A subscribed session that the server ends with ``condition``."""
        server, service, policy, received = yield self.connected(**settings)
        session = yield self.readySession(server, service)
        yield self.assertPushesArrive(server, received)
        failed = service.whenConnectionFailed()
        session.sendStreamError(condition)
        error = yield failed
        self.assertIsInstance(error, StreamErrorReceived)
        self.assertEqual(error.condition, condition)
        return server, service, policy, received, error

    @defer.inlineCallbacks
    def assertReconnectsAfterFloor(
        self, condition: str, floor: float
    ) -> Generator[Any, Any, StreamErrorReceived]:
        """The reconnect waits at least ``floor``, then pushes arrive again."""
        logs = self.captureLogs()
        server, service, policy, received, error = yield self.endSessionWith(condition)
        session = yield self.readySession(server, service)
        self.assertEqual(session.number, 2)
        self.assertEqual(policy.requested, [floor])
        self.assertIn("Reconnecting in", " ".join(logs.clientMessages(LogLevel.info)))
        yield self.assertPushesArrive(server, received, 2)
        self.assertEqual(len(received), 3)
        return error

    @defer.inlineCallbacks
    def test_systemShutdown(self) -> Steps:
        """system-shutdown: reconnect after a short floor."""
        error = yield self.assertReconnectsAfterFloor(
            "system-shutdown", MINIMUM_DELAY_BY_CONDITION["system-shutdown"]
        )
        self.assertIn("shutting down; reconnecting", str(error))

    @defer.inlineCallbacks
    def test_policyViolation(self) -> Steps:
        """policy-violation: reconnect, but not before its floor."""
        error = yield self.assertReconnectsAfterFloor(
            "policy-violation", MINIMUM_DELAY_BY_CONDITION["policy-violation"]
        )
        self.assertIn("'policy-violation'", str(error))

    @defer.inlineCallbacks
    def test_conflictWaitsAMinute(self) -> Steps:
        """conflict: the policy asks for a minute before taking the resource back."""
        error = yield self.assertReconnectsAfterFloor(
            "conflict", MINIMUM_DELAY_BY_CONDITION["conflict"]
        )
        self.assertGreaterEqual(MINIMUM_DELAY_BY_CONDITION["conflict"], 60)
        self.assertIn("same resource 'yadiskpush-test'", str(error))
        self.assertIn("reconnecting in a minute", str(error))

    @defer.inlineCallbacks
    def test_threeConflictsGiveUp(self) -> Steps:
        """A third conflict in a row stops the client, naming the resource."""
        logs = self.captureLogs()
        server, service, policy, received, error = yield self.endSessionWith("conflict")
        for _ in range(2):
            session = yield self.readySession(server, service)
            gaveUp = service.whenGaveUp()
            session.sendStreamError("conflict", text="Replaced by new connection")
            yield session.whenClosed()
        error = yield gaveUp
        self.assertIsInstance(error, ConfigurationError)
        self.assertIn("resource 'yadiskpush-test'", str(error))
        self.assertIn("--resource", str(error))
        self.assertIs(service.gaveUp, error)
        # Two reconnects, each after the conflict floor; none after the third.
        self.assertEqual(policy.requested, [MINIMUM_DELAY_BY_CONDITION["conflict"]] * 2)
        self.assertFalse(service.retrying)
        self.assertEqual(len(server.sessions), 3)
        self.assertEqual(len(received), 1)
        errors = logs.clientMessages(LogLevel.error)
        self.assertIn(str(error), errors)
        self.assertIn("Giving up; the client will not reconnect", errors)

    @defer.inlineCallbacks
    def test_twoClientsOneResource(self) -> Steps:
        """Two clients fighting over one resource: one stops, one stays."""
        server = yield self.startServer()
        settings = self.settingsFor(server)
        first, firstPolicy = self.startFastClient(settings)
        yield first.whenReady()
        second, secondPolicy = self.startFastClient(settings)
        # Each takes the resource from the other in turn, until one of them
        # has lost it three times in a row.
        loser = yield defer.DeferredList(
            [first.whenGaveUp(), second.whenGaveUp()],
            fireOnOneCallback=True,
            consumeErrors=True,
        )
        error, index = loser
        self.assertIsInstance(error, ConfigurationError)
        self.assertIn("resource 'yadiskpush-test'", str(error))
        winner = (first, second)[1 - index]
        yield winner.whenReady()
        [session] = server.openSessions(LOGIN)
        self.assertEqual(session.jid, winner.jid)
        self.assertIsNone(winner.gaveUp)
        self.assertTrue(winner.retrying)
        conflicts = server.eventsOf("stream-error-sent")
        self.assertEqual({e.details["condition"] for e in conflicts}, {"conflict"})
        self.assertEqual(len(conflicts), 5)
        for policy in (firstPolicy, secondPolicy):
            self.assertEqual(
                set(policy.requested), {MINIMUM_DELAY_BY_CONDITION["conflict"]}
            )

    @defer.inlineCallbacks
    def test_hostUnknownGivesUp(self) -> Steps:
        """host-unknown over TLS: the client stops and names --domain."""
        server, service, policy, received = yield self.connected(
            Faults(streamErrorAt="bind", streamError="host-unknown")
        )
        error = yield service.whenGaveUp()
        self.assertIsInstance(error, ConfigurationError)
        self.assertIn("host-unknown", str(error))
        self.assertIn("check --domain", str(error))
        [session] = server.sessions
        yield session.whenClosed()
        self.assertEqual(policy.requested, [])
        self.assertFalse(service.retrying)

    @defer.inlineCallbacks
    def test_hostUnknownBeforeTLSRetried(self) -> Steps:
        """host-unknown before TLS is not trusted: retried, on the TLS port."""
        server, service, policy, received = yield self.connected(domain="wrong.example")
        error = yield service.whenConnectionFailed()
        self.assertIsInstance(error, StreamErrorReceived)
        self.assertIn("before TLS", str(error))
        self.assertIsNone(service.gaveUp)
        self.assertTrue(service.dialer.preferDirectTLS)
        self.assertEqual(server.eventsOf("auth"), [])

    @defer.inlineCallbacks
    def test_seeOtherHost(self) -> Steps:
        """see-other-host over TLS: the client goes to the other server."""
        server, service, policy, received = yield self.connected()
        other = yield self.startServer(ca=server.ca)
        session = yield self.readySession(server, service)
        failed = service.whenConnectionFailed()
        target = f"localhost:{other.starttlsPort}"
        session.sendStreamError("see-other-host", host=target)
        error = yield failed
        self.assertIsInstance(error, StreamErrorReceived)
        self.assertIn(f"the server redirects to {target}", str(error))
        moved = yield other.whenSubscribed(1)
        yield service.whenReady()
        self.assertTrue(moved.encrypted)
        # A redirect is followed at once (the jitter is fixed at 0 here).
        self.assertEqual(policy.requested, [0.0])
        self.assertEqual(len(server.sessions), 1)
        answer = yield other.push(LOGIN, {"t": "diff"})
        self.assertEqual(answer["type"], "result")
        self.assertEqual([n.stanzaId for n in received], [answer["id"]])

    @defer.inlineCallbacks
    def test_seeOtherHostBeforeTLSIgnored(self) -> Steps:
        """A see-other-host before TLS is not followed: anyone could send it."""
        decoy = yield self.startServer()
        server, service, policy, received = yield self.connected(
            Faults(
                streamErrorAt="header",
                streamError="see-other-host",
                seeOtherHost=f"localhost:{decoy.starttlsPort}",
            )
        )
        error = yield service.whenConnectionFailed()
        self.assertIsInstance(error, StreamErrorReceived)
        self.assertEqual(error.condition, "see-other-host")
        self.assertNotIn("redirects", str(error))
        session = yield self.readySession(server, service)
        self.assertEqual(session.number, 2)
        self.assertEqual(decoy.sessions, [])
        yield self.assertPushesArrive(server, received)


class HandshakeTests(FaultTestCase):
    """Failures before the session is open."""

    @defer.inlineCallbacks
    def test_wrongTokenNoRetry(self) -> Steps:
        """A rejected token: give up after one attempt, no reconnect storm."""
        server = yield self.startServer(accounts={LOGIN: "the-right-token"})
        service, policy = self.startFastClient(self.settingsFor(server))
        error = yield service.whenGaveUp()
        self.assertIsInstance(error, AuthenticationFailed)
        self.assertEqual(error.condition, "not-authorized")
        [session] = server.sessions
        yield session.whenClosed()
        self.assertEqual(len(server.eventsOf("auth")), 1)
        self.assertEqual(len(server.eventsOf("auth-failure")), 1)
        # The policy was never asked for a delay, and nothing is left that
        # could ask it: the connection service is stopped.
        self.assertEqual(policy.requested, [])
        self.assertFalse(service.retrying)
        self.assertEqual(len(server.sessions), 1)

    @defer.inlineCallbacks
    def test_handshakeStall(self) -> Steps:
        """A server that stops answering SASL: HandshakeTimeout, then recover."""
        server, service, policy, received = yield self.connected(
            Faults(stallAt="auth"), handshakeTimeout=1.0
        )
        error = yield service.whenConnectionFailed()
        self.assertIsInstance(error, HandshakeTimeout)
        self.assertEqual(error.step, "authentication")
        self.assertIn("within 1 s", str(error))
        [stalled] = [s for s in server.sessions if s.stalled]
        yield stalled.whenClosed()
        self.assertEqual(stalled.number, 1)
        session = yield self.readySession(server, service)
        self.assertEqual(session.number, 2)
        self.assertEqual(policy.requested, [0.0])
        yield self.assertPushesArrive(server, received)
