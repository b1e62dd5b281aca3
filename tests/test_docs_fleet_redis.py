"""
The worker of docs/fleet-redis.rst against a real redis-server, reading
entries of the sink's own shape (:func:`xaddArguments`): each (login, id)
handled once, a push in the stream twice handled once, and after a crash
the entries it had read and not acknowledged handled, unless it had
finished them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.redisserver import RedisServer, runningRedis
from tests.test_sinks_execute import makeNotification
from yadiskpush.delivery.sinks.redisstream import xaddArguments

WORKER = (
    Path(__file__).resolve().parent.parent
    / "docs"
    / "examples"
    / "fleet"
    / "redis_worker.py"
)

pytest.importorskip("redis", reason="redis-py (the worker's client) is not installed")


@pytest.fixture
def redis(tmp_path: Path) -> RedisServer:
    with runningRedis(tmp_path / "redis") as server:
        yield server  # type: ignore[misc]


def add(redis: RedisServer, login: str, number: int) -> str:
    """XADD one push as the sink does; its push id."""
    notification = makeNotification(number, login=login)
    redis.command(*xaddArguments("yadiskpush", 1000, notification))
    return notification.stanzaId


def runWorker(redis: RedisServer, consumer: str = "w1") -> list[tuple[str, str]]:
    """Run the worker until nothing waits; the (login, id) it handled."""
    done = subprocess.run(
        [sys.executable, str(WORKER), "--url", redis.url, "--consumer", consumer,
         "--once"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    handled = []
    for line in done.stdout.splitlines():
        login, pushId, changes = line.split()
        assert int(changes) >= 0
        handled.append((login, pushId))
    return handled


def pendingCount(redis: RedisServer) -> int:
    return int(redis.command("XPENDING", "yadiskpush", "workers")[0])


def test_eachPushHandledOnce(redis: RedisServer) -> None:
    ids = [("alice", add(redis, "alice", n)) for n in range(5)]
    ids.append(("bob", add(redis, "bob", 0)))  # the same id, another account
    add(redis, "alice", 2)  # the same push in the stream twice
    assert runWorker(redis) == ids
    assert pendingCount(redis) == 0
    # Nothing new: a second run handles nothing (the group remembers).
    assert runWorker(redis) == []


def test_restartAfterCrashWithPendingEntries(redis: RedisServer) -> None:
    add(redis, "alice", 1)
    assert runWorker(redis) == [("alice", "push1")]
    for n in (2, 3, 4):
        add(redis, "alice", n)
    # A worker w1 read them and crashed: push2 was done (not acked), push3
    # was being handled (claimed), push4 not started.
    reply = redis.command(
        "XREADGROUP", "GROUP", "workers", "w1", "COUNT", 3, "STREAMS", "yadiskpush", ">"
    )
    assert len(reply[0][1]) == 3
    redis.command("SET", "seen:alice:push2", "done")
    redis.command("SET", "seen:alice:push3", "w1")
    assert pendingCount(redis) == 3
    add(redis, "alice", 5)
    assert runWorker(redis, "w1") == [
        ("alice", "push3"),
        ("alice", "push4"),
        ("alice", "push5"),
    ]
    assert pendingCount(redis) == 0


def test_anotherWorkersClaimIsSkipped(redis: RedisServer) -> None:
    """A push claimed by another worker (the same push twice in the
    stream, read by two workers) is acknowledged here, not handled."""
    add(redis, "alice", 1)
    redis.command("XGROUP", "CREATE", "yadiskpush", "workers", "0", "MKSTREAM")
    redis.command("SET", "seen:alice:push1", "w2")
    assert runWorker(redis, "w1") == []
    assert pendingCount(redis) == 0
