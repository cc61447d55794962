// Package e2e runs Cairn's Kubernetes mode against a real control plane
// (etcd, kube-apiserver, kube-controller-manager, kube-scheduler built from
// source) with the real sidecars and snapshot-controller, installed from
// the shipped manifests, and walks through what a user does: provision,
// snapshot, restore, clone, expand, back up, restore from a backup taken
// elsewhere, and the failure cases. `make e2e` runs it; it prints each
// step's duration and a summary.
package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	snapclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cairn-csi/cairn/internal/kube"
	"github.com/cairn-csi/cairn/internal/testsupport/harness"
	"github.com/cairn-csi/cairn/internal/testsupport/machinelock"
	"github.com/cairn-csi/cairn/internal/testsupport/scratchfs"
	"github.com/cairn-csi/cairn/test/e2e/cluster"
)

const (
	namespace = "cairn-system" // of the shipped manifests
	nodeName  = "node-a"
	driver    = "cairn.csi.dev"
	topoKey   = "topology.cairn.csi.dev/node"
)

// env is the running system under test.
type env struct {
	t       *testing.T
	ctx     context.Context
	root    string // repository root
	bins    string // .tools/bin
	cairn   string // the cairn binary under test
	work    string
	logs    string
	c       *cluster.Cluster
	kc      kubernetes.Interface
	snaps   snapclient.Interface
	cc      client.Client // Cairn's custom resources
	fs      *scratchfs.FS // the node's XFS data root
	mnt     string        // where the test stages and publishes, as kubelet would
	backups string        // the file backup target

	manifests []*unstructured.Unstructured // deploy/kustomize/base, rendered
	nodeName  string                       // the node cairn node serves
	// kubeletRoot is set when a real kubelet runs: cairn node then puts its
	// socket where kubelet looks and registers through plugins_registry.
	kubeletRoot string
	node        *process
	nodeSock    string
	replicas    []*replica
	steps       []stepResult
}

// replica is one controller pod: cairn controller and its sidecars.
type replica struct {
	pod   string
	procs []*process
}

type stepResult struct {
	name string
	took time.Duration
	err  string
}

// step runs one named step, timing it; a failed step fails the test and
// skips the rest.
func (e *env) step(name string, fn func() error) {
	e.t.Helper()
	if e.t.Failed() {
		e.steps = append(e.steps, stepResult{name: name, err: "skipped"})
		return
	}
	start := time.Now()
	err := fn()
	r := stepResult{name: name, took: time.Since(start)}
	if err != nil {
		r.err = err.Error()
	}
	e.steps = append(e.steps, r)
	status := "ok"
	if err != nil {
		status = "FAIL: " + err.Error()
	}
	fmt.Printf("e2e  %-72s %7.2fs  %s\n", name, r.took.Seconds(), status)
	if err != nil {
		e.t.Errorf("step %q: %v", name, err)
	}
}

func (e *env) summary() {
	pass, fail, skip := 0, 0, 0
	var total time.Duration
	for _, s := range e.steps {
		switch s.err {
		case "":
			pass++
		case "skipped":
			skip++
		default:
			fail++
		}
		total += s.took
	}
	verdict := "PASS"
	if fail > 0 || skip > 0 {
		verdict = "FAIL"
	}
	fmt.Printf("e2e  summary: %s — %d steps passed, %d failed, %d skipped, %.1fs\n", verdict, pass, fail, skip, total.Seconds())
	for _, s := range e.steps {
		if s.err != "" && s.err != "skipped" {
			fmt.Printf("e2e  failed: %s: %s\n", s.name, s.err)
		}
	}
}

// toolsReady says whether the Kubernetes binaries are built; with
// CAIRN_E2E=1 they are built now (make e2e and make test set it).
func toolsReady(t *testing.T, root string) bool {
	check := exec.Command("bash", filepath.Join(root, "hack/k8s-tools.sh"), "--check")
	if check.Run() == nil {
		return true
	}
	if os.Getenv("CAIRN_E2E") != "1" {
		return false
	}
	build := exec.Command("bash", filepath.Join(root, "hack/k8s-tools.sh"))
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		t.Fatalf("building the Kubernetes tools: %v", err)
	}
	return true
}

