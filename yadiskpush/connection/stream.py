"""
The XML stream this project uses on both ends: Twisted's ``XmlStream`` with
restricted XML, a stanza size limit, zlib input and a redacted traffic log.

Twisted's parser accepts a DOCTYPE and expands internal entities, and drops
the connection on malformed XML without telling the peer why. This subclass
refuses DTDs, entity declarations and processing instructions before the
first byte is parsed, caps the bytes of one stanza (and of the stream header),
and answers each violation with the RFC 6120 stream error that names it
before closing. The failure is dispatched as a
:class:`~yadiskpush.errors.ProtocolViolation` on ``STREAM_ERROR_EVENT`` so
the service can log one clear line.

It also has a fast path for the stanza that makes up almost all of the
traffic, the push: a handler can :meth:`~PushXmlStream.routeStanzas` of one
kind (name, ``type`` and payload namespace) straight to itself, so that they
are not matched against every XPath observer of the stream (ten queries,
most of the time a push cost in the first release).
"""

from __future__ import annotations

import base64
import re
import zlib
from collections.abc import Callable, Iterable
from typing import Any

from twisted.python import failure
from twisted.words.protocols.jabber import error, xmlstream
from twisted.words.xish import domish

from yadiskpush.connection.compression import Inflater
from yadiskpush.errors import ProtocolViolation
from yadiskpush.logs import Logger
from yadiskpush.secret import Secret

_SASL_PAYLOAD = re.compile(
    rb"(<(?:\w+:)?(?:auth|response|challenge|success)\b[^>]*>)([^<]*)(<)"
)


class RestrictedXML(domish.ParserError):
    """The peer sent XML that XMPP forbids (a DTD, an entity, a PI)."""


class StanzaTooLarge(domish.ParserError):
    """A stanza (or the stream header) exceeded the size limit."""


def _refuse(what: str) -> Callable[..., None]:
    def handler(*args: object) -> None:
        raise RestrictedXML(f"{what} are not allowed in XMPP")

    return handler


def redactTraffic(data: bytes, secrets: Iterable[bytes] = ()) -> str:
    """
    Make raw stream data safe to log: hide SASL payloads and any occurrence
    of the given secrets (and of their base64 forms, which callers include).
    """
    redacted = _SASL_PAYLOAD.sub(rb"\1[redacted]\3", data)
    for secret in secrets:
        if secret:
            redacted = redacted.replace(secret, b"[redacted]")
    return redacted.decode("utf-8", "replace")


#: Dispatched (with the stream) once our ``</stream:stream>`` went out.
STREAM_CLOSING_EVENT = "//event/yadiskpush/stream-closing"

#: The XPath query of observers that want every stanza (a keepalive's sign
#: of life, a traffic counter): they see routed stanzas too.
EVERY_STANZA = "/*"

#: ``route(stanza)``: takes a stanza routed by :meth:`PushXmlStream.routeStanzas`.
StanzaRoute = Callable[[domish.Element], object]

#: The longest server-supplied text (a SASL or stream error ``<text/>``)
#: shown in a log line; the rest is cut.
MAX_SHOWN_TEXT = 300


def secretForms(login: str, token: Secret) -> list[bytes]:
    """The token as it could appear on the wire: plain and in the SASL payload."""
    from yadiskpush.connection.sasl import oauthPayload

    plain = token.reveal().encode("utf-8")
    payload = oauthPayload(login, token)
    return [plain, base64.b64encode(payload), base64.b64encode(plain)]


def redactText(text: str, secrets: Iterable[bytes] = ()) -> str:
    """
    Make text the server sent safe to show a person: every form of the
    token hidden (a hostile server may echo it back), control characters
    replaced, and the length bounded.
    """
    redacted = text
    for secret in secrets:
        form = secret.decode("utf-8", "replace")
        if form:
            redacted = redacted.replace(form, "[redacted]")
    redacted = "".join(c if c.isprintable() else " " for c in redacted).strip()
    if len(redacted) > MAX_SHOWN_TEXT:
        redacted = redacted[:MAX_SHOWN_TEXT] + "…"
    return redacted


