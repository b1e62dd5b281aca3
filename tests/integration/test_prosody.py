"""
The client end to end against Prosody, a server we did not write.

Each test runs its own Prosody (see ``tests/integration/prosody/README.md``)
with modules that play the vendor's part: X-YANDEX-OAUTH, the version query,
pings, the subscription and Disk pushes on demand. What the client answers is
read back from the server's own record, not from the client.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from tests.integration.prosody.harness import (
    DIRECT_TLS_ADDRESS,
    STARTTLS_ADDRESS,
    ProsodyServer,
    closedPort,
    skipReason,
    writeUnrelatedAuthority,
)
from yadiskpush import __version__
from yadiskpush.connection.endpoint import DIRECT_TLS, STARTTLS
from yadiskpush.errors import (
    AuthenticationFailed,
    CertificateError,
    StreamErrorReceived,
    SubscriptionFailed,
)
from yadiskpush.notification import Notification
from yadiskpush.secret import Secret
from yadiskpush.service import PushService
from yadiskpush.settings import Settings

LOGIN = "test"
TOKEN = "c4181a7c2cf4521964a72ff57a34a07"
RESOURCE = "yadiskpush-test"
# Prosody appends this to the resource asked for, so the JID it assigns is
# not the one requested, and the client must keep the assigned one.
SUFFIX = "-assigned"
BARE = f"{LOGIN}@ya.ru"
ASSIGNED_JID = f"{BARE}/{RESOURCE}{SUFFIX}"
TLS_NS = "urn:ietf:params:xml:ns:xmpp-tls"
PUSH_NS = "yandex:push:disk"
PUSHES = 20


def deferredTest(
    method: Callable[..., Coroutine[Any, Any, None]],
) -> Callable[..., defer.Deferred[None]]:
    """Run a coroutine test method as the Deferred trial waits on."""

    @functools.wraps(method)
    def run(*args: Any, **kwargs: Any) -> defer.Deferred[None]:
        return defer.ensureDeferred(method(*args, **kwargs))

    return run


class ProsodyTestCase(TestCase):
    """Starts a Prosody per test and builds services that connect to it."""

    skip = skipReason()
    timeout = 30
    serverOptions: dict[str, Any] = {}

    @deferredTest
    async def setUp(self) -> None:
        self.server = ProsodyServer(
            reactor,
            tokens={LOGIN: TOKEN},
            resourceSuffix=SUFFIX,
            **self.serverOptions,
        )
        await self.server.start()
        self.addCleanup(self.server.stop)

    def settings(self, **overrides: Any) -> Settings:
        """Settings for the STARTTLS port, dialled by name, and no fallback."""
        values: dict[str, Any] = {
            "login": LOGIN,
            "token": Secret(TOKEN),
            "host": self.server.tlsHost,
            "port": self.server.starttlsPort,
            "tlsPort": 0,
            "domain": "ya.ru",
            "resource": RESOURCE,
            "caFile": self.server.caFile,
        }
        values.update(overrides)
        return Settings(**values)

    def service(self, settings: Settings | None = None) -> PushService:
        """A started service, stopped at cleanup."""
        service = PushService(settings or self.settings(), reactor=reactor)
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        return service

    def clientStanzas(self, **match: Any) -> list[dict[str, Any]]:
        """What the client sent, as Prosody recorded it."""
        return self.server.records(event="in", **match)


class SessionTests(ProsodyTestCase):
    """Connecting, authenticating, binding, subscribing, closing."""

    @deferredTest
    async def test_startTLSWithVerifiedCertificate(self) -> None:
        """The client upgrades with STARTTLS and accepts the certificate it verified."""
        service = self.service()
        await service.whenReady()
        self.assertEqual(service.dialer.lastMode, STARTTLS)
        self.assertEqual(len(self.clientStanzas(name="starttls", xmlns=TLS_NS)), 1)
        [auth] = self.server.records(event="auth")
        self.assertTrue(auth["secure"])
        self.assertEqual(auth["port"], self.server.starttlsPort)
        self.assertIn(auth["tls_protocol"], ("TLSv1.2", "TLSv1.3"))

    @deferredTest
    async def test_untrustedCertificateRefused(self) -> None:
        """A certificate from a CA the client does not trust ends the attempt."""
        assert self.server.directory is not None
        otherCA = writeUnrelatedAuthority(self.server.directory / "other-ca.pem")
        service = self.service(self.settings(caFile=str(otherCA)))
        reason = await service.whenConnectionFailed()
        self.assertIsInstance(reason, CertificateError)
        self.assertEqual(reason.host, self.server.tlsHost)
        self.assertEqual(self.server.records(event="auth"), [])
        self.assertEqual(self.clientStanzas(name="auth"), [])

    @deferredTest
    async def test_certificateNameChecked(self) -> None:
        """A trusted certificate not naming the host dialled ends the attempt."""
        service = self.service(self.settings(host=STARTTLS_ADDRESS))
        reason = await service.whenConnectionFailed()
        self.assertIsInstance(reason, CertificateError)
        self.assertEqual(reason.host, STARTTLS_ADDRESS)
        self.assertEqual(self.clientStanzas(name="auth"), [])

    @deferredTest
    async def test_authenticatesWithYandexOAuth(self) -> None:
        """The client authenticates with X-YANDEX-OAUTH, the only mechanism."""
        service = self.service()
        await service.whenReady()
        [sent] = self.clientStanzas(name="auth")
        self.assertEqual(sent["mechanism"], "X-YANDEX-OAUTH")
        [auth] = self.server.records(event="auth")
        self.assertEqual(
            (auth["result"], auth["mechanism"], auth["username"]),
            ("success", "X-YANDEX-OAUTH", LOGIN),
        )

    @deferredTest
    async def test_keepsAssignedJID(self) -> None:
        """The client uses the JID the server assigned at bind, not its own."""
        service = self.service()
        jid = await service.whenReady()
        self.assertEqual(jid.full(), ASSIGNED_JID)
        [bound] = self.server.records(event="bound")
        self.assertEqual(bound["jid"], ASSIGNED_JID)
        self.assertEqual(service.jid.full(), ASSIGNED_JID)

    @deferredTest
    async def test_subscribesAtBareJID(self) -> None:
        """The subscription goes to the client's bare JID and is answered."""
        service = self.service()
        await service.whenReady()
        [sent] = self.clientStanzas(child_xmlns=PUSH_NS, type="set")
        self.assertEqual(
            (sent["child"], sent["to"], sent["from"]),
            ("s", f"{LOGIN}@ya.ru", ASSIGNED_JID),
        )
        [subscription] = self.server.records(event="subscription")
        self.assertEqual(subscription["result"], "result")
        self.assertEqual(subscription["id"], sent["id"])

    @deferredTest
    async def test_cleanClose(self) -> None:
        """Stopping sends </stream:stream>; Prosody sees the client close."""
        service = self.service()
        await service.whenReady()
        await service.stopService()
        [closed] = await self.server.waitForRecords(event="closed")
        self.assertEqual((closed["by"], closed["jid"]), ("client", ASSIGNED_JID))
        self.assertIn("Received </stream:stream>", self.server.log())

    @deferredTest
    async def test_wrongTokenGivesUp(self) -> None:
        """A rejected token is fatal and the message asks for a new token."""
        service = self.service(self.settings(token=Secret("wrong")))
        reason = await service.whenGaveUp()
        self.assertIsInstance(reason, AuthenticationFailed)
        self.assertEqual(reason.condition, "not-authorized")
        self.assertIn("new OAuth token", reason.message)
        self.assertNotIn("wrong", reason.message)
        [auth] = self.server.records(event="auth")
        self.assertEqual(
            (auth["result"], auth["condition"]), ("failure", "not-authorized")
        )

    @deferredTest
    async def test_directTLSFallback(self) -> None:
        """With the STARTTLS port closed, the client logs in on the TLS port."""
        settings = self.settings(
            host=DIRECT_TLS_ADDRESS,
            port=closedPort(DIRECT_TLS_ADDRESS),
            tlsPort=self.server.directTLSPort,
        )
        service = self.service(settings)
        jid = await service.whenReady()
        self.assertEqual(jid.full(), ASSIGNED_JID)
        self.assertEqual(service.dialer.lastMode, DIRECT_TLS)
        self.assertEqual(self.clientStanzas(name="starttls"), [])
        [auth] = self.server.records(event="auth")
        self.assertEqual(auth["port"], self.server.directTLSPort)
        self.assertEqual(auth["mechanism"], "X-YANDEX-OAUTH")


