# Sourced by the hack/*.sh scripts that build one Go tool from source
# (through the Go module proxy: no prebuilt download) into the git-ignored
# .tools/bin, with a version stamp so later runs are instant.
#
# go_tool NAME VERSION PACKAGE@VERSION LDFLAGS [--check]
#   prints the binary's path (building it first if needed); with --check,
#   exits 0 if it is built at VERSION and 1 if not.

go_tool() {
  local name=$1 version=$2 pkg=$3 ldflags=$4 mode=${5:-}
  local root bindir bin stamp
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
  bindir="$root/.tools/bin"
  bin="$bindir/$name"
  stamp="$bindir/$name.version"
  built() { [ -x "$bin" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$version" ]; }
  if [ "$mode" = "--check" ]; then
    built
    return
  fi
  if built; then
    echo "$bin"
    return 0
  fi
  mkdir -p "$bindir"
  # Serialise concurrent builds (e.g. two test binaries starting at once);
  # someone else may have finished the build while we waited.
  exec 9>"$bindir/.$name.lock"
  flock 9
  if built; then
    echo "$bin"
    return 0
  fi
  echo "building $name $version into $bindir (a cold build takes minutes)..." >&2
  local start
  start=$(date +%s)
  rm -f "$stamp"
  # Outside the module so its go.mod/go.work don't interfere; -trimpath
  # keeps the binary reproducible; CGO is not needed.
  (
    cd "$bindir"
    GOWORK=off GOFLAGS=-trimpath CGO_ENABLED=0 GOBIN="$bindir" go install -ldflags "$ldflags" "$pkg"
  )
  echo "$version" >"$stamp"
  echo "built $name in $(($(date +%s) - start))s" >&2
  echo "$bin"
}
