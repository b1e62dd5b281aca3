"""Tests for yadiskpush.oauth.tokenfile: both formats, atomic 0600 writes."""

from __future__ import annotations

import json
import os
import stat

from twisted.trial.unittest import SynchronousTestCase

from yadiskpush.errors import ConfigurationError
from yadiskpush.oauth.tokenfile import TokenFile, readTokenFile, writeTokenFile
from yadiskpush.secret import Secret

ACCESS = "y0_AgAccess-token-value"
REFRESH = "1:refresh-token-value"
CLIENT_SECRET = "client-secret-value"


def fullTokenFile() -> TokenFile:
    return TokenFile(
        accessToken=Secret(ACCESS),
        refreshToken=Secret(REFRESH),
        expiresAt=1790000000.5,
        login="alice",
        clientId="client-id",
        clientSecret=Secret(CLIENT_SECRET),
        oauthUrl="https://oauth.example",
    )


class TokenFileValueTests(SynchronousTestCase):
    def test_reprHidesSecrets(self) -> None:
        """The dataclass's repr shows none of the three secrets."""
        shown = repr(fullTokenFile())
        for secret in (ACCESS, REFRESH, CLIENT_SECRET):
            self.assertNotIn(secret, shown)
        self.assertIn("alice", shown)

    def test_canRefresh(self) -> None:
        """Refreshing needs the refresh token, client id and secret and the URL."""
        full = fullTokenFile()
        self.assertTrue(full.canRefresh())
        self.assertFalse(TokenFile(Secret(ACCESS)).canRefresh())
        for missing in ("refreshToken", "clientId", "clientSecret", "oauthUrl"):
            fields = dict(full.__dict__)
            fields[missing] = None
            self.assertFalse(TokenFile(**fields).canRefresh(), missing)

    def test_toJSONKeys(self) -> None:
        """toJSON gives the file's keys with the secrets revealed."""
        self.assertEqual(
            fullTokenFile().toJSON(),
            {
                "access_token": ACCESS,
                "refresh_token": REFRESH,
                "expires_at": 1790000000.5,
                "login": "alice",
                "client_id": "client-id",
                "client_secret": CLIENT_SECRET,
                "oauth_url": "https://oauth.example",
            },
        )

    def test_withGrant(self) -> None:
        """A new grant replaces the tokens and expiry and keeps the rest."""
        updated = fullTokenFile().withGrant(Secret("new"), Secret("r2"), 100.0, 1000.0)
        self.assertEqual(updated.accessToken.reveal(), "new")
        self.assertEqual(updated.refreshToken, Secret("r2"))
        self.assertEqual(updated.expiresAt, 1100.0)
        self.assertEqual(
            (updated.login, updated.clientId, updated.oauthUrl),
            ("alice", "client-id", "https://oauth.example"),
        )

    def test_withGrantKeepsOldRefreshToken(self) -> None:
        """A grant without a refresh token keeps the old one."""
        updated = fullTokenFile().withGrant(Secret("new"), None, None, 1000.0)
        self.assertEqual(updated.refreshToken, Secret(REFRESH))
        self.assertIsNone(updated.expiresAt)


