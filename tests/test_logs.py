"""Tests for yadiskpush.logs: one level filter for the package's log lines."""

from __future__ import annotations

from typing import Any

from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from yadiskpush.logs import Logger, setLogLevel


class LogLevelTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.addCleanup(setLogLevel, LogLevel.debug)
        self.log = Logger(namespace="yadiskpush.test")

    def formats(self) -> list[str]:
        return [
            e["log_format"]
            for e in self.events
            if e.get("log_namespace") == "yadiskpush.test"
        ]

    def test_everythingByDefault(self) -> None:
        """Without a level set, debug lines pass, as before the filter existed."""
        self.log.debug("d")
        self.assertEqual(self.formats(), ["d"])

    def test_levelAndUp(self) -> None:
        """Events below the level are dropped; the level and above pass."""
        setLogLevel("warn")
        for level in ("debug", "info", "warn", "error", "critical"):
            getattr(self.log, level)(level)
        self.assertEqual(self.formats(), ["warn", "error", "critical"])

    def test_ownObserverUnfiltered(self) -> None:
        """A logger given its own observer is not filtered."""
        seen: list[dict[str, Any]] = []
        setLogLevel("error")
        Logger(namespace="x", observer=seen.append).debug("kept")
        self.assertEqual([e["log_format"] for e in seen], ["kept"])

    def test_classAttributeLogger(self) -> None:
        """A class attribute logger (Twisted's descriptor) is filtered too."""

        class Thing:
            _log = Logger()

        setLogLevel("info")
        Thing()._log.debug("dropped")
        Thing()._log.info("kept")
        self.assertEqual(
            [e["log_format"] for e in self.events if "Thing" in e["log_namespace"]],
            ["kept"],
        )
