"""
``twistd yadiskpush --accounts FILE`` end to end: one process, many accounts,
every JSON line naming its account, SIGHUP re-reading the file, and exit 78
only once every account has given up.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Generator
from typing import Any

from twisted.internet import defer

from tests.integration.test_plugin import TwistdTestCase
from yadiskpush.localserver import LocalServer

Steps = Generator[defer.Deferred[Any], Any, None]


def newToken() -> str:
    return "y0_" + secrets.token_urlsafe(16)


class AccountsTwistdTestCase(TwistdTestCase):
    """twistd with an accounts file (helpers only, no tests)."""

    def writeAccounts(self, accounts: dict[str, str]) -> str:
        """Write the accounts file (mode 600) atomically, as an editor would."""
        path = os.path.join(self.directory, "accounts")
        fd = os.open(path + ".new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w") as f:
            f.write("# login:token\n")
            for login, token in accounts.items():
                f.write(f"{login}:{token}\n")
        os.replace(path + ".new", path)
        return path

    def args(self, server: LocalServer, path: str, *extra: str) -> list[str]:
        return [*self.serverArguments(server), f"--accounts={path}", *extra]


class AccountsPluginTests(AccountsTwistdTestCase):

    @defer.inlineCallbacks
    def test_manyAccountsAndReload(self) -> Steps:
        """
        Pushes of each account reach the JSON lines with their login; SIGHUP
        adds, removes (cleanly) and changes accounts, leaving the others'
        streams alone; a broken file on reload keeps the running set.
        """
        tokens = {login: newToken() for login in ("alice", "bob", "carol", "dave")}
        server = yield self.startServer(tokens)
        path = self.writeAccounts({k: tokens[k] for k in ("alice", "bob", "carol")})
        out = os.path.join(self.directory, "out.jsonl")
        process, transport = self.spawnTwistd(
            *self.args(server, path, f"--json-out={out}", "--max-handshakes=2")
        )
        yield server.whenSubscribed(3)
        for login in ("carol", "alice", "bob"):
            answer = yield server.push(login, {"t": "diff", "uid": login})
            self.assertEqual(answer["type"], "result")
        lines = yield self.whenLines(process, out, 3)
        self.assertEqual(
            [(line["login"], line["attributes"]["uid"]) for line in lines],
            [("carol", "carol"), ("alice", "alice"), ("bob", "bob")],
        )
        self.assertLessEqual(server.mostHandshakesInFlight, 2)
        [aliceSession] = server.openSessions("alice")
        [carolSession] = server.openSessions("carol")
        [bobSession] = server.openSessions("bob")

        tokens["bob"] = server.accounts["bob"] = newToken()
        self.writeAccounts({k: tokens[k] for k in ("alice", "bob", "dave")})
        transport.signalProcess("HUP")
        yield process.whenLine(
            "Accounts file re-read: 1 added, 1 removed, 1 tokens changed, 1 unchanged"
        )
        yield carolSession.whenClosed()
        self.assertTrue(carolSession.clientClosed)
        yield server.whenSubscribed(login="dave", count=1)
        # bob's session goes on; its next attempt uses the new token.
        self.assertFalse(bobSession.closed)
        bobSession.abort()
        yield server.whenSubscribed(login="bob", count=2)
        self.assertFalse(aliceSession.closed)
        self.assertEqual(
            [s for s in server.sessions if s.login == "alice"], [aliceSession]
        )

        os.chmod(path, 0o644)
        transport.signalProcess("HUP")
        line = yield process.whenLine("keeping the 3 accounts running")
        self.assertIn("chmod 600", line)
        self.assertFalse(aliceSession.closed)
        self.assertNotIn(tokens["alice"], process.text())
        yield self.stopCleanly(process, transport)

    @defer.inlineCallbacks
    def test_exits78OnlyWhenEveryAccountGaveUp(self) -> Steps:
        """One rejected token stops that account; the process goes on."""
        server = yield self.startServer({"alice": newToken(), "bob": newToken()})
        path = self.writeAccounts({"alice": server.accounts["alice"], "bob": "y0_bad"})
        process, transport = self.spawnTwistd(*self.args(server, path))
        yield process.whenLine("1/2 subscribed; 1 gave up: rejected token")
        self.assertFalse(process.ended.called)
        self.assertNotIn("y0_bad", process.text())
        yield self.stopCleanly(process, transport)

    @defer.inlineCallbacks
    def test_everyAccountRejected(self) -> Steps:
        """When every account has given up, twistd exits 78 naming the reasons."""
        server = yield self.startServer({"alice": newToken(), "bob": newToken()})
        path = self.writeAccounts({"alice": "y0_bad1", "bob": "y0_bad2"})
        process, _ = self.spawnTwistd(*self.args(server, path))
        yield process.ended
        self.assertEqual(process.exitCode, 78, process.text())
        line = process.lineWith("Exiting with status 78 (EX_CONFIG)")
        self.assertIsNotNone(line, process.text())
        self.assertIn("every account gave up (rejected token (2))", line)
