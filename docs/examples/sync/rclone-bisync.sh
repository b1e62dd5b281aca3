#!/bin/sh
# Keep a local folder and the Disk in step both ways: one `rclone bisync`
# per run (run it once by hand with --resync first, as rclone asks).
#
#   twistd yadiskpush ... --exec /path/to/rclone-bisync.sh --exec-on-start
#
# RCLONE_REMOTE: the rclone remote of the Disk (default "yandex:");
# SYNC_DIR: the local folder (default ~/YandexDisk). Local changes are not
# pushed by the Disk: run this from a timer as well to send them up.
set -eu
remote=${RCLONE_REMOTE:-yandex:}
local=${SYNC_DIR:-$HOME/YandexDisk}
cat > /dev/null
exec rclone bisync "$remote" "$local"
