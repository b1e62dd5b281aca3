"""
Tests for the command line a person meets: usage errors that name their
option, ``--help`` that says what each option takes, ``--version``, and the
log line of each change whatever else is asked for.
"""

from __future__ import annotations

import io
import os
from contextlib import redirect_stdout
from typing import Any

from twisted.internet import task
from twisted.python import usage
from twisted.python.util import padTo
from twisted.trial.unittest import SynchronousTestCase

from yadiskpush import __version__
from yadiskpush.cli import options as optionsModule
from yadiskpush.cli.options import Options, buildSinks
from yadiskpush.delivery.sinks import ExecSink, JSONLinesSink, LogSink

TOKEN = "AQAAAAA-secret-token"

#: For each of our coerce functions: values it must take (with what they
#: become) and values it must refuse. A coerce added to the options without
#: a row here still gets the generic checks below.
EXAMPLES: dict[Any, tuple[dict[str, Any], list[str]]] = {
    optionsModule._portCoerce: (
        {"1": 1, "5222": 5222, "65535": 65535},
        ["0", "65536", "-1", "abc", "1.5", ""],
    ),
    optionsModule._tlsPortCoerce: (
        {"0": 0, "443": 443, "65535": 65535},
        ["65536", "-1", "https", ""],
    ),
    optionsModule._positiveSeconds: (
        {"0.5": 0.5, "90": 90.0},
        ["0", "-1", "nan", "inf", "soon", ""],
    ),
    optionsModule._seconds: (
        {"0": 0.0, "1.5": 1.5},
        ["-1", "nan", "inf", "later", ""],
    ),
    optionsModule._positiveInteger: (
        {"1": 1, "50": 50},
        ["0", "-3", "2.5", "many", ""],
    ),
    optionsModule._stanzaSize: (
        {"4096": 4096, "1048576": 1048576},
        ["4095", "0", "1M", ""],
    ),
    optionsModule._logLevel: (
        {"debug": "debug", "INFO": "info", "warning": "warn", "critical": "critical"},
        ["chatty", "", "trace"],
    ),
}


def parameters() -> list[tuple[str, Any, Any, str]]:
    """(name, default, coerce, help) of every option that takes a value."""
    rows = []
    for row in Options.optParameters:
        name, _short, default, doc, coerce = padTo(5, row)
        rows.append((name, default, coerce, doc))
    return rows


def parse(*argv: str) -> Options:
    options = Options()
    options.environ = {"YADISKPUSH_TOKEN": TOKEN}
    options.parseOptions(list(argv))
    return options


class UsageErrorTests(SynchronousTestCase):
    """Every usage error is one line that names the option."""

    def usageError(self, *argv: str) -> str:
        with self.assertRaises(usage.UsageError) as caught:
            parse("--login", "t", *argv)
        message = str(caught.exception)
        self.assertNotIn("\n", message)
        self.assertNotIn(TOKEN, message)
        self.assertNotIn("Parameter type enforcement", message)
        self.assertNotIn("invalid literal", message)
        self.assertNotIn("could not convert", message)
        return message

    def test_portNotANumber(self) -> None:
        """--port abc: the option, the value and what a port is."""
        self.assertEqual(
            self.usageError("--port", "abc"),
            "--port: 'abc' is not a port number (1 to 65535)",
        )

    def test_portZero(self) -> None:
        """--port 0 means nothing for a client; --tls-port 0 turns off the
        fallback."""
        self.assertEqual(
            self.usageError("--port", "0"),
            "--port: '0' is not a port number (1 to 65535)",
        )
        self.assertEqual(parse("--login", "t", "--tls-port", "0")["tls-port"], 0)

    def test_everyRefusalNamesItsOption(self) -> None:
        """Each coerced option's refused values give an error naming it and
        the value."""
        for name, _default, coerce, _doc in parameters():
            if coerce not in EXAMPLES:
                continue
            for value in EXAMPLES[coerce][1]:
                message = self.usageError(f"--{name}={value}")
                self.assertTrue(message.startswith(f"--{name}"), message)
                if value:
                    self.assertIn(repr(value), message)

    def test_shortOptionNamedLong(self) -> None:
        """An error from a short option names the long one."""
        with self.assertRaises(usage.UsageError) as caught:
            parse("-l", "")
        self.assertEqual(
            str(caught.exception), "--login needs a value; see twistd yadiskpush --help"
        )

    def test_unknownOption(self) -> None:
        """getopt's words are kept, with a pointer to --help."""
        self.assertEqual(
            self.usageError("--foo"),
            "option --foo not recognized; see twistd yadiskpush --help",
        )

    def test_missingValue(self) -> None:
        """An option given last without its value."""
        self.assertEqual(
            self.usageError("--idle-timeout"),
            "--idle-timeout needs a value; see twistd yadiskpush --help",
        )

    def test_flagWithValue(self) -> None:
        self.assertEqual(
            self.usageError("--compress=yes"),
            "--compress takes no value; see twistd yadiskpush --help",
        )

    def test_ambiguousPrefix(self) -> None:
        """getopt takes unique prefixes; an ambiguous one lists the options."""
        self.assertEqual(
            self.usageError("--log=x"),
            "--log is short for more than one of --log-level, --log-traffic, --login",
        )

    def test_emptyText(self) -> None:
        """An empty text value is refused by name, not later in other words."""
        self.assertEqual(
            self.usageError("--host="),
            "--host needs a value; see twistd yadiskpush --help",
        )

    def test_foreignCoerceNamed(self) -> None:
        """A coerce that is not ours (int, or another option's function)
        still gets its option named, with its coerceDoc instead of Python's
        exception text."""

        def shade(value: str) -> int:
            return int(value)

        shade.coerceDoc = "A shade, 0 to 9."  # type: ignore[attr-defined]

        class More(Options):
            optParameters = [
                ["shade", None, 1, "Shade.", shade],
                ["count", None, 1, "Count.", int],
            ]

        for argv, expected in [
            (["--shade", "x"], "--shade: 'x' is not accepted (A shade, 0 to 9)"),
            (["--count", "x"], "--count: 'x' is not accepted"),
        ]:
            options = More()
            options.environ = {"YADISKPUSH_TOKEN": TOKEN}
            with self.assertRaises(usage.UsageError) as caught:
                options.parseOptions(["--login", "t", *argv])
            self.assertEqual(str(caught.exception), expected)


