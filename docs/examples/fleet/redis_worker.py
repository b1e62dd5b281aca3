"""
A worker for the stream yadiskpush --redis writes, with redis-py.

It reads with a consumer group (XREADGROUP), so that several workers share
the entries, and acknowledges each entry (XACK) once it is handled. After a
crash it first reads again the entries it had read and not acknowledged
(its pending entries), then new ones. Delivery is at least once, so it
handles each push, by (login, id), once:

- ``SET seen:<login>:<id> <consumer> NX EX 86400`` claims the push; a push
  already claimed by another worker, or done, is acknowledged and skipped
  (the same push in the stream twice, or read by two workers);
- the claim becomes ``done`` once the push is handled, and the entry is
  acknowledged; a claim this worker made before it crashed is handled again
  (it never finished).

    python3 redis_worker.py [--url redis://localhost:6379/0] [--stream yadiskpush]
                            [--group workers] [--consumer NAME]
                            [--password-file FILE] [--once]

The consumer name must stay the same across restarts (the host name by
default): the pending entries are that consumer's. ``--once`` stops when no
entry is waiting, instead of blocking for more. Replace :func:`handle` with
your work; here it prints ``<login> <id> <changes>``.
"""

import argparse
import json
import socket
import sys

import redis

SEEN_SECONDS = 24 * 60 * 60
BATCH = 100
BLOCK_MS = 5000


def handle(login, notification):
    """Your work for one push (``notification`` is its JSON object)."""
    print(login, notification["id"], len(notification.get("changes", [])))
    sys.stdout.flush()


def ensureGroup(r, stream, group):
    """The consumer group, made (with the stream) if missing."""
    try:
        r.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise


def process(r, stream, group, consumer, entryId, fields):
    """Handle one entry at most once (see the module), then acknowledge it."""
    if fields:  # an entry trimmed by MAXLEN while pending has none
        login, pushId = fields["login"], fields["id"]
        key = f"seen:{login}:{pushId}"
        claimed = r.set(key, consumer, nx=True, ex=SEEN_SECONDS)
        if claimed or r.get(key) == consumer:
            handle(login, json.loads(fields["json"]))
            r.set(key, "done", ex=SEEN_SECONDS)
    r.xack(stream, group, entryId)


def run(r, stream, group, consumer, once=False):
    ensureGroup(r, stream, group)
    # "0": this consumer's pending entries first; then ">": new ones.
    since = "0"
    while True:
        block = None if since == "0" or once else BLOCK_MS
        reply = r.xreadgroup(group, consumer, {stream: since}, count=BATCH, block=block)
        entries = reply[0][1] if reply else []
        for entryId, fields in entries:
            process(r, stream, group, consumer, entryId, fields)
        if not entries:
            if since == "0":
                since = ">"
            elif once:
                return


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="redis://localhost:6379/0")
    parser.add_argument("--stream", default="yadiskpush")
    parser.add_argument("--group", default="workers")
    parser.add_argument("--consumer", default=socket.gethostname())
    parser.add_argument("--password-file")
    parser.add_argument("--once", action="store_true")
    args = parser.parse_args(argv)
    password = None
    if args.password_file:
        with open(args.password_file) as f:
            password = f.readline().rstrip("\r\n")
    r = redis.Redis.from_url(args.url, password=password, decode_responses=True)
    run(r, args.stream, args.group, args.consumer, once=args.once)


if __name__ == "__main__":
    main()
