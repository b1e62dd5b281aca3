"""
A webhook receiver for yadiskpush --webhook, with the standard library only.

It checks each request's Standard Webhooks signature (HMAC-SHA256, compared
in constant time), refuses a timestamp more than five minutes away from its
own clock (a replayed request), and handles each webhook-id once: yadiskpush
sends a notification again, with the same webhook-id, when it did not see
the answer.

    python3 webhook_receiver.py SECRET_FILE [PORT]

SECRET_FILE holds the same ``whsec_...`` line as yadiskpush's
--webhook-secret-file. It listens on 127.0.0.1 (port 8080 by default; 0
picks a free one) and prints ``listening on http://127.0.0.1:PORT/``.
"""

import base64
import hashlib
import hmac
import json
import sys
import time
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, HTTPServer

TOLERANCE = 5 * 60  # seconds
MAX_BODY = 16 * 1024 * 1024
REMEMBERED_IDS = 100_000


def readSecret(path):
    """The key bytes of a ``whsec_<base64>`` secret file."""
    with open(path) as f:
        text = f.read().strip()
    if not text.startswith("whsec_"):
        raise SystemExit(f"{path} must hold whsec_ followed by base64")
    return base64.b64decode(text[len("whsec_") :], validate=True)


def check(secret, headers, body, now):
    """
    ``None`` if the request is signed with ``secret`` and recent, else
    (HTTP status, reason): 400 for missing headers or a timestamp out of
    tolerance, 401 for a wrong signature.
    """
    msgId = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not (msgId and timestamp and signatures):
        return 400, "missing webhook headers"
    try:
        sentAt = int(timestamp)
    except ValueError:
        return 400, "bad webhook-timestamp"
    if abs(now - sentAt) > TOLERANCE:
        return 400, "webhook-timestamp too old or too new"
    signed = f"{msgId}.{sentAt}.".encode() + body
    digest = hmac.new(secret, signed, hashlib.sha256).digest()
    expected = "v1," + base64.b64encode(digest).decode()
    for candidate in signatures.split():
        if hmac.compare_digest(candidate.encode(), expected.encode()):
            return None
    return 401, "bad signature"


def handle(event):
    """What to do with a notification: here, print it. Start a sync here."""
    data = event["data"]
    changes = ", ".join(f"{c['type']} {c['path']}" for c in data["changes"])
    print(f"changed: {data['login']} push {data['id']}: {changes or 'no details'}")


class Receiver(BaseHTTPRequestHandler):
    secret = b""
    seen = OrderedDict()

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            return self.answer(413, "too large")
        body = self.rfile.read(length)
        headers = {name.lower(): value for name, value in self.headers.items()}
        refused = check(self.secret, headers, body, time.time())
        if refused is not None:
            return self.answer(*refused)
        msgId = headers["webhook-id"]
        if msgId in self.seen:
            return self.answer(200, "already handled")
        handle(json.loads(body))
        self.seen[msgId] = True
        if len(self.seen) > REMEMBERED_IDS:
            self.seen.popitem(last=False)
        self.answer(200, "ok")

    def answer(self, status, text):
        data = text.encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        print(f"{self.address_string()} {format % args}", file=sys.stderr)


def main(argv):
    if len(argv) not in (2, 3):
        raise SystemExit(__doc__)
    Receiver.secret = readSecret(argv[1])
    port = int(argv[2]) if len(argv) == 3 else 8080
    server = HTTPServer(("127.0.0.1", port), Receiver)
    print(f"listening on http://127.0.0.1:{server.server_port}/")
    server.serve_forever()


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)
    main(sys.argv)
