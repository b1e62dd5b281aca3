"""
``twistd yadiskpush`` under a stand-in for systemd: a real datagram socket
in ``$NOTIFY_SOCKET`` (a socket file, or an abstract address) that sees
``READY=1`` only once the account is subscribed (with ``--accounts``: once
every account has subscribed or given up), the ``STATUS=`` lines
``systemctl status`` would show, ``RELOADING=1`` around SIGHUP,
``STOPPING=1`` at SIGTERM, the reason of an exit 78, and ``WATCHDOG=1``
pings while the reactor runs. Every wait is on a datagram or the child's
output; the class timeout bounds them.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Generator
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.protocol import DatagramProtocol

from tests.integration.test_plugin import TwistdTestCase

Steps = Generator[defer.Deferred[Any], Any, None]

LOGIN = "test"


def newToken() -> str:
    return "y0_" + secrets.token_urlsafe(16)


class NotifyListener(DatagramProtocol):
    """What systemd would receive: each datagram, as a dict of its lines."""

    def __init__(self) -> None:
        self.messages: list[dict[str, str]] = []
        self._waits: list[
            tuple[Callable[[dict[str, str]], bool], defer.Deferred[Any]]
        ] = []

    def datagramReceived(self, datagram: bytes, address: Any) -> None:
        message = dict(
            line.split("=", 1) for line in datagram.decode().split("\n") if line
        )
        self.messages.append(message)
        for wait in list(self._waits):
            if wait[0](message):
                self._waits.remove(wait)
                wait[1].callback(message)

    def whenMessage(
        self, match: Callable[[dict[str, str]], bool]
    ) -> defer.Deferred[dict[str, str]]:
        """Fire with the first message (so far or to come) that matches."""
        for message in self.messages:
            if match(message):
                return defer.succeed(message)
        d: defer.Deferred[dict[str, str]] = defer.Deferred()
        self._waits.append((match, d))
        return d

    def whenKey(self, key: str, value: str = "1") -> defer.Deferred[dict[str, str]]:
        return self.whenMessage(lambda m: m.get(key) == value)

    def whenCount(self, key: str, count: int) -> defer.Deferred[Any]:
        """Fire once ``count`` messages carry ``key``."""
        # whenMessage shows match each message once, those so far first.
        remaining = [count]

        def match(message: dict[str, str]) -> bool:
            if key in message:
                remaining[0] -= 1
            return remaining[0] <= 0

        return self.whenMessage(match)

    def statuses(self) -> list[str]:
        return [m["STATUS"] for m in self.messages if "STATUS" in m]

    def index(self, key: str, value: str = "1") -> int:
        return next(i for i, m in enumerate(self.messages) if m.get(key) == value)


class SystemdNotifyTests(TwistdTestCase):
    def listen(self, abstract: bool = False) -> NotifyListener:
        """Listen like systemd; NOTIFY_SOCKET in the child's environment."""
        listener = NotifyListener()
        if abstract:
            name = "yadiskpush-test-" + secrets.token_hex(8)
            port = reactor.listenUNIXDatagram("\0" + name, listener)
            self.environment["NOTIFY_SOCKET"] = "@" + name
        else:
            path = os.path.join(self.directory, "notify")
            port = reactor.listenUNIXDatagram(path, listener)
            self.environment["NOTIFY_SOCKET"] = path
        self.addCleanup(port.stopListening)
        return listener

    def writeFile(self, name: str, text: str) -> str:
        path = os.path.join(self.directory, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w") as f:
            f.write(text)
        return path

    @defer.inlineCallbacks
    def test_readyAfterSubscriptionThenStopping(self) -> Steps:
        """
        One account: STATUS=Connecting first, READY=1 only once the server
        holds the subscription, watchdog pings while running, RELOADING=1
        and READY=1 around SIGHUP, STOPPING=1 at SIGTERM.
        """
        token = newToken()
        server = yield self.startServer({LOGIN: token})
        listener = self.listen()
        # 2 s: a ping every second; the test waits on two of them.
        self.environment["WATCHDOG_USEC"] = "2000000"
        tokenFile = self.writeFile("token", token + "\n")
        process, transport = self.spawnTwistd(
            *self.serverArguments(server),
            f"--login={LOGIN}",
            f"--token-file={tokenFile}",
        )
        ready = yield listener.whenKey("READY")
        [session] = server.openSessions(LOGIN)
        self.assertTrue(session.subscribed)
        self.assertEqual(ready["STATUS"], "Subscribed: 1/1 account")
        before = listener.messages[: listener.index("READY")]
        self.assertIn({"STATUS": "Connecting: 0/1 subscribed"}, before)
        self.assertTrue(all("READY" not in m for m in before))

        yield listener.whenCount("WATCHDOG", 2)

        transport.signalProcess("HUP")
        reloading = yield listener.whenKey("RELOADING")
        self.assertGreater(int(reloading["MONOTONIC_USEC"]), 0)
        # The reload ends with a second READY=1.
        yield listener.whenCount("READY", 2)
        self.assertGreater(
            [i for i, m in enumerate(listener.messages) if "READY" in m][1],
            listener.index("RELOADING"),
        )
        self.assertIn({"STATUS": "Re-reading the token file"}, listener.messages)

        yield self.stopCleanly(process, transport)
        stopping = listener.index("STOPPING")
        self.assertGreater(stopping, listener.index("RELOADING"))
        self.assertEqual(listener.messages[stopping].get("STATUS"), "Stopping")
        self.assertNotIn(token, repr(listener.messages))

    @defer.inlineCallbacks
    def test_accountsReadyWhenEachSubscribedOrGaveUp(self) -> Steps:
        """
        --accounts, on an abstract socket: one account subscribes, the other's
        token is rejected; READY=1 comes once both are settled, saying so.
        """
        server = yield self.startServer({"alice": newToken(), "bob": newToken()})
        listener = self.listen(abstract=True)
        path = self.writeFile(
            "accounts", f"alice:{server.accounts['alice']}\nbob:y0_bad\n"
        )
        process, transport = self.spawnTwistd(
            *self.serverArguments(server), f"--accounts={path}"
        )
        ready = yield listener.whenKey("READY")
        self.assertEqual(ready["STATUS"], "1/2 subscribed; 1 gave up: rejected token")
        [session] = server.openSessions("alice")
        self.assertTrue(session.subscribed)
        self.assertEqual(listener.statuses()[0], "Connecting: 0/2 subscribed")
        self.assertFalse(process.ended.called)
        yield self.stopCleanly(process, transport)
        self.assertIn({"STOPPING": "1", "STATUS": "Stopping"}, listener.messages)

    @defer.inlineCallbacks
    def test_exit78SaysWhy(self) -> Steps:
        """A rejected token: the last STATUS= says why the process exits 78."""
        server = yield self.startServer({LOGIN: newToken()})
        listener = self.listen()
        tokenFile = self.writeFile("token", "y0_rejected\n")
        process, transport = self.spawnTwistd(
            *self.serverArguments(server),
            f"--login={LOGIN}",
            f"--token-file={tokenFile}",
        )
        yield process.ended
        self.assertEqual(process.exitCode, 78, process.text())
        statuses = listener.statuses()
        self.assertTrue(
            statuses[-1].startswith("Exiting with status 78 (EX_CONFIG): "), statuses
        )
        self.assertEqual(listener.messages[-1], {"STOPPING": "1"})
        self.assertNotIn("y0_rejected", repr(listener.messages))
