#!/usr/bin/env python3
"""Minimal, fast stand-in for the Yandex.Disk XMPP push server (benchmark use only).

Standard library only (asyncio + ssl + zlib + pyexpat); the throwaway CA and the
server certificate are made at start with the openssl command-line tool.
Listens on loopback only.

Sequence served (see the vendor page): stream header -> features (starttls,
compression, EMPTY mechanisms) -> STARTTLS -> TLS -> stream restart ->
[optional XEP-0138 zlib -> restart] -> SASL X-YANDEX-OAUTH (base64 login NUL token)
-> restart -> bind -> session -> server sends a XEP-0092 version request and one
XEP-0199 ping -> client subscribes (iq set to login@ya.ru with
<s xmlns="yandex:push:disk"/>).

Modes (what happens after the subscription):
  flood      push N notifications, at most W unacknowledged at any time; when all
             N are acked print one JSON line (rate = N / (last ack - first push)),
             then close the stream.
  handshake  print one JSON line per connection: ms from TCP accept to the
             subscription iq arriving; the client then closes.
  idle       hold the connection; ping each subscribed connection every P seconds
             (phases spread uniformly) and count the answers.

Control: one JSON line per event on stdout.  Lines on stdin: "stats" prints a stats
line, "quit" exits.  The first stdout line is READY {"port":..,"ca":..}.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import heapq
import json
import os
import pyexpat
import random
import resource
import ssl
import stat
import subprocess
import sys
import time
import zlib

NS_STREAM = "http://etherx.jabber.org/streams"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_COMPRESS = "http://jabber.org/protocol/compress"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"
NS_PING = "urn:xmpp:ping"
NS_VERSION = "jabber:iq:version"
NS_PUSH = "yandex:push:disk"
DOMAIN = "ya.ru"

STREAM_HEADER = (
    "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    "xmlns:stream='http://etherx.jabber.org/streams' id='%s' from='ya.ru' "
    "version='1.0' xml:lang='en'>"
)
FEATURES_PLAIN = (
    "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
    "<compression xmlns='http://jabber.org/features/compress'><method>zlib</method>"
    "</compression><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"
    "</stream:features>"
)
FEATURES_TLS = (
    "<stream:features>"
    "<compression xmlns='http://jabber.org/features/compress'><method>zlib</method>"
    "</compression><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"
    "</stream:features>"
)
FEATURES_TLS_COMPRESSED = (
    "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"
    "</stream:features>"
)
FEATURES_AUTHED = (
    "<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>"
    "<session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></stream:features>"
)


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def esc(s: str) -> str:
    if "&" in s or "<" in s or "'" in s or '"' in s or ">" in s:
        s = (
            s.replace("&", "&amp;")
            .replace("<", "&lt;")
            .replace(">", "&gt;")
            .replace("'", "&apos;")
            .replace('"', "&quot;")
        )
    return s


def make_certs(workdir: str) -> tuple[str, str, str]:
    """Throwaway CA + server cert (EC P-256).

    SANs ya.ru, push.xmpp.yandex.ru, localhost, IP 127.0.0.1."""
    ca_key = os.path.join(workdir, "ca.key")
    ca_pem = os.path.join(workdir, "ca.pem")
    key = os.path.join(workdir, "server.key")
    csr = os.path.join(workdir, "server.csr")
    crt = os.path.join(workdir, "server.pem")
    ext = os.path.join(workdir, "ext.cnf")
    with open(ext, "w") as f:
        f.write(
            "subjectAltName=DNS:ya.ru,DNS:push.xmpp.yandex.ru,DNS:localhost,IP:127.0.0.1\n"
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
        )
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
    run(
        "openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", ca_key
    )
    run(
        "openssl",
        "req",
        "-x509",
        "-new",
        "-key",
        ca_key,
        "-sha256",
        "-days",
        "2",
        "-subj",
        "/CN=bench throwaway CA",
        "-out",
        ca_pem,
    )
    run("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key)
    run(
        "openssl",
        "req",
        "-new",
        "-key",
        key,
        "-subj",
        "/CN=push.xmpp.yandex.ru",
        "-out",
        csr,
    )
    run(
        "openssl",
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        ca_pem,
        "-CAkey",
        ca_key,
        "-CAcreateserial",
        "-days",
        "2",
        "-sha256",
        "-extfile",
        ext,
        "-out",
        crt,
    )
    return ca_pem, crt, key


class Stats:
    def __init__(self) -> None:
        self.accepted = 0
        self.open = 0
        self.subscribed = 0
        self.pings_sent = 0
        self.pongs = 0
        self.version_answers = 0
        self.client_iqs = 0  # get/set iqs the client sent us besides bind/session/sub
        self.client_pings = 0
        self.bytes_in = 0  # wire bytes (after TLS, before zlib)
        self.errors = 0
        self.handshake_ms: list[float] = []
        self.lost_before_sub = 0


class Server:
    def __init__(self, args: argparse.Namespace, ssl_ctx: ssl.SSLContext) -> None:
        self.args = args
        self.ssl_ctx = ssl_ctx
        self.stats = Stats()
        self.idle: list[Conn] = []
        self.heap: list = []
        self.loop = asyncio.get_event_loop()
        self.push_attrs = args.push_attrs

    def emit(self, obj: dict) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    def schedule(self, c: Conn) -> None:
        heapq.heappush(self.heap, (c.next_ping, id(c), c))

    async def pinger(self) -> None:
        """Ping every idle connection every P seconds, phases spread uniformly."""
        period = self.args.ping_interval
        tick = min(0.05, period / 4)
        heap = self.heap
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            while heap and heap[0][0] <= now:
                _, _, c = heapq.heappop(heap)
                if c.closed:
                    continue
                c.next_ping += period
                c.ping()
                heapq.heappush(heap, (c.next_ping, id(c), c))


class Conn(asyncio.Protocol):
    __slots__ = (
        "srv",
        "transport",
        "t_accept",
        "tls",
        "compressed",
        "authed",
        "login",
        "jid",
        "parser",
        "depth",
        "stack",
        "inflater",
        "deflater",
        "closed",
        "mode",
        "n_total",
        "n_sent",
        "n_acked",
        "window",
        "t_first",
        "cpu_first",
        "outbuf",
        "next_ping",
        "ping_seq",
        "outstanding",
        "subscribed",
        "wire_in",
        "sent_close",
        "upgrading",
    )

    def __init__(self, srv: Server) -> None:
        self.srv = srv
        self.tls = False
        self.compressed = False
        self.authed = False
        self.login = ""
        self.jid = ""
        self.inflater = None
        self.deflater = None
        self.closed = False
        self.mode = srv.args.mode
        self.n_total = srv.args.n  # read at accept: "set n X" affects later connections
        self.window = srv.args.window
        self.n_sent = 0
        self.n_acked = 0
        self.t_first = 0.0
        self.cpu_first = 0.0
        self.outbuf: list[str] = []
        self.next_ping = 0.0
        self.ping_seq = 0
        self.outstanding: set[str] = set()
        self.subscribed = False
        self.wire_in = 0
        self.sent_close = False
        self.upgrading = False

    # ---- transport -----------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.t_accept = time.perf_counter()
        self.srv.stats.accepted += 1
        self.srv.stats.open += 1
        self.new_parser()

    def connection_lost(self, exc) -> None:
        if not self.closed:
            self.closed = True
        self.srv.stats.open -= 1
        if not self.subscribed:
            self.srv.stats.lost_before_sub += 1
        if self.mode == "idle" and self.subscribed:
            try:
                self.srv.idle.remove(self)
            except ValueError:
                pass
        if self.mode == "flood" and self.subscribed and self.n_acked < self.n_total:
            self.emit_error(
                f"flood connection lost after {self.n_acked}/{self.n_total} acks"
            )

    def new_parser(self) -> None:
        p = pyexpat.ParserCreate(namespace_separator="}")
        p.StartElementHandler = self.on_start
        p.EndElementHandler = self.on_end
        p.CharacterDataHandler = self.on_text
        p.buffer_text = True
        self.parser = p
        self.depth = 0
        self.stack: list[list] = []

    def data_received(self, data: bytes) -> None:
        self.wire_in += len(data)
        if self.compressed:
            data = self.inflater.decompress(data)
        try:
            self.parser.Parse(data, False)
        except pyexpat.ExpatError as e:
            self.srv.stats.errors += 1
            self.send(
                "<stream:error>"
                "<not-well-formed xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
                "</stream:error></stream:stream>"
            )
            self.flush()
            self.emit_error(f"xml: {e}")
            self.transport.close()
            return
        self.flush()

    def send(self, s: str) -> None:
        self.outbuf.append(s)

    def flush(self) -> None:
        if self.upgrading:
            return
        if not self.outbuf or self.closed:
            self.outbuf.clear()
            return
        data = "".join(self.outbuf).encode()
        self.outbuf.clear()
        if self.compressed:
            data = self.deflater.compress(data) + self.deflater.flush(zlib.Z_SYNC_FLUSH)
        self.transport.write(data)

    def emit_error(self, msg: str) -> None:
        self.srv.emit({"event": "error", "msg": msg})

    # ---- XML -------------------------------------------------------------------------
    def on_start(self, name: str, attrs: dict) -> None:
        d = self.depth
        self.depth = d + 1
        if d == 0:
            self.stream_opened(name, attrs)
            return
        el = [name, attrs, [], ""]
        if d > 1:
            self.stack[-1][2].append(el)
        self.stack.append(el)

    def on_text(self, text: str) -> None:
        if self.stack:
            self.stack[-1][3] += text

    def on_end(self, name: str) -> None:
        self.depth -= 1
        if self.depth == 0:
            if not self.sent_close:
                self.send("</stream:stream>")
                self.flush()
            self.closed = True
            self.transport.close()
            return
        el = self.stack.pop()
        if self.depth == 1:
            self.stanza(el)

    def stream_opened(self, name: str, attrs: dict) -> None:
        if name != NS_STREAM + "}stream":
            self.emit_error(f"bad root {name}")
            self.transport.close()
            return
        self.send(STREAM_HEADER % random.getrandbits(32))
        if not self.tls:
            self.send(FEATURES_PLAIN)
        elif not self.authed:
            self.send(FEATURES_TLS_COMPRESSED if self.compressed else FEATURES_TLS)
        else:
            self.send(FEATURES_AUTHED)

    def stanza(self, el: list) -> None:
        name, attrs, children, text = el
        if name == "jabber:client}iq":
            self.iq(attrs, children)
        elif name == NS_TLS + "}starttls":
            if self.tls:
                self.transport.close()
                return
            self.send("<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            self.flush()
            # The client's first TLS-protected bytes (its new stream header) can be
            # handed to data_received by the SSL layer before start_tls() returns:
            # switch the parser now and hold our output until the new transport is
            # known.
            self.tls = True
            self.upgrading = True
            self.new_parser_after_current()
            asyncio.ensure_future(self.do_tls())
        elif name == NS_COMPRESS + "}compress":
            self.send("<compressed xmlns='http://jabber.org/protocol/compress'/>")
            self.flush()
            self.compressed = True
            self.inflater = zlib.decompressobj()
            self.deflater = zlib.compressobj()
            self.new_parser_after_current()
        elif name == NS_SASL + "}auth":
            self.auth(attrs, text)
        else:
            self.srv.stats.errors += 1
            self.emit_error(f"unexpected {name}")

    def new_parser_after_current(self) -> None:
        # We are inside the old parser's callback: swap it once Parse() returns.
        # Nothing else arrives in the same chunk (the client waits for our answer).
        old = self.parser
        old.StartElementHandler = None
        old.EndElementHandler = None
        old.CharacterDataHandler = None
        self.new_parser()

    async def do_tls(self) -> None:
        loop = self.srv.loop
        try:
            new = await loop.start_tls(
                self.transport, self, self.srv.ssl_ctx, server_side=True
            )
        except Exception as e:  # noqa: BLE001
            self.srv.stats.errors += 1
            self.emit_error(f"tls: {e!r}")
            self.transport.close()
            return
        self.transport = new
        self.upgrading = False
        self.flush()

    def auth(self, attrs: dict, text: str) -> None:
        mech = attrs.get("mechanism")
        ok = False
        if self.tls and mech == "X-YANDEX-OAUTH":
            try:
                raw = base64.b64decode(text.strip(), validate=True)
                login, token = raw.split(b"\0", 1)
                ok = bool(login) and bool(token) and token != b"bad"
                self.login = login.decode()
            except Exception:  # noqa: BLE001
                ok = False
        if not ok:
            self.send(
                "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/>"
                "</failure>"
            )
            self.srv.stats.errors += 1
            self.emit_error(f"auth failed mech={mech!r}")
            return
        self.authed = True
        self.send("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
        self.new_parser_after_current()

    def iq(self, attrs: dict, children: list) -> None:
        typ = attrs.get("type")
        iid = attrs.get("id", "")
        if typ == "result" or typ == "error":
            if iid in self.outstanding:
                self.outstanding.discard(iid)
                self.acked()
            elif iid.startswith("ping_"):
                self.srv.stats.pongs += 1
            elif iid == "ask_version":
                self.srv.stats.version_answers += 1
            return
        child = children[0][0] if children else ""
        if typ == "set" and child == NS_BIND + "}bind":
            res = "bench"
            for c in children[0][2]:
                if c[0] == NS_BIND + "}resource" and c[3].strip():
                    res = c[3].strip()
            self.jid = f"{self.login}@{DOMAIN}/{res}"
            self.send(
                f"<iq type='result' id='{esc(iid)}'>"
                "<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                f"<jid>{esc(self.jid)}</jid></bind></iq>"
            )
        elif typ == "set" and child == NS_SESSION + "}session":
            self.send(f"<iq type='result' id='{esc(iid)}'/>")
            self.send(
                f"<iq from='ya.ru' type='get' to='{esc(self.jid)}' id='ask_version'>"
                "<query xmlns='jabber:iq:version'/></iq>"
            )
            self.send(
                f"<iq from='ya.ru' type='get' to='{esc(self.jid)}' id='ping_0'>"
                "<ping xmlns='urn:xmpp:ping'/></iq>"
            )
            self.srv.stats.pings_sent += 1
        elif typ == "set" and child == NS_PUSH + "}s":
            self.subscription(iid)
        elif typ == "get" and child == NS_PING + "}ping":
            self.srv.stats.client_pings += 1
            self.send(f"<iq type='result' id='{esc(iid)}' from='ya.ru'/>")
        else:
            self.srv.stats.client_iqs += 1
            self.send(
                f"<iq type='error' id='{esc(iid)}' from='ya.ru'><error type='cancel'>"
                "<service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
                "</error></iq>"
            )

    def subscription(self, iid: str) -> None:
        t = time.perf_counter()
        self.subscribed = True
        st = self.srv.stats
        st.subscribed += 1
        ms = (t - self.t_accept) * 1000.0
        st.handshake_ms.append(ms)
        self.send(f"<iq type='result' id='{esc(iid)}' from='{esc(self.login)}@ya.ru'/>")
        if self.mode == "handshake":
            self.srv.emit(
                {
                    "event": "handshake",
                    "ms": round(ms, 3),
                    "compressed": self.compressed,
                }
            )
        elif self.mode == "idle":
            self.next_ping = (
                time.monotonic() + random.random() * self.srv.args.ping_interval
            )
            self.srv.idle.append(self)
            self.srv.schedule(self)
        elif self.mode == "flood":
            self.flush()
            self.t_first = time.perf_counter()
            self.cpu_first = cpu_s()
            self.wire_in = 0
            n = min(self.window, self.n_total)
            for _ in range(n):
                self.push()

    def push(self) -> None:
        self.n_sent += 1
        k = self.n_sent
        iid = f"p{k}"
        self.outstanding.add(iid)
        self.outbuf.append(
            f"<iq type='set' from='{self.login}@ya.ru' to='{self.jid}' id='{iid}'>"
            f"<query xmlns='yandex:push:disk' version='{k}'{self.srv.push_attrs}/></iq>"
        )

    def acked(self) -> None:
        self.n_acked += 1
        if self.n_sent < self.n_total:
            self.push()
        elif self.n_acked == self.n_total:
            t = time.perf_counter()
            dt = t - self.t_first
            self.srv.emit(
                {
                    "event": "flood",
                    "n": self.n_total,
                    "window": self.window,
                    "secs": round(dt, 4),
                    "rate": round(self.n_total / dt, 1),
                    "compressed": self.compressed,
                    "server_cpu_s": round(cpu_s() - self.cpu_first, 4),
                    "server_cpu_pct": round(100 * (cpu_s() - self.cpu_first) / dt, 1),
                    "client_wire_bytes_per_ack": round(self.wire_in / self.n_total, 1),
                }
            )
            self.send("</stream:stream>")
            self.sent_close = True

    def ping(self) -> None:
        self.ping_seq += 1
        self.srv.stats.pings_sent += 1
        self.send(
            f"<iq from='ya.ru' type='get' to='{esc(self.jid)}' "
            f"id='ping_{self.ping_seq}'><ping xmlns='urn:xmpp:ping'/></iq>"
        )
        self.flush()


async def control(srv: Server) -> None:
    """Commands on stdin, one a line.

    EOF on a pipe (the driver went away) ends the server."""
    loop = asyncio.get_event_loop()
    is_pipe = stat.S_ISFIFO(os.fstat(0).st_mode)
    while True:
        line = await loop.run_in_executor(None, sys.stdin.buffer.readline)
        if not line:
            if is_pipe:
                return
            await asyncio.Event().wait()  # e.g. </dev/null: run until killed
        cmd = line.decode().strip()
        if cmd == "stats":
            st = srv.stats
            hs = sorted(st.handshake_ms)
            d = {k: v for k, v in vars(st).items() if k != "handshake_ms"}
            d["event"] = "stats"
            d["idle_conns"] = len(srv.idle)
            d["handshake_ms_median"] = round(hs[len(hs) // 2], 3) if hs else None
            d["server_cpu_s"] = round(cpu_s(), 4)
            srv.emit(d)
        elif cmd.startswith("set "):
            _, key, val = cmd.split()
            setattr(srv.args, key, type(getattr(srv.args, key))(val))
            srv.emit({"event": "set", key: getattr(srv.args, key)})
        elif cmd == "reset":
            srv.stats.handshake_ms.clear()
        elif cmd == "quit":
            return


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["flood", "handshake", "idle"], required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--window", type=int, default=100)
    ap.add_argument("--ping-interval", type=float, default=30.0)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    ap.add_argument(
        "--push-attrs",
        default=" uid='123456789' t='diff' old='0'",
        help="extra attributes of each pushed <query/> (raw XML)",
    )
    args = ap.parse_args()
    if args.cpu is not None:
        try:
            os.sched_setaffinity(0, {args.cpu})
        except OSError:
            pass
    os.makedirs(args.workdir, exist_ok=True)
    ca, crt, key = make_certs(args.workdir)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(crt, key)
    srv = Server(args, ctx)
    loop = asyncio.get_event_loop()
    server = await loop.create_server(
        lambda: Conn(srv), "127.0.0.1", args.port, backlog=4096
    )
    port = server.sockets[0].getsockname()[1]
    srv.emit({"event": "ready", "port": port, "ca": ca, "pid": os.getpid()})
    if args.mode == "idle":
        asyncio.ensure_future(srv.pinger())
    await control(srv)
    server.close()


if __name__ == "__main__":
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except Exception:  # noqa: BLE001
        pass
    asyncio.run(main())