class RefusedSubscriptionTests(ProsodyTestCase):
    """A server that answers the subscription with an error."""

    serverOptions = {"subscriptionError": "service-unavailable"}

    @deferredTest
    async def test_subscriptionErrorReported(self) -> None:
        """An error answer to the subscription fails the session, naming it."""
        service = self.service()
        reason = await service.whenConnectionFailed()
        self.assertIsInstance(reason, SubscriptionFailed)
        self.assertEqual(reason.condition, "service-unavailable")


class ServerRequestTests(ProsodyTestCase):
    """The server's version query and pings."""

    @deferredTest
    async def test_versionAnswered(self) -> None:
        """The version query is answered with name, version and OS, same id."""
        service = self.service()
        await service.whenReady()
        [answer] = await self.server.waitForRecords(
            event="in", id="ask_version", type="result"
        )
        self.assertEqual(answer["child_xmlns"], "jabber:iq:version")
        self.assertEqual(answer["to"], "ya.ru")
        version = answer["version"]
        self.assertEqual(
            (version["name"], version["version"]), ("yadiskpush", __version__)
        )
        self.assertTrue(version.get("os"))

    @deferredTest
    async def test_pingsAnswered(self) -> None:
        """Each server ping is answered with a result carrying its id."""
        service = self.service()
        await service.whenReady()
        ids = await self.server.ping() + await self.server.ping()
        for pingId in ids:
            [answer] = await self.server.waitForRecords(event="in", id=pingId)
            self.assertEqual((answer["type"], answer["to"]), ("result", "ya.ru"))
        self.assertEqual(len(set(ids)), 2)


