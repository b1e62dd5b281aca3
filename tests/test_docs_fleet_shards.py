"""
The shard examples of docs/fleet-shards.rst: the StatefulSet manifest's
command line is one ``twistd yadiskpush`` accepts, for each pod, and agrees
with the manifest's own numbers (replicas, ports, mounts); the resize preview
prints what the hashing does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import yaml
from twisted.trial.unittest import SynchronousTestCase

from yadiskpush.cli.options import Options
from yadiskpush.shards import Shard, moved, shardOf

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples" / "fleet"


def kubernetesExpand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(NAME)`` expansion in command and args."""
    for name, value in env.items():
        text = text.replace(f"$({name})", value)
    return text


class StatefulSetTests(SynchronousTestCase):
    def setUp(self) -> None:
        documents = list(
            yaml.safe_load_all((EXAMPLES / "statefulset.yaml").read_text())
        )
        [self.statefulSet] = [d for d in documents if d["kind"] == "StatefulSet"]
        [self.service] = [d for d in documents if d["kind"] == "Service"]
        spec = self.statefulSet["spec"]
        [self.container] = spec["template"]["spec"]["containers"]
        self.env = {e["name"]: e for e in self.container["env"]}

    def podArguments(self, ordinal: int, root: Path) -> list[str]:
        """The pod's plugin arguments, with the mounted files under ``root``."""
        env = {"SHARD": str(ordinal), "SHARDS": self.env["SHARDS"]["value"]}
        mounts = {m["name"]: m["mountPath"] for m in self.container["volumeMounts"]}
        arguments = []
        for argument in self.container["args"]:
            argument = kubernetesExpand(argument, env)
            for path in mounts.values():
                argument = argument.replace(path, str(root) + path)
            arguments.append(argument)
        return arguments

    def test_shardsEqualReplicas(self) -> None:
        """SHARDS is the replica count, and SHARD the pod's ordinal."""
        self.assertEqual(
            int(self.env["SHARDS"]["value"]), self.statefulSet["spec"]["replicas"]
        )
        self.assertEqual(
            self.env["SHARD"]["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.labels['apps.kubernetes.io/pod-index']",
        )
        self.assertEqual(
            self.container["command"],
            ["twistd", "--nodaemon", "--pidfile=", "--logfile=-", "yadiskpush"],
        )

    def test_everyPodCommandLineIsAccepted(self) -> None:
        """
        For each ordinal, the arguments parse, the pod keeps shard K of N,
        and the pods together hold every account of the Secret once.
        """
        root = Path(self.mktemp())
        accountsDir = root / "etc/yadiskpush/accounts"
        accountsDir.mkdir(parents=True)
        logins = [f"user{n}" for n in range(60)]
        accounts = accountsDir / "accounts"
        accounts.write_text("".join(f"{x}:y0_{x}\n" for x in logins))
        accounts.chmod(self.secretMode("accounts"))
        (root / "etc/yadiskpush/redis").mkdir(parents=True)
        password = root / "etc/yadiskpush/redis/password"
        password.write_text("redis-password\n")
        password.chmod(self.secretMode("redis-password"))
        replicas = self.statefulSet["spec"]["replicas"]
        held: Counter[str] = Counter()
        for ordinal in range(replicas):
            options = Options()
            options.environ = {}
            options.parseOptions(self.podArguments(ordinal, root))
            self.assertEqual(options["shard"], Shard(ordinal, replicas))
            held.update(options.accounts.keys())
        self.assertEqual(held, Counter(logins))

    def secretMode(self, volume: str) -> int:
        [spec] = [
            v
            for v in self.statefulSet["spec"]["template"]["spec"]["volumes"]
            if v["name"] == volume
        ]
        return int(spec["secret"]["defaultMode"])

    def test_secretsAreOwnerOnly(self) -> None:
        """The accounts Secret is mounted 0400: yadiskpush refuses wider."""
        self.assertEqual(self.secretMode("accounts"), 0o400)
        self.assertEqual(self.secretMode("redis-password"), 0o400)

    def test_probesUseTheMetricsEndpoint(self) -> None:
        """/livez and /readyz are probed on the port --metrics listens on."""
        [port] = self.container["ports"]
        self.assertIn(f"--metrics=tcp:{port['containerPort']}", self.container["args"])
        self.assertEqual(self.container["livenessProbe"]["httpGet"]["path"], "/livez")
        self.assertEqual(self.container["readinessProbe"]["httpGet"]["path"], "/readyz")
        for probe in ("livenessProbe", "readinessProbe"):
            self.assertEqual(self.container[probe]["httpGet"]["port"], port["name"])
        self.assertEqual(
            self.service["spec"]["ports"][0]["port"], port["containerPort"]
        )

    def test_stateIsPerPod(self) -> None:
        """The journals live on the pod's own volume claim."""
        claims = [
            c["metadata"]["name"]
            for c in self.statefulSet["spec"]["volumeClaimTemplates"]
        ]
        self.assertEqual(claims, ["state"])
        mounts = {m["name"]: m["mountPath"] for m in self.container["volumeMounts"]}
        self.assertIn(f"--state-dir={mounts['state']}", self.container["args"])


class ResizePreviewTests(SynchronousTestCase):
    def test_previewMatchesTheHashing(self) -> None:
        """The preview prints each shard's size and the share that moves."""
        path = Path(self.mktemp())
        logins = [f"login{n}" for n in range(1000)]
        path.write_text("".join(f"{x}:y0_secret_{x}\n" for x in logins))
        path.chmod(0o600)
        result = subprocess.run(
            [sys.executable, str(EXAMPLES / "resize_preview.py"), str(path), "4", "5"],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(EXAMPLES.parents[2])},
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = result.stdout.splitlines()
        sizes = Counter(shardOf(x, 5) for x in logins)
        self.assertEqual(
            lines[1], "5 shards: " + ", ".join(f"{k}: {sizes[k]:,}" for k in range(5))
        )
        count = len(moved(logins, 4, 5))
        self.assertEqual(
            lines[2], f"{count:,} of 1,000 accounts move ({count / 1000:.1%})"
        )
        self.assertNotIn("y0_secret", result.stdout + result.stderr)
