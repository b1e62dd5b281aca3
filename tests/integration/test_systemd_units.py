"""
The systemd units shipped under ``docs/systemd/``: what they must say, that
``systemd-analyze verify`` accepts them (and ``security`` rates them OK),
that their command lines are options ``twistd yadiskpush`` accepts, and why
they leave ``MemoryDenyWriteExecute=`` off (pyOpenSSL's callbacks need
writable and executable memory).

``verify`` checks that ``ExecStart=``'s program exists, and no machine has
``/opt/yadiskpush``: each unit is checked as a copy in which only that path
is replaced by this virtualenv's ``twistd``; everything else is verified as
shipped. Without ``systemd-analyze`` those tests skip, unless
``YADISKPUSH_REQUIRE_SYSTEMD=1`` (set by CI) makes them fail instead.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Generator
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase

from tests.integration.test_plugin import REPOSITORY, TWISTD, TwistdTestCase
from yadiskpush.cli.options import Options

Steps = Generator[defer.Deferred[Any], Any, None]

UNITS = REPOSITORY / "docs" / "systemd"
SYSTEM_UNIT = UNITS / "yadiskpush.service"
TEMPLATE_UNIT = UNITS / "yadiskpush@.service"
SHARD_UNIT = UNITS / "yadiskpush-shard@.service"
USER_UNIT = UNITS / "user" / "yadiskpush.service"

#: The venv path the units use in ExecStart=, per unit.
SHIPPED_TWISTD = {
    SYSTEM_UNIT: "/opt/yadiskpush/bin/twistd",
    TEMPLATE_UNIT: "/opt/yadiskpush/bin/twistd",
    SHARD_UNIT: "/opt/yadiskpush/bin/twistd",
    USER_UNIT: "%h/.local/share/yadiskpush/venv/bin/twistd",
}

#: "systemd-analyze security" exposure, in tenths, above which a unit fails
#: (systemd calls up to 2.0 "OK").
EXPOSURE_THRESHOLD = 20


def settings(unit: Path) -> list[tuple[str, str]]:
    """The unit's ``Key=value`` lines, in order (keys may repeat)."""
    pairs = []
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            pairs.append((key, value))
    return pairs


def value(unit: Path, key: str) -> str:
    [found] = [v for k, v in settings(unit) if k == key]
    return found


def systemdAnalyze() -> str | None:
    return shutil.which("systemd-analyze")


class UnitContentTests(SynchronousTestCase):
    """What every unit must say, whether or not systemd is installed."""

    def test_everyUnitIsNotifyWithWatchdog(self) -> None:
        """Type=notify, main process only, a watchdog, restarts on failure
        but not after exit 78, SIGHUP on reload."""
        for unit in SHIPPED_TWISTD:
            pairs = dict(settings(unit))
            with self.subTest(unit=unit.name):
                self.assertEqual(pairs["Type"], "notify")
                self.assertEqual(pairs["NotifyAccess"], "main")
                self.assertGreater(int(pairs["WatchdogSec"]), 0)
                self.assertEqual(pairs["Restart"], "on-failure")
                self.assertEqual(pairs["RestartPreventExitStatus"], "78")
                self.assertEqual(pairs["ExecReload"], "/bin/kill -HUP $MAINPID")
                self.assertIn("StateDirectory", pairs)

    def test_systemUnitsAreHardened(self) -> None:
        """The system units run as a dynamic user, with credentials, and
        the hardening the documentation explains."""
        expected = {
            "DynamicUser": "yes",
            "ProtectSystem": "strict",
            "ProtectHome": "yes",
            "PrivateTmp": "yes",
            "NoNewPrivileges": "yes",
            "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
            "CapabilityBoundingSet": "",
            # Not yes: see MemoryDenyWriteExecuteTests.
            "MemoryDenyWriteExecute": "no",
            "LockPersonality": "yes",
        }
        for unit in (SYSTEM_UNIT, TEMPLATE_UNIT, SHARD_UNIT):
            pairs = settings(unit)
            with self.subTest(unit=unit.name):
                for key, wanted in expected.items():
                    self.assertIn((key, wanted), pairs)
                self.assertIn(("SystemCallFilter", "@system-service"), pairs)
                self.assertTrue(any(k == "LoadCredential" for k, _ in pairs))

    def test_templateCredentialPerLogin(self) -> None:
        """The template loads the token of its instance's login."""
        self.assertEqual(
            value(TEMPLATE_UNIT, "LoadCredential"),
            "token-file:/etc/yadiskpush/%i.json",
        )
        self.assertEqual(value(TEMPLATE_UNIT, "StateDirectory"), "yadiskpush/%i")


