"""
Standard Webhooks signatures: reading the shared secret, signing a message,
and checking one (for tests and for the receiver in the docs).

The signed content is ``{webhook-id}.{webhook-timestamp}.{body}``; the
signature is ``v1,`` and the base64 of its HMAC-SHA256 under the secret. The
secret is written ``whsec_`` followed by the base64 of its bytes, as the
specification and every library implementing it write it, so that a
receiver pastes the same string into its own verifier.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import stat
from collections.abc import Mapping

from yadiskpush.errors import ConfigurationError, YaDiskPushError
from yadiskpush.logs import Logger

#: How a secret is written.
SECRET_PREFIX = "whsec_"

#: The shortest key accepted, in bytes: the specification's lower bound
#: (192 bits).
MIN_SECRET_BYTES = 24

#: A secret file is one line; anything longer is not one.
MAX_SECRET_FILE_SIZE = 4096

#: The only signature scheme defined for symmetric keys.
SIGNATURE_VERSION = "v1"

#: A command that writes a good secret, for error messages.
GENERATE_HINT = (
    "python3 -c \"import base64, os; print('whsec_' + "
    'base64.b64encode(os.urandom(32)).decode())"'
)

_log = Logger()


class WebhookSecretError(ConfigurationError):
    """The webhook secret file cannot be used; the message says why."""


class WebhookVerificationError(YaDiskPushError):
    """
    A request does not carry a valid signature.

    :ivar stale: ``True`` when only the timestamp is out of tolerance (a
        receiver answers 400 then, 401 for a bad signature).
    """

    def __init__(self, message: str, stale: bool = False) -> None:
        super().__init__(message)
        self.stale = stale


def parseWebhookSecret(text: str, source: str = "the webhook secret") -> bytes:
    """
    The key bytes of a secret written ``whsec_<base64>``.

    :param source: names where the text came from, in error messages (the
        secret itself never appears in one).
    :raises WebhookSecretError: for text without the prefix, with invalid
        base64, or shorter than :data:`MIN_SECRET_BYTES`.
    """
    text = text.strip()
    if not text.startswith(SECRET_PREFIX):
        raise WebhookSecretError(
            f"{source} must be written whsec_ followed by base64 (the Standard "
            f"Webhooks format); make one with: {GENERATE_HINT}"
        )
    try:
        key = base64.b64decode(text[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise WebhookSecretError(
            f"{source} is not valid base64 after whsec_; make one with: {GENERATE_HINT}"
        ) from None
    if len(key) < MIN_SECRET_BYTES:
        raise WebhookSecretError(
            f"{source} is {len(key)} bytes long; it must be at least "
            f"{MIN_SECRET_BYTES} (make one with: {GENERATE_HINT})"
        )
    return key


def readWebhookSecretFile(path: str) -> tuple[bytes, list[str]]:
    """
    Read the secret from ``path`` (its first line, ``whsec_<base64>``).

    :returns: the key bytes, and warnings for the user (a file other users
        can read, with the ``chmod`` that fixes it), as the token file does.
    :raises WebhookSecretError: naming the file and what is wrong with it;
        the message never contains the secret.
    """
    try:
        with open(path, "rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            content = handle.read(MAX_SECRET_FILE_SIZE + 1)
    except OSError as e:
        raise WebhookSecretError(
            f"cannot read the webhook secret file {path}: {e.strerror or e}"
        ) from None
    if len(content) > MAX_SECRET_FILE_SIZE:
        raise WebhookSecretError(
            f"the webhook secret file {path} is larger than "
            f"{MAX_SECRET_FILE_SIZE} bytes; it should hold one line, whsec_<base64>"
        )
    try:
        text = content.decode("ascii")
    except UnicodeDecodeError:
        raise WebhookSecretError(
            f"the webhook secret file {path} is not ASCII text; it should hold "
            "one line, whsec_<base64>"
        ) from None
    lines = text.strip().splitlines()
    if not lines:
        raise WebhookSecretError(f"the webhook secret file {path} is empty")
    key = parseWebhookSecret(lines[0], f"the webhook secret in {path}")
    warnings = []
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        warnings.append(
            f"the webhook secret file {path} can be read by other users; "
            f"run: chmod 600 {path}"
        )
    return key, warnings


def readWebhookSecret(path: str) -> bytes:
    """
    :func:`readWebhookSecretFile`, with its warnings logged (a log event
    emitted before logging has begun is kept and shown once it has).

    :raises WebhookSecretError: as :func:`readWebhookSecretFile`.
    """
    key, warnings = readWebhookSecretFile(path)
    for warning in warnings:
        _log.warn("{warning}", warning=warning)
    return key


def sign(secret: bytes, msgId: str, timestamp: int, body: bytes) -> str:
    """
    The ``webhook-signature`` header of one attempt: ``v1,`` and the base64
    HMAC-SHA256 of ``{msgId}.{timestamp}.{body}`` under ``secret``.
    """
    signed = f"{msgId}.{timestamp}.".encode() + body
    digest = hmac.new(secret, signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    raise WebhookVerificationError(f"the request has no {name} header")


def verify(
    secret: bytes,
    headers: Mapping[str, str],
    body: bytes,
    now: float,
    tolerance: float = 300,
) -> None:
    """
    Check a request as a receiver does: the timestamp is within
    ``tolerance`` seconds of ``now`` (either way), and one of the
    space-separated ``v1,`` signatures matches, compared in constant time.

    :param headers: the request's headers, names in any case.
    :raises WebhookVerificationError: saying what is missing or wrong
        (``stale`` set for a timestamp out of tolerance).
    """
    msgId = _header(headers, "webhook-id")
    rawTimestamp = _header(headers, "webhook-timestamp")
    signatures = _header(headers, "webhook-signature")
    try:
        timestamp = int(rawTimestamp)
    except ValueError:
        raise WebhookVerificationError(
            "webhook-timestamp is not an integer", stale=True
        ) from None
    if abs(now - timestamp) > tolerance:
        raise WebhookVerificationError(
            f"webhook-timestamp is {now - timestamp:+.0f} s away from now "
            f"(tolerance {tolerance:g} s)",
            stale=True,
        )
    expected = sign(secret, msgId, timestamp, body).encode("ascii")
    for candidate in signatures.split():
        if hmac.compare_digest(candidate.encode("ascii", "replace"), expected):
            return
    raise WebhookVerificationError("no signature matches")
