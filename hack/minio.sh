#!/usr/bin/env bash
# Builds the MinIO server that internal/objstore's S3 tests run against into
# the git-ignored tools folder .tools/bin/minio (from source, through the Go
# module proxy: no prebuilt download). Does nothing when the binary is already
# there at the pinned version (recorded in .tools/bin/minio.version).
#
# Usage: hack/minio.sh          # builds if needed; prints the binary's path
#        hack/minio.sh --check  # exit 0 if built at the pinned version, 1 if not
#        MINIO_VERSION=... hack/minio.sh
#
# A cold build (downloading ~300 modules and compiling them) takes about
# 10-13 minutes on a 2-core machine; later runs are instant.
set -euo pipefail

# Pinned pseudo-version of github.com/minio/minio (its newest served one when
# this was written). Bump deliberately; the stamp file makes the next run
# rebuild.
MINIO_VERSION=${MINIO_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bindir="$root/.tools/bin"
bin="$bindir/minio"
stamp="$bindir/minio.version"

built() { [ -x "$bin" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$MINIO_VERSION" ]; }

if [ "${1:-}" = "--check" ]; then
  built
  exit
fi
if built; then
  echo "$bin"
  exit 0
fi

mkdir -p "$bindir"
# Serialise concurrent builds (e.g. two test binaries starting at once).
exec 9>"$bindir/.minio.lock"
if command -v flock >/dev/null 2>&1; then
  flock 9
  # Someone else may have finished the build while we waited.
  if built; then
    echo "$bin"
    exit 0
  fi
fi

echo "building minio $MINIO_VERSION into $bindir (takes a few minutes)..." >&2
start=$(date +%s)
rm -f "$stamp"
# Build outside the module so its go.mod/go.work don't interfere; -trimpath
# keeps the binary reproducible. CGO is not needed.
(
  cd "$bindir"
  GOWORK=off GOFLAGS=-trimpath CGO_ENABLED=0 GOBIN="$bindir" \
    go install "github.com/minio/minio@$MINIO_VERSION"
)
echo "$MINIO_VERSION" >"$stamp"
echo "built minio in $(($(date +%s) - start))s" >&2
echo "$bin"
