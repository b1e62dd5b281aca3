"""
Tests for yadiskpush.localserver: the local push server and its CA.

The server is what the client's end-to-end tests trust to behave like the
vendor, so its own behaviour is checked here on real loopback TCP and TLS,
with a tiny raw client that sends exactly the XML of the vendor page.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import zlib
from collections import deque
from collections.abc import Generator
from typing import Any

import service_identity
from cryptography import x509
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)
from twisted.internet import defer, endpoints, protocol, reactor, ssl, task
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.words.protocols.jabber import xmlstream
from twisted.words.xish import domish

from yadiskpush.connection.stream import PushXmlStream
from yadiskpush.localserver import (
    VERSION_QUERY_ID,
    CertificateAuthority,
    Faults,
    LocalServer,
    NoOpenSession,
    ServerSession,
)
from yadiskpush.localserver.__main__ import (
    CommandProtocol,
    keptPorts,
    parseArguments,
)
from yadiskpush.localserver.ca import StateDirError, loadOrCreate
from yadiskpush.localserver.hostile import (
    GARBAGE,
    doctypeWithEntities,
    oversizedStanza,
    streamHeader,
)

#: What an inlineCallbacks test generator is.
Steps = Generator[defer.Deferred[Any], Any, None]

LOGIN = "test"
TOKEN = "c4181a7c2cf4521964a72ff57a34a07"
RESOURCE = "YaDisk-client"
FULL_JID = f"{LOGIN}@ya.ru/{RESOURCE}"

NS_STREAMS = "http://etherx.jabber.org/streams"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_COMPRESS_FEATURE = "http://jabber.org/features/compress"
NS_COMPRESS = "http://jabber.org/protocol/compress"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"

PING = "<iq type='get' to='ya.ru' id='p'><ping xmlns='urn:xmpp:ping'/></iq>"
HEADER = (
    "<?xml version='1.0'?><stream:stream xmlns:stream='{ns}' version='1.0' "
    "xmlns='jabber:client' to='{to}' xml:lang='en' "
    "xmlns:xml='http://www.w3.org/XML/1998/namespace'>"
)


def authPayload(login: str = LOGIN, token: str = TOKEN) -> str:
    return base64.b64encode(f"{login}\0{token}".encode()).decode("ascii")


def auth(payload: str, mechanism: str = "X-YANDEX-OAUTH") -> str:
    return f"<auth xmlns='{NS_SASL}' mechanism='{mechanism}'>{payload}</auth>"


def children(element: domish.Element) -> list[tuple[str | None, str]]:
    return [(e.uri, e.name) for e in element.elements()]


class RawClient(protocol.Protocol):
    """
    A client that sends the XML it is told and queues what it receives, so
    that a test can compare both with the vendor page.
    """

    def __init__(self) -> None:
        self.received: deque[domish.Element] = deque()
        self.waiting: deque[defer.Deferred[domish.Element]] = deque()
        self.headers: list[domish.Element] = []
        self.raw = b""
        self.ended = False
        self.parseError: Exception | None = None
        self.closed: defer.Deferred[BaseException] = defer.Deferred()
        self.reason: Failure | None = None
        self._deflater: Any = None
        self._inflater: Any = None
        self._newParser()

    def _newParser(self) -> None:
        self.parser = domish.elementStream()
        self.parser.DocumentStartEvent = self.headers.append
        self.parser.ElementEvent = self._element
        self.parser.DocumentEndEvent = self._end

    def _element(self, element: domish.Element) -> None:
        if self.waiting:
            self.waiting.popleft().callback(element)
        else:
            self.received.append(element)

    def _end(self) -> None:
        self.ended = True

    def dataReceived(self, data: bytes) -> None:
        self.raw += data
        try:
            if self._inflater is not None:
                data = self._inflater.decompress(data)
            self.parser.parse(data)
        except (domish.ParserError, zlib.error) as e:
            self.parseError = e
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.reason = reason
        # The exception, not the Failure: a Failure would errback.
        self.closed.callback(reason.value)

    def send(self, xml: str) -> None:
        data = xml.encode("utf-8")
        if self._deflater is not None:
            data = self._deflater.compress(data) + self._deflater.flush(
                zlib.Z_SYNC_FLUSH
            )
        self.transport.write(data)

    def open(self, to: str = "ya.ru") -> None:
        """Start a new stream, as after connecting, TLS, zlib or SASL."""
        self._newParser()
        self.send(HEADER.format(ns=NS_STREAMS, to=to))

    def next(self) -> defer.Deferred[domish.Element]:
        if self.received:
            return defer.succeed(self.received.popleft())
        d: defer.Deferred[domish.Element] = defer.Deferred()
        self.waiting.append(d)
        return d

    def compress(self) -> None:
        self._deflater = zlib.compressobj()
        self._inflater = zlib.decompressobj()

    def close(self) -> defer.Deferred[BaseException]:
        if self.reason is None:
            self.transport.abortConnection()
        return self.closed


class ServerTestCase(TestCase):
    """Starts a server per test and connects raw clients to it."""

    server: LocalServer

    def startServer(self, **kwargs: Any) -> defer.Deferred[LocalServer]:
        kwargs.setdefault("accounts", {LOGIN: TOKEN})
        self.server = LocalServer(**kwargs)
        self.addCleanup(self.server.stop)
        return self.server.start()

    def clientTLS(self, ca: CertificateAuthority | None = None) -> Any:
        ca = ca or self.server.ca
        return ssl.optionsForClientTLS("localhost", trustRoot=ca.trustRoot())

    @defer.inlineCallbacks
    def connect(
        self, tls: bool = False, ca: CertificateAuthority | None = None
    ) -> Generator[defer.Deferred[Any], Any, RawClient]:
        if tls:
            endpoint = endpoints.SSL4ClientEndpoint(
                reactor, "127.0.0.1", self.server.tlsPort, self.clientTLS(ca)
            )
        else:
            endpoint = endpoints.TCP4ClientEndpoint(
                reactor, "127.0.0.1", self.server.starttlsPort
            )
        client = yield endpoints.connectProtocol(endpoint, RawClient())
        self.addCleanup(client.close)
        return client

    @defer.inlineCallbacks
    def startTLS(
        self, client: RawClient
    ) -> Generator[defer.Deferred[Any], Any, domish.Element]:
        """Header, features, STARTTLS, and the header over TLS; its features."""
        client.open()
        yield client.next()
        client.send(f"<starttls xmlns='{NS_TLS}'/>")
        proceed = yield client.next()
        assert proceed.name == "proceed", proceed.toXml()
        client.transport.startTLS(self.clientTLS())
        client.open()
        features = yield client.next()
        return features

    @defer.inlineCallbacks
    def authenticate(
        self, client: RawClient, tls: bool = False
    ) -> Generator[defer.Deferred[Any], Any, domish.Element]:
        """Everything up to the features after SASL success."""
        if tls:
            client.open()
            yield client.next()
        else:
            yield self.startTLS(client)
        client.send(auth(authPayload()))
        success = yield client.next()
        assert success.name == "success", success.toXml()
        client.open()
        features = yield client.next()
        return features

    @defer.inlineCallbacks
    def openSession(
        self, client: RawClient, tls: bool = True
    ) -> Generator[defer.Deferred[Any], Any, ServerSession]:
        """Bind and session; returns the server's session for this client."""
        opened = self.server.whenSessionOpened()
        yield self.authenticate(client, tls)
        client.send(
            f"<iq type='set' id='bind_1'><bind xmlns='{NS_BIND}'>"
            f"<resource>{RESOURCE}</resource></bind></iq>"
        )
        yield client.next()
        client.send(
            f"<iq type='set' id='session_1'><session xmlns='{NS_SESSION}'/></iq>"
        )
        yield client.next()
        session = yield opened
        return session

    @defer.inlineCallbacks
    def subscribe(
        self, client: RawClient
    ) -> Generator[defer.Deferred[Any], Any, domish.Element]:
        """Answer the version query and subscribe to Disk pushes."""
        query = yield client.next()
        assert query["id"] == VERSION_QUERY_ID, query.toXml()
        client.send(
            "<iq type='result' to='ya.ru' id='ask_version'>"
            "<query xmlns='jabber:iq:version'><name>raw</name>"
            "<version>1</version></query></iq>"
        )
        client.send(
            f"<iq type='set' to='{LOGIN}@ya.ru' id='s1'>"
            "<s xmlns='yandex:push:disk'/></iq>"
        )
        result = yield client.next()
        return result


class CertificateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ca = CertificateAuthority.generate()

    def load(self, pem: bytes) -> x509.Certificate:
        return x509.load_pem_x509_certificate(pem)

    def test_subjectAltNames(self) -> None:
        """Host names become DNS entries and IP literals become IP entries."""
        cert, _ = self.ca.issueServerCertificate(["localhost", "127.0.0.1"])
        san = (
            self.load(cert)
            .extensions.get_extension_for_class(x509.SubjectAlternativeName)
            .value
        )
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["localhost"])
        self.assertEqual(
            san.get_values_for_type(x509.IPAddress),
            [ipaddress.ip_address("127.0.0.1")],
        )

    def test_verifiesForItsNames(self) -> None:
        """service-identity accepts the certificate for the names it was issued for."""
        cert, _ = self.ca.issueServerCertificate(["localhost", "127.0.0.1"])
        verify_certificate_hostname(self.load(cert), "localhost")
        verify_certificate_ip_address(self.load(cert), "127.0.0.1")

    def test_failsForWrongName(self) -> None:
        """service-identity rejects the certificate for any other host name."""
        cert, _ = self.ca.issueServerCertificate(["wrong.example"])
        with self.assertRaises(service_identity.VerificationError):
            verify_certificate_hostname(self.load(cert), "localhost")

    def test_signedByTheCA(self) -> None:
        """The certificate's issuer is the CA and its validity is short."""
        cert = self.load(self.ca.issueServerCertificate(["localhost"]).certPEM)
        caCert = self.load(self.ca.caCertificatePEM)
        cert.verify_directly_issued_by(caCert)
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        self.assertLessEqual(lifetime, datetime.timedelta(days=2))
        other = self.load(CertificateAuthority.generate().caCertificatePEM)
        with self.assertRaises((ValueError, Exception)):
            cert.verify_directly_issued_by(other)

    def test_writeCACertificate(self) -> None:
        """The CA certificate is written as PEM where the client reads it."""
        path = self.ca.writeCACertificate(self.mktemp())
        self.assertEqual(path.read_bytes(), self.ca.caCertificatePEM)