class UnitCommandLineTests(SynchronousTestCase):
    """The units' ExecStart= arguments are what twistd yadiskpush accepts."""

    def setUp(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="yadiskpush-units-"))
        self.addCleanup(shutil.rmtree, self.directory, True)

    def pluginArguments(self, unit: Path, specifiers: dict[str, str]) -> list[str]:
        """ExecStart='s arguments after "yadiskpush", specifiers resolved."""
        line = value(unit, "ExecStart")
        for specifier, resolved in specifiers.items():
            line = line.replace(specifier, resolved)
        words = shlex.split(line)
        program = SHIPPED_TWISTD[unit]
        for specifier, resolved in specifiers.items():
            program = program.replace(specifier, resolved)
        self.assertEqual(words[0], program)
        self.assertEqual(words[1:4], ["--nodaemon", "--pidfile=", "--logfile=-"])
        self.assertEqual(words[4], "yadiskpush")
        return words[5:]

    def secretFile(self, path: Path, text: str) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o400)
        return path

    def parse(self, arguments: list[str], **environ: str) -> Options:
        options = Options()
        options.environ = dict(environ)
        options.parseOptions(arguments)
        return options

    def test_systemUnitReadsTheAccountsCredential(self) -> None:
        """The system unit gives no account option: the accounts credential
        is used."""
        credentials = self.directory / "credentials"
        accounts = self.secretFile(credentials / "accounts", "alice:y0_a\nbob:y0_b\n")
        options = self.parse(
            self.pluginArguments(SYSTEM_UNIT, {}),
            CREDENTIALS_DIRECTORY=str(credentials),
            STATE_DIRECTORY=str(self.directory / "state"),
        )
        self.assertEqual(options["accounts"], str(accounts))
        self.assertEqual(list(options.accounts), ["alice", "bob"])

    def test_templateReadsItsStateCopy(self) -> None:
        """The template reads the token copy in its own state directory."""
        state = self.directory / "state"
        self.secretFile(state / "yadiskpush" / "alice" / "token.json", "y0_a\n")
        options = self.parse(
            self.pluginArguments(TEMPLATE_UNIT, {"%i": "alice", "%S": str(state)}),
            CREDENTIALS_DIRECTORY=str(self.directory / "credentials"),
        )
        assert options.settings is not None
        self.assertEqual(options.settings.login, "alice")
        self.assertEqual(options.settings.token.reveal(), "y0_a")

    def test_shardTemplateKeepsItsShard(self) -> None:
        """
        yadiskpush-shard@1-2 reads the accounts credential and keeps shard
        1/2 of it (%I unescapes "1-2" to "1/2"); its state directory is its
        own.
        """
        from yadiskpush.shards import Shard

        credentials = self.directory / "credentials"
        logins = [f"user{n}" for n in range(20)]
        self.secretFile(
            credentials / "accounts", "".join(f"{x}:y0_{x}\n" for x in logins)
        )
        options = self.parse(
            self.pluginArguments(SHARD_UNIT, {"%I": "1/2"}),
            CREDENTIALS_DIRECTORY=str(credentials),
        )
        self.assertEqual(options["shard"], Shard(1, 2))
        self.assertEqual(
            list(options.accounts), [x for x in logins if Shard(1, 2).holds(x)]
        )
        self.assertEqual(value(SHARD_UNIT, "StateDirectory"), "yadiskpush/shard-%i")

    def test_userUnitReadsTheHomeTokenFile(self) -> None:
        """The user unit reads ~/.config/yadiskpush/token.json, whose JSON
        names the login."""
        home = self.directory / "home"
        self.secretFile(
            home / ".config" / "yadiskpush" / "token.json",
            '{"access_token": "y0_u", "login": "alice"}\n',
        )
        options = self.parse(self.pluginArguments(USER_UNIT, {"%h": str(home)}))
        assert options.settings is not None
        self.assertEqual(options.settings.login, "alice")
        self.assertEqual(options.settings.token.reveal(), "y0_u")


