# Cairn — see README.md. Targets need root (loop devices, mounts).
GO ?= go
GOFLAGS ?=
TEST_TIMEOUT ?= 45m
# How long make fuzz runs each fuzz target (make test: 3s each).
FUZZTIME ?= 30s
# Build tags of every test run (go test, go vet, hack/fuzz.sh): cairnfaults
# compiles in the crash points of internal/faults, which the crash and kill
# tests arm with CAIRN_FAULTS (they fail without it). make build's and the
# image's binary have none and ignore CAIRN_FAULTS; the demo and the
# benchmarks build through the test harness, with them compiled in but
# never armed.
TESTTAGS ?= cairnfaults
# The packages make test and make race run under the race detector (-race
# needs cgo: gcc and libc6-dev, installed by hack/install-deps.sh): every
# internal package with tests that links no Kubernetes client (found by go
# list, so new packages are included), except internal/backup and
# internal/objstore. Measured on this 2-core machine: building these with
# -race from an empty GOCACHE takes 70s and running them 25s; the whole of
# ./internal/... takes 6.5 min to build (client-go, controller-runtime,
# envtest) and, with backup (377s) and objstore (530s, MinIO), 24 min under
# load, more than CI's 60 min budget has left. Everything: make race
# RACEPKGS=./internal/...
RACEPKGS ?= $(shell $(GO) list -f '{{.ImportPath}}{{range .Deps}}{{if eq . "k8s.io/client-go/rest"}} KUBE{{end}}{{end}}{{if not .TestGoFiles}}{{if not .XTestGoFiles}} NOTESTS{{end}}{{end}}' ./internal/... | grep -v -e KUBE -e NOTESTS -e '/internal/backup$$' -e '/internal/objstore$$')

.PHONY: all build images demo test race fuzz stress unit sanity integration e2e e2e-node e2e-suite bench bench-cbt deps tools vet generate manifests clean

all: build

build:
	$(GO) build -o bin/cairn ./cmd/cairn

# Cairn's images as OCI archives in _out/images (cairn.tar and the
# sidecars'; see docs/IMAGES.md), built without Docker: the cairn binary,
# file-system tools from Debian packages, sidecars from their Go modules.
# IMAGE_TAG defaults to the chart's appVersion.
IMAGE_REGISTRY ?= ghcr.io/cairn-csi
IMAGE_TAG ?=
images: deps
	@bash hack/k8s-tools.sh provisioner resizer snapshotter snapshotmetadata
	$(GO) run ./hack/images -product -out _out/images -registry $(IMAGE_REGISTRY) $(if $(IMAGE_TAG),-tag $(IMAGE_TAG))

# Quick start: the mysql-pvc walkthrough on a loop-backed XFS data root.
demo: deps
	$(GO) run ./demo

# Everything CI runs: vet, unit tests, csi-sanity, integration tests, the
# Kubernetes e2e run, the unit packages again under the race detector, then
# every fuzz target for 3s.
test: deps tools vet
	CAIRN_E2E=1 CAIRN_E2E_NODE=1 $(GO) test -tags=$(TESTTAGS) -count=1 -timeout $(TEST_TIMEOUT) ./...
	CGO_ENABLED=1 $(GO) test -race -tags=$(TESTTAGS) -count=1 -timeout $(TEST_TIMEOUT) $(RACEPKGS)
	@FUZZTIME=3s GO=$(GO) TESTTAGS=$(TESTTAGS) bash hack/fuzz.sh

# The unit packages (RACEPKGS, see above) under the race detector.
race: deps
	CGO_ENABLED=1 $(GO) test -race -tags=$(TESTTAGS) -count=1 -timeout $(TEST_TIMEOUT) $(RACEPKGS)

# Every fuzz target in the repository (found by hack/fuzz.sh), FUZZTIME
# each: make fuzz FUZZTIME=10m.
fuzz:
	@FUZZTIME=$(FUZZTIME) GO=$(GO) TESTTAGS=$(TESTTAGS) bash hack/fuzz.sh

