package node

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cairn-csi/cairn/internal/testsupport/machinelock"
	"github.com/cairn-csi/cairn/internal/testsupport/proc"
	"github.com/cairn-csi/cairn/internal/testsupport/repo"
	"github.com/cairn-csi/cairn/test/e2e/cluster"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// requireNode skips unless the Kubernetes binaries are built and root can
// run containers: containerd is installed, or CAIRN_E2E_NODE=1 (then
// hack/node-deps.sh installs it). It returns the repository root and the
// binaries' folder.
func requireNode(t *testing.T) (root, bin string) {
	t.Helper()
	root = repo.Root(t)
	bin = filepath.Join(root, ".tools", "bin")
	for _, b := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kubectl"} {
		if !fileExecutable(filepath.Join(bin, b)) {
			t.Skipf("%s not built (hack/k8s-tools.sh)", b)
		}
	}
	if os.Geteuid() != 0 {
		t.Skip("a node needs root")
	}
	if os.Getenv("CAIRN_E2E_NODE") == "1" {
		cmd := exec.Command("bash", filepath.Join(root, "hack", "node-deps.sh"))
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("hack/node-deps.sh: %v", err)
		}
	} else if _, err := findBin(bin, "containerd"); err != nil {
		t.Skip("containerd not installed; set CAIRN_E2E_NODE=1 to install it (hack/node-deps.sh)")
	}
	return root, bin
}

// buildImages runs hack/images into dir and returns the tarballs.
func buildImages(t *testing.T, root, dir string) []string {
	t.Helper()
	cmd := exec.Command("go", "run", "./hack/images", "-out", dir)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go run ./hack/images: %v\n%s", err, out)
	}
	return []string{filepath.Join(dir, "busybox.tar"), filepath.Join(dir, "pause.tar")}
}

func readTunables() map[string]string {
	m := map[string]string{}
	for _, k := range kernelTunables {
		if b, err := os.ReadFile("/proc/sys/" + k); err == nil {
			m[k] = strings.TrimSpace(string(b))
		}
	}
	return m
}

