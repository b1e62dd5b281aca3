#!/bin/sh
# A desktop notification naming what changed on the Disk. Run the client in
# your session (a systemd user unit) so that notify-send reaches it.
#
#   twistd yadiskpush ... --exec /path/to/notify.sh
set -eu
exec python3 -c '
import json, os, sys

changes = []
for line in sys.stdin:
    changes.extend(json.loads(line).get("changes") or [])
count = len(changes)
if os.environ.get("YADISKPUSH_COUNT", "0") == "0":
    sys.exit(0)  # the start run: nothing to tell
lines = []
for change in changes[:5]:
    what = change.get("type") or "changed"
    if change.get("from"):
        lines.append("%s %s \u2192 %s" % (what, change["from"], change.get("path")))
    else:
        lines.append("%s %s" % (what, change.get("path") or "?"))
if count > 5:
    lines.append("and %d more" % (count - 5))
title = "Yandex.Disk: %s" % (
    "%d change%s" % (count, "" if count == 1 else "s") if count else "changed"
)
body = "\n".join(lines)
os.execvp("notify-send", ["notify-send", "--app-name=yadiskpush", title, body])
'