func newEnv(t *testing.T) *env { return newEnvNamed(t, "e2e", false, 20*time.Minute) }

// newEnvNamed is newEnv with the run's name, which names its log folder,
// for a run with a real node (realNode) or without, that may last up to
// timeout (e.ctx ends then).
func newEnvNamed(t *testing.T, name string, realNode bool, timeout time.Duration) *env {
	if os.Geteuid() != 0 {
		t.Fatal("the e2e run needs root (loop devices, mounts)")
	}
	root, err := harness.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	if !toolsReady(t, root) {
		t.Skip("Kubernetes tools not built: run `make e2e` (or CAIRN_E2E=1 go test ./test/e2e/), which builds them into .tools/bin")
	}
	// A real node's pods would pin the mounts of other tests on this
	// machine, so it runs alone; a run without one only keeps nodes away
	// (see machinelock). Waiting for the lock is not part of the run's time.
	lock := machinelock.Shared
	if realNode {
		lock = machinelock.Exclusive
	}
	unlock, err := lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(unlock) // after the clean-up below
	work := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	// Component logs stay in _out/e2e/logs (git-ignored) after the run.
	logs := filepath.Join(root, "_out", name, "logs")
	os.RemoveAll(logs)
	e := &env{t: t, ctx: ctx, root: root, bins: filepath.Join(root, ".tools/bin"), work: work, nodeName: nodeName,
		logs: logs, mnt: filepath.Join(work, "kubelet"), backups: filepath.Join(work, "backups")}
	for _, d := range []string{e.logs, e.mnt, e.backups} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		if t.Failed() {
			e.dumpLogs()
		}
		for _, r := range e.replicas {
			for _, p := range r.procs {
				p.kill()
			}
		}
		e.node.kill()
		if e.c != nil {
			e.c.Stop()
		}
		if e.fs != nil {
			harness.UnmountAll(e.mnt)
			harness.DetachLoops(e.fs.Mount)
			e.fs.Close()
		}
		cancel()
		e.summary()
	})
	return e
}

func (e *env) dumpLogs() {
	ents, _ := os.ReadDir(e.logs)
	for _, ent := range ents {
		b, _ := os.ReadFile(filepath.Join(e.logs, ent.Name()))
		if len(b) > 6000 {
			b = b[len(b)-6000:]
		}
		e.t.Logf("--- %s (tail) ---\n%s", ent.Name(), b)
	}
	if e.c != nil {
		for _, n := range []string{"kube-apiserver.log", "kube-controller-manager.log"} {
			b, _ := os.ReadFile(filepath.Join(e.c.LogDir(), n))
			if len(b) > 4000 {
				b = b[len(b)-4000:]
			}
			e.t.Logf("--- %s (tail) ---\n%s", n, b)
		}
	}
}

// startControlPlane starts the cluster and the clients.
func (e *env) startControlPlane() error {
	c, err := cluster.Start(e.ctx, cluster.Config{BinDir: e.bins, WorkDir: filepath.Join(e.work, "cluster")})
	if err != nil {
		return err
	}
	e.c = c
	return e.connect(c)
}

// connect makes the API clients for a running control plane.
func (e *env) connect(c *cluster.Cluster) error {
	cfg := c.RESTConfig()
	var err error
	if e.kc, err = kubernetes.NewForConfig(cfg); err != nil {
		return err
	}
	if e.snaps, err = snapclient.NewForConfig(cfg); err != nil {
		return err
	}
	e.cc, err = client.New(cfg, client.Options{Scheme: kube.Scheme})
	return err
}

// installPrerequisites installs what Cairn documents as prerequisites:
// the snapshot CRDs and snapshot-controller (with upstream's RBAC) from
// the external-snapshotter module.
func (e *env) installPrerequisites() error {
	if err := e.snapshotCRDsAndRBAC(); err != nil {
		return err
	}
	kcfg, err := e.c.ServiceAccountKubeconfig(e.ctx, "kube-system", "snapshot-controller")
	if err != nil {
		return err
	}
	p, err := startProcess(e.logs, "snapshot-controller", "", filepath.Join(e.bins, "snapshot-controller"),
		[]string{"--kubeconfig=" + kcfg, "--v=2", "--leader-election=false"}, nil)
	if err != nil {
		return err
	}
	e.replicas = append(e.replicas, &replica{pod: "snapshot-controller", procs: []*process{p}})
	return nil
}

