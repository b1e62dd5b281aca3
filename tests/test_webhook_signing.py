"""
Tests for yadiskpush.webhooks.signing and yadiskpush.webhooks.message: the
Standard Webhooks signature, the secret file, and the message a push becomes.
"""

from __future__ import annotations

import base64
import json
import os

from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from yadiskpush.delivery.sinks.jsonlines import encodeJSONLine
from yadiskpush.notification import Notification
from yadiskpush.webhooks.message import isoTimestamp, messageFromLine
from yadiskpush.webhooks.signing import (
    WebhookSecretError,
    WebhookVerificationError,
    parseWebhookSecret,
    readWebhookSecret,
    readWebhookSecretFile,
    sign,
    verify,
)

# The test vector the Standard Webhooks reference libraries all check.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

SECRET = b"k" * 32


def notification(**overrides: object) -> Notification:
    fields: dict[str, object] = {
        "stanzaId": "push-1",
        "sender": "alice@ya.ru",
        "recipient": "alice@ya.ru/yadiskpush",
        "receivedAt": 1700000000.25,
        "element": "query",
        "attributes": {"t": "diff", "new-revision": "7"},
        "children": (),
        "rawXml": "<iq/>",
        "login": "alice",
    }
    fields.update(overrides)
    return Notification(**fields)  # type: ignore[arg-type]


class SignTests(SynchronousTestCase):
    def test_referenceVector(self) -> None:
        """sign() reproduces the reference libraries' signature exactly."""
        secret = parseWebhookSecret(VECTOR_SECRET)
        self.assertEqual(
            sign(secret, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY), VECTOR_SIGNATURE
        )

    def headers(self, signature: str, timestamp: int = VECTOR_TIMESTAMP) -> dict:
        return {
            "Webhook-Id": VECTOR_ID,
            "webhook-timestamp": str(timestamp),
            "WEBHOOK-SIGNATURE": signature,
        }

    def test_verifyAcceptsReferenceVector(self) -> None:
        """verify() accepts the reference signature among others, any header case."""
        secret = parseWebhookSecret(VECTOR_SECRET)
        verify(
            secret,
            self.headers("v1,bm9wZQ== " + VECTOR_SIGNATURE),
            VECTOR_BODY,
            now=VECTOR_TIMESTAMP + 10,
        )

    def test_verifyRefusesOtherBody(self) -> None:
        """A changed body does not verify."""
        secret = parseWebhookSecret(VECTOR_SECRET)
        with self.assertRaises(WebhookVerificationError) as caught:
            verify(
                secret,
                self.headers(VECTOR_SIGNATURE),
                VECTOR_BODY + b" ",
                VECTOR_TIMESTAMP,
            )
        self.assertFalse(caught.exception.stale)

    def test_verifyRefusesOldTimestamp(self) -> None:
        """A timestamp beyond the tolerance is refused as stale."""
        secret = parseWebhookSecret(VECTOR_SECRET)
        with self.assertRaises(WebhookVerificationError) as caught:
            verify(
                secret,
                self.headers(VECTOR_SIGNATURE),
                VECTOR_BODY,
                now=VECTOR_TIMESTAMP + 301,
            )
        self.assertTrue(caught.exception.stale)

    def test_verifyRefusesMissingHeader(self) -> None:
        """A request without webhook-signature is refused, naming the header."""
        with self.assertRaises(WebhookVerificationError) as caught:
            verify(SECRET, {"webhook-id": "x", "webhook-timestamp": "1"}, b"", 1)
        self.assertIn("webhook-signature", str(caught.exception))