class SystemdAnalyzeTests(SynchronousTestCase):
    """systemd-analyze verify and security on copies of the shipped units."""

    def setUp(self) -> None:
        tool = systemdAnalyze()
        if tool is None:
            if os.environ.get("YADISKPUSH_REQUIRE_SYSTEMD") == "1":
                self.fail("systemd-analyze is missing (YADISKPUSH_REQUIRE_SYSTEMD=1)")
            raise self.skipTest("systemd-analyze is not installed")
        self.tool = tool
        if not TWISTD.exists():
            self.skipTest(f"no twistd next to {sys.executable}")
        self.directory = Path(tempfile.mkdtemp(prefix="yadiskpush-units-"))
        self.addCleanup(shutil.rmtree, self.directory, True)
        runtime = self.directory / "runtime"
        runtime.mkdir(mode=0o700)
        self.environ = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            # systemd-analyze --user looks for the user's runtime directory.
            "XDG_RUNTIME_DIR": str(runtime),
            "SYSTEMD_LOG_COLOR": "0",
        }

    def copyUnit(self, unit: Path) -> Path:
        """The unit with only its ExecStart= program replaced by ours."""
        text = unit.read_text()
        shipped = SHIPPED_TWISTD[unit]
        self.assertEqual(text.count(shipped), 1, f"{unit.name}: {shipped}")
        folder = self.directory / unit.parent.name
        folder.mkdir(exist_ok=True)
        copy = folder / unit.name
        copy.write_text(text.replace(shipped, str(TWISTD)))
        return copy

    def analyze(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.tool, *arguments],
            capture_output=True,
            text=True,
            env=self.environ,
            cwd=self.directory,
            timeout=120,
        )

    def assertVerified(self, *arguments: str) -> None:
        result = self.analyze("verify", "--man=no", *arguments)
        output = result.stdout + result.stderr
        self.assertEqual((result.returncode, output), (0, ""), arguments)

    def test_systemUnit(self) -> None:
        """The system unit verifies without a warning."""
        self.assertVerified(str(self.copyUnit(SYSTEM_UNIT)))

    def test_templateInstance(self) -> None:
        """An instance of the template (one login) verifies without a warning."""
        copy = self.copyUnit(TEMPLATE_UNIT)
        self.assertVerified(str(copy.with_name("yadiskpush@alice.service")))

    def test_shardInstance(self) -> None:
        """An instance of the shard template (shard 0 of 4) verifies."""
        copy = self.copyUnit(SHARD_UNIT)
        self.assertVerified(str(copy.with_name("yadiskpush-shard@0-4.service")))

    def test_userUnit(self) -> None:
        """The user unit verifies for systemctl --user without a warning."""
        result = self.analyze(
            "--user", "verify", "--man=no", str(self.copyUnit(USER_UNIT))
        )
        self.assertEqual(
            (result.returncode, result.stdout + result.stderr), (0, ""), "--user"
        )

    def test_verifyCatchesMistakes(self) -> None:
        """The check can fail: an unknown key is reported."""
        copy = self.copyUnit(SYSTEM_UNIT)
        copy.write_text(copy.read_text().replace("[Service]", "[Service]\nTypo=1"))
        result = self.analyze("verify", "--man=no", str(copy))
        self.assertIn("Unknown key 'Typo'", result.stdout + result.stderr)

    def test_securityExposure(self) -> None:
        """systemd-analyze security rates the system units OK (2.0 or less)."""
        instances = {
            TEMPLATE_UNIT: "yadiskpush@alice.service",
            SHARD_UNIT: "yadiskpush-shard@0-4.service",
        }
        for unit in (SYSTEM_UNIT, TEMPLATE_UNIT, SHARD_UNIT):
            copy = self.copyUnit(unit)
            if unit in instances:
                copy = copy.with_name(instances[unit])
            result = self.analyze(
                "security",
                "--offline=yes",
                "--man=no",
                f"--threshold={EXPOSURE_THRESHOLD}",
                str(copy),
            )
            self.assertEqual(result.returncode, 0, result.stdout + result.stderr)


#: Run twistd with the kernel's "no memory both writable and executable"
#: rule, what MemoryDenyWriteExecute=yes applies (prctl PR_SET_MDWE, 65;
#: PR_MDWE_REFUSE_EXEC_GAIN, 1; Linux 6.3 and later).
MDWE_PROGRAM = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:
    print("MDWE unavailable", flush=True)
    sys.exit(3)
print("MDWE on", flush=True)
from twisted.scripts.twistd import run
sys.argv = ["twistd", *sys.argv[1:]]
run()
"""


class MemoryDenyWriteExecuteTests(TwistdTestCase):
    @defer.inlineCallbacks
    def test_tlsNeedsWritableExecutableMemory(self) -> Steps:
        """
        Under the rule MemoryDenyWriteExecute=yes sets, the demo cannot make
        its TLS context: pyOpenSSL's callbacks (cffi's ``ffi.callback``)
        need memory both writable and executable. This is why the units
        leave it off; when this test fails, the libraries no longer need it
        and the units should set it.
        """
        from tests.integration.test_plugin import TWISTD_ARGS, TwistdProcess

        process = TwistdProcess()
        transport = reactor.spawnProcess(
            process,
            sys.executable,
            [sys.executable, "-c", MDWE_PROGRAM, *TWISTD_ARGS, "--demo"],
            env=self.environment,
            path=self.directory,
        )
        self.addCleanup(self.reap, process, transport)
        line = yield process.whenLine("MDWE ")
        if line == "MDWE unavailable":
            raise self.skipTest("no PR_SET_MDWE in this kernel (Linux 6.3 or later)")
        yield process.whenLine("Cannot allocate write+execute memory")
        # The demo stops by itself, with EX_SOFTWARE: nothing to fix in its
        # options, and nothing to show.
        yield process.ended
        self.assertEqual(process.exitCode, 70, process.text())
        self.assertIsNotNone(process.lineWith("The demo failed; stopping"))
        self.assertIsNone(process.lineWith("Subscribed to Disk pushes"))
