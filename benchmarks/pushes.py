"""
Benchmark: push latency, and memory per connection, with and without zlib.

Run with ``make bench-zlib``. The local server runs in a child process (so its
memory is not counted) on loopback; this process holds the clients. Every
figure is printed next to a ratio against a baseline measured in the same
run, since absolute numbers on a shared machine are noise.

Measured:

- push round trip: the server sends a push and waits for the ack, one at a
  time, ``--pushes`` times; median and 95th percentile, plain vs zlib;
- burst: ``--pushes`` pushes sent at once until all are acked;
- memory: resident set growth of this process per connected, subscribed
  client, for ``--accounts`` clients, plain vs zlib.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from twisted.internet import defer, task
from twisted.internet.protocol import ProcessProtocol

from yadiskpush.secret import Secret
from yadiskpush.service import PushService
from yadiskpush.settings import Settings


def residentBytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


class ServerProcess(ProcessProtocol):
    """The local server in a child process; pushes are typed on its stdin."""

    def __init__(self) -> None:
        self.ready: defer.Deferred[dict[str, str]] = defer.Deferred()
        self.info: dict[str, str] = {}
        self.buffer = b""
        self.answers: list[defer.Deferred[str]] = []
        self.ended: defer.Deferred[None] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            text = line.decode()
            key, _, value = text.partition(": ")
            if key in ("STARTTLS port", "TLS port", "CA certificate"):
                self.info[key] = value
                if len(self.info) == 3:
                    self.ready.callback(self.info)
            elif text.startswith("push-") and self.answers:
                self.answers.pop(0).callback(text)

    def push(self, login: str, n: int) -> defer.Deferred[str]:
        d: defer.Deferred[str] = defer.Deferred()
        self.answers.append(d)
        self.transport.write(f"push {login} t=diff n={n}\n".encode())
        return d

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)


@defer.inlineCallbacks
def startServer(reactor: Any, accounts: dict[str, str], directory: str) -> Any:
    server = ServerProcess()
    accountsFile = os.path.join(directory, "accounts")
    with open(os.open(accountsFile, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.writelines(f"{login}:{token}\n" for login, token in accounts.items())
    argv = [sys.executable, "-m", "yadiskpush.localserver", "--ca-file"]
    argv += [os.path.join(directory, "ca.pem"), "--accounts-file", accountsFile]
    reactor.spawnProcess(server, sys.executable, argv, env=dict(os.environ))
    yield server.ready
    return server


@defer.inlineCallbacks
def connect(
    reactor: Any, server: ServerProcess, accounts: dict[str, str], compress: bool
) -> Any:
    services = []
    for login, token in accounts.items():
        settings = Settings(
            login=login,
            token=Secret(token),
            host="localhost",
            port=int(server.info["STARTTLS port"]),
            tlsPort=0,
            caFile=server.info["CA certificate"],
            compress=compress,
        )
        service = PushService(settings, reactor=reactor)
        service.addNotificationObserver(lambda n: None)
        service.startService()
        services.append(service)
    yield defer.gatherResults([s.whenReady() for s in services])
    return services


@defer.inlineCallbacks
def measure(reactor: Any, args: argparse.Namespace, compress: bool) -> Any:
    accounts = {f"user{i}": secrets.token_urlsafe(16) for i in range(args.accounts)}
    with tempfile.TemporaryDirectory() as directory:
        server = yield startServer(reactor, accounts, directory)
        before = residentBytes()
        services = yield connect(reactor, server, accounts, compress)
        perConnection = (residentBytes() - before) / len(services)
        login = next(iter(accounts))
        latencies = []
        for n in range(args.pushes):
            started = time.perf_counter()
            yield server.push(login, n)
            latencies.append(time.perf_counter() - started)
        started = time.perf_counter()
        yield defer.gatherResults([server.push(login, n) for n in range(args.pushes)])
        burst = time.perf_counter() - started
        yield defer.gatherResults([s.stopService() for s in services])
        server.transport.write(b"quit\n")
        server.transport.closeStdin()
        yield server.ended
    latencies.sort()
    return {
        "median": statistics.median(latencies),
        "p95": latencies[int(len(latencies) * 0.95) - 1],
        "burst": args.pushes / burst,
        "memory": perConnection,
    }


@defer.inlineCallbacks
def measureOne(reactor: Any, args: argparse.Namespace) -> Any:
    """One mode in this process; the figures as JSON on stdout."""
    figures = yield measure(reactor, args, compress=args.mode == "zlib")
    print(json.dumps(figures))


def runMode(mode: str, args: argparse.Namespace) -> dict[str, float]:
    # Each mode in a fresh process, so one does not reuse the other's memory.
    argv = [sys.executable, __file__, "--mode", mode]
    argv += ["--accounts", str(args.accounts), "--pushes", str(args.pushes)]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(args: argparse.Namespace) -> None:
    plain = runMode("plain", args)
    zlib = runMode("zlib", args)
    print(
        f"accounts={args.accounts} pushes={args.pushes} (one run; ratios = zlib/plain)"
    )
    rows = [
        ("push round trip, median", "ms", 1000, "median"),
        ("push round trip, p95", "ms", 1000, "p95"),
        ("burst throughput", "pushes/s", 1, "burst"),
        ("memory per connection", "KiB", 1 / 1024, "memory"),
    ]
    for label, unit, scale, key in rows:
        ratio = zlib[key] / plain[key] if plain[key] else float("nan")
        print(
            f"{label:26} plain {plain[key] * scale:10.2f} {unit:8}"
            f" zlib {zlib[key] * scale:10.2f} {unit:8} ratio {ratio:5.2f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=100)
    parser.add_argument("--pushes", type=int, default=300)
    parser.add_argument("--mode", choices=["plain", "zlib"], help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.mode:
        task.react(measureOne, [arguments])
    else:
        main(arguments)
