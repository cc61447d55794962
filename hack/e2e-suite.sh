#!/usr/bin/env bash
# Builds the official Kubernetes e2e suite and its utility binary into the
# git-ignored tools folder .tools/bin, from source through the Go module
# proxy (no prebuilt downloads, no image registry):
#
#   e2e.test   go test -c k8s.io/kubernetes/test/e2e      (the whole suite;
#              Cairn runs its "External Storage" part, see docs/E2E-SUITE.md)
#   agnhost    k8s.io/kubernetes/test/images/agnhost      (static; packaged as
#              the registry.k8s.io/e2e-test-images/agnhost image by
#              `go run ./hack/images -out DIR -agnhost .tools/bin/agnhost`)
#
# Both come from the tools module hack/tools/e2e (k8s.io/kubernetes v1.36.3,
# staging replaces pinned to v0.36.3), kept apart from hack/tools/kube so the
# cluster binaries' stamp does not move when this module does. A stamp (hash
# of go.mod, go.sum and this script) makes later runs instant. A cold build of
# e2e.test takes a long time on 2 cores (see docs/E2E-SUITE.md for numbers):
# run it in the background, e.g.
#
#   nohup hack/e2e-suite.sh >/tmp/e2e-suite.log 2>&1 &
#
# Usage: hack/e2e-suite.sh           # build if the stamp is stale
#        hack/e2e-suite.sh --check   # exit 0 if built and current
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bindir="$root/.tools/bin"
dir="$root/hack/tools/e2e"
mkdir -p "$bindir"

# Same version stamp as hack/k8s-tools.sh: the suite prints it and compares
# it with the server's, and clients refuse v0.0.0-master.
KUBE_VERSION=v1.36.3
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION \
 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=36 \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION"

stamp_of() { cat "$dir/go.mod" "$dir/go.sum" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16; }
built() {
  [ -x "$bindir/e2e.test" ] && [ -x "$bindir/agnhost" ] &&
    [ -f "$bindir/.e2e.stamp" ] && [ "$(cat "$bindir/.e2e.stamp")" = "$(stamp_of)" ]
}

if [ "${1:-}" = "--check" ]; then
  built
  exit
fi
[ $# -eq 0 ] || { echo "usage: $0 [--check]" >&2; exit 2; }

exec 9>"$bindir/.e2e-suite.lock"
flock 9
built && exit 0

export GOWORK=off GOFLAGS=-trimpath CGO_ENABLED=0
start=$(date +%s)
echo "building agnhost into $bindir..." >&2
(cd "$dir" && go build -ldflags "$ldflags" -o "$bindir/agnhost.tmp" k8s.io/kubernetes/test/images/agnhost)
mv "$bindir/agnhost.tmp" "$bindir/agnhost"
echo "built agnhost in $(($(date +%s) - start))s; building e2e.test (cold: a long time on 2 cores)..." >&2
(cd "$dir" && go test -c -ldflags "$ldflags" -o "$bindir/e2e.test.tmp" k8s.io/kubernetes/test/e2e)
mv "$bindir/e2e.test.tmp" "$bindir/e2e.test"
stamp_of >"$bindir/.e2e.stamp"
echo "built e2e.test and agnhost in $(($(date +%s) - start))s" >&2
