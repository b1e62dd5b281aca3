"""Tests for yadiskpush.secret: the token never shows."""

from __future__ import annotations

import os
import pickle
import traceback

from twisted.trial.unittest import SynchronousTestCase

from yadiskpush.errors import ConfigurationError
from yadiskpush.secret import Secret

TOKEN = "AQAAAAAtoken-value-123"


class SecretTests(SynchronousTestCase):
    def test_reprStrFormat(self) -> None:
        """repr, str and formatting (with or without a spec) all hide the value."""
        secret = Secret(TOKEN)
        for shown in (repr(secret), str(secret), f"{secret!s}", f"{secret:>40}"):
            self.assertNotIn(TOKEN, shown)

    def test_revealGivesValue(self) -> None:
        """reveal() is the one way to the value."""
        self.assertEqual(Secret(TOKEN).reveal(), TOKEN)

    def test_notPicklable(self) -> None:
        """A secret refuses to be pickled (it would land on disk in clear)."""
        with self.assertRaises(TypeError):
            pickle.dumps(Secret(TOKEN))

    def test_tracebackLocalsHidden(self) -> None:
        """A traceback that shows locals shows the placeholder."""
        secret = Secret(TOKEN)
        try:
            raise ValueError(secret)
        except ValueError:
            text = traceback.format_exc()
        self.assertNotIn(TOKEN, text)

    def test_emptyOrMultiline(self) -> None:
        """An empty token or one with a line break is a configuration error."""
        for bad in ("", "a\nb", "a\0b"):
            with self.assertRaises(ConfigurationError):
                Secret(bad)

    def test_fromFile(self) -> None:
        """The first line of the file is the token, whitespace stripped."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(f"  {TOKEN}  \n# comment\n")
        os.chmod(path, 0o600)
        secret, warnings = Secret.fromFile(path)
        self.assertEqual((secret.reveal(), warnings), (TOKEN, []))

    def test_fromFileWorldReadableWarns(self) -> None:
        """A token file other users can read produces a warning with the fix."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(TOKEN)
        os.chmod(path, 0o644)
        _, warnings = Secret.fromFile(path)
        [warning] = warnings
        self.assertIn("chmod 600", warning)

    def test_fromFileMissing(self) -> None:
        """A missing file is a one-line configuration error naming it."""
        with self.assertRaises(ConfigurationError) as caught:
            Secret.fromFile("/nonexistent/token")
        self.assertIn("/nonexistent/token", str(caught.exception))

    def test_fromFileEmpty(self) -> None:
        """An empty file is refused."""
        path = self.mktemp()
        open(path, "w").close()
        with self.assertRaises(ConfigurationError):
            Secret.fromFile(path)

    def test_fromEnvironment(self) -> None:
        """YADISKPUSH_TOKEN is read when set, None when not."""
        self.assertEqual(
            Secret.fromEnvironment({"YADISKPUSH_TOKEN": TOKEN}).reveal(), TOKEN
        )
        self.assertIsNone(Secret.fromEnvironment({}))