class HandshakeTests(ServerTestCase):
    def setUp(self) -> defer.Deferred[LocalServer]:
        return self.startServer()

    @defer.inlineCallbacks
    def test_headerAndFeaturesAsOnThePage(self) -> Steps:
        """Before TLS the features are STARTTLS, zlib and an empty mechanisms."""
        client = yield self.connect()
        client.open()
        features = yield client.next()
        header = client.headers[0]
        self.assertTrue(client.raw.startswith(b"<?xml version='1.0'?>"))
        self.assertEqual(header.getAttribute("from"), "ya.ru")
        self.assertEqual(header.getAttribute("version"), "1.0")
        self.assertTrue(header.getAttribute("id"))
        self.assertEqual(
            children(features),
            [
                (NS_TLS, "starttls"),
                (NS_COMPRESS_FEATURE, "compression"),
                (NS_SASL, "mechanisms"),
            ],
        )
        compression, mechanisms = list(features.elements())[1:]
        self.assertEqual([str(m) for m in compression.elements()], ["zlib"])
        self.assertEqual(list(mechanisms.elements()), [])

    @defer.inlineCallbacks
    def test_featuresAfterTLS(self) -> Steps:
        """After STARTTLS the features are zlib and the empty mechanisms only."""
        client = yield self.connect()
        features = yield self.startTLS(client)
        self.assertEqual(
            children(features),
            [(NS_COMPRESS_FEATURE, "compression"), (NS_SASL, "mechanisms")],
        )
        self.assertTrue(self.server.sessions[0].encrypted)

    @defer.inlineCallbacks
    def test_featuresAfterAuthentication(self) -> Steps:
        """After SASL the features are bind and session, nothing else."""
        client = yield self.connect(tls=True)
        features = yield self.authenticate(client, tls=True)
        self.assertEqual(
            children(features), [(NS_BIND, "bind"), (NS_SESSION, "session")]
        )

    @defer.inlineCallbacks
    def test_wrongDomainIsHostUnknown(self) -> Steps:
        """A header addressed to another domain ends with host-unknown."""
        client = yield self.connect()
        client.open(to="example.com")
        error = yield client.next()
        self.assertEqual((error.uri, error.name), (NS_STREAMS, "error"))
        self.assertEqual(error.firstChildElement().name, "host-unknown")
        yield client.closed

    @defer.inlineCallbacks
    def test_authBeforeTLSRefused(self) -> Steps:
        """SASL on the plain stream gets encryption-required and is recorded."""
        client = yield self.connect()
        client.open()
        yield client.next()
        client.send(auth(authPayload()))
        failure = yield client.next()
        self.assertEqual((failure.uri, failure.name), (NS_SASL, "failure"))
        self.assertEqual(failure.firstChildElement().name, "encryption-required")
        self.assertEqual(self.server.plaintextAuthAttempts, 1)
        self.assertIsNone(self.server.sessions[0].login)
        # The stream goes on: STARTTLS is still possible.
        client.send(f"<starttls xmlns='{NS_TLS}'/>")
        proceed = yield client.next()
        self.assertEqual(proceed.name, "proceed")

    @defer.inlineCallbacks
    def test_wrongTokenNotAuthorized(self) -> Steps:
        """A wrong token gets not-authorized with a text; the server stays open."""
        client = yield self.connect(tls=True)
        client.open()
        yield client.next()
        client.send(auth(authPayload(token="wrong")))
        failure = yield client.next()
        self.assertEqual(
            children(failure), [(NS_SASL, "not-authorized"), (NS_SASL, "text")]
        )
        # The connection stayed open: a second attempt on it succeeds.
        client.send(auth(authPayload()))
        success = yield client.next()
        self.assertEqual(success.name, "success")
        self.assertEqual(
            [e.details["condition"] for e in self.server.eventsOf("auth-failure")],
            ["not-authorized"],
        )

    @defer.inlineCallbacks
    def test_badBase64IsIncorrectEncoding(self) -> Steps:
        """A payload that is not base64 gets incorrect-encoding."""
        client = yield self.connect(tls=True)
        client.open()
        yield client.next()
        client.send(auth("not base64!"))
        failure = yield client.next()
        self.assertEqual(failure.firstChildElement().name, "incorrect-encoding")

    @defer.inlineCallbacks
    def test_otherMechanismIsInvalid(self) -> Steps:
        """A mechanism other than X-YANDEX-OAUTH gets invalid-mechanism."""
        client = yield self.connect(tls=True)
        client.open()
        yield client.next()
        client.send(auth(authPayload(), mechanism="PLAIN"))
        failure = yield client.next()
        self.assertEqual(failure.firstChildElement().name, "invalid-mechanism")

    @defer.inlineCallbacks
    def test_compressionBothWays(self) -> Steps:
        """After <compressed/> both directions are zlib, through SASL and bind."""
        client = yield self.connect()
        yield self.startTLS(client)
        client.send(f"<compress xmlns='{NS_COMPRESS}'><method>zlib</method></compress>")
        compressed = yield client.next()
        self.assertEqual((compressed.uri, compressed.name), (NS_COMPRESS, "compressed"))
        client.compress()
        client.raw = b""
        client.open()
        features = yield client.next()
        # What arrived was zlib, not XML; and zlib is no longer offered.
        self.assertNotIn(b"features", client.raw)
        self.assertEqual(children(features), [(NS_SASL, "mechanisms")])
        client.send(auth(authPayload()))
        success = yield client.next()
        self.assertEqual(success.name, "success")
        self.assertTrue(self.server.sessions[0].compressed)

    @defer.inlineCallbacks
    def test_unsupportedCompressionMethod(self) -> Steps:
        """A method other than zlib gets <failure><unsupported-method/>."""
        client = yield self.connect(tls=True)
        client.open()
        yield client.next()
        client.send(f"<compress xmlns='{NS_COMPRESS}'><method>lzw</method></compress>")
        failure = yield client.next()
        self.assertEqual((failure.uri, failure.name), (NS_COMPRESS, "failure"))
        self.assertEqual(children(failure), [(NS_COMPRESS, "unsupported-method")])

    @defer.inlineCallbacks
    def test_bindWithoutResource(self) -> Steps:
        """A bind without a resource gets a generated one under the login."""
        client = yield self.connect(tls=True)
        yield self.authenticate(client, tls=True)
        client.send(f"<iq type='set' id='b'><bind xmlns='{NS_BIND}'/></iq>")
        result = yield client.next()
        assigned = str(result.bind.jid)
        self.assertTrue(assigned.startswith(f"{LOGIN}@ya.ru/"))
        self.assertGreater(len(assigned), len(f"{LOGIN}@ya.ru/"))

    @defer.inlineCallbacks
    def test_restrictedXMLRefused(self) -> Steps:
        """A DOCTYPE from the client is answered with restricted-xml."""
        client = yield self.connect()
        client.send("<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'b'>]>")
        error = yield client.next()
        self.assertEqual(error.firstChildElement().name, "restricted-xml")
        yield client.closed


