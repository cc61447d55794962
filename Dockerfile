# syntax=docker/dockerfile:1
# Cairn CSI driver image: one static binary, /cairn, run with a subcommand
# (controller | node | standalone | ...), plus the tools the node service
# calls (mkfs.ext4, mkfs.xfs, resize2fs, xfs_growfs, blkid, mount).
#
#   docker build --build-arg VERSION=0.1.0 -t ghcr.io/cairn-csi/cairn:0.1.0 .

FROM golang:1.26-bookworm AS build
WORKDIR /src
# Download modules in their own layer so source edits reuse it.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X github.com/cairn-csi/cairn/internal/csi.Version=${VERSION}" \
      -o /out/cairn ./cmd/cairn

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends xfsprogs e2fsprogs util-linux mount ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/cairn /cairn
# The node DaemonSet runs this image privileged as root; the controller
# Deployment runs it as a non-root user (set in the pod's securityContext).
ENTRYPOINT ["/cairn"]
