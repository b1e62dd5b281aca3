"""
The twistd tap module: command-line options and ``makeService``.

All validation happens in :meth:`Options.postOptions`, so every mistake is a
one-line usage error before anything starts; ``makeService`` only assembles.
There is deliberately no option that takes the token itself: a process's
arguments are readable by every user of the machine.
"""

from __future__ import annotations

import errno
import getopt
import math
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

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
from yadiskpush.shards import Shard, parseShard

if TYPE_CHECKING:
    from yadiskpush.oauth.refresh import TokenRefresher
    from yadiskpush.oauth.tokenfile import TokenFile

#: Where a usage error sends the reader.
HELP_HINT = "see twistd yadiskpush --help"

#: The least --max-stanza-size :class:`Settings` accepts.
MIN_STANZA_SIZE = 4096


def coerce(doc: str) -> Callable[[Callable[[str], Any]], Callable[[str], Any]]:
    """
    Mark a function as an option's coerce: ``doc`` is what ``--help`` says the
    option accepts, and the function's ``ValueError`` text is shown as is,
    after the option's name (``--port: 'abc' is not a port number ...``).

    A coerce not marked so (``int``, ``float``, another helper's function)
    still gets its option named, but its exception text, which may be
    Python's ("invalid literal for int() ..."), is replaced by its
    ``coerceDoc``.
    """

    def mark(function: Callable[[str], Any]) -> Callable[[str], Any]:
        function.coerceDoc = doc  # type: ignore[attr-defined]
        function.explains = True  # type: ignore[attr-defined]
        return function

    return mark


def _number(value: str, kind: type[int] | type[float], expected: str) -> Any:
    try:
        number = kind(value)
    except ValueError:
        raise ValueError(f"{value!r} is not {expected}") from None
    if kind is float and not math.isfinite(number):
        raise ValueError(f"{value!r} is not {expected}")
    return number


@coerce("Seconds, greater than 0.")
def _positiveSeconds(value: str) -> float:
    expected = "a number of seconds greater than 0"
    if not _number(value, float, expected) > 0:
        raise ValueError(f"{value!r} is not {expected}")
    return float(value)


@coerce("Seconds, 0 or more.")
def _seconds(value: str) -> float:
    expected = "a number of seconds, 0 or more"
    if not _number(value, float, expected) >= 0:
        raise ValueError(f"{value!r} is not {expected}")
    return float(value)


def _port(value: str, low: int) -> int:
    expected = f"a port number ({low} to 65535)"
    port = _number(value, int, expected)
    if not low <= port <= 65535:
        raise ValueError(f"{value!r} is not {expected}")
    return int(port)


@coerce("A port number, 1 to 65535.")
def _portCoerce(value: str) -> int:
    return _port(value, 1)


@coerce("A port number, 1 to 65535; 0 disables the fallback.")
def _tlsPortCoerce(value: str) -> int:
    return _port(value, 0)


@coerce("A whole number, at least 1.")
def _positiveInteger(value: str) -> int:
    expected = "a whole number, at least 1"
    if _number(value, int, expected) < 1:
        raise ValueError(f"{value!r} is not {expected}")
    return int(value)


@coerce(f"Bytes, at least {MIN_STANZA_SIZE}.")
def _stanzaSize(value: str) -> int:
    expected = f"a size in bytes, at least {MIN_STANZA_SIZE}"
    if _number(value, int, expected) < MIN_STANZA_SIZE:
        raise ValueError(f"{value!r} is not {expected}")
    return int(value)


@coerce("K/N: shard K (counting from 0) of N.")
def _shardCoerce(value: str) -> Shard:
    return parseShard(value)


#: --log-level's choices, in Twisted's names.
LOG_LEVELS = ("debug", "info", "warn", "error", "critical")


@coerce(f"One of {', '.join(LOG_LEVELS)}.")
def _logLevel(value: str) -> str:
    level = value.lower()
    if level == "warning":
        level = "warn"
    if level not in LOG_LEVELS:
        raise ValueError(f"{value!r} is not one of {', '.join(LOG_LEVELS)}")
    return level


