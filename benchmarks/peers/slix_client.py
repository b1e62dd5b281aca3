#!/usr/bin/env python3
"""slixmpp client for the Yandex.Disk push workload (run with the slixmpp venv).

Idiomatic slixmpp: one ClientXMPP per account, plugins xep_0092 (version) and
xep_0199 (ping responder), a registered stanza plugin for
<query xmlns="yandex:push:disk"/> and a Callback handler that acks each push with
iq.reply().send().

X-YANDEX-OAUTH: registered in slixmpp.util.sasl with @sasl_mech, and FORCED: the
server's <mechanisms/> list is empty, so the 'mechanisms' stream-feature handler is
replaced by one that offers the mechanism itself before calling the plugin's own
_send_auth() (which also handles <success/>/<failure/>).

--tune: all PushClient instances share ONE ssl.SSLContext, passed through the
constructor's ssl_context argument (by default every XMLStream builds its own
ssl.create_default_context() and loads the system CA store into it: ~50 ms and
~1 MB per instance).

slixmpp has no XEP-0138 (stream compression) support: --zlib is refused.
"""

from __future__ import annotations

import asyncio
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import common
import slixmpp
from slixmpp import ClientXMPP, Iq
from slixmpp.util.sasl.client import Mech, sasl_mech
from slixmpp.xmlstream import ElementBase, register_stanza_plugin
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import StanzaPath

MECH = "X-YANDEX-OAUTH"


@sasl_mech(60)
class X_YANDEX_OAUTH(Mech):
    name = MECH
    required_credentials = {"username", "access_token"}

    def process(self, challenge=b""):
        return self.credentials["username"] + b"\0" + self.credentials["access_token"]


class DiskPush(ElementBase):
    name = "query"
    namespace = "yandex:push:disk"
    plugin_attrib = "disk_push"
    interfaces = {"version"}


register_stanza_plugin(Iq, DiskPush)


_shared_ctx = None


def shared_context(cfg):
    global _shared_ctx
    if _shared_ctx is None:
        import ssl

        _shared_ctx = ssl.create_default_context(cafile=cfg.ca)
    return _shared_ctx


class PushClient(ClientXMPP):
    def __init__(self, cfg) -> None:
        kw = {"ssl_context": shared_context(cfg)} if cfg.tune else {}
        super().__init__(f"{cfg.login}@{cfg.domain}/YaDisk-client", None, **kw)
        self.credentials["access_token"] = cfg.token
        self.ca_certs = Path(cfg.ca)
        self.enable_direct_tls = False
        self.enable_plaintext = False
        self.enable_starttls = True
        self.register_plugin(
            "xep_0092", pconfig={"software_name": "YaDiskClient", "version": "1.1"}
        )
        self.register_plugin("xep_0199", pconfig={"keepalive": False})
        # Force X-YANDEX-OAUTH although the server lists no mechanisms.
        mechs = self.plugin["feature_mechanisms"]

        def forced_sasl(features):
            if "mechanisms" in self.features:
                return False
            mechs.mech_list = {MECH}
            mechs.use_mechs = {MECH}
            return mechs._send_auth()

        self.unregister_feature("mechanisms", mechs.order)
        self.register_feature(
            "mechanisms", forced_sasl, restart=True, order=mechs.order
        )
        self.register_handler(
            Callback("disk push", StanzaPath("iq@type=set/disk_push"), self.on_push)
        )
        self.add_event_handler("session_start", self.on_session_start)
        self.add_event_handler("disconnected", self.on_disconnected)
        self.add_event_handler("failed_all_auth", self.on_fail)
        loop = asyncio.get_running_loop()
        self.subscribed = loop.create_future()
        self.closed = loop.create_future()
        self.pushes = 0
        self.last_version = None
        self.t_create = self.t_connect = self.t_sub_sent = self.t_sub_result = 0.0

    def on_push(self, iq) -> None:
        self.pushes += 1
        self.last_version = iq["disk_push"]["version"]
        iq.reply().send()

    async def on_session_start(self, _event) -> None:
        iq = self.make_iq_set(ito=self.boundjid.bare)
        iq.xml.append(ET.Element("{yandex:push:disk}s"))
        self.t_sub_sent = time.perf_counter()
        try:
            await iq.send(timeout=30)
        except Exception as e:  # noqa: BLE001
            if not self.subscribed.done():
                self.subscribed.set_exception(e)
            return
        self.t_sub_result = time.perf_counter()
        if not self.subscribed.done():
            self.subscribed.set_result(True)

    def on_fail(self, _event) -> None:
        if not self.subscribed.done():
            self.subscribed.set_exception(ConnectionError("SASL failed"))

    def on_disconnected(self, _event) -> None:
        if not self.closed.done():
            self.closed.set_result(True)
        if not self.subscribed.done():
            self.subscribed.set_exception(
                ConnectionError("disconnected before subscription")
            )

    async def close(self) -> None:
        if not self.closed.done():
            self.disconnect(wait=1.0)
            await self.closed


async def open_session(cfg) -> PushClient:
    if cfg.zlib:
        raise SystemExit("slixmpp has no XEP-0138 stream compression")
    t_create = time.perf_counter()
    c = PushClient(cfg)
    c.t_create = t_create
    c.t_connect = time.perf_counter()
    c.connect(cfg.host, cfg.port)
    await c.subscribed
    return c


if __name__ == "__main__":
    common.run(open_session, "slixmpp", slixmpp.__version__)
    sys.exit(0)
