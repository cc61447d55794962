#!/usr/bin/env bash
# Builds the Helm CLI that deploy/deploy_test.go and hack/render-manifests.sh
# use into the git-ignored tools folder .tools/bin/helm (from source, through
# the Go module proxy: no prebuilt download). Does nothing when the binary is
# already there at the pinned version (recorded in .tools/bin/helm.version).
#
# Usage: hack/helm.sh          # builds if needed; prints the binary's path
#        hack/helm.sh --check  # exit 0 if built at the pinned version, 1 if not
#        HELM_VERSION=... hack/helm.sh
#
# A cold build (downloading a few hundred modules and compiling them) took
# about 12 minutes on a busy 2-core machine; later runs are instant.
set -euo pipefail

# Pinned release of helm.sh/helm/v4. Bump deliberately; the stamp file makes
# the next run rebuild.
HELM_VERSION=${HELM_VERSION:-v4.3.1}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bindir="$root/.tools/bin"
bin="$bindir/helm"
stamp="$bindir/helm.version"

built() { [ -x "$bin" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$HELM_VERSION" ]; }

if [ "${1:-}" = "--check" ]; then
  built
  exit
fi
if built; then
  echo "$bin"
  exit 0
fi

mkdir -p "$bindir"
# Serialise concurrent builds (e.g. a test and render-manifests.sh at once).
exec 9>"$bindir/.helm.lock"
if command -v flock >/dev/null 2>&1; then
  flock 9
  # Someone else may have finished the build while we waited.
  if built; then
    echo "$bin"
    exit 0
  fi
fi

echo "building helm $HELM_VERSION into $bindir (takes a few minutes)..." >&2
start=$(date +%s)
rm -f "$stamp"
# Build outside the module so its go.mod/go.work don't interfere; -trimpath
# keeps the binary reproducible. CGO is not needed. The version is stamped so
# `helm version` reports it (otherwise it prints a development version).
(
  cd "$bindir"
  GOWORK=off GOFLAGS=-trimpath CGO_ENABLED=0 GOBIN="$bindir" \
    go install -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
)
echo "$HELM_VERSION" >"$stamp"
echo "built helm in $(($(date +%s) - start))s" >&2
echo "$bin"
