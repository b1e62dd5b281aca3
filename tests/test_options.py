"""Tests for yadiskpush.cli.options: every mistake is a one-line usage error."""

from __future__ import annotations

import os
from typing import Any

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from yadiskpush.cli.options import Options

TOKEN = "AQAAAAA-secret-token"


def parse(*argv: str, environ: dict[str, str] | None = None) -> Options:
    options = Options()
    options.environ = environ or {}
    options.parseOptions(list(argv))
    return options


class OptionsTests(SynchronousTestCase):
    def tokenFile(self, mode: int = 0o600) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(TOKEN + "\n")
        os.chmod(path, mode)
        return path

    def assertUsageError(self, fragment: str, *argv: str, **kw: object) -> None:
        with self.assertRaises(usage.UsageError) as caught:
            parse(*argv, **kw)  # type: ignore[arg-type]
        message = str(caught.exception)
        self.assertIn(fragment, message)
        self.assertNotIn("\n", message)
        self.assertNotIn(TOKEN, message)

    def test_defaults(self) -> None:
        """The defaults are the vendor's host, ports and domain."""
        settings = parse("--login", "test", "--token-file", self.tokenFile()).settings
        assert settings is not None
        self.assertEqual(
            (settings.host, settings.port, settings.tlsPort, settings.domain),
            ("push.xmpp.yandex.ru", 5222, 443, "ya.ru"),
        )
        self.assertEqual(settings.token.reveal(), TOKEN)
        self.assertTrue(settings.resource.startswith("yadiskpush-"))
        self.assertFalse(settings.compress)

    def test_everyOption(self) -> None:
        """Each option reaches the settings."""
        settings = parse(
            "--login=test",
            f"--token-file={self.tokenFile()}",
            "--host=example.net",
            "--port=15222",
            "--tls-port=0",
            "--domain=example.org",
            "--resource=laptop",
            "--compress",
        ).settings
        assert settings is not None
        self.assertEqual(
            (
                settings.host,
                settings.port,
                settings.tlsPort,
                settings.domain,
                settings.resource,
                settings.compress,
            ),
            ("example.net", 15222, 0, "example.org", "laptop", True),
        )

    def test_tokenFromEnvironment(self) -> None:
        """Without --token-file the token comes from YADISKPUSH_TOKEN."""
        settings = parse(
            "--login", "test", environ={"YADISKPUSH_TOKEN": TOKEN}
        ).settings
        assert settings is not None
        self.assertEqual(settings.token.reveal(), TOKEN)

    def test_missingLogin(self) -> None:
        """No --login is a usage error."""
        self.assertUsageError("--login", environ={"YADISKPUSH_TOKEN": TOKEN})

    def test_missingToken(self) -> None:
        """No token anywhere is a usage error naming both ways to give one."""
        self.assertUsageError("YADISKPUSH_TOKEN", "--login", "test")

    def test_unreadableTokenFile(self) -> None:
        """A token file that cannot be read is a usage error naming it."""
        self.assertUsageError(
            "/no/such/file", "--login", "t", "--token-file", "/no/such/file"
        )

    def test_badPort(self) -> None:
        """A port out of range is a usage error naming the option and value."""
        for argv in (["--port", "70000"], ["--port", "x"], ["--tls-port", "-1"]):
            self.assertUsageError(
                f"{argv[0]}: '{argv[1]}' is not a port number",
                "--login",
                "t",
                *argv,
                environ={"YADISKPUSH_TOKEN": TOKEN},
            )

    def test_portZeroRefused(self) -> None:
        """Port 0 is fine for --tls-port (no fallback) but not for --port."""
        self.assertUsageError(
            "--port: '0' is not a port number (1 to 65535)",
            "--login",
            "t",
            "--port",
            "0",
            environ={"YADISKPUSH_TOKEN": TOKEN},
        )

    def test_loginWithDomain(self) -> None:
        """A login given as an address is refused with a hint."""
        self.assertUsageError(
            "without a domain",
            "--login",
            "test@ya.ru",
            environ={"YADISKPUSH_TOKEN": TOKEN},
        )

    def test_worldReadableTokenFileWarns(self) -> None:
        """A token file readable by others is accepted with a warning."""
        options = parse("--login", "t", "--token-file", self.tokenFile(0o644))
        self.assertEqual(len(options.warnings), 1)

    def test_noTokenOption(self) -> None:
        """There is no option that takes the token itself."""
        with self.assertRaises(usage.UsageError):
            parse("--login", "t", "--token", TOKEN)


