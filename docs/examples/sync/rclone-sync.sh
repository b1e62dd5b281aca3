#!/bin/sh
# Make a local folder a copy of the Disk: one `rclone sync` per run.
#
#   twistd yadiskpush ... --exec /path/to/rclone-sync.sh --exec-on-start
#
# RCLONE_REMOTE: the rclone remote of the Disk (default "yandex:", made with
# `rclone config`); SYNC_DIR: the local copy (default ~/YandexDisk).
# Files deleted on the Disk are deleted here too; local edits are overwritten.
set -eu
remote=${RCLONE_REMOTE:-yandex:}
local=${SYNC_DIR:-$HOME/YandexDisk}
# The notifications on standard input are not needed: rclone compares all.
cat > /dev/null
exec rclone sync "$remote" "$local"