# The backup lock protocol under load (test/stress), against a filesystem
# target and a real MinIO, STRESS_TIME per target: make stress STRESS_TIME=10m.
STRESS_TIME ?= 60s
stress: deps tools
	STRESS_TIME=$(STRESS_TIME) $(GO) test -tags=$(TESTTAGS) -count=1 -v -timeout 0 -run 'TestStress' ./test/stress/

unit:
	$(GO) test -tags=$(TESTTAGS) -count=1 ./internal/...

sanity:
	$(GO) test -tags=$(TESTTAGS) -count=1 -v ./test/sanity/

integration:
	$(GO) test -tags=$(TESTTAGS) -count=1 -v ./test/integration/

# Kubernetes mode against a real control plane and the real sidecars,
# installed from deploy/ (prints each step and a summary).
e2e: deps tools
	CAIRN_E2E=1 $(GO) test -tags=$(TESTTAGS) -count=1 -v -timeout 30m -run 'TestKubernetesMode|TestCluster' ./test/e2e/...

# Real nodes (kubelet + containerd from Debian, installed by
# hack/node-deps.sh): the walkthrough with real pods on one node, the
# same with Cairn itself in pods (its images, helm install) on two
# isolated nodes, and the official suite.
e2e-node: deps tools
	CAIRN_E2E=1 CAIRN_E2E_NODE=1 $(GO) test -tags=$(TESTTAGS) -count=1 -v -timeout 60m -run 'TestRealNode|TestPodRuns|TestTwoIsolatedNodes|TestPodDeployed|TestExternalStorage' ./test/e2e/...

# The official suite alone, any selection of hack/e2e-suite.sh (default,
# more, slow, all); not part of make test past default. It runs against
# Cairn in pods (its images, helm install) on two isolated nodes; with
# E2E_CLUSTER=host against Cairn as host processes on one real node
# (docs/E2E-SUITE.md). E2E_PROCS: ginkgo processes (default 2 on the pod
# cluster, 1 on the host one). Example: make e2e-suite SELECTION=slow.
SELECTION ?= default
E2E_PROCS ?=
E2E_CLUSTER ?=
e2e-suite: deps tools
	CAIRN_E2E=1 CAIRN_E2E_NODE=1 E2E_SELECTION=$(SELECTION) E2E_PROCS=$(E2E_PROCS) E2E_CLUSTER=$(E2E_CLUSTER) \
		$(GO) test -tags=$(TESTTAGS) -count=1 -v -timeout 220m -run 'TestExternalStorage' ./test/e2e/

# Benchmarks (results in docs/BENCHMARKS.md): data path and snapshot
# latency, then backups.
bench: deps tools
	$(GO) run ./bench
	$(GO) run ./bench/backup

# Scale: writes right after snapshots (copy-on-write) with up to 1,000
# snapshots of one volume, and 1,000 volumes on one node (results in
# docs/BENCHMARKS.md; about 25 minutes, opt-in).
bench-scale: deps
	$(GO) run ./bench -skip-datapath -skip-snapshots -cow default -cow-snapshots 1000 -cow-runtime 2s -cow-gib 1 -scale 10,100,1000

# Changed-block tracking latency and exactness at 1 and 64 GiB (results
# in docs/CBT.md; about a minute, opt-in).
bench-cbt: deps
	$(GO) run ./bench/cbt

# Both builds: without the tag (what ships) and with it (what tests run).
vet:
	$(GO) vet ./...
	$(GO) vet -tags=$(TESTTAGS) ./...

# System packages a fresh Debian machine needs (idempotent, quiet).
deps:
	@bash hack/install-deps.sh

# Test tools built from source into the git-ignored .tools/bin (cached).
tools:
	@bash hack/minio.sh >/dev/null
	@bash hack/helm.sh >/dev/null
	@bash hack/k8s-tools.sh
	@bash hack/e2e-suite.sh

# After changing internal/kube/api: deepcopy code and CRDs.
generate:
	@bash hack/generate.sh

# After changing the Helm chart: the kustomize base and examples.
manifests:
	@bash hack/render-manifests.sh

clean:
	rm -rf bin _out
