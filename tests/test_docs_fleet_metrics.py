"""
The alerting rules of docs/fleet-metrics.rst: each is a well-formed
Prometheus rule, and every yadiskpush metric its expression uses is in a
real scrape of our endpoint (a renamed metric breaks this test, not the
alerts silently).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import treq
import yaml
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from yadiskpush.fleet import PushFleet
from yadiskpush.metrics import FleetMetrics, listenMetrics

DOCS = Path(__file__).resolve().parent.parent / "docs"
RULES = DOCS / "examples" / "fleet" / "alerts.yml"
METRIC_NAME = re.compile(r"\byadiskpush_[a-z_]+")


class QueuedSink:
    """A sink with a queue, so that every per-sink series is in the scrape."""

    queueDepth = 0

    def deliver(self, notification: object) -> None:
        return None

    def close(self) -> defer.Deferred[None]:
        return defer.succeed(None)


def rules() -> list[dict[str, Any]]:
    [group] = yaml.safe_load(RULES.read_text())["groups"]
    return list(group["rules"])


class AlertRulesTests(TestCase):
    @defer.inlineCallbacks
    def scrapedNames(self) -> Any:
        """The sample names of a real scrape of /metrics over loopback HTTP."""
        metrics = FleetMetrics(PushFleet(reactor), reactor)
        metrics.instrument(QueuedSink(), "webhook")
        port = yield listenMetrics(
            "tcp:0:interface=127.0.0.1", metrics, metrics.readiness, reactor
        )
        self.addCleanup(port.stopListening)
        response = yield treq.get(
            f"http://127.0.0.1:{port.getHost().port}/metrics", persistent=False
        )
        text = yield treq.text_content(response)
        return {
            sample.name
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    @defer.inlineCallbacks
    def test_everyMetricExists(self) -> None:
        """Each yadiskpush_ name in an expression is a series our endpoint serves."""
        scraped = yield self.scrapedNames()
        used = set()
        for rule in rules():
            names = set(METRIC_NAME.findall(rule["expr"]))
            self.assertTrue(names, f"{rule['alert']} uses no yadiskpush metric")
            used |= names
        self.assertEqual(used - scraped, set())
        # And the test can tell: a misspelled name is not in the scrape.
        self.assertNotIn("yadiskpush_pushes_acknowledged_total", scraped)

    def test_rulesAreWellFormed(self) -> None:
        """Every rule has a unique alert name, an expression, a severity, a summary."""
        seen = set()
        for rule in rules():
            self.assertNotIn(rule["alert"], seen)
            seen.add(rule["alert"])
            self.assertLessEqual(
                set(rule), {"alert", "expr", "for", "labels", "annotations"}
            )
            self.assertIn(rule["labels"]["severity"], ("info", "warning", "critical"))
            self.assertTrue(rule["annotations"]["summary"])
            self.assertRegex(rule.get("for", "1m"), r"^\d+[smh]$")

    def test_documented(self) -> None:
        """The page includes the rules file and lists every metric it uses."""
        page = (DOCS / "fleet-metrics.rst").read_text()
        self.assertIn(".. literalinclude:: examples/fleet/alerts.yml", page)
        for rule in rules():
            for name in METRIC_NAME.findall(rule["expr"]):
                family = re.sub(r"_(total|bucket|count|sum)$", "", name)
                self.assertIn(f"``{family}", page)
