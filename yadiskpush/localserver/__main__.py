"""
Run the local push server by hand: ``python -m yadiskpush.localserver``.

It prints its two ports and the path of the CA certificate to give the
client (``--ca-file``), then reads commands from stdin, one per line::

    push [LOGIN] key=value ...     push one Disk notification (and wait for the ack)
    enqueue [LOGIN] key=value ...  push it at least once: re-sent until acked,
                                   on the next session if need be
    unacked [LOGIN]                list enqueued pushes not acked yet
    sessions                       list open sessions
    quit                           stop (end of input does too)
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.internet import defer, stdio, task
from twisted.logger import LogLevel, globalLogBeginner, textFileLogObserver
from twisted.protocols.basic import LineReceiver

from yadiskpush.localserver.redelivery import (
    DEFAULT_REDELIVER_DELAY,
    DEFAULT_WINDOW,
)
from yadiskpush.localserver.server import LocalServer

USAGE = (
    "commands: push [LOGIN] key=value ... | enqueue [LOGIN] key=value ... | "
    "unacked [LOGIN] | sessions | quit"
)


def parseArguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m yadiskpush.localserver",
        description="A local stand-in for the Yandex.Disk XMPP push server.",
    )
    # Tokens do not belong on a command line (any user can read it), even
    # test ones: the accounts come from a file, one LOGIN:TOKEN per line.
    parser.add_argument(
        "--accounts-file",
        required=True,
        metavar="PATH",
        help="file of accounts the server accepts, one LOGIN:TOKEN per line",
    )
    parser.add_argument("--domain", default="ya.ru", help="XMPP domain")
    parser.add_argument("--interface", default="127.0.0.1")
    parser.add_argument("--starttls-port", type=int, default=0)
    parser.add_argument("--tls-port", type=int, default=0)
    parser.add_argument("--ca-file", help="where to write the CA certificate")
    parser.add_argument("--ping-interval", type=float, default=None)
    parser.add_argument("--compression-after-auth", action="store_true")
    parser.add_argument(
        "--window",
        type=int,
        default=DEFAULT_WINDOW,
        help="enqueued pushes unanswered on one session at most",
    )
    parser.add_argument(
        "--redeliver-delay",
        type=float,
        default=DEFAULT_REDELIVER_DELAY,
        metavar="SECONDS",
        help="wait before re-sending an enqueued push answered with an error",
    )
    parser.add_argument("--verbose", action="store_true", help="log every step")
    args = parser.parse_args(list(argv))
    accounts: dict[str, str] = {}
    try:
        with open(args.accounts_file, encoding="utf-8") as accountsFile:
            lines = [line.strip() for line in accountsFile]
    except OSError as e:
        parser.error(f"cannot read {args.accounts_file}: {e.strerror or e}")
    for number, entry in enumerate(lines, 1):
        if not entry or entry.startswith("#"):
            continue
        login, separator, token = entry.partition(":")
        if not separator or not login or not token:
            parser.error(f"{args.accounts_file}:{number}: expected LOGIN:TOKEN")
        accounts[login] = token
    if not accounts:
        parser.error(f"{args.accounts_file} names no account")
    if args.window < 1:
        parser.error("--window must be at least 1")
    if args.redeliver_delay < 0:
        parser.error("--redeliver-delay must not be negative")
    args.accountMap = accounts
    return args


class CommandProtocol(LineReceiver):
    """Reads control commands, one a line, and reports on each."""

    delimiter = b"\n"

    def __init__(self, server: LocalServer, done: defer.Deferred[None]) -> None:
        self.server = server
        self.done = done

    def connectionMade(self) -> None:
        self.say(USAGE)

    def say(self, text: str) -> None:
        self.transport.write(text.encode("utf-8") + b"\n")

    def lineReceived(self, line: bytes) -> None:
        try:
            words = shlex.split(line.decode("utf-8"))
        except ValueError as e:
            self.say(f"error: {e}")
            return
        if not words:
            return
        command, arguments = words[0], words[1:]
        if command == "push":
            self.push(arguments)
        elif command == "enqueue":
            login, attributes = self.pushArguments(arguments)
            self.say(f"{self.server.enqueue(login, attributes)}: queued")
        elif command == "unacked":
            login = arguments[0] if arguments else next(iter(self.server.accounts))
            self.say(" ".join(self.server.unacked(login)) or "none")
        elif command == "sessions":
            for session in self.server.openSessions():
                self.say(repr(session))
        elif command == "quit":
            self.transport.loseConnection()
        else:
            self.say(USAGE)

    def pushArguments(self, arguments: list[str]) -> tuple[str, dict[str, str]]:
        """``[LOGIN] key=value ...``: the login (the first account by default)."""
        login = next(iter(self.server.accounts))
        if arguments and "=" not in arguments[0]:
            login, arguments = arguments[0], arguments[1:]
        return login, dict(a.partition("=")[::2] for a in arguments)

    def push(self, arguments: list[str]) -> None:
        login, attributes = self.pushArguments(arguments)
        d = self.server.push(login, attributes)
        d.addCallback(lambda iq: self.say(f"{iq['id']}: {iq['type']}"))
        d.addErrback(lambda f: self.say(f"push failed: {f.getErrorMessage()}"))

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.done.callback(None)


@defer.inlineCallbacks
def main(reactor: Any, *argv: str) -> Any:
    args = parseArguments(argv)
    globalLogBeginner.beginLoggingTo(
        [textFileLogObserver(sys.stderr)], redirectStandardIO=False
    )
    server = LocalServer(
        args.accountMap,
        domain=args.domain,
        interface=args.interface,
        starttlsPort=args.starttls_port,
        tlsPort=args.tls_port,
        pingInterval=args.ping_interval,
        compressionAfterAuth=args.compression_after_auth,
        window=args.window,
        redeliverDelay=args.redeliver_delay,
        reactor=reactor,
        logLevel=LogLevel.debug if args.verbose else LogLevel.warn,
    )
    yield server.start()
    if args.ca_file:
        caPath = server.writeCACertificate(args.ca_file)
    else:
        caPath = Path(tempfile.mkdtemp(prefix="yadiskpush-")) / "local-ca.pem"
        server.writeCACertificate(caPath)
    print(f"STARTTLS port: {server.starttlsPort}", flush=True)
    print(f"TLS port: {server.tlsPort}", flush=True)
    print(f"CA certificate: {caPath}", flush=True)
    done: defer.Deferred[None] = defer.Deferred()
    stdio.StandardIO(CommandProtocol(server, done), reactor=reactor)
    yield done
    yield server.stop()


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
