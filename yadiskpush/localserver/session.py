"""
The vendor's side of one client connection: handshake, session, requests.

:class:`ServerSession` plays what the vendor page shows, step by step:
stream header and features, STARTTLS, XEP-0138 zlib, ``X-YANDEX-OAUTH``,
resource bind and session, then the version query, pings, the
``yandex:push:disk`` subscription and pushes. It records every step in the
server's event log, and is the handle a test holds on a live connection:
it can push, ping, stall, drop or end the stream with an error at any
moment, and wait for the client's answers without sleeping.

One object serves one connection from TCP accept to close, so "session"
here also covers the handshake before the XMPP session is open
(:attr:`ServerSession.sessionOpen` says when it is).
"""

from __future__ import annotations

import base64
import binascii
import secrets
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.protocols.jabber import error, jid, xmlstream
from twisted.words.protocols.jabber.xmlstream import NS_STREAMS
from twisted.words.xish import domish

from yadiskpush.connection.compression import NS_COMPRESS_PROTOCOL, startCompression
from yadiskpush.connection.stream import PushXmlStream
from yadiskpush.errors import ProtocolViolation
from yadiskpush.localserver import stanzas
from yadiskpush.localserver.faults import Faults
from yadiskpush.localserver.stanzas import (
    MECHANISM,
    NS_CLIENT,
    NS_DISK_PUSH,
    NS_PING,
    NS_VERSION,
    NS_XMPP_BIND,
    NS_XMPP_SASL,
    NS_XMPP_SESSION,
    NS_XMPP_TLS,
)

if TYPE_CHECKING:
    from yadiskpush.localserver.server import LocalServer

#: The id of the XEP-0092 version query, as on the vendor page.
VERSION_QUERY_ID = "ask_version"

#: Ports a session can arrive on.
STARTTLS_PORT = "starttls"
TLS_PORT = "tls"


class NoAnswer(Exception):
    """The connection closed before the client answered a server request."""

    def __init__(self, requestId: str) -> None:
        super().__init__(f"the connection closed before {requestId!r} was answered")
        self.requestId = requestId


class ServerXmlStream(PushXmlStream):
    """
    The hardened XML stream (restricted XML, size limit, zlib input) as the
    receiving entity; every element goes to the session.
    """

    initiating = False
    authenticator: ServerSession

    def sendHeader(self) -> None:
        """
        The vendor's header: an XML declaration, ``id``, ``from`` (always the
        server's domain) and ``xml:lang``.
        """
        session = self.authenticator
        sid = f" id='{self.sid}'" if self.sid else ""
        version = " version='1.0'" if self.version >= (1, 0) else ""
        self.send(
            "<?xml version='1.0'?>"
            f"<stream:stream xmlns='{NS_CLIENT}' xmlns:stream='{NS_STREAMS}'"
            f"{sid} from='{session.server.domain}'{version} xml:lang='en'>"
        )
        self._headerSent = True

    def dataReceived(self, data: bytes) -> None:
        # After the client's </stream:stream> nothing may follow; record it
        # (a client bug worth a test) instead of answering with a stream
        # error after our own closing tag.
        if self.authenticator.clientClosed:
            self.authenticator.dataAfterClose(f"{len(data)} bytes")
            return
        PushXmlStream.dataReceived(self, data)

    def _violate(self, condition: str, detail: str) -> None:
        # Bytes after the closing tag in the same read fail the parser too.
        if self.authenticator.clientClosed:
            self.authenticator.dataAfterClose(detail)
            return
        if self.authenticator.stalled:
            # A stalled server notices nothing and says nothing.
            self.violation = ProtocolViolation(condition, detail)
            self.dispatch(Failure(self.violation), xmlstream.STREAM_ERROR_EVENT)
            return
        PushXmlStream._violate(self, condition, detail)

    def onElement(self, element: domish.Element) -> None:
        self.authenticator.elementReceived(element)

    def onDocumentEnd(self) -> None:
        self.authenticator.clientClosedStream()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        PushXmlStream.connectionLost(self, reason)
        self.authenticator.connectionLost(reason)


