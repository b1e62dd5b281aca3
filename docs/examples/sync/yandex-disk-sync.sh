#!/bin/sh
# Let the official Yandex.Disk client catch up at once:
# `yandex-disk sync` synchronises its folder and exits.
#
#   twistd yadiskpush ... --exec /path/to/yandex-disk-sync.sh --exec-on-start
#
# YANDEX_DISK_DIR: its folder, if not the one of its configuration.
set -eu
cat > /dev/null
if [ -n "${YANDEX_DISK_DIR:-}" ]; then
    exec yandex-disk sync --dir="$YANDEX_DISK_DIR"
fi
exec yandex-disk sync