class SecretFileTests(SynchronousTestCase):
    def write(self, content: bytes, mode: int = 0o600) -> str:
        path = self.mktemp()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(content)
        os.chmod(path, mode)
        return path

    def test_readsKey(self) -> None:
        """The key is the base64 after whsec_, surrounding blanks ignored."""
        key = os.urandom(32)
        text = "whsec_" + base64.b64encode(key).decode()
        path = self.write(f"  {text}\n".encode())
        self.assertEqual(readWebhookSecretFile(path), (key, []))

    def test_warnsWhenOthersCanRead(self) -> None:
        """A file others can read gives a warning with the chmod that fixes it."""
        path = self.write(VECTOR_SECRET.encode() + b"\n", 0o644)
        _, warnings = readWebhookSecretFile(path)
        self.assertEqual(len(warnings), 1)
        self.assertIn(f"chmod 600 {path}", warnings[0])

    def test_readWebhookSecretLogsWarnings(self) -> None:
        """readWebhookSecret returns the key and logs the file's warnings."""
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        path = self.write(VECTOR_SECRET.encode(), 0o640)
        self.assertEqual(readWebhookSecret(path), parseWebhookSecret(VECTOR_SECRET))
        [warning] = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
        self.assertIn("can be read by other users", warning)
        self.assertNotIn(VECTOR_SECRET[6:], warning)

    def test_refusesWithoutPrefix(self) -> None:
        """A file not written whsec_<base64> is refused without quoting it."""
        path = self.write(b"hunter2-plain-password-of-some-length\n")
        with self.assertRaises(WebhookSecretError) as caught:
            readWebhookSecretFile(path)
        self.assertIn("whsec_", str(caught.exception))
        self.assertIn(path, str(caught.exception))
        self.assertNotIn("hunter2", str(caught.exception))

    def test_refusesBadBase64(self) -> None:
        """Invalid base64 after the prefix is refused."""
        path = self.write(b"whsec_not*base64!\n")
        with self.assertRaises(WebhookSecretError) as caught:
            readWebhookSecretFile(path)
        self.assertIn("not valid base64", str(caught.exception))

    def test_refusesShortKey(self) -> None:
        """A key shorter than 24 bytes is refused."""
        path = self.write(b"whsec_" + base64.b64encode(b"short"))
        with self.assertRaises(WebhookSecretError) as caught:
            readWebhookSecretFile(path)
        self.assertIn("at least 24", str(caught.exception))

    def test_refusesMissingAndEmpty(self) -> None:
        """A missing or empty file is refused, naming it."""
        path = self.write(b"\n\n")
        with self.assertRaises(WebhookSecretError) as caught:
            readWebhookSecretFile(path)
        self.assertIn("is empty", str(caught.exception))
        with self.assertRaises(WebhookSecretError) as caught:
            readWebhookSecretFile(path + ".missing")
        self.assertIn("cannot read", str(caught.exception))


class MessageTests(SynchronousTestCase):
    def test_body(self) -> None:
        """The body wraps the JSON line's object, with the push's time in UTC."""
        line = encodeJSONLine(notification())
        message = messageFromLine(line)
        body = json.loads(message.body)
        self.assertEqual(body["type"], "disk.changed")
        self.assertEqual(body["timestamp"], "2023-11-14T22:13:20.250Z")
        self.assertEqual(body["data"], json.loads(line))
        self.assertEqual((message.login, message.pushId), ("alice", "push-1"))

    def test_idStableAcrossResends(self) -> None:
        """The same push received again later has the same webhook-id."""
        first = messageFromLine(encodeJSONLine(notification()))
        again = messageFromLine(encodeJSONLine(notification(receivedAt=1800000000.0)))
        self.assertEqual(first.msgId, again.msgId)
        self.assertTrue(first.msgId.startswith("msg_"))
        self.assertNotEqual(first.body, again.body)

    def test_idDiffersPerAccountAndPush(self) -> None:
        """Another login, push id or payload gives another webhook-id."""
        base = messageFromLine(encodeJSONLine(notification())).msgId
        for other in (
            notification(login="bob"),
            notification(stanzaId="push-2"),
            notification(attributes={"t": "diff", "new-revision": "8"}),
        ):
            self.assertNotEqual(messageFromLine(encodeJSONLine(other)).msgId, base)

    def test_isoTimestamp(self) -> None:
        """Timestamps are ISO 8601 UTC with milliseconds and a Z."""
        self.assertEqual(isoTimestamp(0), "1970-01-01T00:00:00.000Z")

    def test_lineNotObject(self) -> None:
        """A line that is not a notification's JSON object is refused."""
        self.assertRaises(ValueError, messageFromLine, b"[1, 2]\n")
        self.assertRaises(ValueError, messageFromLine, b'{"id": "x"}\n')
