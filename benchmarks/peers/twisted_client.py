#!/usr/bin/env python3
"""Twisted client for the Yandex.Disk push workload (run with the Twisted venv).

Written the way a Twisted user writes an XMPP client by hand with Twisted's own
machinery, twisted.words.protocols.jabber (no wokkel): one XmlStreamFactory per
account whose authenticator (a client.XMPPAuthenticator subclass) installs the stock
initializers -- CheckVersionInitializer, TLSInitiatingInitializer (STARTTLS, with
optionsForClientTLS(<dialled host>, trustRoot=<the CA>): the peer certificate is
verified with service_identity), a SASLInitiatingInitializer subclass, BindInitializer
and SessionInitializer; XPath observers on the XmlStream answer the XEP-0092 version
query and XEP-0199 pings, acknowledge each push (<iq type='set'><query
xmlns='yandex:push:disk'/></iq>) with toResponse(iq, 'result'), and answer any other
iq get/set with service-unavailable; the subscription is an xmlstream.IQ set to
login@domain carrying <s xmlns='yandex:push:disk'/>.  Default (epoll) reactor.

X-YANDEX-OAUTH: an ISASLMechanism whose initial response is login NUL token, FORCED by
overriding setMechanism (the server's <mechanisms/> list is empty).

Twisted's XmlStreamFactory is a ReconnectingClientFactory; as with the other clients
(whose libraries can reconnect too), a lost stream ends the session here: the factory
stops trying when the stream ends.

TLS contexts: optionsForClientTLS() builds a CertificateOptions whose pyOpenSSL
SSL.Context is created on first use and cached in that options object.
  default  each session (account) calls optionsForClientTLS() itself, so every
           connection gets its own SSL_CTX (holding only the one CA: no system store).
  --tune   ("twisted-tuned") all sessions share ONE optionsForClientTLS() object, so
           one SSL_CTX for the whole process.
Either way Twisted's CertificateOptions sets SSL_MODE_RELEASE_BUFFERS on the context
(OpenSSL frees a connection's read/write buffers while it is idle) and
OP_NO_COMPRESSION, and STARTTLS puts a BufferingTLSTransport on the connection
(application writes made in one reactor iteration are aggregated into one SSL_write).

No XEP-0138 (stream compression) in Twisted: --zlib is refused.

--no-release-buffers (experiment only, "twisted-tuned-norelbuf"): clear the
SSL_MODE_RELEASE_BUFFERS bit that CertificateOptions would set (through the private
_mode attribute of the options object), to measure what that mode saves per idle
connection.

Environment: TW_CPROFILE=<file> profiles the flood window (subscription result to
stream end) with cProfile and dumps the stats there.
"""

from __future__ import annotations

import gc
import os
import resource
import statistics
import sys
import time

import common
from twisted.internet import defer, reactor, task
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.words.protocols.jabber import client, sasl, sasl_mechanisms, xmlstream
from twisted.words.protocols.jabber.jid import JID
from zope.interface import implementer

import twisted

MECH = "X-YANDEX-OAUTH"
NS_PUSH = "yandex:push:disk"
NS_VERSION = "jabber:iq:version"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
PUSH = f"/iq[@type='set']/query[@xmlns='{NS_PUSH}']"
VERSION = f"/iq[@type='get']/query[@xmlns='{NS_VERSION}']"
PING = "/iq[@type='get']/ping[@xmlns='urn:xmpp:ping']"


@implementer(sasl_mechanisms.ISASLMechanism)
class YandexOAuth:
    name = MECH

    def __init__(self, login: str, token: str) -> None:
        self._initial = login.encode() + b"\0" + token.encode()

    def getInitialResponse(self) -> bytes:
        return self._initial

    def getResponse(self, challenge: bytes) -> bytes:
        raise sasl.SASLError("X-YANDEX-OAUTH expects no challenge")


class YandexSASLInitializer(sasl.SASLInitiatingInitializer):
    """The server lists no mechanisms: use X-YANDEX-OAUTH regardless."""

    def setMechanism(self) -> None:
        auth = self.xmlstream.authenticator
        self.mechanism = YandexOAuth(auth.jid.user, auth.password)