class SessionTests(ServerTestCase):
    def setUp(self) -> defer.Deferred[LocalServer]:
        self.clock = task.Clock()
        return self.startServer(pingInterval=30, clock=self.clock)

    @defer.inlineCallbacks
    def test_bindSessionAndVersionQuery(self) -> Steps:
        """The requested resource is bound, then the server asks the version."""
        client = yield self.connect(tls=True)
        session = yield self.openSession(client)
        self.assertEqual(session.jid.full(), FULL_JID)
        query = yield client.next()
        self.assertEqual(
            (query["type"], query["from"], query["to"], query["id"]),
            ("get", "ya.ru", FULL_JID, VERSION_QUERY_ID),
        )
        self.assertEqual(children(query), [("jabber:iq:version", "query")])
        client.send(
            "<iq type='result' to='ya.ru' id='ask_version'>"
            "<query xmlns='jabber:iq:version'><name>YaDiskClient</name>"
            "<version>1.1</version></query></iq>"
        )
        answer = yield session.whenAnswered(VERSION_QUERY_ID)
        names = [str(e) for e in answer.query.elements() if e.name == "name"]
        self.assertEqual(names, ["YaDiskClient"])

    @defer.inlineCallbacks
    def test_pingsEveryInterval(self) -> Steps:
        """The server pings on its clock and records the answer to each ping."""
        client = yield self.connect(tls=True)
        session = yield self.openSession(client)
        yield client.next()  # the version query
        self.clock.advance(30)
        ping = yield client.next()
        self.assertEqual((ping["id"], ping["to"]), ("ping_1", FULL_JID))
        self.assertEqual(children(ping), [("urn:xmpp:ping", "ping")])
        client.send("<iq type='result' to='ya.ru' id='ping_1'/>")
        answer = yield session.whenAnswered("ping_1")
        self.assertEqual(answer["type"], "result")
        self.assertEqual(len(self.server.eventsOf("ping-answer")), 1)

    @defer.inlineCallbacks
    def test_subscribeAndPushAckedOnce(self) -> Steps:
        """A subscribed session gets the push as on the page; one ack is counted."""
        client = yield self.connect(tls=True)
        yield self.openSession(client)
        result = yield self.subscribe(client)
        self.assertEqual((result["type"], result["id"]), ("result", "s1"))
        acked = self.server.push(LOGIN, {"t": "diff", "uid": "1"}, "<op path='/a'/>")
        push = yield client.next()
        self.assertEqual(
            (push["type"], push["from"], push["to"]), ("set", "test@ya.ru", FULL_JID)
        )
        query = push.firstChildElement()
        self.assertEqual((query.uri, query.name), ("yandex:push:disk", "query"))
        self.assertEqual((query["t"], query["uid"]), ("diff", "1"))
        self.assertEqual(query.firstChildElement()["path"], "/a")
        client.send(f"<iq type='result' to='test@ya.ru' id='{push['id']}'/>")
        answer = yield acked
        self.assertEqual(answer["type"], "result")
        self.assertEqual(self.server.acks[push["id"]], 1)
        self.assertEqual([p.id for p in self.server.pushLog], [push["id"]])

    @defer.inlineCallbacks
    def test_pushNeedsSubscription(self) -> Steps:
        """A push to a login without a subscribed session fails at once."""
        client = yield self.connect(tls=True)
        yield self.openSession(client)
        yield self.assertFailure(self.server.push(LOGIN), NoOpenSession)

    @defer.inlineCallbacks
    def test_subscriptionError(self) -> Steps:
        """A fault turns the subscription result into the chosen stanza error."""
        self.server.faults = Faults(iqErrorAt="subscribe", iqError="not-allowed")
        client = yield self.connect(tls=True)
        session = yield self.openSession(client)
        result = yield self.subscribe(client)
        self.assertEqual(result["type"], "error")
        self.assertEqual(result.error.firstChildElement().name, "not-allowed")
        self.assertFalse(session.subscribed)

    @defer.inlineCallbacks
    def test_clientPingAndUnknownIQ(self) -> Steps:
        """A client ping gets a result; an unknown IQ gets service-unavailable."""
        client = yield self.connect(tls=True)
        yield self.openSession(client)
        yield client.next()
        client.send(PING)
        client.send("<iq type='get' id='u'><query xmlns='urn:example'/></iq>")
        pong = yield client.next()
        unknown = yield client.next()
        self.assertEqual((pong["type"], pong["id"]), ("result", "p"))
        self.assertEqual((unknown["type"], unknown["id"]), ("error", "u"))
        self.assertEqual(unknown.error.firstChildElement().name, "service-unavailable")

    @defer.inlineCallbacks
    def test_cleanClose(self) -> Steps:
        """The client's </stream:stream> is answered in kind and recorded."""
        client = yield self.connect(tls=True)
        session = yield self.openSession(client)
        client.send("</stream:stream>")
        yield session.whenClosed()
        yield client.closed
        self.assertTrue(client.ended)
        self.assertTrue(session.clientClosed)
        self.assertEqual(self.server.eventsOf("closed")[-1].details["clean"], True)

    @defer.inlineCallbacks
    def test_dataAfterCloseRecorded(self) -> Steps:
        """A stanza after the client's closing tag is recorded, not answered."""
        client = yield self.connect(tls=True)
        session = yield self.openSession(client)
        yield client.next()
        client.send("</stream:stream><iq type='result' id='late'/>")
        yield session.whenClosed()
        yield client.closed
        self.assertTrue(client.ended)
        self.assertEqual(client.received, deque())
        self.assertEqual(len(self.server.eventsOf("data-after-close")), 1)
        self.assertEqual(self.server.eventsOf("violation"), [])

    @defer.inlineCallbacks
    def test_sameResourceReplacesOlder(self) -> Steps:
        """Binding a resource already bound ends the older stream with conflict."""
        first = yield self.connect(tls=True)
        yield self.openSession(first)
        second = yield self.connect(tls=True)
        yield self.openSession(second)
        yield first.next()  # the version query
        error = yield first.next()
        self.assertEqual(error.firstChildElement().name, "conflict")
        yield first.closed

    @defer.inlineCallbacks
    def test_stopClosesConnections(self) -> Steps:
        """stop() closes the listeners and every open connection."""
        client = yield self.connect(tls=True)
        session = yield self.openSession(client)
        yield self.server.stop()
        self.assertTrue(session.closed)
        yield client.closed