class HelpAgreesTests(SynchronousTestCase):
    """--help, the coerceDoc and the check say the same thing."""

    def test_everyCoerceHasADoc(self) -> None:
        """Every option with a coerce says in --help what it takes."""
        usageText = " ".join(Options().getUsage(width=10000).split())
        for name, _default, coerce, _doc in parameters():
            if coerce is None:
                continue
            doc = getattr(coerce, "coerceDoc", "")
            self.assertTrue(doc, f"--{name}'s coerce has no coerceDoc")
            line = next(
                (line for line in usageText.split("  ") if f"--{name}=" in line),
                None,
            )
            self.assertIn(doc, usageText, f"--{name}'s help lacks {doc!r}")
            self.assertIsNotNone(line)

    def test_defaultsAccepted(self) -> None:
        """Each default is a value its own coerce takes, unchanged."""
        for name, default, coerce, _doc in parameters():
            if coerce is None or default is None:
                continue
            self.assertEqual(coerce(str(default)), default, f"--{name}")

    def test_examplesAgreeWithTheDoc(self) -> None:
        """Accepted and refused values, per coerce, as the doc says."""
        used = {coerce for _n, _d, coerce, _h in parameters()}
        for coerce, (accepted, refused) in EXAMPLES.items():
            self.assertIn(coerce, used, f"{coerce.__name__} is used by no option")
            for value, expected in accepted.items():
                self.assertEqual(coerce(value), expected)
            for value in refused:
                with self.assertRaises(ValueError, msg=f"{coerce.__name__}({value!r})"):
                    coerce(value)

    def test_portDocsSayTheRange(self) -> None:
        """The port docs say the range the check enforces."""
        self.assertIn("1 to 65535", optionsModule._portCoerce.coerceDoc)
        self.assertIn("0 disables", optionsModule._tlsPortCoerce.coerceDoc)

    def test_logLevelDocumented(self) -> None:
        """--log-level is in --help, with its choices."""
        text = " ".join(Options().getUsage(width=10000).split())
        self.assertIn("--log-level=", text)
        self.assertIn("One of debug, info, warn, error, critical.", text)

    def test_logLevelInTheOptionsPage(self) -> None:
        """docs/options.rst documents --log-level and its choices."""
        page = os.path.join(os.path.dirname(__file__), "..", "docs", "options.rst")
        with open(page, encoding="utf-8") as f:
            text = f.read()
        self.assertIn("``--log-level``", text)
        for level in ("debug", "info", "warn"):
            self.assertIn(level, text)


class VersionTests(SynchronousTestCase):
    def test_version(self) -> None:
        """--version prints yadiskpush's, Twisted's and wokkel's versions,
        and exits 0."""
        from importlib.metadata import version

        from twisted import __version__ as twistedVersion

        out = io.StringIO()
        with redirect_stdout(out), self.assertRaises(SystemExit) as caught:
            Options().parseOptions(["--version"])
        self.assertEqual(caught.exception.code, 0)
        self.assertEqual(
            out.getvalue().splitlines(),
            [
                f"yadiskpush {__version__}",
                f"Twisted {twistedVersion}",
                f"wokkel {version('wokkel')}",
            ],
        )

    def test_versionInHelp(self) -> None:
        """--help says what --version shows."""
        # Whitespace normalized: the column width follows the longest option.
        helpText = " ".join(Options().getUsage().split())
        self.assertIn("yadiskpush, Twisted and wokkel", helpText)


class LogLineTests(SynchronousTestCase):
    """One log line per change, whatever other sink is given."""

    def sinks(self, *argv: str) -> list[Any]:
        options = Options()
        options.environ = {"YADISKPUSH_TOKEN": TOKEN}
        options.parseOptions(["--demo", *argv])
        sinks = buildSinks(options, task.Clock())
        for sink in sinks:
            self.addCleanup(sink.close)
        return sinks

    def kinds(self, *argv: str) -> list[type]:
        return [type(s) for s in self.sinks(*argv)]

    def test_alone(self) -> None:
        self.assertEqual(self.kinds(), [LogSink])

    def test_withJSONOut(self) -> None:
        path = self.mktemp()
        self.assertEqual(self.kinds("--json-out", path), [JSONLinesSink, LogSink])

    def test_withExec(self) -> None:
        self.assertEqual(self.kinds("--exec", "true"), [ExecSink, LogSink])

    def test_noneAboveInfo(self) -> None:
        """At warn and above the line would be dropped: no sink, no cost."""
        for level in ("warn", "error", "critical"):
            self.assertEqual(self.kinds("--log-level", level), [])
        self.assertEqual(self.kinds("--log-level", "debug"), [LogSink])

    def test_logTrafficLogs(self) -> None:
        """--log-traffic runs at debug, so the line is there."""
        self.assertEqual(self.kinds("--log-level", "error", "--log-traffic"), [LogSink])
