"""
Run the local push server by hand: ``python -m yadiskpush.localserver``.

It prints its two ports and the path of the CA certificate to give the
client (``--ca-file``), then reads commands from stdin, one per line::

    push [LOGIN] [key=value ...] [TYPE:PATH ...]
                                   push one Disk notification (and wait for
                                   the ack); each TYPE:PATH is a change in its
                                   <diff> (new:/a.txt, deleted:/Old/,
                                   moved:/a.txt->/b.txt)
    enqueue [LOGIN] [key=value ...] [TYPE:PATH ...]
                                   push it at least once: re-sent until acked,
                                   on the next session if need be
    sample [LOGIN]                 push the next of a few realistic changes
    unacked [LOGIN]                list enqueued pushes not acked yet
    sessions                       list open sessions
    drop [LOGIN]                   reset the connections (of LOGIN), no closing
                                   tag: the client sees a network failure
    close [LOGIN]                  close the streams (of LOGIN) cleanly
    codes                          list device codes waiting (--oauth-port)
    approve CODE LOGIN             allow a device code for LOGIN (--oauth-port)
    deny CODE                      refuse a device code (--oauth-port)
    quit                           stop (end of input does too)

With ``--oauth-port`` the server also plays Yandex OAuth and the Disk API
(:mod:`yadiskpush.localserver.oauth`) over TLS with the same certificate, so
that ``yadiskpush token`` gets a token this server accepts.

With ``--state-dir DIR`` the CA and the server certificate (``DIR/ca.pem``,
``DIR/server.pem`` and their keys, mode 0600) and the two ports are kept
across restarts, so a client started with ``--ca-file DIR/ca.pem`` reconnects
to the restarted server by itself. Push ids are ``push-S-N``: ``S`` tells
one start from another (the start's number with a state directory, a random
tag without), so that a client deduplicating by id never takes a restarted
server's push for one it has seen. On SIGTERM, SIGINT, ``quit`` or the end
of input, every stream ends with a ``system-shutdown`` stream error and
``</stream:stream>``, as a real server going down does, and the clients
reconnect.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.internet import defer, error, stdio, task
from twisted.logger import LogLevel, globalLogBeginner, textFileLogObserver
from twisted.protocols.basic import LineReceiver

from yadiskpush.localserver.ca import CA_FILE, StateDirError, loadOrCreate
from yadiskpush.localserver.diffs import (
    diffAttributes,
    diffXml,
    parseChange,
    samplePushes,
)
from yadiskpush.localserver.oauth import OAuthStandIn, listenOAuth
from yadiskpush.localserver.redelivery import (
    DEFAULT_REDELIVER_DELAY,
    DEFAULT_WINDOW,
)
from yadiskpush.localserver.server import LocalServer

USAGE = (
    "commands: push [LOGIN] [key=value ...] [TYPE:PATH ...] | enqueue [LOGIN] "
    "[key=value ...] [TYPE:PATH ...] | sample [LOGIN] | unacked [LOGIN] | "
    "sessions | drop [LOGIN] | close [LOGIN] | codes | approve CODE LOGIN | "
    "deny CODE | quit"
)

#: The OAuth stand-in's application id, unless --oauth-client-id says.
DEFAULT_OAUTH_CLIENT_ID = "yadiskpush-local"
#: Where a state directory keeps the stand-in's client secret.
OAUTH_SECRET_FILE = "oauth-client-secret"

#: What a state directory keeps besides the certificates: the ports and the
#: number of starts (the push ids' prefix).
STATE_FILE = "server.json"

#: Seconds the clients get to close their side on shutdown.
SHUTDOWN_TIMEOUT = 2.0

#: Where kept ports are picked when the kernel's range of ephemeral ports
#: cannot be read (Linux's default starts at 32768).
EPHEMERAL_LOW = 32768
KEPT_PORT_LOW = 20000


def keptPorts(interface: str, count: int = 2) -> list[int]:
    """
    ``count`` free ports for a server whose ports are kept across restarts,
    below the kernel's ephemeral range. A port from that range (what port 0
    gives) is also what the kernel hands a client as its source port: a
    client reconnecting to the stopped server's loopback port can get that
    very port as its own and connect to itself, which then keeps the
    restarted server from listening there.
    """
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = EPHEMERAL_LOW
    top = max(low, KEPT_PORT_LOW + 1000)
    found: list[int] = []
    while len(found) < count:
        for _attempt in range(100):
            port = KEPT_PORT_LOW + secrets.randbelow(top - KEPT_PORT_LOW)
            if port in found:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                try:
                    probe.bind((interface, port))
                except OSError:
                    continue
            found.append(port)
            break
        else:
            return [0] * count  # crowded: let the kernel pick
    return found


def parseArguments(argv: Sequence[str]) -> argparse.Namespace:
    """The command line, checked; exits with a usage message if it is wrong."""
    parser = argparse.ArgumentParser(
        prog="python -m yadiskpush.localserver",
        description=(
            "A local stand-in for the Yandex.Disk XMPP push server, on "
            "loopback, with its own CA. Prints its ports and the CA file for "
            "the client's --ca-file, then reads commands on stdin: "
            + USAGE.removeprefix("commands: ")
        ),
        epilog=(
            "SIGTERM, SIGINT, quit or the end of input end every stream with a "
            "system-shutdown stream error and </stream:stream>, then stop."
        ),
    )
    # Tokens do not belong on a command line (any user can read it), even
    # test ones: the accounts come from a file, one LOGIN:TOKEN per line.
    parser.add_argument(
        "--accounts-file",
        required=True,
        metavar="PATH",
        help="file of accounts the server accepts, one LOGIN:TOKEN per line",
    )
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        help=(
            "keep the CA, the server certificate (keys mode 0600) and the "
            "ports here across restarts, so that a client trusting DIR/ca.pem "
            "reconnects to the restarted server (created mode 0700; default: a "
            "new CA and new ports each start)"
        ),
    )
    parser.add_argument(
        "--domain", default="ya.ru", help="XMPP domain (default: %(default)s)"
    )
    parser.add_argument(
        "--interface",
        default="127.0.0.1",
        help="address to listen on, also named in the certificate "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--starttls-port",
        type=int,
        default=None,
        metavar="PORT",
        help="STARTTLS port (default: the one kept in --state-dir, else "
        "one the kernel picks)",
    )
    parser.add_argument(
        "--tls-port",
        type=int,
        default=None,
        metavar="PORT",
        help="direct-TLS port (default: as for --starttls-port)",
    )
    parser.add_argument(
        "--ca-file",
        metavar="PATH",
        help="also write the CA certificate here (default: DIR/ca.pem with "
        "--state-dir, else a new temporary file)",
    )
    parser.add_argument(
        "--ping-interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="ping each session this often (default: never)",
    )
    parser.add_argument(
        "--compression-after-auth",
        action="store_true",
        help="offer zlib after authentication (XEP-0170's order) instead of "
        "before it (the vendor's)",
    )
    parser.add_argument(
        "--window",
        type=int,
        default=DEFAULT_WINDOW,
        help="enqueued pushes unanswered on one session at most (default: %(default)s)",
    )
    parser.add_argument(
        "--redeliver-delay",
        type=float,
        default=DEFAULT_REDELIVER_DELAY,
        metavar="SECONDS",
        help="wait before re-sending an enqueued push answered with an error "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--oauth-port",
        type=int,
        default=None,
        metavar="PORT",
        help="also serve a stand-in for Yandex OAuth and the Disk API here, over "
        "TLS with the same certificate (0: a port the kernel picks; default: "
        "none); its URL and client id are printed, the client secret written "
        "to a file (mode 0600)",
    )
    parser.add_argument(
        "--oauth-client-id",
        default=DEFAULT_OAUTH_CLIENT_ID,
        metavar="ID",
        help="the application id the OAuth stand-in knows (default: %(default)s)",
    )
    parser.add_argument(
        "--no-commands",
        action="store_true",
        help="read no commands: run until SIGTERM or SIGINT, whatever stdin is",
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
    for option in ("starttls_port", "tls_port", "oauth_port"):
        port = getattr(args, option)
        if port is not None and not 0 <= port <= 65535:
            parser.error(f"--{option.replace('_', '-')} must be 0 to 65535")
    args.accountMap = accounts
    return args


class ServerState:
    """
    The small record a state directory keeps in :data:`STATE_FILE`: how
    many times the server started there, and its ports.
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / STATE_FILE
        self.starts = 0
        self.starttlsPort: int | None = None
        self.tlsPort: int | None = None
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            raise StateDirError(
                f"cannot read {self.path} ({e}): remove it (the ports and the "
                "start count are made again)"
            ) from None
        self.starts = int(data.get("starts", 0))
        self.starttlsPort = data.get("starttlsPort")
        self.tlsPort = data.get("tlsPort")

    def save(self) -> None:
        """Write the record atomically (a crash leaves the old one)."""
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        temporary.write_text(
            json.dumps(
                {
                    "starts": self.starts,
                    "starttlsPort": self.starttlsPort,
                    "tlsPort": self.tlsPort,
                }
            )
            + "\n",
            encoding="utf-8",
        )
        os.replace(temporary, self.path)