class YandexAuthenticator(client.XMPPAuthenticator):
    def associateWithStream(self, xs) -> None:
        xmlstream.ConnectAuthenticator.associateWithStream(self, xs)
        xs.initializers = [
            client.CheckVersionInitializer(xs),
            xmlstream.TLSInitiatingInitializer(
                xs, required=True, configurationForTLS=self._configurationForTLS
            ),
            YandexSASLInitializer(xs, required=True),
            client.BindInitializer(xs, required=True),
            client.SessionInitializer(xs, required=False),
        ]


class PushFactory(xmlstream.XmlStreamFactory):
    noisy = False

    def __init__(self, authenticator, session: PushSession) -> None:
        super().__init__(authenticator)
        self.session = session

    def clientConnectionFailed(self, connector, reason) -> None:
        self.stopTrying()
        self.session.lost(reason)


class PushSession:
    """One account: factory + stream + counters (the attributes common.py expects)."""

    def __init__(self, cfg, tls_options) -> None:
        self.cfg = cfg
        self.bare = f"{cfg.login}@{cfg.domain}"
        self.pushes = 0
        self.last_version = None
        self.t_create = self.t_connect = self.t_sub_sent = self.t_sub_result = 0.0
        self.xs = None
        self.is_closed = False
        self.subscribed = defer.Deferred()
        self._closed_waiters: list = []
        auth = YandexAuthenticator(
            JID(self.bare + "/YaDisk-client"),
            cfg.token,
            configurationForTLS=tls_options,
        )
        self.factory = f = PushFactory(auth, self)
        f.addBootstrap(xmlstream.STREAM_CONNECTED_EVENT, self.connected)
        f.addBootstrap(xmlstream.STREAM_AUTHD_EVENT, self.authenticated)
        f.addBootstrap(xmlstream.INIT_FAILED_EVENT, self.init_failed)
        f.addBootstrap(xmlstream.STREAM_END_EVENT, self.lost)

    # ---- stream events ---------------------------------------------------------------
    def connected(self, xs) -> None:
        self.xs = xs

    def authenticated(self, xs) -> None:
        xs.addObserver(PUSH, self.on_push)
        xs.addObserver(VERSION, self.on_version)
        xs.addObserver(PING, self.on_ping)
        xs.addObserver("/iq", self.on_other_iq, priority=-1)
        iq = xmlstream.IQ(xs, "set")
        iq.addElement((NS_PUSH, "s"))
        self.t_sub_sent = time.perf_counter()
        iq.send(self.bare).addCallbacks(self.sub_result, self.fail)

    def sub_result(self, _iq) -> None:
        self.t_sub_result = time.perf_counter()
        if not self.subscribed.called:
            self.subscribed.callback(self)

    def init_failed(self, failure) -> None:
        self.fail(failure)
        if self.xs is not None and self.xs.transport is not None:
            self.xs.transport.loseConnection()

    def fail(self, failure) -> None:
        if not self.subscribed.called:
            self.subscribed.errback(failure)

    def lost(self, reason) -> None:
        self.is_closed = True
        self.factory.stopTrying()
        if not self.subscribed.called:
            self.subscribed.errback(
                ConnectionError(
                    f"connection lost before subscription: {reason.getErrorMessage()}"
                )
            )
        waiters, self._closed_waiters = self._closed_waiters, []
        for d in waiters:
            d.callback(None)

    # ---- stanzas ---------------------------------------------------------------------
    def on_push(self, iq) -> None:
        iq.handled = True
        self.pushes += 1
        self.last_version = iq.query.getAttribute("version")
        self.xs.send(xmlstream.toResponse(iq, "result"))

    def on_version(self, iq) -> None:
        iq.handled = True
        r = xmlstream.toResponse(iq, "result")
        q = r.addElement((NS_VERSION, "query"))
        q.addElement("name", content="YaDiskClient")
        q.addElement("version", content="1.1")
        q.addElement("os", content="Linux")
        self.xs.send(r)

    def on_ping(self, iq) -> None:
        iq.handled = True
        self.xs.send(xmlstream.toResponse(iq, "result"))

    def on_other_iq(self, iq) -> None:
        if getattr(iq, "handled", False) or iq.getAttribute("type") not in (
            "get",
            "set",
        ):
            return
        r = xmlstream.toResponse(iq, "error")
        e = r.addElement("error")
        e["type"] = "cancel"
        e.addElement((NS_STANZAS, "service-unavailable"))
        self.xs.send(r)

    # ---- lifetime --------------------------------------------------------------------
    def when_closed(self) -> defer.Deferred:
        if self.is_closed:
            return defer.succeed(None)
        d = defer.Deferred()
        self._closed_waiters.append(d)
        return d

    @defer.inlineCallbacks
    def close(self):
        """Send </stream:stream>, wait up to 1 s for the server's, then drop the TCP."""
        self.factory.stopTrying()
        if self.is_closed or self.xs is None:
            return
        self.xs.sendFooter()
        d = self.when_closed()
        d.addTimeout(1.0, reactor)
        try:
            yield d
        except defer.TimeoutError:
            if self.xs.transport is not None:
                self.xs.transport.loseConnection()