class TLSTests(ServerTestCase):
    @defer.inlineCallbacks
    def test_otherCAFailsHandshake(self) -> Steps:
        """A client trusting another CA fails the TLS handshake on the TLS port."""
        yield self.startServer()
        client = yield self.connect(tls=True, ca=CertificateAuthority.generate())
        client.open()
        reason = yield client.closed
        self.assertIn("certificate verify failed", str(reason))
        self.assertEqual(client.headers, [])

    @defer.inlineCallbacks
    def test_wrongHostFailsHandshake(self) -> Steps:
        """A certificate for another host is refused by the client."""
        ca = CertificateAuthority.generate()
        yield self.startServer(
            ca=ca, certificate=ca.issueServerCertificate(["wrong.example"])
        )
        client = yield self.connect(tls=True)
        client.open()
        reason = yield client.closed
        self.assertIsInstance(reason, service_identity.VerificationError)
        self.assertEqual(client.headers, [])


class CompressionAfterAuthTests(ServerTestCase):
    def setUp(self) -> defer.Deferred[LocalServer]:
        return self.startServer(compressionAfterAuth=True)

    @defer.inlineCallbacks
    def test_offeredOnlyAfterAuthentication(self) -> Steps:
        """In XEP-0170 order zlib is offered with bind and session, not before."""
        client = yield self.connect(tls=True)
        client.open()
        before = yield client.next()
        self.assertEqual(children(before), [(NS_SASL, "mechanisms")])
        client.send(auth(authPayload()))
        yield client.next()
        client.open()
        after = yield client.next()
        self.assertEqual(
            children(after),
            [
                (NS_COMPRESS_FEATURE, "compression"),
                (NS_BIND, "bind"),
                (NS_SESSION, "session"),
            ],
        )


