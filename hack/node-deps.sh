#!/usr/bin/env bash
# Installs the Debian packages a real one-node Kubernetes node needs
# (test/e2e/node): containerd, runc, the CNI plugins, a static busybox (the
# test images are built from it by hack/images), iptables (the kubelet
# sets up its KUBE- chains with it) and iproute2. Quiet and idempotent: it
# does nothing when every command is already there. See docs/NODE.md.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/sbin/$1" ] || [ -x "/usr/sbin/$1" ]; }
have containerd || need+=(containerd)
have ctr || need+=(containerd)
have runc || need+=(runc)
[ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] && [ -x /usr/lib/cni/loopback ] \
  || need+=(containernetworking-plugins)
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx sh \
  && ! ldd /bin/busybox >/dev/null 2>&1 || need+=(busybox-static)
have iptables || need+=(iptables)
have ip || need+=(iproute2) # test/e2e/node deletes the pods' bridge with it

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
if [ "$(id -u)" -ne 0 ]; then
  echo "node-deps: need root to install ${need[*]}" >&2
  exit 1
fi
echo "node-deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
# The package's own service must not start (there is no init here anyway,
# and the test runs its own containerd with its own config and sockets).
policy=/usr/sbin/policy-rc.d
own_policy=
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  own_policy=1
fi
trap 'rm -f "$log"; [ -z "$own_policy" ] || rm -f "$policy"' EXIT
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"; } >"$log" 2>&1; then
  cat "$log" >&2
  echo "node-deps: apt-get failed" >&2
  exit 1
fi
