"""
``twistd yadiskpush --accounts FILE --shard K/N`` end to end: two processes
over one accounts file hold disjoint sets of accounts whose union is the
file, each push reaches exactly one of them, and SIGHUP re-reads the file
within the shard.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

from twisted.internet import defer

from tests.integration.test_accounts_plugin import AccountsTwistdTestCase, newToken
from yadiskpush.shards import shardOf

Steps = Any


class ShardsPluginTests(AccountsTwistdTestCase):
    @defer.inlineCallbacks
    def test_twoShardsShareOneFile(self) -> Steps:
        """
        --shard 0/2 and --shard 1/2 over one file: every account is
        subscribed exactly once, by the process of its shard; each push is
        written by that process only; accounts added to the file and read on
        SIGHUP go to their shard's process alone.
        """
        tokens = {f"user{n}": newToken() for n in range(16)}
        first = dict(list(tokens.items())[:12])
        server = yield self.startServer(tokens)
        path = self.writeAccounts(first)
        processes = []
        for shard in (0, 1):
            out = os.path.join(self.directory, f"shard{shard}.jsonl")
            process, transport = self.spawnTwistd(
                *self.args(server, path, f"--json-out={out}", f"--shard={shard}/2")
            )
            processes.append((process, transport, out))
        yield server.whenSubscribed(12)
        for login in first:
            self.assertEqual(len(server.openSessions(login)), 1, login)
        for login in first:
            answer = yield server.push(login, {"t": "diff", "uid": login})
            self.assertEqual(answer["type"], "result")
        counts = [
            sum(shardOf(login, 2) == shard for login in first) for shard in (0, 1)
        ]
        self.assertTrue(all(counts), counts)
        written: Counter[str] = Counter()
        for shard, (process, _, out) in enumerate(processes):
            lines = yield self.whenLines(process, out, counts[shard])
            for line in lines:
                self.assertEqual(shardOf(line["login"], 2), shard, line)
                written[line["login"]] += 1
        self.assertEqual(written, Counter(first.keys()))

        # SIGHUP: the whole file again; each process takes its new ones.
        self.writeAccounts(tokens)
        for shard, (process, transport, _) in enumerate(processes):
            transport.signalProcess("HUP")
            added = sum(shardOf(login, 2) == shard for login in list(tokens)[12:])
            yield process.whenLine(
                f"Accounts file re-read (shard {shard}/2: "
                f"{counts[shard] + added} of 16 accounts): {added} added"
            )
        yield server.whenSubscribed(16)
        for login in tokens:
            self.assertEqual(len(server.openSessions(login)), 1, login)
        for process, transport, _ in processes:
            yield self.stopCleanly(process, transport)