class FaultTests(ServerTestCase):
    def setUp(self) -> defer.Deferred[LocalServer]:
        return self.startServer()

    @defer.inlineCallbacks
    def test_noStartTLS(self) -> Steps:
        """Without STARTTLS offered, <starttls/> gets <failure/> and a close."""
        self.server.faultNextConnection(Faults(offerStartTLS=False))
        client = yield self.connect()
        client.open()
        features = yield client.next()
        self.assertNotIn((NS_TLS, "starttls"), children(features))
        client.send(f"<starttls xmlns='{NS_TLS}'/>")
        failure = yield client.next()
        self.assertEqual((failure.uri, failure.name), (NS_TLS, "failure"))
        yield client.closed

    @defer.inlineCallbacks
    def test_faultsApplyToNextConnectionOnly(self) -> Steps:
        """A queued fault hits the next connection; the one after is faithful."""
        self.server.faultNextConnection(Faults(closeAt="auth"))
        first = yield self.connect(tls=True)
        first.open()
        yield first.next()
        first.send(auth(authPayload()))
        yield first.closed
        self.assertEqual(first.received, deque())
        second = yield self.connect(tls=True)
        yield self.authenticate(second, tls=True)
        self.assertEqual(
            [e.details for e in self.server.eventsOf("fault")],
            [{"step": "auth", "action": "close"}],
        )

    @defer.inlineCallbacks
    def test_seeOtherHostAtOpened(self) -> Steps:
        """A stream error fault carries the see-other-host target."""
        self.server.faults = Faults(
            streamErrorAt="opened",
            streamError="see-other-host",
            seeOtherHost="127.0.0.1:5223",
        )
        client = yield self.connect(tls=True)
        yield self.openSession(client)
        error = yield client.next()
        condition = error.firstChildElement()
        self.assertEqual(
            (condition.name, str(condition)), ("see-other-host", "127.0.0.1:5223")
        )
        yield client.closed

    @defer.inlineCallbacks
    def test_stallAfterSession(self) -> Steps:
        """A stalled session answers nothing, not even a ping, and stays open."""
        self.server.faults = Faults(stallAt="opened")
        client = yield self.connect(tls=True)
        session = yield self.openSession(client)
        ignored = self.server.whenEvent(
            "ignored", match=lambda e: e.details["why"] == "stalled"
        )
        client.send(PING)
        yield ignored
        self.assertTrue(session.stalled)
        self.assertFalse(session.closed)
        self.assertEqual(self.server.eventsOf("client-ping"), [])
        self.assertEqual(self.server.eventsOf("version-sent"), [])

    @defer.inlineCallbacks
    def test_rawBytesAtHeader(self) -> Steps:
        """Raw bytes replace the server's answer at the chosen step."""
        self.server.faults = Faults(rawAt="header", raw=GARBAGE)
        client = yield self.connect()
        client.open()
        yield client.closed
        self.assertEqual(client.raw, GARBAGE)
        self.assertIsNotNone(client.parseError)

    @defer.inlineCallbacks
    def test_closeAfterStanzas(self) -> Steps:
        """The connection closes when the n-th element arrives, unanswered."""
        self.server.faults = Faults(closeAfterStanzas=2)
        client = yield self.connect()
        client.open()
        yield client.next()
        client.send(f"<compress xmlns='{NS_COMPRESS}'><method>lzw</method></compress>")
        yield client.next()
        client.send(f"<starttls xmlns='{NS_TLS}'/>")
        yield client.closed
        self.assertEqual(client.received, deque())

    @defer.inlineCallbacks
    def test_liveStreamError(self) -> Steps:
        """A test can end a live session with a stream error of its choice."""
        client = yield self.connect(tls=True)
        session = yield self.openSession(client)
        yield client.next()
        session.sendStreamError("system-shutdown")
        error = yield client.next()
        self.assertEqual(error.firstChildElement().name, "system-shutdown")
        yield session.whenClosed()

    def test_unknownStepRejected(self) -> None:
        """A fault at a step that does not exist is a ValueError at once."""
        self.assertRaises(ValueError, Faults, closeAt="nowhere")


class CommandLineTests(SynchronousTestCase):
    def test_accountsFile(self) -> None:
        """--accounts-file holds LOGIN:TOKEN lines; blanks and comments skipped."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("# test accounts\na:1\n\nb:2\n")
        args = parseArguments(["--accounts-file", path])
        self.assertEqual(args.accountMap, {"a": "1", "b": "2"})

    def test_accountsFileMalformed(self) -> None:
        """A line without a colon is refused with its line number."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("a:1\njusttoken\n")
        with self.assertRaises(SystemExit):
            parseArguments(["--accounts-file", path])

    def test_pushWithoutSession(self) -> None:
        """A push command for a login with no session reports why it failed."""
        server = LocalServer({LOGIN: TOKEN}, ca=CertificateAuthority.generate())
        transport = StringTransport()
        done: defer.Deferred[None] = defer.Deferred()
        commands = CommandProtocol(server, done)
        commands.makeConnection(transport)
        commands.dataReceived(b"push t=diff\n")
        self.assertIn(b"push failed: no open session", transport.value())

    def test_sessionRepr(self) -> None:
        """A session names its number, port and who it is."""
        server = LocalServer({LOGIN: TOKEN})
        session = ServerSession(server, 3, "tls", Faults())
        self.assertEqual(repr(session), "<ServerSession #3 tls unauthenticated>")


