"""
Prosody as an independent second XMPP server for the integration tests.

:class:`ProsodyServer` writes a configuration, a throwaway CA and server
certificate into a temporary directory, runs ``prosody -F`` there as a child
process, and waits (bounded) for the file in which ``mod_report_ports``
writes the ports the kernel chose. ``mod_yandex_push`` plays the vendor's
part once a client is logged in and records what the client answers in a
JSON-lines file, read with :meth:`ProsodyServer.records` and waited on with
:meth:`ProsodyServer.waitForRecords`; pushes and pings are triggered on
demand over Prosody's HTTP listener.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from twisted.internet import defer, protocol, task
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from yadiskpush.localserver.ca import CertificateAuthority

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class CertificateFiles:
    """The PEM files Prosody is configured with."""

    caCertificate: Path
    certificate: Path
    key: Path


def writeCertificates(directory: Path, names: list[str]) -> CertificateFiles:
    """
    A throwaway CA (the local server's) and a server certificate for
    ``names``, written as ``ca.pem``, ``server.pem`` and ``server.key``.
    """
    ca = CertificateAuthority.generate("yadiskpush Prosody test CA")
    issued = ca.issueServerCertificate(names)
    directory.mkdir(parents=True, exist_ok=True)
    files = CertificateFiles(
        directory / "ca.pem", directory / "server.pem", directory / "server.key"
    )
    files.caCertificate.write_bytes(ca.caCertificatePEM)
    files.certificate.write_bytes(issued.certPEM)
    files.key.write_bytes(issued.keyPEM)
    files.key.chmod(0o600)
    return files


def writeUnrelatedAuthority(path: Path) -> Path:
    """Write the certificate of a CA that signed nothing, to distrust a server."""
    path.write_bytes(CertificateAuthority.generate("unrelated CA").caCertificatePEM)
    return path


CONFIG_TEMPLATE = HERE / "prosody.cfg.lua.in"
SEARCH_PATH = "/usr/bin:/usr/sbin:/usr/local/bin:/bin:/sbin"

# Each listener on its own loopback address (see the README).
STARTTLS_ADDRESS = "127.0.0.1"
DIRECT_TLS_ADDRESS = "127.0.0.2"
HTTP_ADDRESS = "127.0.0.3"
# The name dialled for STARTTLS: it resolves to STARTTLS_ADDRESS, and it is
# not the XMPP domain, as push.xmpp.yandex.ru is not ya.ru.
TLS_HOST = "localhost"

START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
POLL_INTERVAL = 0.05

Record = dict[str, Any]


def prosodyExecutable() -> str | None:
    """The ``prosody`` program, or ``None`` when it is not installed."""
    return shutil.which("prosody", path=SEARCH_PATH)


def skipReason() -> str | None:
    """
    Why the Prosody tests cannot run here, or ``None`` if they can.

    CI sets ``YADISKPUSH_REQUIRE_PROSODY=1``: there a missing Prosody is an
    error, not a skip, so the interoperability tests cannot silently vanish.
    """
    if prosodyExecutable() is None:
        if os.environ.get("YADISKPUSH_REQUIRE_PROSODY") == "1":
            raise RuntimeError(
                "YADISKPUSH_REQUIRE_PROSODY=1 but Prosody is not installed"
            )
        return "Prosody is not installed (apt-get install prosody)"
    return None


def closedPort(address: str) -> int:
    """A port on ``address`` that nothing listens on (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


def luaString(value: str) -> str:
    """``value`` as a Lua string literal (UTF-8; escapes in decimal, as Lua has)."""
    escaped = "".join(
        f"\\{ord(c):03d}" if c in '"\\' or ord(c) < 32 or ord(c) == 127 else c
        for c in value
    )
    return f'"{escaped}"'


def luaTable(mapping: dict[str, str]) -> str:
    """A Lua table literal with string keys and values."""
    items = "; ".join(f"[{luaString(k)}] = {luaString(v)}" for k, v in mapping.items())
    return "{ " + items + " }"


class ProsodyFailed(Exception):
    """Prosody did not start, or stopped on its own; the message has its output."""


class _ProsodyProcess(protocol.ProcessProtocol):
    """Collects Prosody's console output and fires ``ended`` when it exits."""

    def __init__(self) -> None:
        self.output = bytearray()
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.exited = False
        self.reason: Failure | None = None

    def outReceived(self, data: bytes) -> None:
        self.output = (self.output + data)[-65536:]

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.exited = True
        self.reason = reason
        self.ended.callback(None)


class ProsodyServer:
    """
    One Prosody process with the test modules, in its own temporary directory.

    Use ``await server.start()`` in ``setUp`` and ``addCleanup(server.stop)``.

    :param reactor: the reactor running the tests.
    :param tokens: OAuth token for each login that may log in.
    :param pingInterval: seconds between the server's pings (0: none; pings
        can still be sent with :meth:`ping`).
    :param resourceSuffix: appended by the server to the resource the client
        binds, so that the assigned JID differs from the requested one.
    :param subscriptionError: answer the push subscription with this error
        condition instead of a result.
    :param domain: the XMPP domain (the virtual host).
    """

    def __init__(
        self,
        reactor: Any,
        tokens: dict[str, str] | None = None,
        pingInterval: float = 0.0,
        resourceSuffix: str = "",
        subscriptionError: str | None = None,
        domain: str = "ya.ru",
    ) -> None:
        self.reactor = reactor
        self.tokens = tokens if tokens is not None else {"test": "tok"}
        self.pingInterval = pingInterval
        self.resourceSuffix = resourceSuffix
        self.subscriptionError = subscriptionError
        self.domain = domain
        self.tlsHost = TLS_HOST
        self.directTLSHost = DIRECT_TLS_ADDRESS
        self.directory: Path | None = None
        self.ports: dict[str, list[dict[str, Any]]] = {}
        self._process: _ProsodyProcess | None = None
        self._transport: Any = None
        self._pool: HTTPConnectionPool | None = None

    # -- files ------------------------------------------------------------

    def _path(self, name: str) -> Path:
        assert self.directory is not None, "the server was not started"
        return self.directory / name

    @property
    def caFile(self) -> str:
        """PEM file of the CA that signed the server's certificate."""
        return str(self._path("ca.pem"))

    @property
    def recordFile(self) -> Path:
        return self._path("records.jsonl")

    @property
    def logFile(self) -> Path:
        return self._path("prosody.log")

    def log(self) -> str:
        """Prosody's log so far (debug level)."""
        try:
            return self.logFile.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- ports ------------------------------------------------------------

    def _port(self, service: str) -> int:
        return int(self.ports[service][0]["port"])

    @property
    def starttlsPort(self) -> int:
        """The STARTTLS client port, on :data:`STARTTLS_ADDRESS`."""
        return self._port("c2s")

    @property
    def directTLSPort(self) -> int:
        """The direct-TLS client port, on :data:`DIRECT_TLS_ADDRESS`."""
        return self._port("c2s_direct_tls")

    @property
    def httpPort(self) -> int:
        return self._port("http")

    # -- life cycle -------------------------------------------------------

    def _writeConfig(self) -> Path:
        files = writeCertificates(
            self._path("certs"),
            # Not STARTTLS_ADDRESS: dialling it by address must fail the
            # name check. Not the XMPP domain either: the client must check
            # the host it dials.
            [TLS_HOST, DIRECT_TLS_ADDRESS],
        )
        shutil.copy(files.caCertificate, self.caFile)
        values = {
            "run_as_root": "true" if os.geteuid() == 0 else "false",
            "pidfile": luaString(str(self._path("prosody.pid"))),
            "data_path": luaString(str(self._path("data"))),
            "plugin_path": luaString(str(HERE)),
            "log_file": luaString(str(self.logFile)),
            "c2s_interface": luaString(STARTTLS_ADDRESS),
            "direct_tls_interface": luaString(DIRECT_TLS_ADDRESS),
            "http_interface": luaString(HTTP_ADDRESS),
            "domain": luaString(self.domain),
            "ports_file": luaString(str(self._path("ports.json"))),
            "certificate": luaString(str(files.certificate)),
            "key": luaString(str(files.key)),
            "certificates_dir": luaString(str(self._path("certs"))),
            "tokens": luaTable(self.tokens),
            "tls_host": luaString(TLS_HOST),
            "record_file": luaString(str(self.recordFile)),
            "ping_interval": repr(float(self.pingInterval)),
            "resource_suffix": luaString(self.resourceSuffix),
            "subscription_error": (
                luaString(self.subscriptionError) if self.subscriptionError else "nil"
            ),
        }
        config = Template(CONFIG_TEMPLATE.read_text()).substitute(values)
        path = self._path("prosody.cfg.lua")
        path.write_text(config)
        return path

    @defer.inlineCallbacks
    def start(self) -> Any:
        """
        Start Prosody and fire once it listens on all its ports.

        :raises ProsodyFailed: if Prosody exits, or has not reported its ports
            within :data:`START_TIMEOUT` seconds.
        """
        executable = prosodyExecutable()
        if executable is None:
            raise ProsodyFailed(skipReason())
        self.directory = Path(tempfile.mkdtemp(prefix="yadiskpush-prosody-"))
        self._path("data").mkdir()
        self._path("certs").mkdir()
        self.recordFile.touch()
        config = self._writeConfig()
        self._process = _ProsodyProcess()
        # An explicit environment: nothing of ours (a token) reaches Prosody.
        env = {
            "PATH": SEARCH_PATH,
            "HOME": str(self.directory),
            "LANG": "C.UTF-8",
        }
        self._transport = self.reactor.spawnProcess(
            self._process,
            executable,
            [executable, "-F", "--config", str(config)],
            env=env,
            path=str(self.directory),
        )
        portsFile = self._path("ports.json")
        try:
            yield self._poll(lambda: portsFile.exists(), START_TIMEOUT, "its ports")
        except ProsodyFailed:
            yield self.stop(keepDirectory=True)
            raise
        self.ports = json.loads(portsFile.read_text())
        missing = {"c2s", "c2s_direct_tls", "http"} - set(self.ports)
        if missing:
            yield self.stop(keepDirectory=True)
            raise ProsodyFailed(f"Prosody did not open {sorted(missing)}: {self.ports}")

    def _describeExit(self) -> str:
        assert self._process is not None
        output = bytes(self._process.output).decode(errors="replace").strip()
        errors = [line for line in self.log().splitlines() if "error" in line.lower()]
        return (
            f"console output: {output[-2000:] or '(none)'}; "
            f"log errors: {errors[-10:] or '(none)'}; directory: {self.directory}"
        )

    @defer.inlineCallbacks
    def _poll(self, condition: Callable[[], bool], timeout: float, what: str) -> Any:
        """Fire once ``condition()`` holds; fail after ``timeout`` seconds."""
        deadline = self.reactor.seconds() + timeout
        while not condition():
            if self._process is None or self._process.exited:
                raise ProsodyFailed(
                    f"Prosody exited while waiting for {what}; {self._describeExit()}"
                )
            if self.reactor.seconds() > deadline:
                raise ProsodyFailed(
                    f"no {what} after {timeout:g} s; {self._describeExit()}"
                )
            yield task.deferLater(self.reactor, POLL_INTERVAL, lambda: None)

    @defer.inlineCallbacks
    def stop(self, keepDirectory: bool = False) -> Any:
        """
        Stop Prosody by its own process id: SIGTERM, then SIGKILL after
        :data:`STOP_TIMEOUT` seconds; then remove the temporary directory.
        """
        if self._pool is not None:
            yield self._pool.closeCachedConnections()
            self._pool = None
        process, transport = self._process, self._transport
        if process is not None and not process.exited:
            transport.signalProcess("TERM")
            timer = self.reactor.callLater(STOP_TIMEOUT, _kill, process, transport)
            yield process.ended
            if timer.active():
                timer.cancel()
        if self.directory is not None and not keepDirectory:
            shutil.rmtree(self.directory, ignore_errors=True)

    # -- records ----------------------------------------------------------

    def records(self, **match: Any) -> list[Record]:
        """The records so far, in order; only those whose fields equal ``match``."""
        found = []
        with open(self.recordFile, encoding="utf-8") as lines:
            for line in lines:
                if not line.endswith("\n"):
                    break  # being written
                entry = json.loads(line)
                if all(entry.get(k) == v for k, v in match.items()):
                    found.append(entry)
        return found

    @defer.inlineCallbacks
    def waitForRecords(
        self, count: int = 1, timeout: float = 10.0, **match: Any
    ) -> Any:
        """
        Fire with the records matching ``match`` once there are at least
        ``count`` of them.

        :raises ProsodyFailed: after ``timeout`` seconds, or if Prosody exits.
        """
        yield self._poll(
            lambda: len(self.records(**match)) >= count,
            timeout,
            f"{count} record(s) matching {match}",
        )
        return self.records(**match)

    # -- triggers ---------------------------------------------------------

    @defer.inlineCallbacks
    def _post(self, path: str, body: dict[str, Any]) -> Any:
        if self._pool is None:
            self._pool = HTTPConnectionPool(self.reactor, persistent=False)
        agent = Agent(self.reactor, pool=self._pool)
        url = f"http://{HTTP_ADDRESS}:{self.httpPort}/yandex/{path}"
        response = yield agent.request(
            b"POST",
            url.encode("ascii"),
            Headers({b"Content-Type": [b"application/json"]}),
            _BytesProducer(json.dumps(body).encode("utf-8")),
        )
        collector = _BodyCollector()
        response.deliverBody(collector)
        data = yield collector.done
        result = json.loads(data)
        if response.code != 200:
            raise ProsodyFailed(f"POST /yandex/{path}: {response.code} {result}")
        return list(result["ids"])

    def push(self, count: int = 1, login: str | None = None) -> Any:
        """
        Send ``count`` Disk pushes to every subscribed session (of ``login``);
        fire with their ids, in the order sent.
        """
        body: dict[str, Any] = {"count": count}
        if login is not None:
            body["login"] = login
        return self._post("push", body)

    def ping(self, login: str | None = None) -> Any:
        """Ping every open session (of ``login``) now; fire with the ping ids."""
        return self._post("ping", {"login": login} if login else {})

    def sendUnknownIQ(self, login: str | None = None) -> Any:
        """
        Send every open session an IQ get in a namespace no client knows;
        fire with the ids.
        """
        return self._post("unknown", {"login": login} if login else {})

    def kick(self, condition: str = "system-shutdown", content: str = "") -> Any:
        """
        End every open session with the stream error ``condition`` (its
        element holding ``content``, e.g. ``host:port`` for
        ``see-other-host``); fire with the JIDs of the sessions ended.
        """
        return self._post("kick", {"condition": condition, "content": content})


def _kill(process: _ProsodyProcess, transport: Any) -> None:
    if not process.exited:
        transport.signalProcess("KILL")


class _BodyCollector(protocol.Protocol):
    """Collects a response body; ``done`` fires with it."""

    def __init__(self) -> None:
        self.body = bytearray()
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.body += data

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if reason.check(ResponseDone):
            self.done.callback(bytes(self.body))
        else:
            self.done.errback(reason)


@implementer(IBodyProducer)
class _BytesProducer:
    """A request body from bytes, written at once."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: Any) -> defer.Deferred[None]:
        consumer.write(self.body)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass
