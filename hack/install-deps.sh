#!/usr/bin/env bash
# Installs the system packages Cairn's demo, tests and benchmarks need on a
# Debian machine (gcc and libc6-dev for the race detector, cgo, of make test
# and make race; Debian's chromium for the web UI's browser tests). Does
# nothing when they are all present.
set -euo pipefail
need=()
for pair in mkfs.xfs:xfsprogs xfs_growfs:xfsprogs mkfs.ext4:e2fsprogs resize2fs:e2fsprogs \
            e2fsck:e2fsprogs dumpe2fs:e2fsprogs blkid:util-linux losetup:mount blockdev:util-linux \
            fio:fio gcc:gcc chromium:chromium; do
  cmd=${pair%%:*} pkg=${pair##*:}
  if ! command -v "$cmd" >/dev/null 2>&1 && ! [ -x "/sbin/$cmd" ] && ! [ -x "/usr/sbin/$cmd" ]; then
    need+=("$pkg")
  fi
done
# The C headers and start files gcc links the race runtime with.
[ -e /usr/include/stdlib.h ] || need+=(libc6-dev)
if [ ${#need[@]} -gt 0 ]; then
  mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
  echo "installing: ${need[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "need root to install ${need[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Loop devices: make sure the driver is loaded and the control node exists.
if ! [ -e /dev/loop-control ]; then
  modprobe loop 2>/dev/null || true
fi