class LateCheckTests(SynchronousTestCase):
    def test_caFileWithoutCertificate(self) -> None:
        """A readable CA file with no certificate is a usage error, not later."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("not a certificate\n")
        with self.assertRaises(usage.UsageError) as caught:
            parse(
                "--login", "t", "--ca-file", path, environ={"YADISKPUSH_TOKEN": TOKEN}
            )
        self.assertIn("holds no PEM certificate", str(caught.exception))

    def test_blankExec(self) -> None:
        """A blank --exec command is a usage error."""
        with self.assertRaises(usage.UsageError) as caught:
            parse("--login", "t", "--exec", " ", environ={"YADISKPUSH_TOKEN": TOKEN})
        self.assertIn("--exec needs a command", str(caught.exception))

    def test_unwritableJSONOut(self) -> None:
        """A --json-out path that cannot be written is a usage error."""
        with self.assertRaises(usage.UsageError) as caught:
            parse(
                "--login",
                "t",
                "--json-out",
                "/nonexistent/dir/out.jsonl",
                environ={"YADISKPUSH_TOKEN": TOKEN},
            )
        self.assertIn("cannot write --json-out", str(caught.exception))


class AccountsFileMixin:
    """An accounts file in a temporary directory, and usage-error checks."""

    mktemp: Any
    assertRaises: Any
    assertIn: Any
    assertNotIn: Any

    def accountsFile(self, text: str, mode: int = 0o600) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        return path

    def assertUsageError(self, fragment: str, *argv: str) -> None:
        with self.assertRaises(usage.UsageError) as caught:
            parse(*argv)
        message = str(caught.exception)
        self.assertIn(fragment, message)
        self.assertNotIn("\n", message)
        self.assertNotIn(TOKEN, message)


class AccountsOptionTests(AccountsFileMixin, SynchronousTestCase):
    """--accounts: the file is checked before anything starts."""

    def test_accountsRead(self) -> None:
        """Each LOGIN:TOKEN line becomes an account."""
        path = self.accountsFile(f"alice:{TOKEN}\n# bob is away\ncarol:{TOKEN}2\n")
        options = parse("--accounts", path, "--max-handshakes", "7")
        self.assertEqual(list(options.accounts), ["alice", "carol"])
        self.assertIsNone(options.settings)
        self.assertEqual(options["max-handshakes"], 7)

    def test_badLineNamed(self) -> None:
        """A bad line is a usage error naming the file and the line number."""
        path = self.accountsFile(f"alice:{TOKEN}\nalice:{TOKEN}\n")
        self.assertUsageError(
            f"{path}, line 2: alice is already on line 1", "--accounts", path
        )

    def test_groupReadableRefused(self) -> None:
        """A file that group or others may read is a usage error."""
        path = self.accountsFile(f"alice:{TOKEN}\n", 0o644)
        self.assertUsageError(f"chmod 600 {path}", "--accounts", path)

    def test_emptyRefused(self) -> None:
        """A file with no account is a usage error."""
        path = self.accountsFile("# nobody yet\n")
        self.assertUsageError("has no accounts", "--accounts", path)

    def test_exclusiveWithLogin(self) -> None:
        """--accounts and --login (or --token-file) exclude each other."""
        path = self.accountsFile(f"alice:{TOKEN}\n")
        self.assertUsageError(
            "--accounts and --login exclude each other", "--accounts", path, "-l", "x"
        )
        self.assertUsageError(
            "--accounts and --token-file exclude each other",
            "--accounts",
            path,
            "--token-file",
            path,
        )

    def test_limitsArePositive(self) -> None:
        """--max-handshakes and --exec-jobs take a whole number of at least 1."""
        path = self.accountsFile(f"alice:{TOKEN}\n")
        for option in ("--max-handshakes", "--exec-jobs"):
            for value in ("0", "-3", "many"):
                with self.assertRaises(usage.UsageError):
                    parse("--accounts", path, option, value)

    def test_logLevel(self) -> None:
        """--log-level takes Twisted's level names, warning as warn."""
        path = self.accountsFile(f"alice:{TOKEN}\n")
        self.assertEqual(
            parse("--accounts", path, "--log-level", "DEBUG")["log-level"], "debug"
        )
        self.assertEqual(
            parse("--accounts", path, "--log-level", "warning")["log-level"], "warn"
        )
        with self.assertRaises(usage.UsageError):
            parse("--accounts", path, "--log-level", "chatty")


class ShardOptionTests(AccountsFileMixin, SynchronousTestCase):
    """--shard K/N: this process keeps its shard of the accounts file."""

    def test_shardSelects(self) -> None:
        """Two shards of one file hold disjoint sets whose union is the file."""
        from yadiskpush.shards import Shard

        logins = [f"user{n}" for n in range(40)]
        path = self.accountsFile("".join(f"{login}:{TOKEN}\n" for login in logins))
        parts = [
            parse("--accounts", path, "--shard", f"{k}/2").accounts for k in (0, 1)
        ]
        self.assertEqual(
            parse("--accounts", path, "--shard", "1/2")["shard"], Shard(1, 2)
        )
        self.assertFalse(set(parts[0]) & set(parts[1]))
        self.assertEqual(set(parts[0]) | set(parts[1]), set(logins))
        self.assertTrue(parts[0] and parts[1])

    def test_badShard(self) -> None:
        """A shard out of range or not K/N names --shard and the form."""
        path = self.accountsFile(f"alice:{TOKEN}\n")
        self.assertUsageError(
            "--shard: '2/2': the shard must be 0 to 1",
            "--accounts",
            path,
            "--shard",
            "2/2",
        )
        self.assertUsageError(
            "--shard: 'x' is not K/N", "--accounts", path, "--shard", "x"
        )

    def test_shardNeedsAccounts(self) -> None:
        """--shard with one --login is refused: there is nothing to split."""
        self.assertUsageError(
            "--shard splits an --accounts file",
            "--shard",
            "0/2",
            "-l",
            "alice",
        )

    def test_emptyShardWarns(self) -> None:
        """A shard with none of the file's accounts runs, with a warning."""
        from yadiskpush.shards import shardOf

        login = "alice"
        other = (shardOf(login, 2) + 1) % 2
        path = self.accountsFile(f"{login}:{TOKEN}\n")
        options = parse("--accounts", path, "--shard", f"{other}/2")
        self.assertEqual(options.accounts, {})
        self.assertEqual(len(options.warnings), 1)
        self.assertIn(f"Shard {other}/2: none of the 1 accounts", options.warnings[0])