class HostileBytesTests(SynchronousTestCase):
    def feed(self, data: bytes, maxStanzaSize: int = 4096) -> PushXmlStream:
        xs = PushXmlStream(xmlstream.ConnectAuthenticator("ya.ru"))
        xs.maxStanzaSize = maxStanzaSize
        xs.makeConnection(StringTransport())
        xs.dataReceived(data)
        return xs

    def test_doctypeIsRestrictedXML(self) -> None:
        """The DOCTYPE payload is refused as restricted XML by the stream."""
        xs = self.feed(doctypeWithEntities())
        self.assertEqual(xs.violation.condition, "restricted-xml")

    def test_oversizedStanzaIsPolicyViolation(self) -> None:
        """The oversized stanza exceeds a stanza limit below its size."""
        xs = self.feed(streamHeader() + oversizedStanza(8192))
        self.assertEqual(xs.violation.condition, "policy-violation")

    def test_headerIsWellFormed(self) -> None:
        """The bare header helper is accepted, so faults built on it are precise."""
        xs = self.feed(streamHeader())
        self.assertIsNone(xs.violation)


class StubbornSession:
    """A session whose client never closes: it ends only when aborted."""

    closing = serverClosed = False

    def __init__(self) -> None:
        self.closed = False
        self.calls: list[str] = []
        self._closed: defer.Deferred[Any] = defer.Deferred()

    def sendStreamError(self, condition: str) -> None:
        self.calls.append(condition)

    def whenClosed(self) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self._closed.addCallback(lambda s: d.callback(s) or s)
        return d

    def abort(self) -> None:
        self.calls.append("abort")
        self.closed = True
        self._closed.callback(self)


class ShutdownTests(ServerTestCase):
    """shutdown(), drop() and close(): how the server ends streams."""

    @defer.inlineCallbacks
    def test_shutdownSendsSystemShutdown(self) -> Steps:
        """Every stream gets <stream:error><system-shutdown/> and the closing
        tag before the connection ends; the listeners are gone after."""
        yield self.startServer()
        client = yield self.connect(tls=True)
        session = yield self.openSession(client)
        yield client.next()  # the version query
        yield self.server.shutdown()
        self.assertTrue(session.closed)
        error = yield client.next()
        self.assertEqual(error.name, "error")
        self.assertEqual(error.firstChildElement().name, "system-shutdown")
        yield client.closed
        self.assertTrue(client.ended)
        self.assertEqual(self.server._listeningPorts, [])

    def test_shutdownWaitsBoundedly(self) -> None:
        """A client that never closes its side is cut off after the timeout
        (on the server's clock), not before."""
        clock = task.Clock()
        server = LocalServer({LOGIN: TOKEN}, clock=clock)
        stubborn = StubbornSession()
        server.sessions.append(stubborn)  # type: ignore[arg-type]
        stopping = server.shutdown(timeout=5.0)
        self.assertEqual(stubborn.calls, ["system-shutdown"])
        clock.advance(4.9)
        self.assertNoResult(stopping)
        clock.advance(0.1)
        self.successResultOf(stopping)
        self.assertEqual(stubborn.calls, ["system-shutdown", "abort"])

    @defer.inlineCallbacks
    def test_dropResetsWithoutClosingTag(self) -> Steps:
        """drop(login) resets that login's connections, no closing tag."""
        yield self.startServer(accounts={LOGIN: TOKEN, "other": "x"})
        client = yield self.connect(tls=True)
        session = yield self.openSession(client)
        self.assertEqual(self.server.drop("other"), [])
        self.assertEqual(self.server.drop(LOGIN), [session])
        yield client.closed
        self.assertFalse(client.ended)
        self.assertNotIn(b"</stream:stream>", client.raw)

    @defer.inlineCallbacks
    def test_closeIsCleanAndEndsOnce(self) -> Steps:
        """close() sends </stream:stream>; the client's answer ends the
        connection, and the server's closing tag is sent only once."""
        yield self.startServer()
        client = yield self.connect(tls=True)
        session = yield self.openSession(client)
        self.assertEqual(self.server.close(), [session])
        self.assertEqual(self.server.close(), [])
        client.send("</stream:stream>")
        yield client.closed
        self.assertTrue(session.clientClosed)
        self.assertTrue(client.ended)
        self.assertEqual(client.raw.count(b"</stream:stream>"), 1)