class CommandProtocol(LineReceiver):
    """Reads control commands, one a line, and reports on each."""

    delimiter = b"\n"

    def __init__(
        self,
        server: LocalServer,
        done: defer.Deferred[None],
        oauth: OAuthStandIn | None = None,
    ) -> None:
        self.server = server
        self.done = done
        self.oauth = oauth
        #: The revision of the last push with changes (its ``new``).
        self.revision = 0
        self._samples = 0

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
        if command in ("push", "enqueue", "sample"):
            try:
                login, attributes, childrenXml = (
                    self.sampleArguments(arguments)
                    if command == "sample"
                    else self.pushArguments(arguments)
                )
            except ValueError as e:
                self.say(f"error: {e}")
                return
            if command == "enqueue":
                pushId = self.server.enqueue(login, attributes, childrenXml)
                self.say(f"{pushId}: queued")
            else:
                self.push(login, attributes, childrenXml)
        elif command == "unacked":
            login = arguments[0] if arguments else next(iter(self.server.accounts))
            self.say(" ".join(self.server.unacked(login)) or "none")
        elif command == "sessions":
            for session in self.server.openSessions():
                self.say(repr(session))
        elif command in ("drop", "close"):
            login = arguments[0] if arguments else None
            act = self.server.drop if command == "drop" else self.server.close
            sessions = act(login)
            names = " ".join(f"#{s.number}" for s in sessions) or "no session"
            self.say(f"{command}: {names}")
        elif command in ("codes", "approve", "deny"):
            self.oauthCommand(command, arguments)
        elif command == "quit":
            self.transport.loseConnection()
        else:
            self.say(USAGE)

    def oauthCommand(self, command: str, arguments: list[str]) -> None:
        """``codes``, ``approve CODE LOGIN``, ``deny CODE``."""
        if self.oauth is None:
            self.say(f"error: {command} needs the OAuth stand-in (--oauth-port)")
            return
        if command == "codes":
            self.say(" ".join(self.oauth.pendingUserCodes()) or "none")
            return
        wanted = 2 if command == "approve" else 1
        if len(arguments) != wanted:
            self.say("error: approve CODE LOGIN" if wanted == 2 else "error: deny CODE")
            return
        try:
            if command == "approve":
                self.oauth.approve(arguments[0], arguments[1])
            else:
                self.oauth.deny(arguments[0])
        except ValueError as e:
            self.say(f"error: {e}")
            return
        self.say(f"{command}d {arguments[0]}")

    def pushArguments(self, arguments: list[str]) -> tuple[str, dict[str, str], str]:
        """
        ``[LOGIN] [key=value ...] [TYPE:PATH ...]``: the login (the first
        account by default), the payload's attributes and its inner XML.
        Changes make a ``<diff>`` (see :func:`~yadiskpush.localserver.diffs.
        parseChange`) and, unless given, the ``old``/``new`` revisions.

        :raises ValueError: for a word that is neither form.
        """
        login = next(iter(self.server.accounts))
        first = arguments[0] if arguments else ""
        # A login has neither (the accounts file splits LOGIN:TOKEN).
        if first and "=" not in first and ":" not in first:
            login, arguments = first, arguments[1:]
        attributes: dict[str, str] = {}
        changes = []
        for word in arguments:
            key, equals, value = word.partition("=")
            if equals and ":" not in key:
                attributes[key] = value
            else:
                changes.append(parseChange(word))
        if not changes:
            return login, attributes, ""
        self.revision += 1
        revisions = diffAttributes(self.revision - 1, self.revision)
        return login, {**revisions, **attributes}, diffXml(changes)

    def sampleArguments(self, arguments: list[str]) -> tuple[str, dict[str, str], str]:
        """``[LOGIN]``: the next of :func:`samplePushes`, in turn."""
        login = arguments[0] if arguments else next(iter(self.server.accounts))
        samples = samplePushes(self.revision + 1)
        sample = samples[self._samples % len(samples)]
        self._samples += 1
        self.revision += 1
        return login, sample.attributes, sample.childrenXml

    def push(self, login: str, attributes: dict[str, str], childrenXml: str) -> None:
        d = self.server.push(login, attributes, childrenXml)
        d.addCallback(lambda iq: self.say(f"{iq['id']}: {iq['type']}"))
        d.addErrback(lambda f: self.say(f"push failed: {f.getErrorMessage()}"))

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.done.callback(None)