// snapshotCRDsAndRBAC applies the snapshot CRDs and the
// snapshot-controller's RBAC from the external-snapshotter modules.
func (e *env) snapshotCRDsAndRBAC() error {
	client := goModDir(e.root, "github.com/kubernetes-csi/external-snapshotter/client/v8")
	crds, err := filepath.Glob(filepath.Join(client, "config/crd/*.yaml"))
	if err != nil || len(crds) == 0 {
		return fmt.Errorf("snapshot CRDs not found in %s: %v", client, err)
	}
	for _, f := range crds {
		if strings.HasSuffix(f, "kustomization.yaml") {
			continue
		}
		if err := e.applyFile(f); err != nil {
			return err
		}
	}
	return e.applyFile(filepath.Join(snapshotControllerDir(e.root), "rbac-snapshot-controller.yaml"))
}

// snapshotControllerDir is upstream's snapshot-controller manifest folder
// in the module cache.
func snapshotControllerDir(root string) string {
	snapshotter := goModDir(filepath.Join(root, "hack/tools/snapshotter"), "github.com/kubernetes-csi/external-snapshotter/v8")
	return filepath.Join(snapshotter, "deploy/kubernetes/snapshot-controller")
}

// goModDir is where the Go module cache holds module m as required by the
// module in dir.
func goModDir(dir, m string) string {
	cmd := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", m)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod")
	out, err := cmd.Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

func (e *env) applyFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if _, err := e.c.Apply(e.ctx, b); err != nil {
		return fmt.Errorf("apply %s: %w", path, err)
	}
	return nil
}

// installCairn applies the shipped kustomize base as a user would
// (kubectl apply -k), plus the example StorageClass and VolumeSnapshotClasses
// and a file backup target.
func (e *env) installCairn() error {
	out, err := exec.Command(filepath.Join(e.bins, "kubectl"), "kustomize", filepath.Join(e.root, "deploy/kustomize/base")).Output()
	if err != nil {
		return fmt.Errorf("kubectl kustomize deploy/kustomize/base: %w", err)
	}
	if e.manifests, err = e.c.Apply(e.ctx, out); err != nil {
		return err
	}
	for _, f := range []string{"storageclass.yaml", "volumesnapshotclass-snap.yaml", "volumesnapshotclass-backup.yaml"} {
		if err := e.applyFile(filepath.Join(e.root, "deploy/examples", f)); err != nil {
			return err
		}
	}
	target := fmt.Sprintf("apiVersion: cairn.csi.dev/v1alpha1\nkind: BackupTarget\nmetadata:\n  name: default\nspec:\n  url: file://%s\n", e.backups)
	_, err = e.c.Apply(e.ctx, []byte(target))
	return err
}

// registerNode does kubelet's part: the Node with its topology label and
// the CSINode that node-driver-registrar's registration leads to.
func (e *env) registerNode() error {
	return e.c.RegisterNode(e.ctx, nodeName, map[string]string{topoKey: nodeName}, []storagev1.CSINodeDriver{
		{Name: driver, NodeID: nodeName, TopologyKeys: []string{topoKey}},
	})
}

// startNode runs `cairn node` as the DaemonSet's container would, as the
// cairn-node ServiceAccount, on the XFS data root; extra env (CAIRN_FAULTS)
// is for fault injection.
func (e *env) startNode(extraEnv ...string) error {
	spec, err := podSpec(e.manifests, "DaemonSet", "cairn-node")
	if err != nil {
		return err
	}
	kcfg, err := e.c.ServiceAccountKubeconfig(e.ctx, namespace, "cairn-node")
	if err != nil {
		return err
	}
	sock := filepath.Join(e.work, "node-plugin")
	rewrite := map[string]string{"--data-root": e.fs.Mount, "--kubeconfig": kcfg, "--heartbeat-interval": "5s", "--v": "4"}
	if e.kubeletRoot != "" {
		// As on a real node: the socket in kubelet's plugin folder and,
		// instead of the node-driver-registrar sidecar, Cairn's own
		// registration.
		sock = filepath.Join(e.kubeletRoot, "plugins", driver)
		rewrite["--registration-dir"] = filepath.Join(e.kubeletRoot, "plugins_registry")
	}
	args, env, err := containerCommand(spec, "cairn", podEnv{namespace: namespace, podName: "cairn-node-test", nodeName: e.nodeName}, sock, rewrite)
	if err != nil {
		return err
	}
	e.nodeSock = filepath.Join(sock, "csi.sock")
	e.node, err = startProcess(e.logs, "cairn-node", "", e.cairn, args, append(env, extraEnv...))
	return err
}