// nodeTest is the set-up of a test that runs nodes: the binaries' folder,
// the machine held (Start takes it again; waiting for it is not part of
// timeout), a context that ends after timeout, a work folder, and the
// busybox and pause images.
func nodeTest(t *testing.T, timeout time.Duration) (bin string, ctx context.Context, work string, images []string) {
	root, bin := requireNode(t)
	unlock, err := machinelock.Exclusive(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(unlock)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	work = t.TempDir()
	return bin, ctx, work, buildImages(t, root, filepath.Join(work, "images"))
}

func TestPodRuns(t *testing.T) {
	bin, ctx, work, images := nodeTest(t, 8*time.Minute)

	// The machine as it was before any node ran: now, or, when an earlier
	// run was killed before it could Stop (Start then cleans up after it),
	// as that run recorded it.
	tunablesBefore := readTunables()
	_, rootStatErr := os.Stat(DefaultRootDir)
	rootExisted := rootStatErr == nil
	olds, err := loadStates()
	if err != nil {
		t.Fatal(err)
	}
	for _, old := range olds {
		t.Logf("%s: an earlier run did not stop; Start cleans up after it", old.file())
		for k, v := range old.Sysctls {
			tunablesBefore[k] = v
		}
		if old.RootDir == DefaultRootDir && old.CreatedRoot {
			rootExisted = false
		}
	}

	cfg := Config{BinDir: bin, WorkDir: filepath.Join(work, "node"), ImageTars: images}
	apiArgs, err := APIServerArgs(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	c, err := cluster.Start(ctx, cluster.Config{BinDir: bin, WorkDir: filepath.Join(work, "cluster"), ExtraAPIServerArgs: apiArgs})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	t.Logf("control plane started in %v", time.Since(t0).Round(time.Millisecond))

	cfg.Kubeconfig = c.AdminKubeconfig()
	k, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			if err := k.Stop(); err != nil {
				t.Errorf("Stop: %v", err)
			}
		}
	}()
	tm := k.Timings()
	t.Logf("node %s: containerd %v, images %v, kubelet healthy %v, node Ready %v, total %v",
		k.NodeName(), tm.Containerd.Round(time.Millisecond), tm.Images.Round(time.Millisecond),
		tm.KubeletReady.Round(time.Millisecond), tm.NodeReady.Round(time.Millisecond), tm.Total.Round(time.Millisecond))
	dumpLogs := func() {
		if t.Failed() {
			for _, f := range []string{filepath.Join(k.LogDir(), "kubelet.log"), filepath.Join(k.LogDir(), "containerd.log")} {
				t.Logf("--- end of %s:\n%s", f, proc.LogTail(f, 6000))
			}
		}
	}
	defer dumpLogs()

	// The kubelet's own API, with the apiserver's kubelet client
	// certificate (x509 authentication, webhook authorization).
	hc, base, err := k.KubeletClient()
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Get(base + "/pods")
	if err != nil {
		t.Fatalf("kubelet API: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("kubelet API GET /pods: %s", resp.Status)
	}

	client, err := kubernetes.NewForConfig(c.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	kubectl := func(args ...string) (string, error) {
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		out, err := exec.CommandContext(cctx, filepath.Join(bin, "kubectl"), append([]string{"--kubeconfig", c.AdminKubeconfig(), "--cache-dir", filepath.Join(work, "kubectl-cache")}, args...)...).CombinedOutput()
		return string(out), err
	}

	// 1. A pod on the pod network writes a file into an emptyDir, reads it
	// back and shows its address; its log comes through the apiserver.
	const writer = `
apiVersion: v1
kind: Pod
metadata:
  name: writer
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 5
  containers:
  - name: main
    image: docker.io/library/busybox:1.36
    imagePullPolicy: Never
    command: ["sh", "-c", "echo hello-from-pod > /data/f && sync && cat /data/f && ip -4 -o addr show eth0 && df /data"]
    volumeMounts:
    - name: data
      mountPath: /data
  volumes:
  - name: data
    emptyDir: {}
`
	if _, err := c.Apply(ctx, []byte(writer)); err != nil {
		t.Fatal(err)
	}
	tp := time.Now()
	pod := waitPod(ctx, t, client, "writer", func(p *corev1.Pod) bool {
		return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
	})
	t.Logf("pod writer finished in %v: phase %s, IP %s", time.Since(tp).Round(time.Millisecond), pod.Status.Phase, pod.Status.PodIP)
	if pod.Status.Phase != corev1.PodSucceeded {
		t.Fatalf("pod writer: %s: %+v", pod.Status.Phase, pod.Status.ContainerStatuses)
	}
	if pod.Spec.HostNetwork {
		t.Fatal("pod writer is on the host network")
	}
	_, podNet, _ := net.ParseCIDR(DefaultPodCIDR)
	if ip := net.ParseIP(pod.Status.PodIP); ip == nil || !podNet.Contains(ip) {
		t.Errorf("pod writer has IP %q, not one of %s", pod.Status.PodIP, DefaultPodCIDR)
	}
	logs, err := kubectl("logs", "writer")
	if err != nil {
		t.Fatalf("kubectl logs writer: %v: %s", err, logs)
	}
	t.Logf("kubectl logs writer:\n%s", logs)
	if !strings.Contains(logs, "hello-from-pod") {
		t.Errorf("kubectl logs writer: no hello-from-pod in %q", logs)
	}
	if pod.Status.PodIP != "" && !strings.Contains(logs, "inet "+pod.Status.PodIP+"/") {
		t.Errorf("kubectl logs writer: eth0 does not have the pod IP %s: %q", pod.Status.PodIP, logs)
	}

	// 2. A pod that keeps running; kubectl exec runs a command in it.
	const sleeper = `
apiVersion: v1
kind: Pod
metadata:
  name: sleeper
spec:
  terminationGracePeriodSeconds: 10
  containers:
  - name: main
    image: docker.io/library/busybox:1.36
    imagePullPolicy: Never
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
`
	if _, err := c.Apply(ctx, []byte(sleeper)); err != nil {
		t.Fatal(err)
	}
	tp = time.Now()
	waitPod(ctx, t, client, "sleeper", func(p *corev1.Pod) bool {
		if p.Status.Phase != corev1.PodRunning {
			return false
		}
		for _, cs := range p.Status.ContainerStatuses {
			if !cs.Ready {
				return false
			}
		}
		return true
	})
	t.Logf("pod sleeper running in %v", time.Since(tp).Round(time.Millisecond))
	out, err := kubectl("exec", "sleeper", "--", "echo", "hi")
	if err != nil {
		t.Fatalf("kubectl exec sleeper -- echo hi: %v: %s", err, out)
	}
	if strings.TrimSpace(out) != "hi" {
		t.Errorf("kubectl exec sleeper -- echo hi printed %q", out)
	}

	// 3. A pod with a memory-backed emptyDir (a tmpfs under the kubelet's
	// root) that is still running when the node stops: Stop must remove
	// its containers and mounts itself.
	const leftover = `
apiVersion: v1
kind: Pod
metadata:
  name: leftover
spec:
  containers:
  - name: main
    image: docker.io/library/busybox:1.36
    imagePullPolicy: Never
    command: ["sh", "-c", "echo x > /cache/x; sleep 3600"]
    volumeMounts:
    - name: cache
      mountPath: /cache
  volumes:
  - name: cache
    emptyDir:
      medium: Memory
`
	if _, err := c.Apply(ctx, []byte(leftover)); err != nil {
		t.Fatal(err)
	}
	waitPod(ctx, t, client, "leftover", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })
	if m := mountsUnder(k.RootDir()); len(m) == 0 {
		t.Errorf("no mounts under %s while pod leftover runs", k.RootDir())
	}

	// 4. Delete the first two pods; the kubelet confirms it (graceful: the
	// sleeper exits on SIGTERM).
	tp = time.Now()
	for _, name := range []string{"writer", "sleeper"} {
		if err := client.CoreV1().Pods("default").Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"writer", "sleeper"} {
		waitGone(ctx, t, client, name)
	}
	t.Logf("pods deleted in %v", time.Since(tp).Round(time.Millisecond))
	dumpLogs()

	// 5. Stop leaves nothing behind.
	ts := time.Now()
	stopped = true
	if err := k.Stop(); err != nil {
		t.Errorf("Stop: %v", err)
	}
	t.Logf("node stopped in %v", time.Since(ts).Round(time.Millisecond))
	for _, p := range processes() {
		joined := strings.Join(p.args, " ")
		switch {
		case p.comm == "kubelet", p.comm == "containerd" && strings.Contains(joined, cfg.WorkDir),
			strings.HasPrefix(p.comm, "containerd-shim") && strings.Contains(joined, cfg.WorkDir):
			t.Errorf("process left after Stop: %d %s %s", p.pid, p.comm, joined)
		}
	}
	for _, d := range []string{DefaultRootDir, cfg.WorkDir} {
		if m := mountsUnder(d); len(m) > 0 {
			t.Errorf("mounts left under %s: %v", d, m)
		}
	}
	if _, err := os.Stat(DefaultRootDir); !rootExisted && err == nil {
		t.Errorf("%s was created by Start and is still there", DefaultRootDir)
	}
	if _, err := os.Stat("/sys/class/net/" + DefaultBridge); err == nil {
		t.Errorf("bridge %s left", DefaultBridge)
	}
	for _, d := range k.host.CgroupDirs {
		if _, err := os.Stat(d); err == nil {
			t.Errorf("cgroup %s left", d)
		}
	}
	if _, err := os.Stat(stateFile); err == nil {
		t.Errorf("%s left", stateFile)
	}
	if after := readTunables(); fmt.Sprint(after) != fmt.Sprint(tunablesBefore) {
		t.Errorf("sysctls changed: before %v, after %v", tunablesBefore, after)
	}
}

func waitPod(ctx context.Context, t *testing.T, client kubernetes.Interface, name string, done func(*corev1.Pod) bool) *corev1.Pod {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		p, err := client.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
		if err == nil && done(p) {
			return p
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			status := corev1.PodStatus{}
			if p != nil {
				status = p.Status
			}
			t.Fatalf("pod %s: not done after 2m: %v; status %+v", name, err, status)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func waitGone(ctx context.Context, t *testing.T, client kubernetes.Interface, name string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		_, err := client.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("pod %s not gone after 2m: %v", name, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}
