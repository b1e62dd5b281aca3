"""Tests for yadiskpush.shards: which accounts a process keeps with --shard K/N."""

from __future__ import annotations

import hashlib
from collections import Counter

from twisted.trial.unittest import SynchronousTestCase

from yadiskpush.shards import Shard, moved, parseShard, shardOf, weight

LOGINS = [f"user{n}" for n in range(10_000)]


class ParseShardTests(SynchronousTestCase):
    def test_valid(self) -> None:
        """K/N gives shard K of N; spaces around are ignored."""
        self.assertEqual(parseShard("0/4"), Shard(0, 4))
        self.assertEqual(parseShard(" 3/4 "), Shard(3, 4))
        self.assertEqual(str(parseShard("1/2")), "1/2")

    def test_invalid(self) -> None:
        """Each bad form is refused with a sentence saying what is expected."""
        for text, fragment in [
            ("4/4", "the shard must be 0 to 3"),
            ("-1/4", "the shard must be 0 to 3"),
            ("1", "is not K/N"),
            ("a/b", "is not K/N"),
            ("0/0", "is not K/N"),
            ("", "is not K/N"),
        ]:
            with self.assertRaises(ValueError) as caught:
                parseShard(text)
            self.assertIn(fragment, str(caught.exception), text)


class RendezvousTests(SynchronousTestCase):
    def test_weightIsDocumentedHash(self) -> None:
        """
        The weight is BLAKE2b-64 of "shard:login" (login lowercased), so a
        tool in another language can tell where a login lives.
        """
        expected = int.from_bytes(
            hashlib.blake2b(b"2:alice", digest_size=8).digest(), "big"
        )
        self.assertEqual(weight(2, "Alice"), expected)

    def test_shardOfIsHighestWeight(self) -> None:
        """A login goes to the shard whose weight is highest."""
        for login in LOGINS[:200]:
            weights = [weight(k, login) for k in range(5)]
            self.assertEqual(shardOf(login, 5), weights.index(max(weights)))

    def test_oneShardHoldsAll(self) -> None:
        """0/1 keeps every account."""
        accounts = {login: login for login in LOGINS[:50]}
        self.assertEqual(Shard(0, 1).select(accounts), accounts)

    def test_shardsAreDisjointAndCoverAll(self) -> None:
        """N shards split the logins without overlap or loss, in the file's order."""
        accounts = {login: n for n, login in enumerate(LOGINS)}
        parts = [Shard(k, 4).select(accounts) for k in range(4)]
        seen: Counter[str] = Counter()
        for part in parts:
            seen.update(part.keys())
            self.assertEqual(list(part.values()), sorted(part.values()))
        self.assertEqual(set(seen), set(LOGINS))
        self.assertEqual(max(seen.values()), 1)

    def test_balanced(self) -> None:
        """Each of 4 shards holds about a quarter of 10,000 logins."""
        sizes = Counter(shardOf(login, 4) for login in LOGINS)
        for shard in range(4):
            self.assertTrue(2250 <= sizes[shard] <= 2750, sizes)

    def test_growingFourToFiveMovesAFifth(self) -> None:
        """
        Going from 4 to 5 shards moves at most 25 % of 10,000 logins (about
        1/5 is expected), and every login that moves goes to the new shard.
        """
        movedLogins = moved(LOGINS, 4, 5)
        self.assertLessEqual(len(movedLogins), 2500)
        self.assertGreater(len(movedLogins), 1500)
        self.assertEqual({shardOf(login, 5) for login in movedLogins}, {4})

    def test_caseInsensitive(self) -> None:
        """Yandex logins ignore case, and so does the shard."""
        for login in LOGINS[:100]:
            self.assertEqual(shardOf(login, 7), shardOf(login.upper(), 7))