class _NamedParameter(usage.CoerceParameter):
    """
    Twisted's coerced parameter, whose errors name the option and say what
    it accepts instead of "Parameter type enforcement failed: <Python's
    exception text>". :meth:`Options._gather_parameters` gives every
    parameter one, so an option added later gets it without asking.
    """

    def dispatch(self, parameterName: str, value: str | None) -> None:
        if value is None or (value == "" and self.coerce is str):
            # An empty text (--host "") would otherwise fail later, in words
            # that do not name the option.
            raise usage.UsageError(f"--{parameterName} needs a value; {HELP_HINT}")
        try:
            coerced = self.coerce(value)
        except ValueError as e:
            if getattr(self.coerce, "explains", False):
                reason = str(e)
            elif self.doc:
                reason = f"{value!r} is not accepted ({self.doc.rstrip('.')})"
            else:
                reason = f"{value!r} is not accepted"
            raise usage.UsageError(f"--{parameterName}: {reason}") from None
        self.options.opts[parameterName] = coerced


def _getoptMessage(error: getopt.GetoptError, longOptions: list[str]) -> str:
    """getopt's complaint, in the words of the other usage errors."""
    option = ("--" if len(error.opt) > 1 else "-") + error.opt
    if error.msg.endswith("requires argument"):
        return f"{option} needs a value; {HELP_HINT}"
    if error.msg.endswith("must not have an argument"):
        return f"{option} takes no value; {HELP_HINT}"
    if error.msg.endswith("not a unique prefix"):
        names = sorted(
            "--" + name.rstrip("=")
            for name in longOptions
            if name.startswith(error.opt)
        )
        return f"{option} is short for more than one of {', '.join(names)}"
    return f"{error.msg}; {HELP_HINT}"


def versionText() -> str:
    """yadiskpush's version and those of the two libraries it builds on."""
    from importlib.metadata import PackageNotFoundError, version

    from twisted import __version__ as twistedVersion
    from yadiskpush import __version__

    try:
        wokkelVersion = version("wokkel")
    except PackageNotFoundError:  # pragma: no cover - wokkel is a dependency
        wokkelVersion = "not installed"
    return f"yadiskpush {__version__}\nTwisted {twistedVersion}\nwokkel {wokkelVersion}"


