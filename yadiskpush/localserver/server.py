"""
The local push server: two loopback listeners that play the vendor's side.

:class:`LocalServer` listens on a STARTTLS port (plain TCP, then
``<starttls/>``) and on a port where TLS starts with the first byte, as the
vendor does on 5222 and 443, with a certificate from a throwaway CA. It
serves the client end-to-end tests, the fault-injection tests and
``twistd yadiskpush --demo``. Each connection is a
:class:`~yadiskpush.localserver.session.ServerSession`; the server keeps
them all, logs every step as an :class:`~yadiskpush.localserver.events.Event`
and offers Deferreds to wait on any of them.

Event kinds, in handshake order: ``connected``, ``header``, ``starttls``
(``starttls-refused``), ``compress``/``compressed``
(``compression-refused``), ``auth-before-tls``, ``auth``, ``auth-failure``,
``auth-success``, ``bind-request``, ``bound``, ``session-request``,
``session-opened``, ``version-sent``, ``version-answer``, ``ping-sent``,
``ping-answer``, ``client-ping``, ``subscribe-request``, ``subscribed``,
``push-sent``, ``push-answer``, ``push-acked``, ``push-refused``,
``unknown-iq``, ``unexpected-answer``, ``ignored``, ``fault``, ``stalled``,
``raw-sent``, ``stream-error-sent``, ``stream-error-received``,
``violation``, ``client-closed``, ``data-after-close``, ``server-closed``,
``closed``; server-wide: ``listening``, ``shutdown``, ``stopped``.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import defer, endpoints, protocol
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)
from twisted.words.protocols.jabber import jid
from twisted.words.xish import domish

from yadiskpush.localserver.ca import CertificateAuthority, ServerCertificate
from yadiskpush.localserver.events import Event, EventLog, Matcher
from yadiskpush.localserver.faults import Faults
from yadiskpush.localserver.redelivery import (
    DEFAULT_REDELIVER_DELAY,
    DEFAULT_WINDOW,
    PushRecord,
    RedeliveringPushQueue,
)
from yadiskpush.localserver.session import (
    STARTTLS_PORT,
    TLS_PORT,
    ServerSession,
    ServerXmlStream,
)

LOG_NAMESPACE = "yadiskpush.localserver"
DEFAULT_MAX_STANZA_SIZE = 1024 * 1024


class NoOpenSession(Exception):
    """A push was asked for a login that has no open (subscribed) session."""

    def __init__(self, login: str) -> None:
        super().__init__(
            f"no open session of {login!r} to push to "
            "(a session gets pushes once it has subscribed)"
        )
        self.login = login


@dataclass(frozen=True)
class SentPush:
    """
    One push the server sent.

    :ivar id: the IQ id (``push-N`` with the server's
        :attr:`~LocalServer.pushIdPrefix`, unique on the server).
    :ivar login: the account.
    :ivar jid: the full JID it went to.
    :ivar session: the connection number.
    :ivar xml: the IQ as sent.
    :ivar sentAt: the clock's time when sent.
    """

    id: str
    login: str
    jid: str
    session: int
    xml: str
    sentAt: float


def quietLogger(level: LogLevel) -> Logger:
    """
    A logger in :data:`LOG_NAMESPACE` that passes on only events at
    ``level`` or above: the demo shows the client's log, not the server's.
    """
    predicate = LogLevelFilterPredicate(defaultLogLevel=level)
    return Logger(
        namespace=LOG_NAMESPACE,
        observer=FilteringLogObserver(globalLogPublisher, [predicate]),
    )


class _ServerFactory(protocol.ServerFactory):
    """Builds one :class:`ServerXmlStream` and session per connection."""

    # No "Starting factory" lines in the client's demo log.
    noisy = False

    def __init__(self, server: LocalServer, port: str) -> None:
        self.server = server
        self.port = port

    def logPrefix(self) -> str:
        return f"yadiskpush local server ({self.port} port)"

    def buildProtocol(self, addr: Any) -> ServerXmlStream:
        xs = ServerXmlStream(self.server._newSession(self.port))
        xs.factory = self
        xs.maxStanzaSize = self.server.maxStanzaSize
        return xs


class LocalServer:
    """
    The vendor's push server, on loopback, for tests and the demo.

    :ivar accounts: login -> OAuth token; may be changed at any time.
    :ivar domain: the XMPP domain (stream ``from``, JID host).
    :ivar ca: the CA that issued the server certificate.
    :ivar certificate: the server certificate and key (PEM).
    :ivar tlsOptions: the server's TLS context factory.
    :ivar starttlsPort: the STARTTLS port; the real one once started.
    :ivar tlsPort: the direct-TLS port; the real one once started.
    :ivar pingInterval: seconds between server pings, ``None`` for none.
    :ivar compressionAfterAuth: offer zlib only after SASL (the XEP-0170
        order) instead of before it (the vendor's order).
    :ivar pushOnlyToSubscribed: :meth:`push` skips sessions that did not
        subscribe, as the real service does.
    :ivar faults: the :class:`Faults` of every connection not given its own
        with :meth:`faultNextConnection`.
    :ivar sessions: every connection accepted, in order (``sessions[n - 1]``
        is connection ``n``).
    :ivar events: the :class:`EventLog`.
    :ivar pushLog: every push sent, in order.
    :ivar handshakesInFlight: connections accepted whose session is not
        open yet (and that are not closed).
    :ivar mostHandshakesInFlight: the most there ever were at once (a test
        of the client's handshake limit reads it).
    :ivar acks: push id -> number of ``result`` answers (an exactly-once
        delivery test asserts ``acks[id] == 1``).
    :ivar pushIdPrefix: what every push id starts with (``push-`` by
        default, then a count from 1).
    :ivar redelivery: the at-least-once queues behind :meth:`enqueue`; each
        push's :class:`~yadiskpush.localserver.redelivery.PushRecord` is in
        its ``records``.
    """

    def __init__(
        self,
        accounts: Mapping[str, str],
        domain: str = "ya.ru",
        interface: str = "127.0.0.1",
        starttlsPort: int = 0,
        tlsPort: int = 0,
        hostNames: list[str] | None = None,
        ca: CertificateAuthority | None = None,
        certificate: ServerCertificate | None = None,
        pingInterval: float | None = None,
        compressionAfterAuth: bool = False,
        pushOnlyToSubscribed: bool = True,
        maxStanzaSize: int = DEFAULT_MAX_STANZA_SIZE,
        faults: Faults | None = None,
        reactor: Any = None,
        clock: IReactorTime | None = None,
        logLevel: LogLevel = LogLevel.warn,
        window: int = DEFAULT_WINDOW,
        redeliverDelay: float = DEFAULT_REDELIVER_DELAY,
        pushIdPrefix: str = "push-",
    ) -> None:
        """
        :param hostNames: names for the certificate's subjectAltName;
            defaults to ``localhost`` and ``interface``.
        :param ca: the issuing CA; a fresh one by default.
        :param certificate: use this certificate (e.g. one for a wrong host
            or from another CA) instead of issuing one from ``ca``.
        :param reactor: where to listen; the global reactor by default.
        :param clock: timestamps and pings; ``reactor`` by default.
        :param logLevel: the lowest level of server log events passed on.
        :param window: for pushes from :meth:`enqueue`, how many may be
            unanswered on one session at a time.
        :param redeliverDelay: for pushes from :meth:`enqueue`, seconds (on
            ``clock``) before one refused with an ``error`` is sent again on
            the same session.
        :param pushIdPrefix: push ids are this and a count from 1; a server
            that is restarted while clients stay up gives each start its own
            prefix, so that a client deduplicating by id drops nothing.
        """
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor
        self.reactor = reactor
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.accounts = dict(accounts)
        self.domain = domain
        self.interface = interface
        self.starttlsPort = starttlsPort
        self.tlsPort = tlsPort
        self.ca = ca if ca is not None else CertificateAuthority.generate()
        names = hostNames if hostNames is not None else ["localhost", interface]
        self.certificate = (
            certificate
            if certificate is not None
            else self.ca.issueServerCertificate(names)
        )
        self.tlsOptions = self.certificate.serverOptions()
        self.pingInterval = pingInterval
        self.compressionAfterAuth = compressionAfterAuth
        self.pushOnlyToSubscribed = pushOnlyToSubscribed
        self.maxStanzaSize = maxStanzaSize
        self.faults = faults if faults is not None else Faults()
        self.log = quietLogger(logLevel)
        self.events = EventLog(self.clock)
        self.sessions: list[ServerSession] = []
        self.pushLog: list[SentPush] = []
        self.acks: Counter[str] = Counter()
        self._faultQueue: deque[Faults] = deque()
        self._handshaking: set[int] = set()
        self.mostHandshakesInFlight = 0
        self._pushCount = 0
        self.pushIdPrefix = pushIdPrefix
        self._listeningPorts: list[IListeningPort] = []
        self.redelivery = RedeliveringPushQueue(self, window, redeliverDelay)

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> defer.Deferred[LocalServer]:
        """
        Listen on both ports; fires with the server once both listen, with
        :attr:`starttlsPort` and :attr:`tlsPort` set to the real ports.
        """
        plain = endpoints.TCP4ServerEndpoint(
            self.reactor, self.starttlsPort, interface=self.interface
        )
        tls = endpoints.SSL4ServerEndpoint(
            self.reactor, self.tlsPort, self.tlsOptions, interface=self.interface
        )
        d = defer.gatherResults(
            [
                plain.listen(_ServerFactory(self, STARTTLS_PORT)),
                tls.listen(_ServerFactory(self, TLS_PORT)),
            ],
            consumeErrors=True,
        )

        def listening(ports: list[IListeningPort]) -> LocalServer:
            self._listeningPorts = ports
            self.starttlsPort = ports[0].getHost().port
            self.tlsPort = ports[1].getHost().port
            self.events.record(
                "listening", starttlsPort=self.starttlsPort, tlsPort=self.tlsPort
            )
            self.log.info(
                "Local push server for {domain} on {interface}: STARTTLS port "
                "{starttlsPort}, TLS port {tlsPort}",
                domain=self.domain,
                interface=self.interface,
                starttlsPort=self.starttlsPort,
                tlsPort=self.tlsPort,
            )
            return self

        def failed(reason: Any) -> Any:
            # One port may have opened although the other failed.
            reason.trap(defer.FirstError)
            return self.stop().addCallback(lambda _: reason.value.subFailure)

        return d.addCallbacks(listening, failed)

    def stop(self) -> defer.Deferred[None]:
        """
        Stop listening and reset every open connection; fires when all are
        gone, so that trial finds a clean reactor.
        """
        waits: list[defer.Deferred[Any]] = []
        ports, self._listeningPorts = self._listeningPorts, []
        for port in ports:
            waits.append(defer.maybeDeferred(port.stopListening))
        for session in self.sessions:
            if not session.closed:
                waits.append(session.whenClosed())
                session.abort()
        self.redelivery.stop()
        self.events.record("stopped")
        return defer.gatherResults(waits).addCallback(lambda _: None)

    def shutdown(
        self, timeout: float = 2.0, condition: str = "system-shutdown"
    ) -> defer.Deferred[None]:
        """
        Stop as a real server does: end every live stream with a
        ``<stream:error/>`` of ``condition`` and ``</stream:stream>``, give
        the clients ``timeout`` seconds (on :attr:`clock`) to close their
        side, then :meth:`stop`. A client sees a clean close and reconnects.
        """
        self.events.record("shutdown", condition=condition)
        for session in self.sessions:
            if session.closed or session.closing:
                continue
            if session.serverClosed:
                session.drop()
            else:
                session.sendStreamError(condition)
        done: defer.Deferred[None] = defer.Deferred()

        def finish(_: object = None) -> None:
            if not done.called:
                done.callback(None)

        timer = self.clock.callLater(timeout, finish)
        defer.gatherResults(
            [s.whenClosed() for s in self.sessions if not s.closed]
        ).addCallback(finish)
        done.addCallback(lambda _: timer.cancel() if timer.active() else None)
        return done.addCallback(lambda _: self.stop())

    def liveSessions(self, login: str | None = None) -> list[ServerSession]:
        """Connections not closed yet (of ``login``, if given), open or not."""
        return [
            s
            for s in self.sessions
            if not s.closed and (login is None or s.login == login)
        ]

    def drop(self, login: str | None = None) -> list[ServerSession]:
        """
        Reset the connection of every live session (of ``login``), without
        ``</stream:stream>``: a network failure, for testing reconnects.

        :returns: the sessions dropped.
        """
        sessions = self.liveSessions(login)
        for session in sessions:
            session.abort()
        return sessions

    def close(self, login: str | None = None) -> list[ServerSession]:
        """
        Close every live stream (of ``login``) cleanly with
        ``</stream:stream>``; each ends when its client answers in kind.

        :returns: the sessions closed.
        """
        sessions = [s for s in self.liveSessions(login) if not s.serverClosed]
        for session in sessions:
            session.close()
        return sessions

    def writeCACertificate(self, path: str | Path) -> Path:
        """Write the CA certificate (PEM) for the client's ``--ca-file``."""
        return self.ca.writeCACertificate(path)

    # -- faults ---------------------------------------------------------------

    def faultNextConnection(self, faults: Faults) -> None:
        """
        Give the next accepted connection (on either port) these faults.

        Calls queue up: the first call's faults go to the next connection,
        the second call's to the one after, and so on; then :attr:`faults`
        applies again.
        """
        self._faultQueue.append(faults)

    # -- sessions -------------------------------------------------------------

    def _newSession(self, port: str) -> ServerSession:
        faults = self._faultQueue.popleft() if self._faultQueue else self.faults
        session = ServerSession(self, len(self.sessions) + 1, port, faults)
        self.sessions.append(session)
        return session

    @property
    def handshakesInFlight(self) -> int:
        return len(self._handshaking)

    def _handshakeStarted(self, session: ServerSession) -> None:
        self._handshaking.add(session.number)
        self.mostHandshakesInFlight = max(
            self.mostHandshakesInFlight, len(self._handshaking)
        )

    def _handshakeEnded(self, session: ServerSession) -> None:
        self._handshaking.discard(session.number)

    def _sessionClosed(self, session: ServerSession) -> None:
        """
        Hook for the session's close (the record is in the event log): what
        it left unanswered of the redelivered pushes waits for the next.
        """
        self.redelivery.sessionClosed(session)

    def _sessionSubscribed(self, session: ServerSession) -> None:
        """Hook for a subscription: queued pushes go to the session now."""
        self.redelivery.sessionSubscribed(session)

    def _resourceBound(self, session: ServerSession, full: jid.JID) -> None:
        # As on real servers, a second stream binding the same full JID
        # replaces the first, which ends with ``conflict``.
        for other in self.openSessions():
            if other is not session and other.jid == full:
                other.sendStreamError("conflict", text="Replaced by new connection")

    def openSessions(self, login: str | None = None) -> list[ServerSession]:
        """Connections whose XMPP session is open (of ``login``, if given)."""
        return [
            s
            for s in self.sessions
            if s.jid is not None
            and not s.closed
            and not s.closing
            and (login is None or s.login == login)
        ]

    def sessionOf(self, event: Event) -> ServerSession:
        """The session an event belongs to."""
        if event.session is None:
            raise ValueError(f"{event.kind!r} is a server-wide event")
        return self.sessions[event.session - 1]

    # -- waiting --------------------------------------------------------------

    def whenEvent(
        self, kind: str, count: int | None = None, match: Matcher | None = None
    ) -> defer.Deferred[Event]:
        """See :meth:`EventLog.whenEvent`."""
        return self.events.whenEvent(kind, count, match)

    def _whenSession(
        self, kind: str, count: int | None, login: str | None
    ) -> defer.Deferred[ServerSession]:
        match = None
        if login is not None:

            def match(event: Event) -> bool:
                return self.sessionOf(event).login == login

        return self.whenEvent(kind, count, match).addCallback(self.sessionOf)

    def whenConnected(self, count: int | None = None) -> defer.Deferred[ServerSession]:
        """
        The ``count``-th accepted connection (from the start), or the next
        one if ``count`` is ``None``.
        """
        return self._whenSession("connected", count, None)

    def whenSessionOpened(
        self, count: int | None = None, login: str | None = None
    ) -> defer.Deferred[ServerSession]:
        """
        The ``count``-th session to open since the server started (at once if
        it already did), or the next one if ``count`` is ``None``; only
        sessions of ``login`` count if it is given.
        """
        return self._whenSession("session-opened", count, login)

    def whenSubscribed(
        self, count: int | None = None, login: str | None = None
    ) -> defer.Deferred[ServerSession]:
        """Like :meth:`whenSessionOpened`, for the push subscription."""
        return self._whenSession("subscribed", count, login)

    def eventsOf(self, kind: str) -> list[Event]:
        """Every event of one kind, oldest first."""
        return self.events.ofKind(kind)

    @property
    def plaintextAuthAttempts(self) -> int:
        """How many times a client sent ``<auth/>`` before TLS (must be 0)."""
        return len(self.eventsOf("auth-before-tls"))

    # -- pushes ---------------------------------------------------------------

    def push(
        self,
        login: str,
        attributes: dict[str, str] | None = None,
        childrenXml: str = "",
    ) -> defer.Deferred[domish.Element]:
        """
        Push one Disk notification to every open session of ``login``
        (only subscribed ones, unless :attr:`pushOnlyToSubscribed` is off).

        :returns: a Deferred firing with the first answer of a client: a
            ``result`` IQ (an ack) or an ``error`` IQ. It fails with
            :class:`NoOpenSession` if there is no such session, and with
            :class:`~yadiskpush.localserver.session.NoAnswer` if every
            connection closes before answering.
        """
        targets = [
            s
            for s in self.openSessions(login)
            if s.subscribed or not self.pushOnlyToSubscribed
        ]
        if not targets:
            return defer.fail(NoOpenSession(login))
        answers = [s.push(attributes, childrenXml) for s in targets]
        if len(answers) == 1:
            return answers[0]

        def first(result: Any) -> Any:
            if isinstance(result, tuple):
                return result[0]
            return result[0][1]

        return defer.DeferredList(
            answers, fireOnOneCallback=True, consumeErrors=True
        ).addCallback(first)

    def _nextPushId(self) -> str:
        self._pushCount += 1
        return f"{self.pushIdPrefix}{self._pushCount}"

    def _pushSent(self, session: ServerSession, requestId: str, xml: str) -> None:
        assert session.login is not None and session.jid is not None
        self.pushLog.append(
            SentPush(
                requestId,
                session.login,
                session.jid.full(),
                session.number,
                xml,
                self.clock.seconds(),
            )
        )

    def _pushAnswered(
        self, session: ServerSession, requestId: str, iq: domish.Element
    ) -> None:
        # The queue first, so that whoever waits on ``push-acked`` or
        # ``push-refused`` finds it up to date (and the freed window slot
        # already refilled).
        self.redelivery.pushAnswered(session, requestId, iq)
        if iq.getAttribute("type") == "result":
            self.acks[requestId] += 1
            self.events.record(
                "push-acked", session.number, id=requestId, count=self.acks[requestId]
            )
        else:
            conditions = [
                c.firstChildElement().name
                for c in iq.elements()
                if c.name == "error" and c.firstChildElement() is not None
            ]
            self.events.record(
                "push-refused",
                session.number,
                id=requestId,
                condition=conditions[0] if conditions else None,
            )

    # -- at-least-once pushes -------------------------------------------------

    def enqueue(
        self,
        login: str,
        attributes: dict[str, str] | None = None,
        childrenXml: str = "",
    ) -> str:
        """
        Push one Disk notification to ``login`` at least once, as the vendor
        does: it is sent to every subscribed session of ``login`` (now, or
        once one subscribes) and again, with the same id, until a client
        answers it with a ``result``. See
        :mod:`yadiskpush.localserver.redelivery` for the rules.

        :param attributes: attributes of the ``yandex:push:disk`` query.
        :param childrenXml: raw XML put inside the query, unchecked.
        :returns: the push's id (unique; stable across re-sends).
        """
        return self.redelivery.enqueue(login, attributes, childrenXml)

    def unacked(self, login: str) -> list[str]:
        """Ids of the pushes from :meth:`enqueue` for ``login`` not acked yet."""
        return self.redelivery.unacked(login)

    def whenAllAcked(self, login: str) -> defer.Deferred[None]:
        """Fires once every push from :meth:`enqueue` for ``login`` is acked."""
        return self.redelivery.whenAllAcked(login)

    def pushRecord(self, pushId: str) -> PushRecord:
        """
        The record of one push from :meth:`enqueue`: times sent and acked, the
        sessions it went to.

        :raises KeyError: for an id :meth:`enqueue` did not return.
        """
        return self.redelivery.records[pushId]
