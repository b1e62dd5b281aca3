"""
The ``yadiskpush`` console script: what a person runs once, by hand.

``twistd yadiskpush`` stays the daemon; this script holds the one-off
commands, each a subcommand (today ``yadiskpush token`` and ``yadiskpush
token refresh``). It runs the reactor with ``task.react`` and exits with a
``sysexits.h`` code: 0 done, 64 a usage error, 69 a service refused or could
not be reached, 75 a temporary failure (try again), 77 access denied, 78 a
configuration error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer, task

from yadiskpush import __version__

EX_OK = 0
EX_USAGE = 64
EX_UNAVAILABLE = 69
EX_TEMPFAIL = 75
EX_NOPERM = 77
EX_CONFIG = 78


def versions() -> str:
    """yadiskpush's version and those of the libraries it is built on."""
    import twisted

    try:
        from importlib.metadata import version

        wokkelVersion = version("wokkel")
    except Exception:
        wokkelVersion = "unknown"
    return (
        f"yadiskpush {__version__} (Twisted {twisted.__version__}, "
        f"wokkel {wokkelVersion})"
    )


class _Parser(argparse.ArgumentParser):
    """argparse, exiting with EX_USAGE (64) instead of 2 on a usage error."""

    def error(self, message: str) -> Any:
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def buildParser() -> argparse.ArgumentParser:
    """The parser with every subcommand."""
    from yadiskpush.cli import token

    parser = _Parser(
        prog="yadiskpush",
        description=(
            "One-off commands for yadiskpush; the daemon is twistd yadiskpush."
        ),
    )
    parser.add_argument("--version", action="version", version=versions())
    subcommands = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=_Parser
    )
    token.addParser(subcommands)
    return parser


def run(reactor: Any, argv: Sequence[str]) -> defer.Deferred[None]:
    """Parse ``argv`` and run the subcommand; the Deferred fires when done."""
    parser = buildParser()
    arguments = parser.parse_args(list(argv))
    if arguments.command is None:
        parser.print_help(sys.stderr)
        raise SystemExit(EX_USAGE)
    return defer.ensureDeferred(arguments.run(reactor, arguments, parser))


def main(argv: Sequence[str] | None = None) -> None:
    """The console script's entry point."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    try:
        task.react(run, (arguments,))
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