class Options(usage.Options):
    """``twistd yadiskpush`` options."""

    synopsis = "[options]"
    longdesc = (
        "Connects to the Yandex.Disk push server (XMPP) and reports every change "
        "on the Disk. The OAuth token is read from --token-file or from the "
        f"environment variable {TOKEN_ENVIRONMENT_VARIABLE}; it is never taken "
        "on the command line. --demo runs the whole sequence against a local "
        "server started in the same process, with no account needed."
        " Under systemd, --token-file defaults to the unit's credential "
        "token-file (or token) and --accounts to its credential accounts "
        "(LoadCredential=, in $CREDENTIALS_DIRECTORY), when they exist."
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
            "The JSON token file of yadiskpush token (its login is the default "
            "--login; the token is refreshed in it), or a file whose first line "
            f"is the OAuth token (else ${TOKEN_ENVIRONMENT_VARIABLE}).",
        ],
        [
            "host",
            None,
            DEFAULT_HOST,
            "Host to connect to; its certificate must name it.",
        ],
        ["port", None, DEFAULT_PORT, "STARTTLS port.", _portCoerce],
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
            "exec-debounce",
            None,
            1.0,
            "Start an account's --exec run once no push of it came for this many "
            "seconds (0: at once).",
            _seconds,
        ],
        [
            "exec-max-delay",
            None,
            30.0,
            "Start it at the latest this many seconds after its oldest push not "
            "yet run, even while pushes keep coming (at least --exec-debounce).",
            _seconds,
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
            "redis",
            None,
            None,
            "Add each notification to a Redis stream (redis://HOST[:PORT][/DB] or "
            "rediss:// for TLS; a user name may be in the URL, the password not).",
        ],
        ["redis-stream", None, "yadiskpush", "The stream --redis adds to."],
        [
            "redis-maxlen",
            None,
            1_000_000,
            "Trim the stream to about this many entries (MAXLEN ~).",
            _positiveInteger,
        ],
        [
            "redis-password-file",
            None,
            None,
            "File whose first line is the Redis password (AUTH).",
        ],
        [
            "redis-ca-file",
            None,
            None,
            "PEM file of CAs to trust for rediss:// instead of the system's.",
        ],
        [
            "webhook",
            None,
            None,
            "POST each notification to this URL, signed as Standard Webhooks "
            "specify (needs --webhook-secret-file).",
        ],
        [
            "webhook-secret-file",
            None,
            None,
            "File holding the webhook signing secret, whsec_ and base64.",
        ],
        [
            "webhook-ca-file",
            None,
            None,
            "PEM file of CAs to trust for an https:// --webhook instead of the "
            "system's.",
        ],
        [
            "webhook-concurrency",
            None,
            8,
            "How many webhook POSTs may be under way at once, for different "
            "accounts (each account's notifications stay in order; 1 keeps one "
            "order across all accounts).",
            _positiveInteger,
        ],
        [
            "webhook-timeout",
            None,
            15.0,
            "Give up one webhook attempt after this many seconds (it is retried).",
            _positiveSeconds,
        ],
        [
            "metrics",
            None,
            None,
            "Serve /metrics (Prometheus), /livez and /readyz on this Twisted "
            "endpoint, e.g. tcp:9108:interface=127.0.0.1.",
        ],
        [
            "shard",
            None,
            None,
            "Keep only the accounts of one shard of the --accounts file, so N "
            "processes share it without overlap (rendezvous hashing of the login)",
            _shardCoerce,
        ],
        [
            "state-dir",
            None,
            None,
            "Directory of the --exec and --webhook journals, which keep acked "
            "pushes until the command has run or the endpoint took them (default: "
            "$STATE_DIRECTORY, else "
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
            "Largest stanza accepted from the server.",
            _stanzaSize,
        ],
    ]

    optFlags = [
        ["compress", None, "Request zlib stream compression (XEP-0138) if offered."],
        ["demo", None, "Run against a local demo server started in this process."],
        ["log-traffic", None, "Log the raw XML traffic (the token is redacted)."],
        [
            "exec-on-start",
            None,
            "Run the --exec command once per account after its first subscription "
            "(YADISKPUSH_REASON=start): changes made while the client was down are "
            "not pushed.",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        #: The one account's settings (with --login).
        self.settings: Settings | None = None
        #: login -> token, from --accounts.
        self.accounts: dict[str, Secret] = {}
        self.warnings: list[str] = []
        #: What --token-file holds (JSON or a plain token), once read.
        self.tokenFile: TokenFile | None = None
        self.environ: dict[str, str] = dict(os.environ)
        #: --redis, parsed (a RedisAddress), and --webhook-secret-file's
        #: secret, once read.
        self.redisAddress: Any = None
        self.webhookSecret: bytes | None = None

    def opt_version(self) -> None:
        """Show the versions of yadiskpush, Twisted and wokkel, and exit."""
        print(versionText())
        sys.exit(0)

    def parseOptions(self, options: list[str] | None = None) -> None:
        """
        Parse ``options`` as Twisted does, with getopt's complaints (unknown
        option, missing value) reworded to name the option and point to
        ``--help``.
        """
        if options is None:
            options = sys.argv[1:]
        try:
            getopt.getopt(options, self.shortOpt, self.longOpt)
        except getopt.GetoptError as e:
            raise usage.UsageError(_getoptMessage(e, self.longOpt)) from None
        super().parseOptions(options)

    def _gather_parameters(self) -> tuple[Any, ...]:
        # Every parameter, whoever adds it, gets errors that name it.
        gathered = super()._gather_parameters()
        dispatch = gathered[5]
        for name, parameter in dispatch.items():
            dispatch[name] = _NamedParameter(self, parameter.coerce)
        return gathered

    def postOptions(self) -> None:
        """Build the :class:`Settings`, or fail with one clear sentence."""
        try:
            self._checkOutput()
            self._checkRemoteOutputs()
            if not self["demo"]:
                from yadiskpush.systemd import credentialDefaults

                self["token-file"], self["accounts"] = credentialDefaults(
                    self.environ, self["token-file"], self["accounts"], self["login"]
                )
            if self["demo"]:
                pass
            elif self["accounts"] is not None:
                self._readAccounts()
            elif self["shard"] is not None:
                raise ConfigurationError(
                    "--shard splits an --accounts file between processes: give "
                    "--accounts FILE (with --login there is only one account)"
                )
            else:
                self.settings = self._buildSettings()
        except ConfigurationError as e:
            raise usage.UsageError(str(e)) from None

    def _checkOutput(self) -> None:
        if self["exec"] is not None and not self["exec"].strip():
            raise ConfigurationError("--exec needs a command")
        if self["exec-on-start"] and not self["exec"]:
            raise ConfigurationError(
                "--exec-on-start runs the --exec command: give --exec COMMAND too"
            )
        if self["exec-max-delay"] < self["exec-debounce"]:
            raise ConfigurationError(
                f"--exec-max-delay ({self['exec-max-delay']:g} s) must be at least "
                f"--exec-debounce ({self['exec-debounce']:g} s)"
            )
        # The journal lives there: a bad directory, or a corrupt or locked
        # journal, is a usage error now rather than refused pushes later.
        # The demo's pushes are not journaled (see buildSinks).
        journaled = (self["exec"] or self["webhook"]) and not self["demo"]
        if self["state-dir"] or journaled:
            from yadiskpush.delivery.journal import JOURNAL_NAME, checkJournal
            from yadiskpush.statedir import ensureStateDir, resolveStateDir

            stateDir = ensureStateDir(resolveStateDir(self["state-dir"], self.environ))
            self["state-dir"] = str(stateDir)
            if self["exec"] and not self["demo"]:
                checkJournal(stateDir / JOURNAL_NAME)
            if self["webhook"] and not self["demo"]:
                from yadiskpush.delivery.sinks.webhook import WEBHOOK_JOURNAL_NAME

                checkJournal(stateDir / WEBHOOK_JOURNAL_NAME)
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

    def _checkRemoteOutputs(self) -> None:
        """
        --redis, --webhook and --metrics: everything that can be checked
        before the reactor runs (the URL, the secret, the endpoint) is, so a
        mistake is a usage error now and not refused pushes later.
        """
        if self["redis"]:
            from yadiskpush.redis.address import parseRedisURL

            self.redisAddress = parseRedisURL(self["redis"])
            if self["redis-password-file"]:
                from yadiskpush.redis.address import readPasswordFile

                # The sink reads it again; read now so that a wrong path is
                # a usage error and not a failure in makeService.
                readPasswordFile(self["redis-password-file"])
            elif self.redisAddress.username:
                raise ConfigurationError(
                    f"--redis names the user {self.redisAddress.username!r}: give "
                    "its password with --redis-password-file"
                )
            if self["redis-ca-file"]:
                if not self.redisAddress.tls:
                    raise ConfigurationError(
                        "--redis-ca-file verifies TLS: use a rediss:// URL"
                    )
                from yadiskpush.connection.tls import loadTrustRoot

                loadTrustRoot(self["redis-ca-file"])
        else:
            for dependent in ("redis-password-file", "redis-ca-file"):
                if self[dependent]:
                    raise ConfigurationError(f"--{dependent} needs --redis URL")
        if self["webhook"]:
            from yadiskpush.webhooks.sender import checkWebhookURL
            from yadiskpush.webhooks.signing import readWebhookSecretFile

            if not self["webhook-secret-file"]:
                raise ConfigurationError(
                    "--webhook needs --webhook-secret-file PATH: a file of one "
                    "line, whsec_ and base64, the secret the receiver checks "
                    "signatures with"
                )
            _, urlWarnings = checkWebhookURL(self["webhook"])
            self.webhookSecret, secretWarnings = readWebhookSecretFile(
                self["webhook-secret-file"]
            )
            self.warnings += urlWarnings + secretWarnings
            if self["webhook-ca-file"]:
                from yadiskpush.connection.tls import loadTrustRoot

                loadTrustRoot(self["webhook-ca-file"])
        else:
            for dependent in ("webhook-secret-file", "webhook-ca-file"):
                if self[dependent]:
                    raise ConfigurationError(f"--{dependent} needs --webhook URL")
        if self["metrics"]:
            from yadiskpush.metrics.http import checkEndpoint

            checkEndpoint(self["metrics"])

    def _readAccounts(self) -> None:
        from yadiskpush.accounts import readAccounts

        for other in ("login", "token-file"):
            if self[other] is not None:
                raise ConfigurationError(
                    f"--accounts and --{other} exclude each other: the accounts "
                    "file gives every login and its token"
                )
        path = self["accounts"]
        accounts = readAccounts(path)
        if not accounts:
            raise ConfigurationError(
                f"{path} has no accounts: add a line LOGIN:TOKEN for each"
            )
        shard: Shard | None = self["shard"]
        self.accounts = accounts if shard is None else shard.select(accounts)
        if not self.accounts:
            # Not an error: a file may be smaller than the pool for a while,
            # and SIGHUP brings this shard's accounts when they come.
            self.warnings.append(
                f"Shard {shard}: none of the {len(accounts):,} accounts of {path} "
                "is in this shard; waiting for SIGHUP"
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
        token: Secret | None = None
        if self["token-file"]:
            token = self._readTokenFile(self["token-file"])
        if not self["login"]:
            raise ConfigurationError(
                "--login is required (your Yandex login), or --accounts FILE"
            )
        if token is None:
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

    def _readTokenFile(self, path: str) -> Secret:
        """
        Read --token-file; its login (a JSON file's) is the default --login,
        and a different --login is a mistake, not a choice.
        """
        from yadiskpush.oauth.tokenfile import readTokenFile

        self.tokenFile, self.warnings = readTokenFile(path)
        fileLogin = self.tokenFile.login
        if fileLogin:
            if not self["login"]:
                self["login"] = fileLogin
            elif self["login"] != fileLogin:
                raise ConfigurationError(
                    f"--login {self['login']} differs from the login {fileLogin} "
                    f"of the token file {path}: drop --login, or give the token "
                    f"file of {self['login']}"
                )
        return self.tokenFile.accessToken


def logLevelOf(options: Options) -> str:
    """The level the log runs at: ``--log-traffic`` needs debug."""
    return "debug" if options["log-traffic"] else options["log-level"]


def buildSinks(options: Options, reactor: Any) -> list[Any]:
    """
    The sinks the options ask for, and the log line of each change.

    The log line (``Notification.summary()``) is there whatever else is
    asked for: it is what tells a person reading the log that something
    changed. Below the level it would be dropped, so at ``--log-level
    warn`` or above there is no such sink and a push costs nothing for it.
    It never reaches stdout under ``--json-out -``: that sink keeps stdout
    for itself and points the process's stdout at stderr.
    """
    from yadiskpush.delivery.sinks import ExecSink, JSONLinesSink, LogSink

    sinks: list[Any] = []
    if options["json-out"]:
        sinks.append(JSONLinesSink(options["json-out"]))
    if options["exec"]:
        from yadiskpush.delivery.journal import JOURNAL_NAME

        execSink = ExecSink(
            options["exec"],
            options["exec-timeout"],
            reactor=reactor,
            journal=_journalOf(options, reactor, JOURNAL_NAME),
            maxJobs=options["exec-jobs"],
            debounce=options["exec-debounce"],
            maxDelay=options["exec-max-delay"],
        )
        sinks.append(execSink)
    if options["redis"]:
        sinks.append(buildRedisSink(options, reactor))
    if options["webhook"]:
        sinks.append(buildWebhookSink(options, reactor))
    if LOG_LEVELS.index(logLevelOf(options)) <= LOG_LEVELS.index("info"):
        sinks.append(LogSink())
    return sinks


def _journalOf(options: Options, reactor: Any, name: str) -> Any:
    """
    The journal ``name`` in the state directory; in memory for the demo,
    whose pushes must never reach the outputs of a later real run.
    """
    from yadiskpush.delivery.journal import Journal
    from yadiskpush.statedir import resolveStateDir

    if options["demo"]:
        return Journal(None, reactor)
    stateDir = resolveStateDir(options["state-dir"], options.environ)
    return Journal(stateDir / name, reactor)


def buildRedisSink(options: Options, reactor: Any) -> Any:
    """The --redis sink, on the address checked when the options were parsed."""
    from yadiskpush.delivery.sinks.redisstream import RedisStreamSink

    return RedisStreamSink(
        options.redisAddress,
        reactor,
        stream=options["redis-stream"],
        maxlen=options["redis-maxlen"],
        passwordFile=options["redis-password-file"],
        caFile=options["redis-ca-file"],
    )


def buildWebhookSink(options: Options, reactor: Any) -> Any:
    """
    The --webhook sink, verified with ``--webhook-ca-file`` if given. Else
    ``--ca-file`` verifies it only when it is on this machine (the local
    stand-ins' CA); any other endpoint is verified with the system's CAs, as
    the OAuth server is.
    """
    from yadiskpush.delivery.sinks.webhook import (
        WEBHOOK_JOURNAL_NAME,
        WebhookSink,
        handoffTimeoutFor,
    )
    from yadiskpush.oauth.refresh import caFileForOAuth

    assert options.webhookSecret is not None
    return WebhookSink(
        options["webhook"],
        options.webhookSecret,
        reactor,
        _journalOf(options, reactor, WEBHOOK_JOURNAL_NAME),
        timeout=options["webhook-timeout"],
        handoffTimeout=handoffTimeoutFor(options["delivery-timeout"]),
        concurrency=options["webhook-concurrency"],
        caFile=options["webhook-ca-file"]
        or caFileForOAuth(options["webhook"], options["ca-file"]),
    )


def buildTokenRefresher(options: Options, reactor: Any) -> TokenRefresher | None:
    """
    The refresher of a JSON --token-file (``None`` for a plain token, which
    cannot be refreshed, and for --accounts).

    ``--ca-file`` is passed on, but it verifies the OAuth server only when
    the file's ``oauth_url`` is a loopback one (the local stand-in, whose
    certificate the local CA signs); Yandex's public OAuth server is always
    verified with the system's roots, since a CA file for the push server
    would not hold its CA (see
    :func:`~yadiskpush.oauth.refresh.caFileForOAuth`).
    """
    from yadiskpush.logs import Logger
    from yadiskpush.oauth.refresh import TokenRefresher
    from yadiskpush.oauth.tokenfile import TokenFile

    settings, tokenFile = options.settings, options.tokenFile
    if settings is None or settings.tokenFile is None or tokenFile is None:
        return None
    if tokenFile == TokenFile(accessToken=tokenFile.accessToken):
        return None
    return TokenRefresher(
        settings.tokenFile,
        reactor,
        caFile=options["ca-file"],
        log=Logger(namespace=f"yadiskpush.account.{settings.login}"),
    )


def makeService(options: Options) -> service.IService:
    """Assemble the services for ``twistd yadiskpush``; nothing fails here."""
    from twisted.internet import reactor
    from twisted.logger import Logger

    from yadiskpush.application import ExitStatus, PushApplication
    from yadiskpush.fleet import PushFleet
    from yadiskpush.logs import setLogLevel
    from yadiskpush.systemd import SystemdNotifier

    if options["demo"]:
        from yadiskpush.demo import DemoService

        return DemoService(options, reactor)

    setLogLevel(logLevelOf(options))
    log = Logger(namespace="yadiskpush")
    for warning in options.warnings:
        log.warn("{warning}", warning=warning)
    fleet = PushFleet(
        reactor, maxHandshakes=options["max-handshakes"], **options.connectionSettings()
    )
    settings = options.settings
    if settings is not None:
        fleet.add(
            settings.login,
            settings.token,
            tokenFile=settings.tokenFile,
            tokenRefresher=buildTokenRefresher(options, reactor),
        )
    else:
        fleet.apply(options.accounts)
    exitStatus = ExitStatus()
    exitStatus.register()
    sinks = buildSinks(options, reactor)
    onFirstSubscription = None
    if options["exec-on-start"]:
        from yadiskpush.delivery.sinks import ExecSink

        [execSink] = [s for s in sinks if isinstance(s, ExecSink)]
        onFirstSubscription = execSink.runOnStart
    metrics = None
    if options["metrics"]:
        from yadiskpush.metrics import FleetMetrics

        metrics = FleetMetrics(fleet, reactor)
        sinks = [metrics.instrument(sink) for sink in sinks]
    application = PushApplication(
        fleet,
        sinks,
        reactor=reactor,
        exitStatus=exitStatus,
        accountsFile=options["accounts"],
        onFirstSubscription=onFirstSubscription,
        shard=options["shard"],
        notifier=SystemdNotifier.fromEnvironment(options.environ, reactor),
    )
    if metrics is None:
        return application
    return withMetricsEndpoint(
        application, options["metrics"], metrics, exitStatus, reactor
    )


def withMetricsEndpoint(
    application: service.IService,
    description: str,
    metrics: Any,
    exitStatus: Any,
    reactor: Any,
) -> service.IService:
    """
    ``application`` beside the ``--metrics`` endpoint, started before it and
    stopped after it. An endpoint that cannot listen (the port in use) has
    logged its one line; the process then exits 78, as for any other
    configuration that cannot work.
    """
    from yadiskpush.application import EXIT_CONFIG
    from yadiskpush.errors import ServiceStopped
    from yadiskpush.logs import Logger
    from yadiskpush.metrics import MetricsListenError, MetricsService

    top = service.MultiService()
    served = MetricsService(description, metrics, metrics.readiness, reactor)
    served.setServiceParent(top)
    application.setServiceParent(top)

    def cannotServe(reason: Any) -> None:
        if reason.check(MetricsListenError):
            exitStatus.code = EXIT_CONFIG
            log = Logger(namespace="yadiskpush")
            log.error(
                "Exiting with status 78 (EX_CONFIG): {problem}",
                problem=str(reason.value),
            )
            # Listening fails at once, before the reactor runs, for a port
            # in use: stop it as soon as it does.
            if reactor.running:
                reactor.stop()
            else:
                reactor.callWhenRunning(reactor.stop)
            return None
        reason.trap(ServiceStopped)
        return None

    served.whenListening().addErrback(cannotServe)
    return top
