"""
The package as users get it: ``pip install .`` in a fresh virtualenv, then
``twistd yadiskpush --help``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from twisted.trial.unittest import TestCase

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, capture_output=True, text=True, timeout=600, env=env, check=False
    )


class PackagingTests(TestCase):
    timeout = 900

    def test_freshVirtualenvInstallAndHelp(self) -> None:
        """After a plain pip install, twistd lists the plugin and its options."""
        with tempfile.TemporaryDirectory() as tmp:
            venv = Path(tmp) / "venv"
            created = run(sys.executable, "-m", "venv", str(venv))
            self.assertEqual(created.returncode, 0, created.stderr)
            pip = run(
                str(venv / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                str(ROOT),
            )
            self.assertEqual(pip.returncode, 0, pip.stderr[-3000:])
            # Run from an empty directory so the source tree is not on the path.
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            twistd = str(venv / "bin" / "twistd")
            listing = subprocess.run(
                [twistd, "--help"], capture_output=True, text=True, cwd=tmp, env=env
            )
            self.assertIn("yadiskpush", listing.stdout)
            helpText = subprocess.run(
                [twistd, "yadiskpush", "--help"],
                capture_output=True,
                text=True,
                cwd=tmp,
                env=env,
            )
            self.assertEqual(helpText.returncode, 0, helpText.stderr)
            for option in (
                "--login",
                "--token-file",
                "--host",
                "--port",
                "--tls-port",
                "--domain",
                "--resource",
                "--ca-file",
                "--compress",
                "--demo",
            ):
                self.assertIn(
                    option + (" " if option in ("--compress", "--demo") else "="),
                    helpText.stdout,
                )
            site = next((venv / "lib").glob("python3*/site-packages"))
            plugins = site / "twisted" / "plugins"
            self.assertTrue((plugins / "yadiskpush.py").exists())

    def test_wheelContents(self) -> None:
        """The wheel ships the plugin module, and no twisted/__init__ or cache."""
        with tempfile.TemporaryDirectory() as tmp:
            built = run(
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--no-deps",
                "--disable-pip-version-check",
                "-w",
                tmp,
                str(ROOT),
            )
            self.assertEqual(built.returncode, 0, built.stderr[-3000:])
            [wheel] = Path(tmp).glob("yadiskpush-*.whl")
            names = zipfile.ZipFile(wheel).namelist()
        self.assertIn("twisted/plugins/yadiskpush.py", names)
        self.assertNotIn("twisted/__init__.py", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        self.assertFalse([n for n in names if "dropin.cache" in n])
        self.assertIn("yadiskpush/service.py", names)
        self.assertFalse([n for n in names if n.startswith("tests/")])
