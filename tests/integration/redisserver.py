"""
A real ``redis-server`` for tests: on a loopback port, in a temporary
directory, without persistence; stopped by its PID and restarted on the same
port; with TLS from a throwaway CA when asked.

Usable from trial test cases (:func:`startRedis`, cleaned up with the test)
and pytest (:func:`redisServer` fixture). Without ``redis-server`` on the
PATH the test is skipped, unless ``YADISKPUSH_REQUIRE_REDIS=1`` (CI), where
it fails instead.

:class:`RedisServer` also talks to its server synchronously over a plain
socket (:meth:`RedisServer.command`, :meth:`RedisServer.xrange`) with the
client's own RESP code, so that a test reads what reached the stream
without going through the code under test's connection.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import SkipTest

import pytest

from yadiskpush.localserver.ca import CertificateAuthority
from yadiskpush.redis.protocol import RedisReplyError, ReplyParser, encodeCommand

#: The variable that turns a missing redis-server into a failure.
REQUIRE_VARIABLE = "YADISKPUSH_REQUIRE_REDIS"

#: Seconds a server may take to answer its first PING, or to exit.
DEADLINE = 10.0

# Between two connection attempts while the server starts: polling a socket
# until it answers, bounded by DEADLINE.
_POLL = 0.01


def redisServerPath() -> str:
    """
    The ``redis-server`` program.

    :raises SkipTest: if there is none (a failure if
        ``YADISKPUSH_REQUIRE_REDIS=1``).
    """
    path = shutil.which("redis-server")
    if path is None:
        message = (
            "redis-server is not installed (Debian package redis-server); "
            f"set {REQUIRE_VARIABLE}=1 to make this a failure"
        )
        if os.environ.get(REQUIRE_VARIABLE) == "1":
            raise AssertionError(message)
        raise SkipTest(message)
    return path


def freePort() -> int:
    """A loopback port free a moment ago (redis-server cannot take port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """
    One ``redis-server`` process (see the module).

    :param directory: where its files go (an empty temporary directory).
    :param tls: serve TLS only (``--tls-port``), with a certificate for
        ``certificateNames`` from a throwaway CA (:attr:`caFile`).
    :param password: ``requirepass`` for the default user.
    :ivar port: its port (plain or TLS), kept across restarts.
    """

    def __init__(
        self,
        directory: str | Path,
        tls: bool = False,
        certificateNames: tuple[str, ...] = ("localhost", "127.0.0.1"),
        password: str | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.tls = tls
        self.password = password
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.caFile: str | None = None
        if tls:
            ca = CertificateAuthority.generate()
            cert, key = ca.issueServerCertificate(list(certificateNames))
            self.caFile = str(ca.writeCACertificate(self.directory / "ca.pem"))
            (self.directory / "server.pem").write_bytes(cert)
            (self.directory / "server.key").write_bytes(key)

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}"

    def arguments(self) -> list[str]:
        arguments = [
            redisServerPath(),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        if self.tls:
            arguments += [
                "--port", "0",
                "--tls-port", str(self.port),
                "--tls-cert-file", str(self.directory / "server.pem"),
                "--tls-key-file", str(self.directory / "server.key"),
                "--tls-ca-cert-file", str(self.caFile),
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        else:
            arguments += ["--port", str(self.port)]
        if self.password is not None:
            arguments += ["--requirepass", self.password]
        return arguments

    def start(self) -> None:
        """
        Start the server (on a fresh port the first time, on the same port
        after :meth:`stop`) and return once it answers PING.
        """
        assert self.process is None, "already running"
        keepPort = self.port != 0
        for _ in range(5):
            if not keepPort:
                self.port = freePort()
            self.process = subprocess.Popen(
                self.arguments(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if self._waitUntilAnswering():
                return
            self.process.wait(DEADLINE)
            self.process = None
            if keepPort:
                break
        log = (self.directory / "redis.log").read_text(errors="replace")
        raise AssertionError(f"redis-server did not start:\n{log[-2000:]}")

    def _waitUntilAnswering(self) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False  # exited: most likely the port was taken
            try:
                if self.command("PING") == b"PONG":
                    return True
            except RedisReplyError as e:
                if e.code in ("NOAUTH", "WRONGPASS"):
                    return True
            except OSError:
                pass
            time.sleep(_POLL)
        self.process.kill()
        return False

    def stop(self) -> None:
        """Stop the server (SIGTERM) and wait for it to exit."""
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def connect(self) -> socket.socket:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=DEADLINE)
        if not self.tls:
            return raw
        # The CA is checked, not the name: a test may give the server a
        # certificate for another host on purpose.
        context = ssl.create_default_context(cafile=self.caFile)
        context.check_hostname = False
        return context.wrap_socket(raw)

    def command(self, *arguments: bytes | str | int, db: int = 0) -> Any:
        """
        Run one command on a new connection (in database ``db``); a reply
        error is raised.
        """
        commands = [arguments]
        if db:
            commands.insert(0, ("SELECT", db))
        if self.password is not None:
            commands.insert(0, ("AUTH", self.password))
        with self.connect() as connection:
            connection.sendall(b"".join(encodeCommand(*c) for c in commands))
            parser = ReplyParser()
            replies: list[Any] = []
            wanted = len(commands)
            while len(replies) < wanted:
                data = connection.recv(65536)
                if not data:
                    raise ConnectionError("redis-server closed the connection")
                replies.extend(parser.feed(data))
        for reply in replies:
            if isinstance(reply, RedisReplyError):
                raise reply
        return replies[-1]

    def xrange(self, stream: str, db: int = 0) -> list[tuple[str, dict[str, str]]]:
        """Every entry of ``stream`` (in database ``db``): (id, fields), in order."""
        entries = self.command("XRANGE", stream, "-", "+", db=db)
        return [
            (
                entryId.decode(),
                {
                    k.decode(): v.decode()
                    for k, v in zip(fields[::2], fields[1::2], strict=True)
                },
            )
            for entryId, fields in entries
        ]


def startRedis(testCase: Any, **kwargs: Any) -> RedisServer:
    """A started :class:`RedisServer` stopped when ``testCase`` ends."""
    server = RedisServer(testCase.mktemp(), **kwargs)
    server.start()
    testCase.addCleanup(server.stop)
    return server


@contextmanager
def runningRedis(directory: str | Path, **kwargs: Any) -> Iterator[RedisServer]:
    """A started :class:`RedisServer` in ``directory``, stopped on exit."""
    server = RedisServer(directory, **kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redisServer(tmp_path: Path) -> Iterator[RedisServer]:
    """
    A started plain :class:`RedisServer`, stopped after the test (import
    this fixture into a test module, or use :func:`runningRedis`).
    """
    try:
        redisServerPath()
    except SkipTest as e:
        pytest.skip(str(e))
    with runningRedis(tmp_path / "redis") as server:
        yield server
