"""
Which accounts of a shared accounts file this process keeps (``--shard K/N``).

Several processes (systemd template instances, a Kubernetes StatefulSet)
read one accounts file; each keeps only its shard, so no account is held
twice (the push server would then deliver each push to only one of them,
and the two sessions would fight over the resource).

**Why rendezvous hashing.** Each login goes to the shard whose weight
``hash(shard, login)`` is highest (highest-random-weight hashing). Every
process decides alone, from the login and N, with no coordination and no
table to share. When N grows to N+1, a login moves only if the new shard
outweighs its old one, which happens for 1/(N+1) of the logins, and they all
move to the new shard: the other processes keep every account they had,
with no reconnect. ``login % N`` would move almost all of them.

The weight is the first 8 bytes of BLAKE2b over ``"<shard>:<login>"`` with
the login lowercased (Yandex logins ignore case), read as a big-endian
integer: stable across Python versions, processes and machines (unlike
``hash()``), so any tool can compute where a login lives (see
``docs/fleet-shards.rst``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import NamedTuple, TypeVar

_V = TypeVar("_V")


class Shard(NamedTuple):
    """Shard ``index`` (0-based) of ``count``."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def holds(self, login: str) -> bool:
        """Whether ``login`` belongs to this shard."""
        return shardOf(login, self.count) == self.index

    def select(self, accounts: Mapping[str, _V]) -> dict[str, _V]:
        """The accounts of this shard, in their order."""
        if self.count == 1:
            return dict(accounts)
        return {login: value for login, value in accounts.items() if self.holds(login)}


def parseShard(text: str) -> Shard:
    """
    ``K/N`` as a :class:`Shard`.

    :raises ValueError: with a sentence saying what is expected.
    """
    index, slash, count = text.strip().partition("/")
    try:
        shard = Shard(int(index), int(count))
    except ValueError:
        raise ValueError(
            f"{text!r} is not K/N (shard K, from 0, of N: e.g. 0/4)"
        ) from None
    if not slash or shard.count < 1:
        raise ValueError(f"{text!r} is not K/N (shard K, from 0, of N: e.g. 0/4)")
    if not 0 <= shard.index < shard.count:
        raise ValueError(
            f"{text!r}: the shard must be 0 to {shard.count - 1} (K counts from 0)"
        )
    return shard


def weight(shard: int, login: str) -> int:
    """The rendezvous weight of ``login`` for ``shard``."""
    digest = hashlib.blake2b(
        f"{shard}:{login.lower()}".encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big")


def shardOf(login: str, count: int) -> int:
    """The shard (0 to ``count`` - 1) that holds ``login``."""
    if count == 1:
        return 0
    return max(range(count), key=lambda shard: weight(shard, login))


def moved(logins: Iterable[str], before: int, after: int) -> list[str]:
    """The logins whose shard differs between ``before`` and ``after`` shards."""
    return [
        login for login in logins if shardOf(login, before) != shardOf(login, after)
    ]
