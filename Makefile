# Cairn — see README.md. Targets need root (loop devices, mounts).
GO ?= go
GOFLAGS ?=
TEST_TIMEOUT ?= 45m

.PHONY: all build demo test unit sanity integration bench deps tools vet clean

all: build

build:
	$(GO) build -o bin/cairn ./cmd/cairn

# Quick start: the mysql-pvc walkthrough on a loop-backed XFS data root.
demo: deps
	$(GO) run ./demo

# Everything CI runs: vet, unit tests, csi-sanity, integration tests.
test: deps tools vet
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...

unit:
	$(GO) test -count=1 ./internal/...

sanity:
	$(GO) test -count=1 -v ./test/sanity/

integration:
	$(GO) test -count=1 -v ./test/integration/

# Benchmarks (results in docs/BENCHMARKS.md): data path and snapshot
# latency, then backups.
bench: deps tools
	$(GO) run ./bench
	$(GO) run ./bench/backup

vet:
	$(GO) vet ./...

# System packages a fresh Debian machine needs (idempotent, quiet).
deps:
	@bash hack/install-deps.sh

# Test tools built from source into the git-ignored .tools/bin (cached).
tools:
	@bash hack/minio.sh >/dev/null
	@bash hack/helm.sh >/dev/null
	@bash hack/k8s-tools.sh

clean:
	rm -rf bin _out
