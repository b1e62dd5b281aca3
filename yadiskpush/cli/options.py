"""
The twistd tap module: command-line options and ``makeService``.

All validation happens in :meth:`Options.postOptions`, so every mistake is a
one-line usage error before anything starts; ``makeService`` only assembles.
There is deliberately no option that takes the token itself: a process's
arguments are readable by every user of the machine.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from twisted.application import service
from twisted.python import usage

from yadiskpush.errors import ConfigurationError
from yadiskpush.secret import TOKEN_ENVIRONMENT_VARIABLE, Secret
from yadiskpush.settings import (
    DEFAULT_DOMAIN,
    DEFAULT_HOST,
    DEFAULT_MAX_STANZA_SIZE,
    DEFAULT_PORT,
    DEFAULT_TLS_PORT,
    Settings,
)


def _positiveSeconds(value: str) -> float:
    seconds = float(value)
    if not seconds > 0:
        raise ValueError("must be a positive number of seconds")
    return seconds


_positiveSeconds.coerceDoc = "Seconds, greater than 0."  # type: ignore[attr-defined]


def _tlsPortCoerce(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise ValueError(f"{port} is not a port number (0 to 65535)")
    return port


_tlsPortCoerce.coerceDoc = "0 disables the fallback."  # type: ignore[attr-defined]


def _positiveInteger(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError("must be a whole number, at least 1")
    return number


_positiveInteger.coerceDoc = "A whole number, at least 1."  # type: ignore[attr-defined]

#: --log-level's choices, in Twisted's names.
LOG_LEVELS = ("debug", "info", "warn", "error", "critical")


def _logLevel(value: str) -> str:
    level = value.lower()
    if level == "warning":
        level = "warn"
    if level not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
    return level


_logLevel.coerceDoc = f"One of {', '.join(LOG_LEVELS)}."  # type: ignore[attr-defined]


class Options(usage.Options):
    """``twistd yadiskpush`` options."""

    synopsis = "[options]"
    longdesc = (
        "Connects to the Yandex.Disk push server (XMPP) and reports every change "
        "on the Disk. The OAuth token is read from --token-file or from the "
        f"environment variable {TOKEN_ENVIRONMENT_VARIABLE}; it is never taken "
        "on the command line. --demo runs the whole sequence against a local "
        "server started in the same process, with no account needed."
    )

    optParameters = [
        ["login", "l", None, "Yandex login, without a domain (e.g. test)."],
        [
            "accounts",
            "a",
            None,
            "File of accounts, one LOGIN:TOKEN per line (mode 600), instead of "
            "--login and --token-file; SIGHUP re-reads it.",
        ],
        [
            "token-file",
            "t",
            None,
            "File whose first line is the OAuth token "
            f"(else ${TOKEN_ENVIRONMENT_VARIABLE}).",
        ],
        [
            "host",
            None,
            DEFAULT_HOST,
            "Host to connect to; its certificate must name it.",
        ],
        ["port", None, DEFAULT_PORT, "STARTTLS port.", usage.portCoerce],
        [
            "tls-port",
            None,
            DEFAULT_TLS_PORT,
            "Direct-TLS port tried when --port cannot be reached.",
            _tlsPortCoerce,
        ],
        ["domain", None, DEFAULT_DOMAIN, "XMPP domain (the JID's host)."],
        [
            "resource",
            None,
            None,
            "Resource to bind (default: yadiskpush-<random>, unique per process).",
        ],
        ["ca-file", None, None, "PEM file of CAs to trust instead of the system's."],
        [
            "json-out",
            None,
            None,
            "Append each notification as one JSON line to this file ('-': stdout).",
        ],
        [
            "exec",
            None,
            None,
            "Shell command run on notifications (JSON on stdin); one run at a time "
            "per account, an account's changes during its run coalesced into one "
            "more run.",
        ],
        [
            "exec-timeout",
            None,
            300.0,
            "Kill an --exec run after this many seconds.",
            _positiveSeconds,
        ],
        [
            "exec-jobs",
            None,
            4,
            "Most --exec runs at once, across all accounts (each account has at "
            "most one run at a time).",
            _positiveInteger,
        ],
        [
            "state-dir",
            None,
            None,
            "Directory of the --exec journal, which keeps acked pushes until the "
            "command has run (default: $STATE_DIRECTORY, else "
            "$XDG_STATE_HOME/yadiskpush, else ~/.local/state/yadiskpush).",
        ],
        [
            "delivery-timeout",
            None,
            60.0,
            "Refuse a push (the server sends it again) when the outputs have not "
            "taken it within this many seconds.",
            _positiveSeconds,
        ],
        [
            "idle-timeout",
            None,
            90.0,
            "Ping the server after this many seconds of silence.",
            _positiveSeconds,
        ],
        [
            "ping-timeout",
            None,
            20.0,
            "Reconnect if that ping gets no answer within this many seconds.",
            _positiveSeconds,
        ],
        [
            "max-handshakes",
            None,
            50,
            "Connections between TCP connect and open session at once.",
            _positiveInteger,
        ],
        [
            "log-level",
            None,
            "info",
            "Least level logged; debug shows each handshake step.",
            _logLevel,
        ],
        [
            "max-stanza-size",
            None,
            DEFAULT_MAX_STANZA_SIZE,
            "Largest stanza accepted from the server, in bytes.",
            int,
        ],
    ]

    optFlags = [
        ["compress", None, "Request zlib stream compression (XEP-0138) if offered."],
        ["demo", None, "Run against a local demo server started in this process."],
        ["log-traffic", None, "Log the raw XML traffic (the token is redacted)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        #: The one account's settings (with --login).
        self.settings: Settings | None = None
        #: login -> token, from --accounts.
        self.accounts: dict[str, Secret] = {}
        self.warnings: list[str] = []
        self.environ: dict[str, str] = dict(os.environ)

    def postOptions(self) -> None:
        """Build the :class:`Settings`, or fail with one clear sentence."""
        try:
            self._checkOutput()
            if self["demo"]:
                pass
            elif self["accounts"] is not None:
                self._readAccounts()
            else:
                self.settings = self._buildSettings()
        except ConfigurationError as e:
            raise usage.UsageError(str(e)) from None

    def _checkOutput(self) -> None:
        if self["exec"] is not None and not self["exec"].strip():
            raise ConfigurationError("--exec needs a command")
        # The journal lives there: a bad directory, or a corrupt or locked
        # journal, is a usage error now rather than refused pushes later.
        # The demo's pushes are not journaled (see buildSinks).
        if self["state-dir"] or (self["exec"] and not self["demo"]):
            from yadiskpush.delivery.journal import JOURNAL_NAME, checkJournal
            from yadiskpush.statedir import ensureStateDir, resolveStateDir

            stateDir = ensureStateDir(resolveStateDir(self["state-dir"], self.environ))
            self["state-dir"] = str(stateDir)
            if self["exec"] and not self["demo"]:
                checkJournal(stateDir / JOURNAL_NAME)
        if self["ca-file"]:
            from yadiskpush.connection.tls import loadTrustRoot

            loadTrustRoot(self["ca-file"])
        path = self["json-out"]
        if path and path != "-":
            try:
                # O_NONBLOCK: a FIFO nobody reads yet must not hang the start.
                fd = os.open(
                    path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o666
                )
                os.close(fd)
            except OSError as e:
                if e.errno == errno.ENXIO:
                    return  # a FIFO without a reader: the sink waits for one
                raise ConfigurationError(
                    f"cannot write --json-out {path}: {e.strerror or e}"
                ) from None

    def _readAccounts(self) -> None:
        from yadiskpush.accounts import readAccounts

        for other in ("login", "token-file"):
            if self[other] is not None:
                raise ConfigurationError(
                    f"--accounts and --{other} exclude each other: the accounts "
                    "file gives every login and its token"
                )
        path = self["accounts"]
        self.accounts = readAccounts(path)
        if not self.accounts:
            raise ConfigurationError(
                f"{path} has no accounts: add a line LOGIN:TOKEN for each"
            )
        # Checks the connection options once, as a probe account.
        Settings(login="probe", token=Secret("probe"), **self.connectionSettings())

    def connectionSettings(self) -> dict[str, Any]:
        """The :class:`Settings` fields every account shares."""
        extra: dict[str, Any] = {}
        if self["resource"]:
            extra["resource"] = self["resource"]
        return dict(
            deliveryTimeout=self["delivery-timeout"],
            host=self["host"],
            port=self["port"],
            tlsPort=self["tls-port"],
            domain=self["domain"],
            caFile=self["ca-file"],
            compress=bool(self["compress"]),
            idleTimeout=self["idle-timeout"],
            pingTimeout=self["ping-timeout"],
            maxStanzaSize=self["max-stanza-size"],
            logTraffic=bool(self["log-traffic"]),
            **extra,
        )

    def _buildSettings(self) -> Settings:
        if not self["login"]:
            raise ConfigurationError(
                "--login is required (your Yandex login), or --accounts FILE"
            )
        if self["token-file"]:
            token, self.warnings = Secret.fromFile(self["token-file"])
        else:
            fromEnvironment = Secret.fromEnvironment(self.environ)
            if fromEnvironment is None:
                raise ConfigurationError(
                    "no OAuth token: give --token-file PATH or set "
                    f"{TOKEN_ENVIRONMENT_VARIABLE}"
                )
            token = fromEnvironment
        return Settings(
            login=self["login"],
            token=token,
            tokenFile=self["token-file"],
            **self.connectionSettings(),
        )


def buildSinks(options: Options, reactor: Any) -> list[Any]:
    """The sinks the options ask for; a log line when none is given."""
    from yadiskpush.delivery.sinks import ExecSink, JSONLinesSink, LogSink

    sinks: list[Any] = []
    if options["json-out"]:
        sinks.append(JSONLinesSink(options["json-out"]))
    if options["exec"]:
        from yadiskpush.delivery.journal import JOURNAL_NAME, Journal
        from yadiskpush.statedir import resolveStateDir

        if options["demo"]:
            # In memory: demo pushes must never reach the command of a
            # later real run.
            journal = Journal(None, reactor)
        else:
            stateDir = resolveStateDir(options["state-dir"], options.environ)
            journal = Journal(stateDir / JOURNAL_NAME, reactor)
        execSink = ExecSink(
            options["exec"],
            options["exec-timeout"],
            reactor=reactor,
            journal=journal,
            maxJobs=options["exec-jobs"],
        )
        sinks.append(execSink)
    if not sinks:
        sinks.append(LogSink())
    return sinks


def makeService(options: Options) -> service.IService:
    """Assemble the services for ``twistd yadiskpush``; nothing fails here."""
    from twisted.internet import reactor
    from twisted.logger import Logger

    from yadiskpush.application import ExitStatus, PushApplication
    from yadiskpush.fleet import PushFleet
    from yadiskpush.logs import setLogLevel

    if options["demo"]:
        from yadiskpush.demo import DemoService

        return DemoService(options, reactor)

    setLogLevel("debug" if options["log-traffic"] else options["log-level"])
    log = Logger(namespace="yadiskpush")
    for warning in options.warnings:
        log.warn("{warning}", warning=warning)
    fleet = PushFleet(
        reactor, maxHandshakes=options["max-handshakes"], **options.connectionSettings()
    )
    settings = options.settings
    if settings is not None:
        fleet.add(settings.login, settings.token, tokenFile=settings.tokenFile)
    else:
        fleet.apply(options.accounts)
    exitStatus = ExitStatus()
    exitStatus.register()
    return PushApplication(
        fleet,
        buildSinks(options, reactor),
        reactor=reactor,
        exitStatus=exitStatus,
        accountsFile=options["accounts"],
    )
