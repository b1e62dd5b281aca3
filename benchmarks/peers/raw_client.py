#!/usr/bin/env python3
"""'Physical limit' client: plain asyncio + ssl + ElementTree.XMLPullParser, no XMPP
library.

--tune: shrink asyncio's per-connection SSL read buffer (SSLProtocol.max_size, 256 KiB
on Python 3.11, allocated and zero-filled for every TLS connection) to 16 KiB + 1
record, to show the memory floor without that asyncio artefact.

Does the minimum a correct client must: parse every stanza into an element, answer
version and ping requests, subscribe, and acknowledge every push (acks produced while
handling one received chunk go out in one write).  Optional XEP-0138 zlib.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
import xml.etree.ElementTree as ET
import zlib

import common

NS_STREAM = "{http://etherx.jabber.org/streams}"
NS_TLS = "{urn:ietf:params:xml:ns:xmpp-tls}"
NS_SASL = "{urn:ietf:params:xml:ns:xmpp-sasl}"
NS_COMPRESS_FEATURE = "{http://jabber.org/features/compress}compression"
NS_COMPRESS = "{http://jabber.org/protocol/compress}"
IQ = "{jabber:client}iq"
PUSH = "{yandex:push:disk}query"
PING = "{urn:xmpp:ping}ping"
VERSION = "{jabber:iq:version}query"


def esc(s: str) -> str:
    if "&" in s or "<" in s or '"' in s or ">" in s:
        s = (
            s.replace("&", "&amp;")
            .replace("<", "&lt;")
            .replace(">", "&gt;")
            .replace('"', "&quot;")
        )
    return s


class RawSession(asyncio.Protocol):
    def __init__(self, cfg, ssl_ctx: ssl.SSLContext) -> None:
        self.cfg = cfg
        self.ssl_ctx = ssl_ctx
        self.loop = asyncio.get_running_loop()
        self.transport = None
        self.tls = False
        self.compressed = False
        self.authed = False
        self.inflater = None
        self.deflater = None
        self.jid = ""
        self.bare = f"{cfg.login}@{cfg.domain}"
        self.pushes = 0
        self.last_version = None
        self.t_connect = 0.0
        self.t_sub_sent = 0.0
        self.t_sub_result = 0.0
        self.subscribed = self.loop.create_future()
        self.closed = self.loop.create_future()
        self.out: list[str] = []
        self.new_parser()

    # ---- plumbing --------------------------------------------------------------------
    def new_parser(self) -> None:
        self.parser = ET.XMLPullParser(("start", "end"))
        self.depth = 0
        self.root = None

    def header(self) -> None:
        self.out.append(
            "<?xml version='1.0'?><stream:stream "
            "xmlns:stream='http://etherx.jabber.org/streams' "
            f"version='1.0' xmlns='jabber:client' to='{self.cfg.domain}' xml:lang='en'>"
        )

    def flush(self) -> None:
        if not self.out:
            return
        data = "".join(self.out).encode()
        self.out.clear()
        if self.compressed:
            data = self.deflater.compress(data) + self.deflater.flush(zlib.Z_SYNC_FLUSH)
        self.transport.write(data)

    def connection_made(self, transport) -> None:
        self.transport = transport
        if not self.tls:
            self.header()
            self.flush()

    def connection_lost(self, exc) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)
        if not self.subscribed.done():
            self.subscribed.set_exception(
                ConnectionError(f"connection lost before subscription: {exc!r}")
            )

    def data_received(self, data: bytes) -> None:
        if self.compressed:
            data = self.inflater.decompress(data)
        parser = self.parser
        parser.feed(data)
        for ev, el in parser.read_events():
            if ev == "start":
                if self.depth == 0:
                    self.root = el
                self.depth += 1
            else:
                self.depth -= 1
                if self.depth == 1:
                    self.stanza(el)
                    if self.parser is not parser:  # stream restarted inside stanza()
                        break
                    self.root.remove(el)
                elif self.depth == 0:
                    self.out.append("</stream:stream>")
                    self.flush()
                    self.transport.close()
                    return
        self.flush()

    # ---- stanzas ---------------------------------------------------------------------
    def stanza(self, el) -> None:
        tag = el.tag
        if tag == IQ:
            self.iq(el)
        elif tag == NS_STREAM + "features":
            self.features(el)
        elif tag == NS_TLS + "proceed":
            self.loop.create_task(self.starttls())
        elif tag == NS_COMPRESS + "compressed":
            self.compressed = True
            self.inflater = zlib.decompressobj()
            self.deflater = zlib.compressobj()
            self.restart()
        elif tag == NS_SASL + "success":
            self.authed = True
            self.restart()
        elif tag == NS_SASL + "failure":
            self.fail("SASL failure")
        elif tag == NS_STREAM + "error":
            self.fail("stream error")

    def fail(self, msg: str) -> None:
        if not self.subscribed.done():
            self.subscribed.set_exception(ConnectionError(msg))
        self.transport.close()

    def restart(self) -> None:
        self.new_parser()
        self.header()

    async def starttls(self) -> None:
        self.transport = await self.loop.start_tls(
            self.transport, self, self.ssl_ctx, server_hostname=self.cfg.domain
        )
        self.tls = True
        self.restart()
        self.flush()

    def features(self, el) -> None:
        if not self.tls:
            if el.find(NS_TLS + "starttls") is None:
                return self.fail("server offers no STARTTLS")
            self.out.append("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        elif (
            self.cfg.zlib
            and not self.compressed
            and not self.authed
            and el.find(NS_COMPRESS_FEATURE) is not None
        ):
            self.out.append(
                "<compress xmlns='http://jabber.org/protocol/compress'>"
                "<method>zlib</method></compress>"
            )
        elif not self.authed:
            # Forced: the server advertises an empty <mechanisms/> list.
            payload = base64.b64encode(
                self.cfg.login.encode() + b"\0" + self.cfg.token.encode()
            ).decode()
            self.out.append(
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' "
                f"mechanism='X-YANDEX-OAUTH'>{payload}</auth>"
            )
        else:
            self.out.append(
                "<iq type='set' id='bind_1'>"
                "<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                "<resource>YaDisk-client</resource></bind></iq>"
            )

    def iq(self, el) -> None:
        typ = el.get("type")
        iid = el.get("id", "")
        if typ == "set":
            q = el.find(PUSH)
            if q is not None:
                self.pushes += 1
                self.last_version = q.get("version")
                sender = esc(el.get("from", ""))
                self.out.append(f'<iq type="result" to="{sender}" id="{esc(iid)}"/>')
                return
        elif typ == "get":
            if el.find(PING) is not None:
                sender = esc(el.get("from", ""))
                self.out.append(f'<iq type="result" to="{sender}" id="{esc(iid)}"/>')
                return
            if el.find(VERSION) is not None:
                self.out.append(
                    f'<iq type="result" to="{esc(el.get("from", ""))}" id="{esc(iid)}">'
                    '<query xmlns="jabber:iq:version"><name>YaDiskClient</name>'
                    "<version>1.1</version><os>Linux</os></query></iq>"
                )
                return
        elif typ == "result":
            if iid == "bind_1":
                self.jid = (
                    el.findtext(
                        "{urn:ietf:params:xml:ns:xmpp-bind}bind/"
                        "{urn:ietf:params:xml:ns:xmpp-bind}jid"
                    )
                    or ""
                )
                self.out.append(
                    "<iq type='set' id='session_1'>"
                    "<session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>"
                )
            elif iid == "session_1":
                self.out.append(
                    f"<iq type='set' to='{esc(self.bare)}' id='sub_1'>"
                    "<s xmlns='yandex:push:disk'/></iq>"
                )
                self.t_sub_sent = time.perf_counter()
            elif iid == "sub_1":
                self.t_sub_result = time.perf_counter()
                if not self.subscribed.done():
                    self.subscribed.set_result(True)
            return
        elif typ == "error":
            if iid in ("bind_1", "session_1", "sub_1"):
                self.fail(f"iq error for {iid}")
            return
        self.out.append(
            "<iq type='error' to='{}' id='{}'><error type='cancel'>"
            "<service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
            "</error></iq>".format(esc(el.get("from", "")), esc(iid))
        )

    async def close(self) -> None:
        if self.transport is not None and not self.closed.done():
            self.out.append("</stream:stream>")
            self.flush()
            try:
                await asyncio.wait_for(asyncio.shield(self.closed), 1.0)
            except TimeoutError:
                self.transport.close()


_ctx_cache: dict = {}


async def open_session(cfg) -> RawSession:
    t_create = time.perf_counter()
    if cfg.tune:
        from asyncio import sslproto

        sslproto.SSLProtocol.max_size = 17 * 1024
    ctx = _ctx_cache.get(cfg.ca)
    if ctx is None:
        ctx = _ctx_cache[cfg.ca] = ssl.create_default_context(cafile=cfg.ca)
    loop = asyncio.get_running_loop()
    s = RawSession(cfg, ctx)
    s.t_create = t_create
    s.t_connect = time.perf_counter()
    await loop.create_connection(lambda: s, cfg.host, cfg.port)
    await s.subscribed
    return s


if __name__ == "__main__":
    import sys

    common.run(open_session, "raw-asyncio", "py" + sys.version.split()[0])
