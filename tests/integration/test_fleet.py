"""
PushFleet end to end: many accounts over real loopback TLS to the local
server, isolated from each other, reloaded without touching the unchanged,
gated to a number of handshakes in flight, and spread out when they all
reconnect at once.
"""

from __future__ import annotations

import secrets
from typing import Any

from twisted.internet import defer, reactor

from tests.integration.support import LocalServerTestCase
from yadiskpush.errors import AuthenticationFailed, ServiceStopped
from yadiskpush.fleet import PushFleet
from yadiskpush.localserver import LocalServer
from yadiskpush.notification import Notification
from yadiskpush.secret import Secret


def tokens(logins: list[str]) -> dict[str, str]:
    return {login: "y0_" + secrets.token_urlsafe(16) for login in logins}


class FleetTests(LocalServerTestCase):
    timeout = 60

    @defer.inlineCallbacks
    def startServer(self, **kwargs: Any) -> Any:
        server = yield super().startServer(**kwargs)
        return server

    def startFleet(
        self, server: LocalServer, accounts: dict[str, str], **kwargs: Any
    ) -> PushFleet:
        """A running fleet of ``accounts`` pointed at ``server``; stopped on cleanup."""
        fleet = PushFleet(
            reactor,
            host="localhost",
            port=server.starttlsPort,
            tlsPort=server.tlsPort,
            caFile=self.caFile(server),
            domain=server.domain,
            **kwargs,
        )
        fleet.apply({login: Secret(token) for login, token in accounts.items()})
        fleet.startService()
        self.addCleanup(lambda: fleet.stopService() if fleet.running else None)
        return fleet

    @defer.inlineCallbacks
    def test_oneRejectedTokenAmongFifty(self) -> None:
        """A rejected token stops that account only; the other 49 subscribe once."""
        logins = [f"user{n}" for n in range(50)]
        accounts = tokens(logins)
        server = yield self.startServer(accounts=accounts)
        clientAccounts = dict(accounts, user7="y0_wrong-token")
        fleet = self.startFleet(server, clientAccounts)
        gaveUp = fleet.whenGaveUp()
        gaveUp.addErrback(lambda failure: failure.trap(ServiceStopped))
        yield fleet.whenAllSettled()

        self.assertEqual(fleet.subscribed, 49)
        self.assertEqual(list(fleet.gaveUp), ["user7"])
        self.assertIsInstance(fleet.gaveUp["user7"], AuthenticationFailed)
        self.assertFalse(gaveUp.called)
        opened = [server.sessionOf(e).login for e in server.eventsOf("session-opened")]
        self.assertEqual(sorted(opened), sorted(set(logins) - {"user7"}))
        failures = server.eventsOf("auth-failure")
        self.assertEqual([e.details["login"] for e in failures], ["user7"])
        self.assertIn("1 gave up: rejected token", fleet.summary())
        self.assertTrue(fleet.summary().startswith("49/50 subscribed"))

    @defer.inlineCallbacks
    def test_notificationsNameTheirAccount(self) -> None:
        """Every notification carries the login of the account it came to."""
        accounts = tokens(["alice", "bob", "carol"])
        server = yield self.startServer(accounts=accounts)
        received: list[Notification] = []
        fleet = self.startFleet(server, accounts)
        fleet.addNotificationObserver(received.append)
        yield fleet.whenAllSettled()
        for login in ("bob", "alice", "carol", "bob"):
            answer = yield server.push(login, {"t": "diff", "uid": login})
            self.assertEqual(answer["type"], "result")
        self.assertEqual(
            [(n.login, n.attributes["uid"]) for n in received],
            [("bob", "bob"), ("alice", "alice"), ("carol", "carol"), ("bob", "bob")],
        )
        self.assertEqual(received[0].toJSON()["login"], "bob")

    @defer.inlineCallbacks
    def test_handshakeLimit(self) -> None:
        """Never more than maxHandshakes connections between connect and session."""
        accounts = tokens([f"user{n}" for n in range(40)])
        server = yield self.startServer(accounts=accounts)
        fleet = self.startFleet(server, accounts, maxHandshakes=3)
        yield fleet.whenAllSettled()
        self.assertEqual(fleet.subscribed, 40)
        self.assertLessEqual(server.mostHandshakesInFlight, 3)
        self.assertGreater(server.mostHandshakesInFlight, 1)
        self.assertEqual(fleet.context.handshakes.mostInFlight, 3)
        self.assertEqual(fleet.context.handshakes.inFlight, 0)

    @defer.inlineCallbacks
    def test_apply(self) -> None:
        """
        A reload adds, removes (with a clean close) and changes tokens; an
        unchanged account keeps its very stream.
        """
        accounts = tokens(["keep", "change", "drop", "add"])
        server = yield self.startServer(accounts=accounts)
        first = {k: accounts[k] for k in ("keep", "change", "drop")}
        fleet = self.startFleet(server, first)
        yield fleet.whenAllSettled()
        [keepSession] = server.openSessions("keep")
        [changeSession] = server.openSessions("change")
        [dropSession] = server.openSessions("drop")
        keepStream = fleet["keep"]._stream

        newToken = "y0_" + secrets.token_urlsafe(16)
        server.accounts["change"] = newToken
        change = fleet.apply(
            {
                "keep": Secret(accounts["keep"]),
                "change": Secret(newToken),
                "add": Secret(accounts["add"]),
            }
        )
        self.assertEqual(
            str(change), "1 added, 1 removed, 1 tokens changed, 1 unchanged"
        )
        yield dropSession.whenClosed()
        self.assertTrue(dropSession.clientClosed)
        self.assertNotIn("drop", fleet)
        yield server.whenSubscribed(login="add", count=1)
        yield fleet["add"].whenReady()

        # The changed token is used from the next attempt; the session goes on.
        self.assertFalse(changeSession.closed)
        changeSession.abort()
        yield server.whenSubscribed(login="change", count=2)
        auths = [
            e for e in server.eventsOf("auth-success") if e.details["login"] == "change"
        ]
        self.assertEqual(len(auths), 2)

        self.assertFalse(keepSession.closed)
        self.assertIs(fleet["keep"]._stream, keepStream)
        self.assertEqual(
            [s for s in server.sessions if s.login == "keep"], [keepSession]
        )

    @defer.inlineCallbacks
    def test_newTokenRestartsAnAccountThatGaveUp(self) -> None:
        """An account that gave up on a rejected token connects with a new one."""
        accounts = tokens(["alice"])
        server = yield self.startServer(accounts=accounts)
        fleet = self.startFleet(server, {"alice": "y0_old-and-rejected"})
        error = yield fleet.whenGaveUp()
        self.assertIsInstance(error, AuthenticationFailed)
        fleet.update("alice", Secret(accounts["alice"]))
        yield fleet["alice"].whenReady()
        self.assertEqual((fleet.subscribed, dict(fleet.gaveUp)), (1, {}))

    @defer.inlineCallbacks
    def test_everyAccountGaveUp(self) -> None:
        """The fleet gives up only once every account has, naming the reasons."""
        server = yield self.startServer(accounts=tokens(["a", "b"]))
        fleet = self.startFleet(server, {"a": "y0_bad1", "b": "y0_bad2"})
        error = yield fleet.whenGaveUp()
        self.assertIn("every account gave up (rejected token (2))", error.message)

    @defer.inlineCallbacks
    def test_massReconnectIsSpread(self) -> None:
        """
        200 accounts dropped at once by the server come back spread over the
        fleet's jitter window (200 / reconnectRate = 2 s), not in one burst.
        """
        accounts = tokens([f"user{n}" for n in range(200)])
        server = yield self.startServer(accounts=accounts)
        fleet = self.startFleet(server, accounts, reconnectRate=100.0)
        yield fleet.whenAllSettled()
        self.assertEqual(fleet.subscribed, 200)

        logs = self.captureLogs()
        for session in server.openSessions():
            session.abort()
        yield server.whenEvent("connected", count=400)
        delays = [
            e["delay"]
            for e in logs.events
            if e.get("log_format", "").startswith("Reconnecting in")
        ]
        self.assertEqual(len(delays), 200)
        self.assertLessEqual(max(delays), 2.0)
        self.assertGreater(max(delays) - min(delays), 1.0, delays)
        # Uniform over 2 s puts about 20 in each tenth of it; a burst would
        # put most of them in one.
        buckets = [0] * 10
        for delay in delays:
            buckets[min(9, int(delay / 0.2))] += 1
        self.assertLess(max(buckets), 60, buckets)
        yield fleet.whenAllSettled()
        self.assertEqual(fleet.subscribed, 200)