class PushXmlStream(xmlstream.XmlStream):
    """
    An XMPP stream that refuses hostile input with the proper stream error.

    :ivar maxStanzaSize: bytes one stanza may take before the stream is closed
        with ``policy-violation``.
    :ivar inflater: set by compression; incoming data is inflated first.
    :ivar violation: the :class:`ProtocolViolation` that closed the stream,
        if any.
    """

    maxStanzaSize = 1024 * 1024
    inflater: Inflater | None = None
    violation: ProtocolViolation | None = None
    #: Top-level stanzas received on this connection, routed or dispatched:
    #: a sign of life that costs nothing to keep (a timer can compare it
    #: with the count it saw last instead of stamping a time per stanza).
    stanzasReceived = 0
    _footerSent = False
    _log = Logger()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        xmlstream.XmlStream.__init__(self, *args, **kwargs)
        self._routes: dict[tuple[str, str | None, str | None], StanzaRoute] = {}
        # (priority, observer, args, kwargs) of the EVERY_STANZA observers,
        # highest priority first.
        self._everyStanza: list[tuple[int, Callable[..., object], Any, Any]] = []

    # -- the stanza fast path -------------------------------------------------

    def routeStanzas(
        self, name: str, stanzaType: str | None, payloadUri: str, route: StanzaRoute
    ) -> None:
        """
        Hand every stanza named ``name`` with this ``type`` attribute whose
        first child element is in the ``payloadUri`` namespace straight to
        ``route``, instead of dispatching it to the XPath observers.

        Matching a stanza against every XPath observer of a stream (about ten
        on a session) costs more than everything else a push needs, and one
        kind of stanza, the push, is nearly all the traffic. A routed stanza is
        shown first to the observers of every stanza (:data:`EVERY_STANZA`,
        added with ``addObserver``), then to ``route`` alone: other
        observers whose query would match it do not see it, so ``route`` must
        answer it (wokkel's ``FallbackHandler`` does not see it either).
        Stanzas of other kinds are dispatched as before. An exception from
        ``route`` is logged, as the dispatcher logs an observer's.
        """
        self._routes[(name, stanzaType, payloadUri)] = route

    def addObserver(
        self,
        event: Any,
        observerfn: Callable[..., object],
        priority: int = 0,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        xmlstream.XmlStream.addObserver(
            self, event, observerfn, priority, *args, **kwargs
        )
        if event == EVERY_STANZA:
            self._everyStanza.append((priority, observerfn, args, kwargs))
            self._everyStanza.sort(key=lambda entry: -entry[0])

    def removeObserver(self, event: Any, observerfn: Callable[..., object]) -> None:
        xmlstream.XmlStream.removeObserver(self, event, observerfn)
        if event == EVERY_STANZA:
            self._everyStanza = [e for e in self._everyStanza if e[1] != observerfn]

    def onElement(self, element: domish.Element) -> None:
        self.stanzasReceived += 1
        if self._routes:
            for child in element.children:
                if not isinstance(child, str):
                    route = self._routes.get(
                        (element.name, element.attributes.get("type"), child.uri)
                    )
                    if route is not None:
                        self._route(route, element)
                        return
                    break
        self.dispatch(element)

    def _route(self, route: StanzaRoute, element: domish.Element) -> None:
        for _, observer, args, kwargs in self._everyStanza:
            try:
                observer(element, *args, **kwargs)
            except Exception:
                self._log.failure("An observer of every stanza failed")
        try:
            route(element)
        except Exception:
            self._log.failure(
                "Handling a routed <{name}/> stanza failed", name=element.name
            )

    def send(self, obj: Any) -> None:
        """
        Send an element, or XML text as it is.

        Text (every answer to a push is a ready string) goes straight to
        the transport, as ``XmlStream.send`` would send it, without the two
        interface checks that cost more than the rest of an answer.
        """
        if type(obj) is str:
            data = obj.encode("utf-8")
            if self.rawDataOutFn:
                self.rawDataOutFn(data)
            self.transport.write(data)
            return
        xmlstream.XmlStream.send(self, obj)

    # -- restricted XML -------------------------------------------------------

    def _initializeStream(self) -> None:
        xmlstream.XmlStream._initializeStream(self)
        stream = self.stream
        stream.maxStanzaSize = self.maxStanzaSize
        # An element count cap bounds memory on tiny nested elements too.
        stream.maxElementCount = max(1000, self.maxStanzaSize // 16)
        parser = stream.parser
        parser.StartDoctypeDeclHandler = _refuse("document type declarations")
        parser.EntityDeclHandler = _refuse("entity declarations")
        parser.ProcessingInstructionHandler = _refuse("processing instructions")
        parser.CommentHandler = _refuse("comments")
        # No external or parameter entities, ever.
        parser.SetParamEntityParsing(0)
        # After a reset (STARTTLS, SASL, compression) the old parser may still
        # be inside a Parse() call with bytes that followed <proceed/> in the
        # same read. Those are plaintext injected before TLS (the STARTTLS
        # injection attack): whatever the old parser finds is dropped.
        for name in ("DocumentStartEvent", "ElementEvent", "DocumentEndEvent"):
            setattr(stream, name, self._onlyIfCurrent(stream, getattr(stream, name)))

    def _onlyIfCurrent(
        self, stream: object, handler: Callable[..., None]
    ) -> Callable[..., None]:
        def guarded(*args: object) -> None:
            if self.stream is stream:
                handler(*args)

        return guarded

    def dataReceived(self, data: bytes) -> None:
        if self.violation is not None:
            return
        current = self.stream
        try:
            if self.inflater is not None:
                # The traffic log shows the XML, not the zlib bytes.
                for piece in self.inflater.inflate(data):
                    if self.rawDataInFn:
                        self.rawDataInFn(piece)
                    if not self._parse(piece, current):
                        return
            else:
                if self.rawDataInFn:
                    self.rawDataInFn(data)
                self._parse(data, current)
        except zlib.error as e:
            self._violate("bad-format", f"corrupt compressed data ({e})")
        except RestrictedXML as e:
            self._violate("restricted-xml", str(e))
        except domish.ParserError as e:
            text = str(e)
            if "Maximum" in text:
                self._violate(
                    "policy-violation",
                    f"a stanza exceeded {self.maxStanzaSize} bytes",
                )
            else:
                self._violate("not-well-formed", text or "malformed XML")

    def _parse(self, data: bytes, current: object) -> bool:
        """Feed ``data`` to ``current``; ``False`` once parsing must stop."""
        # Bytes after a reset in the same read belong to no stream we know
        # (see _initializeStream), so parsing stops when the parser changes.
        # Twisted checks the size only after each parse() call and resets the
        # count whenever a stanza ends, so one large read holding a whole
        # oversized stanza would pass. Feeding slices bounds the overshoot to
        # one slice (1/16 of the limit).
        step = max(256, min(64 * 1024, self.maxStanzaSize // 16))
        for start in range(0, len(data), step):
            if current is None or self.stream is not current or self.violation:
                return False
            current.parse(data[start : start + step])
        return self.stream is current and self.violation is None

    def _violate(self, condition: str, detail: str) -> None:
        """Answer a protocol violation with a stream error and close."""
        self.violation = ProtocolViolation(condition, detail)
        self.dispatch(failure.Failure(self.violation), xmlstream.STREAM_ERROR_EVENT)
        if self.transport is None:
            return
        try:
            if not self._headerSent and not self.initiating:
                self.sendHeader()
            if self._headerSent:
                self.send(error.StreamError(condition, text=detail).getElement())
            self.sendFooter()
        finally:
            self.transport.loseConnection()

    @property
    def closing(self) -> bool:
        """Whether our ``</stream:stream>`` went out: nothing may follow it."""
        return self._footerSent

    def sendFooter(self) -> None:
        """
        Send ``</stream:stream>`` once, however many paths close, and say
        so with :data:`STREAM_CLOSING_EVENT` (a producer registered on the
        transport must let go now, or TLS never shuts down).
        """
        if not self._footerSent:
            self._footerSent = True
            xmlstream.XmlStream.sendFooter(self)
            self.dispatch(self, STREAM_CLOSING_EVENT)

    def reset(self) -> None:
        self._footerSent = False
        xmlstream.XmlStream.reset(self)

    def onDocumentEnd(self) -> None:
        """The peer closed its stream: close ours too, then the connection."""
        self.sendFooter()
        self.transport.loseConnection()