def oauthSecretFile(stateDir: str | None) -> Path:
    """
    The OAuth stand-in's client secret, in a file (mode 0600) for
    ``yadiskpush token --client-secret-file``: kept in the state directory
    (the same across restarts), else new in a temporary directory. A secret
    does not belong on a command line, not even a test one.
    """
    if stateDir:
        path = Path(stateDir) / OAUTH_SECRET_FILE
        if path.exists():
            return path
    else:
        path = Path(tempfile.mkdtemp(prefix="yadiskpush-")) / OAUTH_SECRET_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(secrets.token_urlsafe(24) + "\n")
    return path


class Exit(Exception):
    """Ends :func:`main` with one sentence on stderr and exit status 1."""


def serverFor(args: argparse.Namespace, reactor: Any) -> tuple[LocalServer, Any]:
    """
    The server the arguments describe, and its :class:`ServerState` (or
    ``None`` without ``--state-dir``).

    :raises Exit: if the state directory cannot be used.
    """
    names = ["localhost", args.interface]
    kept: dict[str, Any] = {}
    state: ServerState | None = None
    if args.state_dir:
        directory = Path(args.state_dir)
        try:
            authority = loadOrCreate(directory, names)
            state = ServerState(directory)
        except StateDirError as e:
            raise Exit(f"--state-dir: {e}") from None
        state.starts += 1
        kept = {"ca": authority.ca, "certificate": authority.certificate}
        tag = str(state.starts)
    else:
        tag = secrets.token_hex(3)

    ports = [args.starttls_port, args.tls_port]
    if state is not None:
        saved = [state.starttlsPort, state.tlsPort]
        fresh = keptPorts(args.interface) if None in saved else [0, 0]
        ports = [
            given if given is not None else (kept or new)
            for given, kept, new in zip(ports, saved, fresh, strict=True)
        ]
    starttlsPort, tlsPort = (port or 0 for port in ports)
    server = LocalServer(
        args.accountMap,
        domain=args.domain,
        interface=args.interface,
        starttlsPort=starttlsPort,
        tlsPort=tlsPort,
        hostNames=names,
        pingInterval=args.ping_interval,
        compressionAfterAuth=args.compression_after_auth,
        window=args.window,
        redeliverDelay=args.redeliver_delay,
        reactor=reactor,
        logLevel=LogLevel.debug if args.verbose else LogLevel.warn,
        pushIdPrefix=f"push-{tag}-",
        **kept,
    )
    return server, state


