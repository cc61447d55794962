#!/usr/bin/env bash
# Builds the Kubernetes parts the e2e runs use into the git-ignored tools
# folder .tools/bin, from source through the Go module proxy (no prebuilt
# downloads, no image registry):
#
#   kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl etcd
#                                    hack/tools/kube        (k8s.io/kubernetes)
#   csi-provisioner                  hack/tools/provisioner (external-provisioner/v6)
#   csi-resizer                      hack/tools/resizer     (external-resizer/v2)
#   csi-snapshotter snapshot-controller
#                                    hack/tools/snapshotter (external-snapshotter/v8)
#   csi-snapshot-metadata            hack/tools/snapshotmetadata
#                                    (external-snapshot-metadata v1.0.0, the CBT sidecar)
#   snapshot-metadata-lister         the same folder: a backup application's client
#                                    (upstream pkg/iterator) for the e2e runs
#
# Each folder is a tools module whose go.mod requires the upstream module and
# repeats its replace directives (local-path replaces pinned to the published
# versions). A stamp per module (hash of its go.mod and go.sum) makes later
# runs instant; a cold build takes tens of minutes on 2 cores.
#
# Usage: hack/k8s-tools.sh [module...]   # default: all modules
#        hack/k8s-tools.sh --check       # exit 0 if every module is built
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bindir="$root/.tools/bin"
mkdir -p "$bindir"

# Version stamped into the Kubernetes binaries: without it they report
# v0.0.0-master, which clients refuse to parse.
KUBE_VERSION=v1.36.3
kube_ldflags="-X k8s.io/component-base/version.gitVersion=$KUBE_VERSION \
 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=36 \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION"

all=(kube provisioner resizer snapshotter snapshotmetadata)

# A tools module's own programs (*.go) count too.
stamp_of() { cat "$root/hack/tools/$1/go.mod" "$root/hack/tools/$1/go.sum" "${BASH_SOURCE[0]}" $(find "$root/hack/tools/$1" -name '*.go' | sort) | sha256sum | cut -c1-16; }
built() { [ -f "$bindir/.$1.stamp" ] && [ "$(cat "$bindir/.$1.stamp")" = "$(stamp_of "$1")" ]; }

if [ "${1:-}" = "--check" ]; then
  for m in "${all[@]}"; do built "$m" || exit 1; done
  exit 0
fi

mods=("$@")
[ ${#mods[@]} -gt 0 ] || mods=("${all[@]}")

exec 9>"$bindir/.k8s-tools.lock"
flock 9

for m in "${mods[@]}"; do
  if built "$m"; then continue; fi
  dir="$root/hack/tools/$m"
  [ -f "$dir/go.mod" ] || { echo "unknown tools module $m" >&2; exit 2; }
  start=$(date +%s)
  echo "building $m tools into $bindir (cold: several minutes)..." >&2
  ldflags="-s -w"
  [ "$m" = kube ] && ldflags="$ldflags $kube_ldflags"
  [ "$m" = snapshotmetadata ] && ldflags="$ldflags -X main.version=v1.0.0"
  # Every tool directive of the module, built into bindir under its own name.
  mapfile -t pkgs < <(cd "$dir" && GOWORK=off go list -m -json >/dev/null && sed -n '/^tool (/,/^)/p;/^tool [^(]/p' go.mod | grep -oE '[a-z0-9.]+\.[a-z]+/[^ )]+' )
  for p in "${pkgs[@]}"; do
    name=$(basename "$p")
    case "$p" in go.etcd.io/etcd/server/v3) name=etcd ;; esac
    (cd "$dir" && GOWORK=off GOFLAGS=-trimpath CGO_ENABLED=0 go build -ldflags "$ldflags" -o "$bindir/$name.tmp" "$p")
    mv "$bindir/$name.tmp" "$bindir/$name"
  done
  stamp_of "$m" >"$bindir/.$m.stamp"
  echo "built $m (${pkgs[*]##*/}) in $(($(date +%s) - start))s" >&2
done
