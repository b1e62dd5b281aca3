"""
The initializer chain of one connection, and the stream factory.

The order follows the vendor's page: stream header, STARTTLS (required unless
TLS began with the first byte), optional zlib, ``X-YANDEX-OAUTH``, optional
zlib again (for servers that offer it only after SASL, XEP-0170), resource
bind, session.

One :class:`YandexAuthenticator` is made for each connection, from that
connection's :class:`~yadiskpush.connection.attempt.Attempt`: it verifies TLS
with the attempt's verifier and sends the attempt's token, and it keeps the
facts learned on the way (encrypted yet? which step? a redirect target?) and
the first error that ends the connection. The service reads that one
outcome when the stream ends (``STREAM_END_EVENT``); nothing is carried from
one connection to the next.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from twisted.words.protocols.jabber import client, xmlstream
from twisted.words.protocols.jabber import error as jabberError
from twisted.words.protocols.jabber.ijabber import IIQResponseTracker
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish.xmlstream import XmlStreamFactoryMixin
from zope.interface import alsoProvides, noLongerProvides

from yadiskpush.connection.attempt import Attempt
from yadiskpush.connection.compression import CompressionInitiatingInitializer
from yadiskpush.connection.sasl import YandexOAuthInitializer
from yadiskpush.connection.stream import PushXmlStream, redactText, secretForms
from yadiskpush.errors import (
    HandshakeTimeout,
    StartTLSNotOffered,
    StreamErrorReceived,
    YaDiskPushError,
)
from yadiskpush.failures import describeFailure, describeLoss
from yadiskpush.logs import Logger
from yadiskpush.settings import Settings

#: Dispatch a :class:`~yadiskpush.errors.YaDiskPushError` on the stream under
#: this event to end the connection with it (used by handlers: no
#: subscription, dead link, a server that stopped reading).
CONNECTION_FAILED_EVENT = "//event/yadiskpush/connection-failed"

#: Dispatched on the stream (with the stream) once the server accepted the
#: subscription: from here on, pushes arrive.
SUBSCRIBED_EVENT = "//event/yadiskpush/subscribed"

#: Events dispatched at most once on a stream: their bootstraps are
#: installed as one-time observers (see PushXmlStreamFactory).
ONCE_PER_STREAM = frozenset(
    (xmlstream.STREAM_CONNECTED_EVENT, xmlstream.STREAM_AUTHD_EVENT, SUBSCRIBED_EVENT)
)


def requestedJID(settings: Settings) -> JID:
    """The JID a connection asks to bind: login, domain and resource."""
    return JID(tuple=(settings.login, settings.domain, settings.resource))


_IQ_RESULT = '/iq[@type="result"]'
_IQ_ERROR = '/iq[@type="error"]'


class RequiredTLSInitializer(xmlstream.TLSInitiatingInitializer):
    """
    STARTTLS that is never optional: if the stream is not encrypted yet and
    the server does not offer ``<starttls/>``, fail with
    :class:`StartTLSNotOffered` before anything else is sent.
    """

    def initialize(self) -> defer.Deferred[object] | None:
        authenticator = self.xmlstream.authenticator
        if authenticator.encrypted:
            return None
        if self.feature not in self.xmlstream.features:
            attempt = authenticator.attempt
            raise StartTLSNotOffered(attempt.host, attempt.port)
        authenticator.step = "STARTTLS"
        return self.start()

    def onProceed(self, obj: object) -> None:
        authenticator = self.xmlstream.authenticator
        authenticator.encrypted = True
        authenticator.step = "TLS handshake"
        authenticator._log.debug(
            "STARTTLS accepted; TLS handshake with {host}",
            host=authenticator.attempt.host,
        )
        super().onProceed(obj)


class BindInitializer(client.BindInitializer):
    """
    Resource binding that keeps the JID already held when the server assigns
    exactly that one (it binds the resource asked for): Twisted's parses the
    answer again, stringprep and all, about 90 µs of every connection.
    """

    def onBind(self, iq: Any) -> None:
        authenticator = self.xmlstream.authenticator
        bound = iq.bind.jid if iq.bind else None
        if bound is not None and str(bound) == authenticator.jid.full():
            return
        super().onBind(iq)


class _Step:
    """Names the step an initializer performs, for logs and errors."""

    def __init__(self, name: str, initializer: Any) -> None:
        self.name = name
        self.initializer = initializer

    def initialize(self) -> object:
        self.initializer.xmlstream.authenticator.step = self.name
        return self.initializer.initialize()


class YandexAuthenticator(xmlstream.ConnectAuthenticator):
    """
    Initializes one connection to the push server as the configured account.

    :ivar attempt: the attempt this connection belongs to.
    :ivar jid: the JID; after bind, the one the server assigned.
    :ivar encrypted: whether TLS is established (or being established).
    :ivar step: the handshake step in progress, for error messages.
    :ivar failure: the first error that ends this connection, if any.
    :ivar redirectTarget: a ``see-other-host`` target received over TLS.
    :ivar sessionOpen: whether bind and session completed.

    :param jid: the JID to ask for; by default made from ``settings`` (a
        factory makes it once for all its connections: building a JID runs
        stringprep).
    """

    namespace = "jabber:client"
    _log = Logger()

    def __init__(
        self,
        settings: Settings,
        attempt: Attempt,
        clock: IReactorTime,
        log: Logger | None = None,
        jid: JID | None = None,
    ) -> None:
        xmlstream.ConnectAuthenticator.__init__(self, settings.domain)
        self.settings = settings
        self.attempt = attempt
        self.login = settings.login
        self.token = attempt.token
        self.clock = clock
        if log is not None:
            self._log = log
        self.jid = jid if jid is not None else requestedJID(settings)
        self.encrypted = attempt.tlsFromFirstByte
        self.step = "stream header"
        self.failure: YaDiskPushError | None = None
        self.redirectTarget: str | None = None
        self.sessionOpen = False
        self._tlsReported = False
        self._handshakeTimer: IDelayedCall | None = None

    def redact(self, text: str | None) -> str | None:
        """Server-supplied text made safe to show: no token, bounded."""
        if text is None:
            return None
        return redactText(text, secretForms(self.login, self.token))

    def associateWithStream(self, xs: PushXmlStream) -> None:
        xmlstream.ConnectAuthenticator.associateWithStream(self, xs)
        compress = self.settings.compress
        xs.initializers = [
            _Step("stream negotiation", client.CheckVersionInitializer(xs)),
            RequiredTLSInitializer(
                xs, required=True, configurationForTLS=self.attempt.tls
            ),
            _Step("compression", CompressionInitiatingInitializer(xs, compress)),
            _Step("authentication", YandexOAuthInitializer(xs, required=True)),
            _Step("compression", CompressionInitiatingInitializer(xs, compress)),
            _Step("resource binding", BindInitializer(xs, required=True)),
            _Step("session", client.SessionInitializer(xs, required=False)),
        ]
        self._trackHandshakeIQs(xs)
        xs.addObserver(xmlstream.INIT_FAILED_EVENT, self._initializationFailed)
        xs.addObserver(xmlstream.STREAM_ERROR_EVENT, self._streamError)
        xs.addObserver(xmlstream.STREAM_AUTHD_EVENT, self._sessionOpened)
        xs.addObserver(xmlstream.STREAM_END_EVENT, self._connectionEnded, 100)
        xs.addObserver(CONNECTION_FAILED_EVENT, self.fail)
        xs.addObserver(
            f"/error[@xmlns='{xmlstream.NS_STREAMS}']", self._readRedirect, 1
        )

    def connectionMade(self) -> None:
        self._handshakeTimer = self.clock.callLater(
            self.settings.handshakeTimeout, self._handshakeTimedOut
        )
        xmlstream.ConnectAuthenticator.connectionMade(self)

    def streamStarted(self, rootElement: Any) -> None:
        if self.encrypted and not self._tlsReported:
            # Data arrived through TLS, so the certificate passed verification
            # (after STARTTLS, or on the direct-TLS port).
            self._tlsReported = True
            self._log.debug(
                "TLS established; certificate verified for {host}",
                host=", ".join(self.attempt.tls.referenceIdentities),
            )
        xmlstream.ConnectAuthenticator.streamStarted(self, rootElement)

    def fail(self, reason: YaDiskPushError) -> None:
        """Record why this connection ends (first reason wins) and close it."""
        if self.failure is None:
            self.failure = reason
        xs = self.xmlstream
        if xs is not None and xs.transport is not None:
            xs.sendFooter()
            xs.transport.loseConnection()

    def outcome(self, lost: Failure) -> YaDiskPushError:
        """
        The one error this connection ended with: the first one recorded,
        or else what the loss of the connection says.
        """
        if self.failure is not None:
            return self.failure
        if self.sessionOpen:
            return describeLoss(lost)
        return self._describe(lost)

    def _describe(self, reason: Failure) -> YaDiskPushError:
        return describeFailure(
            reason, self.attempt.host, self.step, self.attempt.tls.verifyProblem()
        )

    def _initializationFailed(self, reason: Failure) -> None:
        self._cancelHandshakeTimer()
        self.fail(self._describe(reason))

    def _streamError(self, reason: Failure) -> None:
        error = self._describe(reason)
        if isinstance(error, StreamErrorReceived):
            error = StreamErrorReceived(
                error.condition, self.redact(error.text), encrypted=self.encrypted
            )
        if self.failure is None:
            self.failure = error

    def _readRedirect(self, element: Any) -> None:
        """
        Keep the target of ``see-other-host`` (Twisted's StreamError drops
        the element's content). Honoured only over TLS: before that, anyone
        on the path could send us elsewhere.
        """
        for child in element.elements():
            if child.name == "see-other-host" and self.encrypted:
                self.redirectTarget = str(child).strip() or None

    def _sessionOpened(self, xs: PushXmlStream) -> None:
        self._cancelHandshakeTimer()
        self.sessionOpen = True
        self.step = "session"
        # An open session may stay idle for days, thousands to a process: it
        # keeps nothing that only the handshake needed (these observers, the
        # last stream features).
        xs.removeObserver(xmlstream.INIT_FAILED_EVENT, self._initializationFailed)
        xs.removeObserver(xmlstream.STREAM_AUTHD_EVENT, self._sessionOpened)
        xs.removeObserver(xmlstream.STREAM_END_EVENT, self._connectionEnded)
        self._untrackHandshakeIQs(xs)
        xs.features = {}

    # -- the handshake's IQs ----------------------------------------------
    #
    # Resource binding and session send IQs with Twisted's IQ.send, which
    # needs a stream that tracks answers (IIQResponseTracker). Twisted's own
    # upgradeWithIQResponseTracker adds three observers for good, closures no
    # one can remove; the tracking here is the same, with observers that go
    # once the session is open (wokkel's request() tracks the session's
    # IQs). A later IQ.send on the stream upgrades it Twisted's way again.

    def _trackHandshakeIQs(self, xs: PushXmlStream) -> None:
        xs.iqDeferreds = {}
        xs.iqDefaultTimeout = getattr(xs, "iqDefaultTimeout", None)
        # After every other observer of the stream's end, as Twisted's: the
        # service has read why the connection ended before the handshake's
        # IQs fail with ConnectionLost.
        xs.addObserver(xmlstream.STREAM_END_EVENT, self._failPendingIQs, -1)
        xs.addObserver(_IQ_RESULT, self._onIQAnswer)
        xs.addObserver(_IQ_ERROR, self._onIQAnswer)
        alsoProvides(xs, IIQResponseTracker)

    def _untrackHandshakeIQs(self, xs: PushXmlStream) -> None:
        xs.removeObserver(xmlstream.STREAM_END_EVENT, self._failPendingIQs)
        xs.removeObserver(_IQ_RESULT, self._onIQAnswer)
        xs.removeObserver(_IQ_ERROR, self._onIQAnswer)
        noLongerProvides(xs, IIQResponseTracker)

    def _onIQAnswer(self, iq: Any) -> None:
        if getattr(iq, "handled", False):
            return
        d = self.xmlstream.iqDeferreds.pop(iq.getAttribute("id"), None)
        if d is None:
            return
        iq.handled = True
        if iq["type"] == "error":
            d.errback(jabberError.exceptionFromStanza(iq))
        else:
            d.callback(iq)

    def _failPendingIQs(self, reason: Failure) -> None:
        xs = self.xmlstream
        pending, xs.iqDeferreds = xs.iqDeferreds, {}
        for d in pending.values():
            d.errback(ConnectionLost())

    def _connectionEnded(self, reason: Failure) -> None:
        # Only while the handshake runs (see _sessionOpened).
        self._cancelHandshakeTimer()

    def _handshakeTimedOut(self) -> None:
        self._handshakeTimer = None
        self.fail(HandshakeTimeout(self.settings.handshakeTimeout, self.step))
        transport = self.xmlstream.transport if self.xmlstream else None
        if transport is not None and hasattr(transport, "abortConnection"):
            transport.abortConnection()

    def _cancelHandshakeTimer(self) -> None:
        if self._handshakeTimer is not None and self._handshakeTimer.active():
            self._handshakeTimer.cancel()
        self._handshakeTimer = None


class PushXmlStreamFactory(XmlStreamFactoryMixin, Factory):
    """
    Builds the stream of each attempt, with a new authenticator for it.

    Bootstraps added with ``addBootstrap`` (wokkel's ``StreamManager`` and
    the service add theirs) are installed on every stream. Streams are made
    by :meth:`buildStream`, never by ``buildProtocol``: a stream without its
    attempt would not know which host it must verify.
    """

    noisy = False

    def __init__(
        self, settings: Settings, clock: IReactorTime, log: Logger | None = None
    ) -> None:
        XmlStreamFactoryMixin.__init__(self)
        self.settings = settings
        self.clock = clock
        self.log = log
        self.jid = requestedJID(settings)

    def buildStream(self, attempt: Attempt) -> PushXmlStream:
        authenticator = YandexAuthenticator(
            self.settings, attempt, self.clock, log=self.log, jid=self.jid
        )
        xs = PushXmlStream(authenticator)
        xs.factory = self
        xs.maxStanzaSize = self.settings.maxStanzaSize
        self.installBootstraps(xs)
        return xs

    def installBootstraps(self, dispatcher: Any) -> None:
        """
        Install the bootstraps on a new stream; those of an event that
        happens once per stream (:data:`ONCE_PER_STREAM`) as one-time
        observers, so an open session, idle for days and thousands to a
        process, does not keep them.
        """
        for event, fn in self.bootstraps:
            if event in ONCE_PER_STREAM:
                dispatcher.addOnetimeObserver(event, fn)
            else:
                dispatcher.addObserver(event, fn)

    def buildProtocol(self, addr: object) -> PushXmlStream:
        raise TypeError("streams are built per attempt: use buildStream(attempt)")
