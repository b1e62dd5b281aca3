"""Tests for yadiskpush.accounts: the --accounts file, checked line by line."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from yadiskpush.accounts import (
    AccountsChange,
    AccountsFileError,
    compareAccounts,
    parseAccounts,
    readAccounts,
)
from yadiskpush.secret import Secret

TOKEN = "y0_AgAAAAB-secret-token"


class ParseTests(SynchronousTestCase):
    def assertBadLine(self, text: str, number: int, fragment: str) -> None:
        with self.assertRaises(AccountsFileError) as caught:
            parseAccounts(text, "accounts.txt")
        message = caught.exception.message
        self.assertIn(f"accounts.txt, line {number}: ", message)
        self.assertIn(fragment, message)
        self.assertNotIn(TOKEN, message)
        self.assertNotIn("\n", message)

    def test_linesCommentsAndBlanks(self) -> None:
        """LOGIN:TOKEN lines are read in order; blanks and # lines are ignored."""
        accounts = parseAccounts(
            f"# the team\n\nalice:{TOKEN}1\n   \n  # indented comment\nbob: {TOKEN}2 \n"
        )
        self.assertEqual(list(accounts), ["alice", "bob"])
        self.assertEqual(accounts["alice"], Secret(TOKEN + "1"))
        self.assertEqual(accounts["bob"], Secret(TOKEN + "2"))

    def test_tokenMayHoldAColon(self) -> None:
        """Only the first colon separates the login from the token."""
        self.assertEqual(parseAccounts("a:b:c")["a"].reveal(), "b:c")

    def test_noColon(self) -> None:
        """A line without a colon names its number and the expected form."""
        self.assertBadLine(f"alice:{TOKEN}\n\n{TOKEN}\n", 3, "expected LOGIN:TOKEN")

    def test_emptyLogin(self) -> None:
        """An empty login is refused."""
        self.assertBadLine(f":{TOKEN}", 1, "the login is empty")

    def test_loginWithDomain(self) -> None:
        """A login with a domain is refused with the fix."""
        self.assertBadLine(f"# x\nalice@ya.ru:{TOKEN}", 2, "without a domain")

    def test_loginWithSpace(self) -> None:
        """A login with a space inside is refused."""
        self.assertBadLine(f"al ice:{TOKEN}", 1, "space")

    def test_emptyToken(self) -> None:
        """A login without a token is refused, naming the login."""
        self.assertBadLine("alice:   ", 1, "no token after alice:")

    def test_tokenWithSpace(self) -> None:
        """A token with a space inside is refused without echoing it."""
        self.assertBadLine(f"alice:{TOKEN} {TOKEN}", 1, "the token of alice")

    def test_duplicate(self) -> None:
        """A login given twice names both lines."""
        self.assertBadLine(
            f"alice:{TOKEN}\nbob:{TOKEN}\nalice:{TOKEN}x",
            3,
            "alice is already on line 1",
        )


class ReadTests(SynchronousTestCase):
    def write(self, text: str | bytes, mode: int = 0o600) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(text.encode() if isinstance(text, str) else text)
        os.chmod(path, mode)
        return path

    def test_readsAPrivateFile(self) -> None:
        """A file only its owner may read is read."""
        path = self.write(f"alice:{TOKEN}\n")
        self.assertEqual(readAccounts(path), {"alice": Secret(TOKEN)})

    def test_groupReadableRefused(self) -> None:
        """A file that group or others may read is refused, with the chmod fix."""
        for mode in (0o640, 0o604, 0o660):
            path = self.write(f"alice:{TOKEN}\n", mode)
            with self.assertRaises(AccountsFileError) as caught:
                readAccounts(path)
            self.assertIn(f"chmod 600 {path}", caught.exception.message)
            self.assertIn(f"{mode:04o}", caught.exception.message)

    def test_missingFile(self) -> None:
        """A missing file says so."""
        with self.assertRaises(AccountsFileError) as caught:
            readAccounts(self.mktemp())
        self.assertIn("cannot read the accounts file", caught.exception.message)

    def test_directoryRefused(self) -> None:
        """A directory is not an accounts file."""
        path = self.mktemp()
        os.mkdir(path, 0o700)
        with self.assertRaises(AccountsFileError) as caught:
            readAccounts(path)
        self.assertIn("Is a directory", caught.exception.message)

    def test_notUTF8(self) -> None:
        """Bytes that are not UTF-8 are named by their line."""
        path = self.write(b"alice:abc\nbob:\xff\xfe\n")
        with self.assertRaises(AccountsFileError) as caught:
            readAccounts(path)
        self.assertIn("line 2: not UTF-8", caught.exception.message)


class CompareTests(SynchronousTestCase):
    def test_change(self) -> None:
        """Added, removed, changed and unchanged accounts are told apart."""
        old = {"a": Secret("1"), "b": Secret("2"), "c": Secret("3")}
        new = {"a": Secret("1"), "c": Secret("30"), "d": Secret("4")}
        change = compareAccounts(old, new)
        self.assertEqual(change, AccountsChange(("d",), ("b",), ("c",), 1))
        self.assertEqual(
            str(change), "1 added, 1 removed, 1 tokens changed, 1 unchanged"
        )

    def test_thousandsSeparated(self) -> None:
        """Large counts are written as a person reads them."""
        old = {str(n): Secret("t") for n in range(10_000)}
        self.assertIn("10,000 unchanged", str(compareAccounts(old, dict(old))))
