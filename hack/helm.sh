#!/usr/bin/env bash
# Builds the Helm CLI that deploy/deploy_test.go and hack/render-manifests.sh
# use into the git-ignored tools folder .tools/bin/helm, from source.
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

source "$(dirname "${BASH_SOURCE[0]}")/lib/go-tool.sh"
# The version is stamped so `helm version` reports it (otherwise it prints a
# development version).
go_tool helm "$HELM_VERSION" "helm.sh/helm/v4/cmd/helm@$HELM_VERSION" \
  "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" "${1:-}"
