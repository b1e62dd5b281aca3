"""
Tests for the runnable examples under docs/examples.

Each example is imported from its file, as a reader would run it, and driven
against the local push server over real loopback TCP and TLS.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from types import ModuleType
from typing import Any

from twisted.application import service
from twisted.internet import defer, reactor
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase
from twisted.words.protocols.jabber import xmlstream
from twisted.words.protocols.jabber.jid import JID

from tests.support import SERVER_HEADER, sentElements
from yadiskpush import Notification, Secret
from yadiskpush.localserver import LocalServer

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"
ACCOUNTS = {"alice": "alice-token-1", "bob": "bob-token-2"}


def loadExample(name: str) -> ModuleType:
    """Import ``docs/examples/<name>.py`` without putting docs/ on sys.path."""
    spec = importlib.util.spec_from_file_location(
        f"docs_example_{name}", EXAMPLES / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ComposeExampleTests(TestCase):
    """docs/examples/compose.py against the local server."""

    def setUp(self) -> defer.Deferred[None]:
        self.compose = loadExample("compose")
        self.server = LocalServer(ACCOUNTS, domain="ya.ru", reactor=reactor)
        caFile = Path(self.mktemp())
        caFile.parent.mkdir(parents=True, exist_ok=True)

        def started(server: LocalServer) -> None:
            self.addCleanup(server.stop)
            self.caFile = str(server.writeCACertificate(caFile))

        return self.server.start().addCallback(started)

    def startFleet(self, onNotification: Any) -> Any:
        fleet = self.compose.makeFleet(
            {login: Secret(token) for login, token in ACCOUNTS.items()},
            onNotification,
            reactor,
            host="127.0.0.1",
            port=self.server.starttlsPort,
            tlsPort=self.server.tlsPort,
            domain="ya.ru",
            caFile=self.caFile,
        )
        fleet.startService()
        self.addCleanup(fleet.stopService)
        return fleet

    @defer.inlineCallbacks
    def test_journalPerAccount(self) -> Any:
        """
        Two accounts in one PushFleet: each push lands in the journal under
        its login before the server sees its acknowledgement.
        """
        journalPath = self.mktemp()
        journal = self.compose.ChangeJournal(journalPath)
        fleet = self.startFleet(journal.record)
        yield fleet.whenAllSettled()

        for login in ACCOUNTS:
            answer = yield self.server.push(login, {"t": "diff", "uid": login})
            self.assertEqual(answer["type"], "result")

        with open(journalPath, encoding="utf-8") as lines:
            records = [json.loads(line) for line in lines]
        self.assertEqual(
            [(r["login"], r["attributes"]["uid"]) for r in records],
            [("alice", "alice"), ("bob", "bob")],
        )
        self.assertEqual(
            [r["id"] for r in records], [p.id for p in self.server.pushLog]
        )

    @defer.inlineCallbacks
    def test_ackWaitsForObserver(self) -> Any:
        """
        The push is acknowledged only when the Deferred the observer returned
        fires.
        """
        received: list[Notification] = []
        gate: defer.Deferred[None] = defer.Deferred()
        called: defer.Deferred[None] = defer.Deferred()

        def onNotification(notification: Notification) -> Any:
            received.append(notification)
            called.callback(None)
            return gate

        fleet = self.startFleet(onNotification)
        yield fleet.whenAllSettled()
        answer = self.server.push("bob", {"t": "diff"})
        yield called
        [notification] = received
        self.assertEqual(notification.login, "bob")
        self.assertEqual(self.server.acks[notification.stanzaId], 0)

        gate.callback(None)
        result = yield answer
        self.assertEqual(result["type"], "result")
        self.assertEqual(self.server.acks[notification.stanzaId], 1)


class ComposeSettingsTests(TestCase):
    """The example's reading of DISK_ACCOUNTS."""

    def accountsFile(self, mode: int = 0o600) -> str:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write("alice:secret-token\nbob:other-token\n")
        os.chmod(path, mode)
        return path

    def test_accountsFromEnvironment(self) -> None:
        """Each LOGIN:TOKEN line of the file becomes an account."""
        compose = loadExample("compose")
        accounts = compose.accountsFromEnvironment(
            {"DISK_ACCOUNTS": self.accountsFile()}
        )
        self.assertEqual(list(accounts), ["alice", "bob"])
        self.assertEqual(accounts["alice"], Secret("secret-token"))

    def test_unsafeFileRefused(self) -> None:
        """A file others may read stops the example with the fix."""
        compose = loadExample("compose")
        with self.assertRaises(SystemExit) as caught:
            compose.accountsFromEnvironment({"DISK_ACCOUNTS": self.accountsFile(0o644)})
        self.assertIn("chmod 600", str(caught.exception))

    def test_makeApplication(self) -> None:
        """
        makeApplication gives a twistd Application holding one PushFleet with
        a PushService per account, named after its login.
        """
        compose = loadExample("compose")
        application = compose.makeApplication({"DISK_ACCOUNTS": self.accountsFile()})
        [fleet] = list(service.IServiceCollection(application))
        self.assertEqual(fleet.logins(), ["alice", "bob"])
        self.assertEqual(
            [push.name for push in fleet], ["yadiskpush-alice", "yadiskpush-bob"]
        )

    def test_noAccounts(self) -> None:
        """Without DISK_ACCOUNTS the example exits with a usage line."""
        compose = loadExample("compose")
        self.assertRaises(SystemExit, compose.accountsFromEnvironment, {})


class OwnStreamExampleTests(TestCase):
    """docs/examples/ownstream.py: PushHandler in a wokkel XMPPClient."""

    def test_pushAcknowledgedOnOwnStream(self) -> None:
        """
        Once the client's stream is initialized it subscribes, and a push is
        handed to the callback and answered with a result.
        """
        ownstream = loadExample("ownstream")
        received: list[Notification] = []
        client = ownstream.makeClient(
            JID("alice@example.org/relay"), "password", received.append
        )
        xs = client.factory.buildProtocol(None)
        transport = StringTransport()
        xs.makeConnection(transport)
        xs.dataReceived(SERVER_HEADER)
        xs.dispatch(xs, xmlstream.STREAM_AUTHD_EVENT)
        transport.clear()
        xs.dataReceived(
            b"<iq type='set' from='alice@example.org' id='n1'"
            b" to='alice@example.org/relay'>"
            b"<query xmlns='yandex:push:disk' t='diff'/></iq>"
        )

        [notification] = received
        self.assertEqual(notification.stanzaId, "n1")
        self.assertEqual(dict(notification.attributes), {"t": "diff"})
        [answer] = sentElements(transport.value())
        self.assertEqual(
            (answer["type"], answer["id"], answer["to"]),
            ("result", "n1", "alice@example.org"),
        )

    def test_subscribesOnInitialization(self) -> None:
        """The example's DiskSubscriber asks for pushes for the bare JID."""
        ownstream = loadExample("ownstream")
        client = ownstream.makeClient(
            JID("alice@example.org/relay"), "password", lambda n: None
        )
        xs = client.factory.buildProtocol(None)
        transport = StringTransport()
        xs.makeConnection(transport)
        xs.dataReceived(SERVER_HEADER)
        transport.clear()
        xs.dispatch(xs, xmlstream.STREAM_AUTHD_EVENT)

        [request] = sentElements(transport.value())
        self.assertEqual((request["type"], request["to"]), ("set", "alice@example.org"))
        [payload] = request.elements()
        self.assertEqual((payload.uri, payload.name), ("yandex:push:disk", "s"))