class ReadTokenFileTests(SynchronousTestCase):
    def writeText(self, text: str, mode: int = 0o600) -> str:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(path, mode)
        return path

    def assertRefused(self, text: str, *fragments: str) -> str:
        path = self.writeText(text)
        with self.assertRaises(ConfigurationError) as caught:
            readTokenFile(path)
        message = str(caught.exception)
        self.assertIn(path, message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        for secret in (ACCESS, REFRESH, CLIENT_SECRET):
            self.assertNotIn(secret, message)
        return message

    def test_plainFirstLine(self) -> None:
        """A plain file's first line is the access token; nothing else is known."""
        path = self.writeText(f"\n  {ACCESS}  \nsecond line\n")
        tokenFile, warnings = readTokenFile(path)
        self.assertEqual(tokenFile, TokenFile(Secret(ACCESS)))
        self.assertEqual(warnings, [])

    def test_jsonFull(self) -> None:
        """A JSON file gives every field back."""
        path = self.writeText(json.dumps(fullTokenFile().toJSON()))
        tokenFile, warnings = readTokenFile(path)
        self.assertEqual(tokenFile, fullTokenFile())
        self.assertEqual(warnings, [])

    def test_jsonLeadingBlanks(self) -> None:
        """Blank space before the brace still means JSON."""
        path = self.writeText('\n  {"access_token": "' + ACCESS + '"}')
        tokenFile, _ = readTokenFile(path)
        self.assertEqual(tokenFile, TokenFile(Secret(ACCESS)))

    def test_jsonNullsAndUnknownKeys(self) -> None:
        """Nulls and empty strings are absent values; unknown keys are ignored."""
        path = self.writeText(
            json.dumps(
                {
                    "access_token": ACCESS,
                    "refresh_token": None,
                    "login": "",
                    "expires_at": 5,
                    "future_key": [1, 2],
                }
            )
        )
        tokenFile, _ = readTokenFile(path)
        self.assertEqual(tokenFile, TokenFile(Secret(ACCESS), expiresAt=5.0))
        self.assertIsInstance(tokenFile.expiresAt, float)

    def test_worldReadableWarns(self) -> None:
        """A file other users can read gives a warning with the chmod."""
        path = self.writeText(json.dumps({"access_token": ACCESS}), 0o644)
        _, [warning] = readTokenFile(path)
        self.assertIn(f"chmod 600 {path}", warning)

    def test_badJSON(self) -> None:
        """Bad JSON is refused with the parser's position, not the content."""
        self.assertRefused('{"access_token": "' + ACCESS + '",,}', "not valid JSON")

    def test_noAccessToken(self) -> None:
        """An object without an access token says to run yadiskpush token."""
        self.assertRefused("{}", 'no "access_token"', "yadiskpush token")

    def test_wrongTypes(self) -> None:
        """A value of the wrong type is named by its key."""
        self.assertRefused(json.dumps({"access_token": 5}), '"access_token"')
        self.assertRefused(
            json.dumps({"access_token": ACCESS, "refresh_token": [REFRESH]}),
            '"refresh_token"',
        )
        self.assertRefused(
            json.dumps({"access_token": ACCESS, "expires_at": "soon"}),
            '"expires_at"',
        )
        self.assertRefused(
            json.dumps({"access_token": ACCESS, "expires_at": True}), '"expires_at"'
        )

    def test_lineBreakInToken(self) -> None:
        """A token with a line break is refused without showing it."""
        self.assertRefused(
            json.dumps({"access_token": ACCESS + "\n" + REFRESH}), "access_token"
        )

    def test_empty(self) -> None:
        """An empty or blank file is refused."""
        self.assertRefused("  \n\n", "empty")

    def test_missing(self) -> None:
        """A missing file is a configuration error naming it."""
        path = self.mktemp()
        with self.assertRaises(ConfigurationError) as caught:
            readTokenFile(path)
        self.assertIn(path, str(caught.exception))

    def test_notUTF8(self) -> None:
        """Bytes that are not UTF-8 are refused with a sentence."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"\xff\xfe{")
        with self.assertRaises(ConfigurationError) as caught:
            readTokenFile(path)
        self.assertIn("UTF-8", str(caught.exception))


class WriteTokenFileTests(SynchronousTestCase):
    def test_roundTrip(self) -> None:
        """What is written reads back equal."""
        path = self.mktemp()
        writeTokenFile(path, fullTokenFile())
        self.assertEqual(readTokenFile(path), (fullTokenFile(), []))

    def test_mode0600(self) -> None:
        """The file is readable by its owner only, whatever the umask."""
        path = self.mktemp()
        old = os.umask(0)
        try:
            writeTokenFile(path, fullTokenFile())
        finally:
            os.umask(old)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)

    def test_replacesKeepingNothingBehind(self) -> None:
        """Writing over a file replaces it and leaves no temporary file."""
        directory = self.mktemp()
        os.mkdir(directory)
        path = os.path.join(directory, "token.json")
        with open(path, "w") as f:
            f.write("old-token\n")
        os.chmod(path, 0o644)
        writeTokenFile(path, fullTokenFile())
        self.assertEqual(os.listdir(directory), ["token.json"])
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path) as f:
            self.assertEqual(json.load(f)["access_token"], ACCESS)

    def test_createsParents0700(self) -> None:
        """Missing parent directories are created readable by the owner only."""
        base = self.mktemp()
        path = os.path.join(base, "config", "yadiskpush", "token.json")
        old = os.umask(0)
        try:
            writeTokenFile(path, fullTokenFile())
        finally:
            os.umask(old)
        for directory in (base, os.path.dirname(os.path.dirname(path))):
            self.assertEqual(stat.S_IMODE(os.stat(directory).st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode), 0o700)

    def test_failureNamesFileAndCleansUp(self) -> None:
        """A directory in the way is a configuration error; nothing is left."""
        directory = self.mktemp()
        os.mkdir(directory)
        path = os.path.join(directory, "token.json")
        os.mkdir(path)
        with self.assertRaises(ConfigurationError) as caught:
            writeTokenFile(path, fullTokenFile())
        self.assertIn(path, str(caught.exception))
        self.assertNotIn(ACCESS, str(caught.exception))
        self.assertEqual(os.listdir(directory), ["token.json"])

    def test_unwritableDirectory(self) -> None:
        """A parent that cannot be created is named in the error."""
        blocker = self.mktemp()
        with open(blocker, "w") as f:
            f.write("a file, not a directory")
        with self.assertRaises(ConfigurationError) as caught:
            writeTokenFile(os.path.join(blocker, "sub", "token.json"), fullTokenFile())
        self.assertIn(blocker, str(caught.exception))


class SecretFromFileTests(SynchronousTestCase):
    def test_jsonFile(self) -> None:
        """Secret.fromFile gives a JSON token file's access token."""
        path = self.mktemp()
        writeTokenFile(path, fullTokenFile())
        self.assertEqual(Secret.fromFile(path), (Secret(ACCESS), []))

    def test_jsonFileWithoutAccessToken(self) -> None:
        """Secret.fromFile refuses a JSON file with no access token."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(json.dumps({"refresh_token": REFRESH}))
        with self.assertRaises(ConfigurationError):
            Secret.fromFile(path)
