#!/usr/bin/env bash
# Builds the MinIO server that internal/objstore's S3 tests run against into
# the git-ignored tools folder .tools/bin/minio, from source.
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

source "$(dirname "${BASH_SOURCE[0]}")/lib/go-tool.sh"
go_tool minio "$MINIO_VERSION" "github.com/minio/minio@$MINIO_VERSION" "" "${1:-}"
