"""
How a resize from N to M shards would split an accounts file: the accounts
each shard holds before and after, and how many change process.

    python resize_preview.py /etc/yadiskpush/accounts 4 5

It reads only the logins (never prints a token) and uses yadiskpush's own
hashing, so what it says is what the processes will do.
"""

from __future__ import annotations

import sys
from collections import Counter

from yadiskpush.accounts import readAccounts
from yadiskpush.shards import moved, shardOf


def main(path: str, before: int, after: int) -> None:
    logins = list(readAccounts(path))
    for count in (before, after):
        sizes = Counter(shardOf(login, count) for login in logins)
        line = ", ".join(f"{k}: {sizes[k]:,}" for k in range(count))
        print(f"{count} shards: {line}")
    moving = moved(logins, before, after)
    share = len(moving) / len(logins) if logins else 0.0
    print(f"{len(moving):,} of {len(logins):,} accounts move ({share:.1%})")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: resize_preview.py ACCOUNTS_FILE N M")
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