class RobustnessTests(ProsodyTestCase):
    """What a server may do that the happy path does not show."""

    @deferredTest
    async def test_unknownIQRefused(self) -> None:
        """An IQ get the client does not understand gets service-unavailable."""
        service = self.service()
        await service.whenReady()
        [queryId] = await self.server.sendUnknownIQ()
        [answer] = await self.server.waitForRecords(event="in", id=queryId)
        self.assertEqual(
            (answer["type"], answer["error"]), ("error", "service-unavailable")
        )

    @deferredTest
    async def test_reconnectsAndResubscribes(self) -> None:
        """After the server ends the stream, the client logs in and subscribes again."""
        received: list[Notification] = []
        service = self.service()
        service.addNotificationObserver(received.append)
        await service.whenReady()
        failed = service.whenConnectionFailed()
        await self.server.kick("reset")
        reason = await failed
        self.assertIsInstance(reason, StreamErrorReceived)
        self.assertEqual(reason.condition, "reset")
        await self.server.waitForRecords(2, event="subscription", timeout=15)
        [pushId] = await self.server.push(1)
        await self.server.waitForRecords(event="in", id=pushId)
        self.assertEqual([n.stanzaId for n in received], [pushId])
        self.assertEqual(len(self.server.records(event="auth", result="success")), 2)

    @deferredTest
    async def test_followsSeeOtherHost(self) -> None:
        """A see-other-host redirect is followed at once, with STARTTLS."""
        service = self.service()
        await service.whenReady()
        port = self.server.starttlsPort
        await self.server.kick("see-other-host", f"{self.server.tlsHost}:{port}")
        [_, again] = await self.server.waitForRecords(2, event="subscription")
        self.assertEqual(again["jid"], ASSIGNED_JID)
        self.assertEqual(len(self.clientStanzas(name="starttls")), 2)


class PeriodicPingTests(ProsodyTestCase):
    """A server that pings on its own, as the vendor does."""

    serverOptions = {"pingInterval": 0.2}

    @deferredTest
    async def test_periodicPingsAnswered(self) -> None:
        """Pings the server sends on a timer are answered, each with its id."""
        service = self.service()
        await service.whenReady()
        sent = await self.server.waitForRecords(3, event="sent", kind="ping")
        for ping in sent[:3]:
            [answer] = await self.server.waitForRecords(event="in", id=ping["id"])
            self.assertEqual(answer["type"], "result")


class PushTests(ProsodyTestCase):
    """Disk pushes from the server to the observers, and their acks."""

    @deferredTest
    async def test_pushesInOrderAckedOnce(self) -> None:
        """Twenty pushes reach the observer in order; each is acked exactly once."""
        received: list[Notification] = []
        service = self.service()
        service.addNotificationObserver(received.append)
        jid = await service.whenReady()
        ids = await self.server.push(PUSHES)
        self.assertEqual(len(ids), PUSHES)
        await self.server.waitForRecords(PUSHES, event="in", type="result", to=BARE)
        self.assertEqual([n.stanzaId for n in received], ids)
        await service.stopService()
        await self.server.waitForRecords(event="closed")
        acks = [r["id"] for r in self.clientStanzas(to=BARE, type="result")]
        self.assertEqual(acks, ids)
        self.assertEqual(self.clientStanzas(type="error"), [])
        first = received[0]
        self.assertEqual((first.sender, first.recipient), (BARE, jid.full()))
        self.assertEqual(first.attributes["t"], "diff")
        self.assertEqual(first.attributes["new"], ids[0].removeprefix("push-"))
        self.assertIn("Отчёт &amp; план", first.rawXml)
        [op] = first.children
        self.assertEqual(op.name, "op")
        self.assertEqual(
            op.attributes["key"], f"/disk/Отчёт & план {op.attributes['size']}.txt"
        )

    @deferredTest
    async def test_ackWaitsForObserver(self) -> None:
        """A push is acked only after the observer's Deferred fires."""
        pending: defer.Deferred[None] = defer.Deferred()
        delivered: defer.Deferred[Notification] = defer.Deferred()

        def observe(notification: Notification) -> defer.Deferred[None]:
            delivered.callback(notification)
            return pending

        service = self.service()
        service.addNotificationObserver(observe)
        await service.whenReady()
        [pushId] = await self.server.push(1)
        notification = await delivered
        self.assertEqual(notification.stanzaId, pushId)
        # The client answers in stream order: once the answer to a ping sent
        # after the push is recorded, an early ack would have been too.
        [pingId] = await self.server.ping()
        await self.server.waitForRecords(event="in", id=pingId)
        self.assertEqual(self.clientStanzas(id=pushId), [])
        pending.callback(None)
        [ack] = await self.server.waitForRecords(event="in", id=pushId)
        self.assertEqual(ack["type"], "result")
