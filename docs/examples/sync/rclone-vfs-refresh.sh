#!/bin/sh
# Refresh a running `rclone mount` of the Disk, which otherwise shows stale
# listings: rclone's Yandex backend gets no change notification. Mount with
# the remote control on:  rclone mount yandex: ~/Disk --rc
#
#   twistd yadiskpush ... --exec /path/to/rclone-vfs-refresh.sh --exec-on-start
#
# Only the folders that changed are refreshed when there are at most
# VFS_REFRESH_MAX_DIRS of them (default 10); else, and for the start run,
# the whole mount. RCLONE_RC_URL: the mount's --rc-addr, if not the default.
set -eu
exec python3 -c '
import json, os, posixpath, sys

limit = int(os.environ.get("VFS_REFRESH_MAX_DIRS") or 10)
everything = os.environ.get("YADISKPUSH_REASON") == "start"
dirs = set()
for line in sys.stdin:
    changes = json.loads(line).get("changes") or []
    if not changes:
        everything = True  # a push that does not say what changed
    for change in changes:
        for path in (change.get("path"), change.get("from")):
            if path is None:
                continue
            if not path.startswith("/"):
                everything = True  # not a Disk path: trash:/, app:/ ...
                continue
            # The listing that changed is the one of the parent folder.
            parent = posixpath.dirname(path.rstrip("/")).strip("/")
            if not parent:
                everything = True
            dirs.add(parent)
args = ["rclone", "rc"]
if os.environ.get("RCLONE_RC_URL"):
    args += ["--url", os.environ["RCLONE_RC_URL"]]
args += ["vfs/refresh", "recursive=true"]
if not everything and len(dirs) <= limit:
    kept = []
    for d in sorted(dirs):
        # A folder inside one refreshed recursively is refreshed already.
        if not any(d.startswith(k + "/") for k in kept):
            kept.append(d)
    for n, d in enumerate(kept, 1):
        args.append(("dir=" if n == 1 else "dir%d=" % n) + d)
os.execvp(args[0], args)
'