class FleetOutputOptionTests(AccountsFileMixin, SynchronousTestCase):
    """--redis, --webhook, --metrics: mistakes are usage errors before start."""

    def setUp(self) -> None:
        self.accounts = self.accountsFile(f"alice:{TOKEN}\n")

    def webhookSecret(self, text: str = "whsec_" + "QUJD" * 8) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text + "\n")
        os.chmod(path, 0o600)
        return path

    def test_redisPasswordInURLRefused(self) -> None:
        """A password in --redis is refused, and not repeated."""
        self.assertUsageError(
            "--redis-password-file",
            "--accounts",
            self.accounts,
            "--redis",
            "redis://:hunter2secret@localhost:6379",
        )
        with self.assertRaises(usage.UsageError) as caught:
            parse("--accounts", self.accounts, "--redis", "redis://:hunter2secret@x")
        self.assertNotIn("hunter2secret", str(caught.exception))

    def test_redisUserNeedsPassword(self) -> None:
        """A user in the URL without --redis-password-file is refused."""
        self.assertUsageError(
            "give its password with --redis-password-file",
            "--accounts",
            self.accounts,
            "--redis",
            "redis://worker@localhost",
        )

    def test_redisDependentsNeedRedis(self) -> None:
        """--redis-password-file and --redis-ca-file need --redis."""
        path = self.webhookSecret()
        for option in ("--redis-password-file", "--redis-ca-file"):
            self.assertUsageError(
                f"{option} needs --redis URL", "--accounts", self.accounts, option, path
            )

    def test_redisCAFileNeedsTLS(self) -> None:
        """--redis-ca-file with a plain redis:// URL is a mistake."""
        self.assertUsageError(
            "use a rediss:// URL",
            "--accounts",
            self.accounts,
            "--redis",
            "redis://localhost",
            "--redis-ca-file",
            self.webhookSecret(),
        )

    def test_redisAccepted(self) -> None:
        """A good --redis is parsed once, for the sink."""
        options = parse(
            "--accounts", self.accounts, "--redis", "rediss://cache.internal:6380/2"
        )
        self.assertEqual(
            (options.redisAddress.host, options.redisAddress.port),
            ("cache.internal", 6380),
        )
        self.assertTrue(options.redisAddress.tls)
        self.assertEqual(options.redisAddress.db, 2)

    def test_webhookNeedsSecret(self) -> None:
        """--webhook without its secret file, and the other way round."""
        self.assertUsageError(
            "--webhook needs --webhook-secret-file",
            "--accounts",
            self.accounts,
            "--webhook",
            "https://hooks.example/disk",
        )
        self.assertUsageError(
            "--webhook-secret-file needs --webhook URL",
            "--accounts",
            self.accounts,
            "--webhook-secret-file",
            self.webhookSecret(),
        )

    def test_webhookSecretChecked(self) -> None:
        """A secret file that is not whsec_ and base64 is refused at once."""
        with self.assertRaises(usage.UsageError):
            parse(
                "--accounts",
                self.accounts,
                "--state-dir",
                self.mktemp(),
                "--webhook",
                "https://hooks.example/disk",
                "--webhook-secret-file",
                self.webhookSecret("not-a-secret"),
            )

    def test_webhookAccepted(self) -> None:
        """A good secret is read once; the state directory is made for the journal."""
        stateDir = self.mktemp()
        options = parse(
            "--accounts",
            self.accounts,
            "--state-dir",
            stateDir,
            "--webhook",
            "https://hooks.example/disk",
            "--webhook-secret-file",
            self.webhookSecret(),
        )
        self.assertEqual(options.webhookSecret, b"ABC" * 8)
        self.assertTrue(os.path.isdir(stateDir))

    def test_metricsEndpointChecked(self) -> None:
        """A --metrics that is not a server endpoint names the option."""
        self.assertUsageError(
            "--metrics", "--accounts", self.accounts, "--metrics", "nonsense:9108"
        )

    def test_webhookConcurrency(self) -> None:
        """--webhook-concurrency takes a whole number of at least 1."""
        with self.assertRaises(usage.UsageError):
            parse("--accounts", self.accounts, "--webhook-concurrency", "0")
        self.assertEqual(
            parse("--accounts", self.accounts, "--webhook-concurrency", "3")[
                "webhook-concurrency"
            ],
            3,
        )