class KeptAuthorityTests(SynchronousTestCase):
    """ca.loadOrCreate: the CA and certificate kept in a state directory."""

    NAMES = ["localhost", "127.0.0.1"]

    def setUp(self) -> None:
        self.directory = FilePath(self.mktemp())

    def load(self, names: list[str] | None = None, at: Any = None) -> Any:
        return loadOrCreate(self.directory.path, names or self.NAMES, at)

    def test_createdPrivate(self) -> None:
        """A new directory is 0700; the keys are 0600; the CA is usable."""
        kept = self.load()
        self.assertEqual(kept.how, "created")
        self.assertEqual(self.directory.getPermissions().shorthand(), "rwx------")
        for name in ("ca-key.pem", "server-key.pem"):
            mode = self.directory.child(name).getPermissions().shorthand()
            self.assertEqual(mode, "rw-------", name)
        self.assertEqual(
            self.directory.child("ca.pem").getContent(), kept.ca.caCertificatePEM
        )
        certificate = x509.load_pem_x509_certificate(kept.certificate.certPEM)
        verify_certificate_hostname(certificate, "localhost")

    def test_reused(self) -> None:
        """A second load gives the same CA and certificate."""
        first = self.load()
        second = self.load()
        self.assertEqual(second.how, "reused")
        self.assertEqual(second.ca.caCertificatePEM, first.ca.caCertificatePEM)
        self.assertEqual(second.certificate, first.certificate)

    def test_reissuedForOtherNames(self) -> None:
        """A certificate lacking a needed name is issued again by the same CA."""
        first = self.load()
        second = self.load(["localhost", "127.0.0.2"])
        self.assertEqual(second.how, "reissued")
        self.assertEqual(second.ca.caCertificatePEM, first.ca.caCertificatePEM)
        certificate = x509.load_pem_x509_certificate(second.certificate.certPEM)
        verify_certificate_ip_address(certificate, "127.0.0.2")
        self.assertEqual(self.load(["localhost", "127.0.0.2"]).how, "reused")

    def test_reissuedNearItsEnd(self) -> None:
        """A certificate about to expire is issued again."""
        self.load()
        later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=364)
        self.assertEqual(self.load(at=later).how, "reissued")

    def test_expiredCARefused(self) -> None:
        """An expired CA is one sentence saying what to remove."""
        self.load()
        later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=3650)
        with self.assertRaises(StateDirError) as caught:
            self.load(at=later)
        self.assertIn("remove", str(caught.exception))
        self.assertIn("ca-key.pem", str(caught.exception))

    def test_missingKeyRefused(self) -> None:
        self.load()
        self.directory.child("ca-key.pem").remove()
        with self.assertRaises(StateDirError) as caught:
            self.load()
        self.assertIn("ca-key.pem is not", str(caught.exception))

    def test_damagedCARefused(self) -> None:
        self.load()
        self.directory.child("ca.pem").setContent(b"junk\n")
        with self.assertRaises(StateDirError) as caught:
            self.load()
        self.assertIn("not a usable CA", str(caught.exception))

    def test_openDirectoryRefused(self) -> None:
        """A directory others may read is refused: it holds the CA key."""
        self.directory.makedirs()
        self.directory.chmod(0o755)
        with self.assertRaises(StateDirError) as caught:
            self.load()
        self.assertIn("chmod 700", str(caught.exception))


class CommandTests(SynchronousTestCase):
    """The drop and close commands, and the push id prefix."""

    def commands(self, server: LocalServer) -> tuple[CommandProtocol, Any]:
        transport = StringTransport()
        commands = CommandProtocol(server, defer.Deferred())
        commands.makeConnection(transport)
        transport.clear()
        return commands, transport

    def test_dropAndCloseWithoutSessions(self) -> None:
        server = LocalServer({LOGIN: TOKEN}, ca=CertificateAuthority.generate())
        commands, transport = self.commands(server)
        commands.dataReceived(b"drop\nclose test\n")
        self.assertEqual(transport.value(), b"drop: no session\nclose: no session\n")

    def test_usageNamesEveryCommand(self) -> None:
        server = LocalServer({LOGIN: TOKEN}, ca=CertificateAuthority.generate())
        commands, transport = self.commands(server)
        commands.dataReceived(b"help\n")
        for name in ("push", "enqueue", "unacked", "sessions", "drop", "close"):
            self.assertIn(name.encode(), transport.value())

    def test_pushIdPrefix(self) -> None:
        """Push ids are the prefix and a count."""
        server = LocalServer(
            {LOGIN: TOKEN}, ca=CertificateAuthority.generate(), pushIdPrefix="push-7-"
        )
        self.assertEqual(
            [server._nextPushId(), server._nextPushId()], ["push-7-1", "push-7-2"]
        )

    def test_stateDirArgument(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("a:1\n")
        args = parseArguments(["--accounts-file", path, "--state-dir", "d"])
        self.assertEqual(args.state_dir, "d")
        with self.assertRaises(SystemExit):
            parseArguments(["--accounts-file", path, "--tls-port", "70000"])

    def test_keptPortsBelowTheEphemeralRange(self) -> None:
        """Kept ports are free ports below the kernel's ephemeral range."""
        ports = keptPorts("127.0.0.1")
        self.assertEqual(len(set(ports)), 2)
        for port in ports:
            self.assertTrue(20000 <= port < 32768 or port == 0, port)