@defer.inlineCallbacks
def main(reactor: Any, *argv: str) -> Any:
    args = parseArguments(argv)
    globalLogBeginner.beginLoggingTo(
        [textFileLogObserver(sys.stderr)], redirectStandardIO=False
    )
    try:
        server, state = serverFor(args, reactor)
        try:
            yield server.start()
        except error.CannotListenError as e:
            where = f" (kept in {state.path})" if state is not None else ""
            raise Exit(
                f"cannot listen on {e.interface}:{e.port}{where}: "
                f"{e.socketError}; free the port or give --starttls-port and "
                "--tls-port"
            ) from None
    except Exit as e:
        print(f"python -m yadiskpush.localserver: {e}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    if state is not None:
        state.starttlsPort, state.tlsPort = server.starttlsPort, server.tlsPort
        state.save()
        caPath = Path(args.state_dir) / CA_FILE
        if args.ca_file:
            server.writeCACertificate(args.ca_file)
    elif args.ca_file:
        caPath = server.writeCACertificate(args.ca_file)
    else:
        caPath = Path(tempfile.mkdtemp(prefix="yadiskpush-")) / "local-ca.pem"
        server.writeCACertificate(caPath)
    oauth: OAuthStandIn | None = None
    oauthPort: Any = None
    if args.oauth_port is not None:
        secretPath = oauthSecretFile(args.state_dir)
        secret = secretPath.read_text(encoding="utf-8").strip()
        oauth = OAuthStandIn(server.accounts, {args.oauth_client_id: secret}, reactor)
        try:
            oauthPort = yield listenOAuth(
                reactor, oauth, server.tlsOptions, args.oauth_port, args.interface
            )
        except error.CannotListenError as e:
            yield server.stop()
            print(
                f"python -m yadiskpush.localserver: cannot listen on "
                f"{e.interface}:{e.port} (--oauth-port): {e.socketError}",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(1) from None
    stopping: list[defer.Deferred[None]] = []

    def shutdown() -> defer.Deferred[None]:
        # Once, whichever comes first: a signal (the reactor's "before
        # shutdown" waits for this) or the end of the commands.
        if not stopping:
            d = server.shutdown(SHUTDOWN_TIMEOUT)
            if oauthPort is not None:
                d.addCallback(lambda _: oauthPort.stopListening())
            stopping.append(d)
        return stopping[0]

    reactor.addSystemEventTrigger("before", "shutdown", shutdown)
    print(f"STARTTLS port: {server.starttlsPort}", flush=True)
    print(f"TLS port: {server.tlsPort}", flush=True)
    print(f"CA certificate: {caPath}", flush=True)
    print(f"Push ids: {server.pushIdPrefix}N", flush=True)
    if oauthPort is not None:
        url = f"https://localhost:{oauthPort.getHost().port}"
        print(f"OAuth and Disk API URL: {url}", flush=True)
        print(
            f"OAuth client: {args.oauth_client_id}, secret in {secretPath}",
            flush=True,
        )
    done: defer.Deferred[None] = defer.Deferred()
    if args.no_commands:
        yield done  # only a signal ends it
    stdio.StandardIO(CommandProtocol(server, done, oauth), reactor=reactor)
    yield done
    yield shutdown()


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