class ServerSession(xmlstream.ListenAuthenticator):
    """
    One client connection on the local server, from accept to close.

    :ivar number: 1 for the server's first connection, then 2, ...
    :ivar port: ``"starttls"`` or ``"tls"`` (TLS from the first byte).
    :ivar faults: the :class:`Faults` this connection plays.
    :ivar encrypted: TLS is on (always, on the TLS port).
    :ivar compressed: zlib is on in both directions.
    :ivar login: the authenticated login, or ``None``.
    :ivar jid: the bound full JID, or ``None``.
    :ivar sessionOpen: the session IQ was answered.
    :ivar subscribed: the client subscribed to Disk pushes.
    :ivar stalled: the server stopped answering (fault or :meth:`stall`).
    :ivar closed: the connection is gone.
    :ivar serverClosed: the server sent ``</stream:stream>`` (:meth:`close`):
        nothing more may follow on this stream.
    :ivar clientClosed: the client sent ``</stream:stream>``: a clean close.
    :ivar stanzasReceived: top-level elements received so far.
    :ivar requests: id of every IQ the server sent to -> ``"version"``,
        ``"ping"`` or ``"push"``.
    :ivar answers: request id -> every answer element the client sent for it
        (more than one means the client answered twice).
    """

    namespace = NS_CLIENT
    xmlstream: ServerXmlStream

    def __init__(
        self, server: LocalServer, number: int, port: str, faults: Faults
    ) -> None:
        xmlstream.ListenAuthenticator.__init__(self)
        self.server = server
        self.number = number
        self.port = port
        self.faults = faults
        self._log: Logger = server.log
        self.encrypted = port == TLS_PORT
        self.compressed = False
        self.login: str | None = None
        self.jid: jid.JID | None = None
        self.sessionOpen = False
        self.subscribed = False
        self.stalled = False
        self.closing = False
        self.closed = False
        self.serverClosed = False
        self.clientClosed = False
        self.stanzasReceived = 0
        self.requests: dict[str, str] = {}
        self.answers: dict[str, list[domish.Element]] = {}
        self._answerWaiters: dict[str, list[defer.Deferred[domish.Element]]] = {}
        self._closeWaiters: list[defer.Deferred[ServerSession]] = []
        self._restartStep: str | None = "header"
        self._offeredStartTLS = False
        self._offeredCompression = False
        self._pingCount = 0
        self._pingLoop: task.LoopingCall | None = None

    def __repr__(self) -> str:
        who = self.jid.full() if self.jid else (self.login or "unauthenticated")
        return f"<ServerSession #{self.number} {self.port} {who}>"

    # -- the record -----------------------------------------------------------

    def _record(self, kind: str, **details: Any) -> None:
        self.server.events.record(kind, self.number, **details)
        self._log.debug(
            "session {number}: {kind} {details}",
            number=self.number,
            kind=kind,
            details=details,
        )

    # -- connection and stream headers ----------------------------------------

    def associateWithStream(self, xs: ServerXmlStream) -> None:  # type: ignore[override]
        xmlstream.ListenAuthenticator.associateWithStream(self, xs)
        xs.addObserver(xmlstream.STREAM_ERROR_EVENT, self._onViolation)

    def connectionMade(self) -> None:
        peer = self.xmlstream.transport.getPeer()
        self._record("connected", port=self.port, peer=f"{peer.host}:{peer.port}")
        self.server._handshakeStarted(self)
        self._fault("connect")

    def streamStarted(self, rootElement: domish.Element) -> None:
        if self.stalled or self.closing:
            return
        xs = self.xmlstream
        # ListenAuthenticator.streamStarted, without its JID parse of ``to``
        # (which raises on junk): the header's ``from`` is always our domain.
        xmlstream.Authenticator.streamStarted(self, rootElement)
        xs.namespace = rootElement.defaultUri
        xs.prefixes = {uri: prefix for prefix, uri in rootElement.localPrefixes.items()}
        xs.sid = str(secrets.randbelow(2**32))
        step, self._restartStep = self._restartStep, None
        target = rootElement.getAttribute("to")
        self._record(
            "header",
            to=target,
            step=step,
            encrypted=self.encrypted,
            compressed=self.compressed,
            authenticated=self.login is not None,
        )
        if step is not None and self._fault(step):
            return
        if (rootElement.uri, rootElement.name) != (NS_STREAMS, "stream") or (
            xs.namespace != NS_CLIENT
        ):
            xs.namespace = NS_CLIENT
            self.sendStreamError("invalid-namespace")
            return
        if target != self.server.domain:
            self.sendStreamError(
                "host-unknown", text=f"this server serves {self.server.domain}"
            )
            return
        xs.sendHeader()
        if xs.version < (1, 0):
            return
        afterAuth = self.login is not None
        compression = (
            self.faults.offerCompression
            and not self.compressed
            and self.server.compressionAfterAuth == afterAuth
        )
        starttls = (
            not afterAuth
            and not self.encrypted
            and not self.compressed
            and self.faults.offerStartTLS
        )
        self._offeredStartTLS = starttls
        self._offeredCompression = compression
        xs.send(
            stanzas.features(
                starttls=starttls,
                compression=compression,
                mechanisms=not afterAuth,
                bind=afterAuth,
            )
        )

    def clientClosedStream(self) -> None:
        """The client sent ``</stream:stream>``: answer in kind and close."""
        self.clientClosed = True
        self._record("client-closed")
        if self.stalled:
            return
        if not self.serverClosed:
            # After our own close (:meth:`close`) the stream is ended once.
            self.xmlstream.sendFooter()
        self.xmlstream.transport.loseConnection()

    def dataAfterClose(self, detail: str) -> None:
        """Record that the client sent more after ``</stream:stream>``."""
        self._record("data-after-close", detail=detail)

    def connectionLost(self, reason: Failure) -> None:
        self.closed = True
        self._stopPinging()
        self._record("closed", clean=self.clientClosed, reason=reason.getErrorMessage())
        self.server._handshakeEnded(self)
        self.server._sessionClosed(self)
        waiters, self._answerWaiters = self._answerWaiters, {}
        for requestId, ds in waiters.items():
            for d in ds:
                d.errback(NoAnswer(requestId))
        closeWaiters, self._closeWaiters = self._closeWaiters, []
        for d in closeWaiters:
            d.callback(self)

    def _onViolation(self, reason: Failure) -> None:
        violation = reason.value
        self._record(
            "violation",
            condition=getattr(violation, "condition", None),
            detail=str(violation),
        )

    # -- elements -------------------------------------------------------------

    def elementReceived(self, element: domish.Element) -> None:
        if self.stalled or self.closing:
            why = "stalled" if self.stalled else "closing"
            self._record("ignored", element=element.name, uri=element.uri, why=why)
            return
        self.stanzasReceived += 1
        limit = self.faults.closeAfterStanzas
        if limit is not None and self.stanzasReceived >= limit:
            self._record("fault", step=f"stanza {limit}", action="close")
            self.drop()
            return
        handler = {
            (NS_STREAMS, "error"): self._onStreamError,
            (NS_XMPP_TLS, "starttls"): self._onStartTLS,
            (NS_COMPRESS_PROTOCOL, "compress"): self._onCompress,
            (NS_XMPP_SASL, "auth"): self._onAuth,
            (NS_CLIENT, "iq"): self._onIQ,
        }.get((element.uri, element.name))
        if handler is None:
            self._record("ignored", element=element.name, uri=element.uri, why=None)
        else:
            handler(element)

    def _onStreamError(self, element: domish.Element) -> None:
        child = element.firstChildElement()
        self._record("stream-error-received", condition=child.name if child else None)
        self.closing = True
        self.xmlstream.sendFooter()
        self.xmlstream.transport.loseConnection()

    def _onStartTLS(self, element: domish.Element) -> None:
        xs = self.xmlstream
        if not self._offeredStartTLS or self.encrypted:
            # RFC 6120 5.4.2.2: <failure/>, then close the stream.
            self._record("starttls-refused")
            self.closing = True
            xs.send(domish.Element((NS_XMPP_TLS, "failure")))
            xs.sendFooter()
            xs.transport.loseConnection()
            return
        self._record("starttls")
        if self._fault("starttls"):
            return
        xs.send(domish.Element((NS_XMPP_TLS, "proceed")))
        xs.transport.startTLS(self.server.tlsOptions)
        self.encrypted = True
        self._restartStep = "tls"
        xs.reset()

    def _onCompress(self, element: domish.Element) -> None:
        xs = self.xmlstream
        methods = [str(e).strip() for e in element.elements() if e.name == "method"]
        if self.compressed or not self._offeredCompression:
            self._record("compression-refused", condition="setup-failed")
            xs.send(stanzas.compressionFailure("setup-failed"))
            return
        if methods != ["zlib"]:
            self._record("compression-refused", condition="unsupported-method")
            xs.send(stanzas.compressionFailure("unsupported-method"))
            return
        self._record("compress")
        if self._fault("compress"):
            return
        xs.send(domish.Element((NS_COMPRESS_PROTOCOL, "compressed")))
        startCompression(xs)
        self.compressed = True
        self._restartStep = None
        self._record("compressed")

    def _onAuth(self, element: domish.Element) -> None:
        xs = self.xmlstream
        if self.login is not None:
            self._authFailed("aborted", "already authenticated")
            return
        if not self.encrypted:
            # Recorded on its own so tests can assert a client never does it.
            self._record("auth-before-tls")
            xs.send(
                stanzas.saslFailure(
                    "encryption-required", "Use STARTTLS before authenticating"
                )
            )
            return
        self._record("auth", mechanism=element.getAttribute("mechanism"))
        if self._fault("auth"):
            return
        if element.getAttribute("mechanism") != MECHANISM:
            self._authFailed("invalid-mechanism")
            return
        try:
            payload = base64.b64decode(str(element).strip(), validate=True)
            login, separator, token = payload.decode("utf-8").partition("\0")
        except (binascii.Error, ValueError):
            self._authFailed("incorrect-encoding")
            return
        if not separator or not login:
            self._authFailed("malformed-request", login=login or None)
            return
        if self.server.accounts.get(login) != token:
            self._authFailed("not-authorized", "Invalid OAuth token", login=login)
            return
        self.login = login
        self._record("auth-success", login=login)
        xs.send(domish.Element((NS_XMPP_SASL, "success")))
        self._restartStep = "authed"
        xs.reset()

    def _authFailed(
        self, condition: str, text: str | None = None, login: str | None = None
    ) -> None:
        # The connection stays open, as on real servers: the client must
        # close it (and must not retry the same token).
        self._record("auth-failure", condition=condition, login=login)
        self.xmlstream.send(stanzas.saslFailure(condition, text))

    # -- IQs ------------------------------------------------------------------

    def _onIQ(self, iq: domish.Element) -> None:
        if self.login is None:
            self.sendStreamError("not-authorized", text="authenticate first")
            return
        iqType = iq.getAttribute("type")
        if iqType in ("result", "error"):
            self._onAnswer(iq)
            return
        child = iq.firstChildElement()
        payload = (child.uri, child.name) if child is not None else None
        if iqType not in ("get", "set") or payload is None:
            self._stanzaError(iq, "bad-request")
        elif iqType == "set" and payload == (NS_XMPP_BIND, "bind"):
            self._onBind(iq, child)
        elif iqType == "set" and payload == (NS_XMPP_SESSION, "session"):
            self._onSession(iq)
        elif self.jid is None:
            self._stanzaError(iq, "not-allowed")
        elif (
            iqType == "get"
            and payload == (NS_PING, "ping")
            and iq.getAttribute("to") in (None, self.server.domain)
        ):
            self._record("client-ping", id=iq.getAttribute("id"))
            self.xmlstream.send(xmlstream.toResponse(iq, "result"))
        elif (
            iqType == "set"
            and payload == (NS_DISK_PUSH, "s")
            and iq.getAttribute("to") == self.jid.userhost()
        ):
            self._onSubscribe(iq)
        else:
            self._record(
                "unknown-iq", id=iq.getAttribute("id"), type=iqType, payload=payload
            )
            self._stanzaError(iq, "service-unavailable")

    def _stanzaError(self, iq: domish.Element, condition: str) -> None:
        self.xmlstream.send(error.StanzaError(condition).toResponse(iq))

    def _onBind(self, iq: domish.Element, bind: domish.Element) -> None:
        requested = next(
            (str(e).strip() for e in bind.elements() if e.name == "resource"), ""
        )
        self._record("bind-request", resource=requested or None)
        if self.jid is not None:
            self._stanzaError(iq, "not-allowed")
            return
        if self._fault("bind", iq):
            return
        resource = requested or "yadisk-" + secrets.token_hex(6)
        try:
            full = jid.JID(tuple=(self.login, self.server.domain, resource))
        except jid.InvalidFormat:
            self._stanzaError(iq, "bad-request")
            return
        self.server._resourceBound(self, full)
        self.jid = full
        result = xmlstream.toResponse(iq, "result")
        result.addElement((NS_XMPP_BIND, "bind")).addElement("jid", content=full.full())
        self.xmlstream.send(result)
        self._record("bound", jid=full.full())

    def _onSession(self, iq: domish.Element) -> None:
        self._record("session-request")
        if self.jid is None:
            self._stanzaError(iq, "not-allowed")
            return
        if self._fault("session", iq):
            return
        result = xmlstream.toResponse(iq, "result")
        result.addElement((NS_XMPP_SESSION, "session"))
        self.xmlstream.send(result)
        if self.sessionOpen:
            return
        self.sessionOpen = True
        self.server._handshakeEnded(self)
        self._record("session-opened", jid=self.jid.full())
        if self._fault("opened"):
            return
        query = self._sendRequest(
            "version", VERSION_QUERY_ID, "get", (NS_VERSION, "query")
        )
        self._flush(query.parent, "version")
        self._startPinging()

    def _onSubscribe(self, iq: domish.Element) -> None:
        self._record("subscribe-request", id=iq.getAttribute("id"))
        if self._fault("subscribe", iq):
            return
        self.subscribed = True
        self.xmlstream.send(xmlstream.toResponse(iq, "result"))
        self._record("subscribed", jid=self.jid.full() if self.jid else None)
        self.server._sessionSubscribed(self)

    def _onAnswer(self, iq: domish.Element) -> None:
        requestId = iq.getAttribute("id")
        kind = self.requests.get(requestId)
        if kind is None:
            self._record("unexpected-answer", id=requestId)
            return
        self.answers.setdefault(requestId, []).append(iq)
        iqType = iq.getAttribute("type")
        self._record(f"{kind}-answer", id=requestId, type=iqType)
        if kind == "push":
            self.server._pushAnswered(self, requestId, iq)
        for d in self._answerWaiters.pop(requestId, []):
            d.callback(iq)

    # -- requests from the server --------------------------------------------

    def _sendRequest(
        self, kind: str, requestId: str, iqType: str, payload: tuple[str, str]
    ) -> domish.Element:
        """Build a request to this session's full JID; returns its payload."""
        assert self.jid is not None
        sender = self.jid.userhost() if kind == "push" else self.server.domain
        iq, child = stanzas.request(iqType, requestId, sender, self.jid.full(), payload)
        self.requests[requestId] = kind
        return child

    def _flush(self, iq: domish.Element, kind: str, **details: Any) -> None:
        self.xmlstream.send(iq)
        self._record(f"{kind}-sent", id=iq["id"], **details)

    def whenAnswered(self, requestId: str) -> defer.Deferred[domish.Element]:
        """
        The client's first answer (``result`` or ``error`` IQ) to a request
        the server sent, e.g. :data:`VERSION_QUERY_ID`, a ping or push id.

        Fires at once if the answer already came.

        :raises NoAnswer: (errback) if the connection closes first.
        """
        if requestId in self.answers:
            return defer.succeed(self.answers[requestId][0])
        if self.closed:
            return defer.fail(NoAnswer(requestId))
        d: defer.Deferred[domish.Element] = defer.Deferred()
        self._answerWaiters.setdefault(requestId, []).append(d)
        return d

    def whenClosed(self) -> defer.Deferred[ServerSession]:
        """Fires with this session once its connection is gone; never fails."""
        if self.closed:
            return defer.succeed(self)
        d: defer.Deferred[ServerSession] = defer.Deferred()
        self._closeWaiters.append(d)
        return d

    @property
    def versionAnswer(self) -> domish.Element | None:
        """The client's answer to the version query, once it came."""
        return next(iter(self.answers.get(VERSION_QUERY_ID, [])), None)

    def ping(self) -> defer.Deferred[domish.Element]:
        """Send an XEP-0199 ping now; fires with the client's answer."""
        return self.whenAnswered(self._sendPing())

    def _sendPing(self) -> str:
        self._pingCount += 1
        requestId = f"ping_{self._pingCount}"
        child = self._sendRequest("ping", requestId, "get", (NS_PING, "ping"))
        self._flush(child.parent, "ping")
        return requestId

    def _startPinging(self) -> None:
        interval = self.server.pingInterval
        if interval is None or self.closed:
            return
        self._pingLoop = task.LoopingCall(self._periodicPing)
        self._pingLoop.clock = self.server.clock
        self._pingLoop.start(interval, now=False).addErrback(
            lambda f: self._log.failure("periodic ping failed", f)
        )

    def _periodicPing(self) -> None:
        if not (self.closed or self.closing or self.stalled):
            self._sendPing()

    def _stopPinging(self) -> None:
        if self._pingLoop is not None and self._pingLoop.running:
            self._pingLoop.stop()
        self._pingLoop = None

    def push(
        self, attributes: dict[str, str] | None = None, childrenXml: str = ""
    ) -> defer.Deferred[domish.Element]:
        """
        Send one Disk push to this session's full JID.

        :param attributes: attributes of the ``yandex:push:disk`` query.
        :param childrenXml: raw XML put inside the query, unchecked.
        :returns: a Deferred firing with the client's answer (a ``result``
            IQ is an ack, an ``error`` IQ a refusal); it fails with
            :class:`NoAnswer` if the connection closes first, so a test that
            does not wait for it should add an errback.
        :raises RuntimeError: if no resource is bound on this connection.
        """
        if self.jid is None or self.closed:
            raise RuntimeError(f"{self!r} has no bound resource to push to")
        requestId = self.server._nextPushId()
        d = self.whenAnswered(requestId)
        self.sendPush(requestId, attributes, childrenXml)
        return d

    def sendPush(
        self,
        requestId: str,
        attributes: dict[str, str] | None = None,
        childrenXml: str = "",
    ) -> None:
        """
        Send one Disk push with a given id, without waiting for its answer.

        The redelivering queue sends a push again under the same id, on this
        session or the next, and follows its answers through the server
        (``push-answer`` events); :meth:`push` is the one-off form that
        picks a fresh id and returns the answer. Sent again on the same
        session, the id collects every answer in :attr:`answers`.

        :raises RuntimeError: if no resource is bound on this connection.
        """
        if self.jid is None or self.closed:
            raise RuntimeError(f"{self!r} has no bound resource to push to")
        query = self._sendRequest("push", requestId, "set", (NS_DISK_PUSH, "query"))
        for name, value in (attributes or {}).items():
            query[name] = value
        if childrenXml:
            query.addRawXml(childrenXml)
        iq = query.parent
        self._flush(iq, "push", login=self.login, jid=self.jid.full())
        self.server._pushSent(self, requestId, iq.toXml())

    # -- faults ---------------------------------------------------------------

    def _fault(self, step: str, iq: domish.Element | None = None) -> bool:
        """Play the fault configured for ``step``; ``True`` if one ran."""
        f = self.faults
        if f.rawAt == step:
            self._record("fault", step=step, action="raw")
            self.sendRaw(f.raw)
        elif f.streamErrorAt == step:
            self._record("fault", step=step, action="stream-error")
            host = f.seeOtherHost if f.streamError == "see-other-host" else None
            self.sendStreamError(f.streamError, f.streamErrorText, host)
        elif f.closeAt == step:
            self._record("fault", step=step, action="close")
            self.drop()
        elif f.abortAt == step:
            self._record("fault", step=step, action="abort")
            self.abort()
        elif f.stallAt == step:
            self._record("fault", step=step, action="stall")
            self.stall()
        elif f.iqErrorAt == step and iq is not None:
            self._record("fault", step=step, action="iq-error", condition=f.iqError)
            self._stanzaError(iq, f.iqError)
        else:
            return False
        return True

    def sendStreamError(
        self, condition: str, text: str | None = None, host: str | None = None
    ) -> None:
        """
        End the stream with ``<stream:error/>`` and close the connection.

        :param host: for ``see-other-host``, the host (``host:port``) the
            client should use instead.
        """
        if self.closed:
            return
        xs = self.xmlstream
        self._record("stream-error-sent", condition=condition, host=host)
        self.closing = True
        if not xs._headerSent:
            xs.sendHeader()
        xs.send(stanzas.streamError(condition, text, host))
        xs.sendFooter()
        xs.transport.loseConnection()

    def sendRaw(self, data: bytes) -> None:
        """Write bytes as they are (through TLS and zlib if those are on)."""
        if not self.closed:
            self._record("raw-sent", size=len(data))
            self.xmlstream.send(data)

    def stall(self) -> None:
        """Stop answering and sending anything; the connection stays open."""
        self._record("stalled")
        self.stalled = True
        self._stopPinging()

    def close(self) -> None:
        """
        Close cleanly: send ``</stream:stream>``; the client's own closing
        tag then ends the connection (``stop()`` ends it regardless).
        """
        if not self.closed:
            self._record("server-closed")
            self.serverClosed = True
            self.xmlstream.sendFooter()

    def drop(self) -> None:
        """Close TCP without ``</stream:stream>`` (a FIN, or TLS close)."""
        if not self.closed:
            self.closing = True
            self.xmlstream.transport.loseConnection()

    def abort(self) -> None:
        """Reset the connection at once (RST), dropping unsent data."""
        if not self.closed:
            self.closing = True
            self.xmlstream.transport.abortConnection()