# ---- TLS configuration ---------------------------------------------------------------
_ca_pem: dict = {}
_shared_options: dict = {}
NO_RELEASE_BUFFERS = False


def _client_options(host: str, pem: bytes):
    opts = optionsForClientTLS(host, trustRoot=Certificate.loadPEM(pem))
    if NO_RELEASE_BUFFERS:
        # ClientTLSOptions wraps CertificateOptions._makeTLSConnection; its SSL.Context
        # is made (with set_mode(self._mode)) on first use, so this is still in time.
        opts._createConnection.__self__._mode = 0
    return opts


def tls_options(cfg):
    """optionsForClientTLS for the dialled host, trusting only the given CA."""
    pem = _ca_pem.get(cfg.ca)
    if pem is None:
        with open(cfg.ca, "rb") as fh:
            pem = _ca_pem[cfg.ca] = fh.read()
    if cfg.tune:  # one options object (one SSL_CTX) shared by every session
        opts = _shared_options.get(cfg.ca)
        if opts is None:
            opts = _shared_options[cfg.ca] = _client_options(cfg.host, pem)
        return opts
    return _client_options(cfg.host, pem)


@defer.inlineCallbacks
def open_session(cfg):
    t_create = time.perf_counter()
    s = PushSession(cfg, tls_options(cfg))
    s.t_create = t_create
    s.t_connect = time.perf_counter()
    reactor.connectTCP(cfg.host, cfg.port, s.factory)
    yield s.subscribed
    return s


# ---- the three workloads (same JSON keys and meaning as common.py) -------------------
def sleep(secs: float) -> defer.Deferred:
    return task.deferLater(reactor, secs, lambda: None)


@defer.inlineCallbacks
def flood(cfg):
    s = yield open_session(cfg)
    prof = None
    if os.environ.get("TW_CPROFILE"):
        import cProfile

        prof = cProfile.Profile()
    c0, w0 = common.cpu_s(), time.perf_counter()
    if prof:
        prof.enable()
    yield s.when_closed()
    if prof:
        prof.disable()
    c1, w1 = common.cpu_s(), time.perf_counter()
    if prof:
        prof.dump_stats(os.environ["TW_CPROFILE"])
    return {
        "pushes": s.pushes,
        "last_version": s.last_version,
        "client_cpu_s": round(c1 - c0, 4),
        "client_wall_s": round(w1 - w0, 4),
        "handshake_ms": round((s.t_sub_sent - s.t_connect) * 1000, 3),
    }


@defer.inlineCallbacks
def handshake(cfg):
    sent, result, construct = [], [], []
    for _ in range(cfg.count):
        s = yield open_session(cfg)
        construct.append((s.t_connect - s.t_create) * 1000)
        sent.append((s.t_sub_sent - s.t_connect) * 1000)
        result.append((s.t_sub_result - s.t_connect) * 1000)
        yield s.close()
    return {
        "count": cfg.count,
        "first_ms_to_sub_sent": round(sent[0], 3),
        "median_ms_to_sub_sent": round(statistics.median(sent), 3),
        "median_ms_to_sub_result": round(statistics.median(result), 3),
        "median_construct_ms": round(statistics.median(construct), 3),
        "median_ms_to_sub_sent_excl_first": round(statistics.median(sent[1:]), 3)
        if len(sent) > 1
        else None,
        "all_ms_to_sub_sent": [round(x, 3) for x in sent],
    }


@defer.inlineCallbacks
def idle(cfg):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < cfg.conns + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    gc.collect()
    rss0 = common.rss_kib()
    sem = defer.DeferredSemaphore(cfg.concurrency)
    sessions: list = []
    failures: list = []

    @defer.inlineCallbacks
    def one():
        try:
            sessions.append((yield open_session(cfg)))
        except Exception as e:  # noqa: BLE001
            failures.append(repr(e))

    t0, c0 = time.perf_counter(), common.cpu_s()
    yield defer.gatherResults([sem.run(one) for _ in range(cfg.conns)])
    t1, c1 = time.perf_counter(), common.cpu_s()
    gc.collect()
    rss1 = common.rss_kib()
    n = len(sessions)
    common.out({"marker": "HOLD_START"})
    h0, hc0 = time.perf_counter(), common.cpu_s()
    yield sleep(cfg.hold)
    h1, hc1 = time.perf_counter(), common.cpu_s()
    common.out({"marker": "HOLD_END"})
    alive = sum(1 for s in sessions if not s.is_closed)
    rss2 = common.rss_kib()
    closing = defer.DeferredList([s.close() for s in sessions], consumeErrors=True)
    closing.addTimeout(60, reactor)
    try:
        yield closing
    except defer.TimeoutError:
        pass
    return {
        "conns_requested": cfg.conns,
        "conns_up": n,
        "failures": len(failures),
        "first_failure": failures[0] if failures else None,
        "alive_after_hold": alive,
        "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "rss_start_kib": rss0,
        "rss_up_kib": rss1,
        "rss_after_hold_kib": rss2,
        "kib_per_conn": round((rss1 - rss0) / max(n, 1), 2),
        "establish_s": round(t1 - t0, 3),
        "establish_cpu_s": round(c1 - c0, 3),
        "hold_s": round(h1 - h0, 3),
        "hold_cpu_s": round(hc1 - hc0, 4),
        "hold_cpu_pct": round(100 * (hc1 - hc0) / (h1 - h0), 3),
    }


@defer.inlineCallbacks
def main(_reactor, cfg):
    res = yield {"flood": flood, "handshake": handshake, "idle": idle}[cfg.mode](cfg)
    res.update(
        {
            "client": "twisted",
            "version": twisted.__version__,
            "mode": cfg.mode,
            "zlib": cfg.zlib,
            "tune": cfg.tune,
            "python": sys.version.split()[0],
            "ssl_mode_release_buffers": not NO_RELEASE_BUFFERS,
        }
    )
    common.out(res)


if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--no-release-buffers" in argv:
        argv.remove("--no-release-buffers")
        NO_RELEASE_BUFFERS = True
    cfg = common.parse_args(argv)
    if cfg.zlib:
        raise SystemExit("Twisted has no XEP-0138 stream compression")
    if cfg.cpu is not None:
        try:
            os.sched_setaffinity(0, {cfg.cpu})
        except OSError:
            pass
    # Warnings and errors to stderr; info-level chatter (connection start/stop) dropped.
    globalLogBeginner.beginLoggingTo(
        [
            FilteringLogObserver(
                textFileLogObserver(sys.stderr),
                [LogLevelFilterPredicate(LogLevel.warn)],
            )
        ],
        redirectStandardIO=False,
    )
    task.react(main, (cfg,))