// startReplica runs one controller pod: cairn controller plus the three
// sidecars with the Deployment's arguments, as cairn-controller, in a UTS
// namespace named after the pod (the sidecars' leader identity).
func (e *env) startReplica(pod string) (*replica, error) {
	r := &replica{pod: pod}
	for _, c := range controllerContainers {
		p, err := e.startContainer(pod, c)
		if err != nil {
			return nil, err
		}
		r.procs = append(r.procs, p)
	}
	e.replicas = append(e.replicas, r)
	return r, nil
}

// controllerContainers are the controller pod's containers, cairn first
// (the sidecars' binaries are in .tools/bin under their names).
var controllerContainers = []string{"cairn", "csi-provisioner", "csi-resizer", "csi-snapshotter"}

// startContainer runs one container of a controller pod (again, after
// a kill: a container restart).
func (e *env) startContainer(pod, container string) (*process, error) {
	spec, err := podSpec(e.manifests, "Deployment", "cairn-controller")
	if err != nil {
		return nil, err
	}
	kcfg, err := e.c.ServiceAccountKubeconfig(e.ctx, namespace, "cairn-controller")
	if err != nil {
		return nil, err
	}
	sock := filepath.Join(e.work, pod)
	pe := podEnv{namespace: namespace, podName: pod, nodeName: e.nodeName}
	bin := e.cairn
	rewrite := map[string]string{"--kubeconfig": kcfg}
	if container != "cairn" {
		bin = filepath.Join(e.bins, container)
		// Faster fail-over than the defaults (15s/10s/5s), for the test.
		rewrite["--leader-election-lease-duration"] = "6s"
		rewrite["--leader-election-renew-deadline"] = "4s"
		rewrite["--leader-election-retry-period"] = "1s"
		if container == "csi-provisioner" {
			rewrite["--capacity-poll-interval"] = "5s" // default 1m
		}
	} else {
		rewrite["--v"] = "4"
	}
	args, env, err := containerCommand(spec, container, pe, sock, rewrite)
	if err != nil {
		return nil, err
	}
	return startProcess(e.logs, pod+"-"+container, pod, bin, args, env)
}

// controllerPods waits for the Deployment's pods (created by the real
// deployment and replicaset controllers; nothing runs them here) and
// returns their names: the sidecars' capacity objects are owned through
// them (--capacity-ownerref-level=2).
func (e *env) controllerPods(n int) ([]string, error) {
	var names []string
	err := e.eventually(time.Minute, func() error {
		pods, err := e.kc.CoreV1().Pods(namespace).List(e.ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=controller"})
		if err != nil {
			return err
		}
		names = names[:0]
		for _, p := range pods.Items {
			if p.DeletionTimestamp == nil {
				names = append(names, p.Name)
			}
		}
		if len(names) < n {
			return fmt.Errorf("%d controller pods, want %d", len(names), n)
		}
		return nil
	})
	return names[:n], err
}

// stopRetrying ends an eventually loop at once (a final failure).
type stopRetrying struct{ err error }

func (s stopRetrying) Error() string { return s.err.Error() }

func backoffStop(err error) error { return stopRetrying{err} }

// eventually retries fn until it succeeds or d passes.
func (e *env) eventually(d time.Duration, fn func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := fn()
		if err == nil {
			return nil
		}
		var stop stopRetrying
		if errors.As(err, &stop) {
			return stop.err
		}
		if time.Now().After(deadline) || e.ctx.Err() != nil {
			return fmt.Errorf("after %s: %w", d, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}
