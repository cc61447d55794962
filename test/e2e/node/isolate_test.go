package node

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cairn-csi/cairn/internal/testsupport/proc"
	"github.com/cairn-csi/cairn/test/e2e/cluster"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

func TestIsolationChecks(t *testing.T) {
	for _, c := range []struct {
		iso  Isolation
		want string
	}{
		{Isolation{Name: "a", IP: "10.89.0.2"}, ""},
		{Isolation{Name: "", IP: "10.89.0.2"}, "Name"},
		{Isolation{Name: "Node-A", IP: "10.89.0.2"}, "Name"},
		{Isolation{Name: "toolongname", IP: "10.89.0.2"}, "Name"},
		{Isolation{Name: "a", IP: HostIP}, "IP"},
		{Isolation{Name: "a", IP: "10.89.1.2"}, "IP"},
		{Isolation{Name: "a", IP: "10.89.0.255"}, "IP"},
		{Isolation{Name: "a", IP: "fe80::1"}, "IP"},
		{Isolation{Name: "a", IP: "10.89.0.2", Binds: []Bind{{Source: "rel", Target: "/x"}}}, "Binds"},
	} {
		err := c.iso.check()
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%+v: %v", c.iso, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%+v: got %v, want an error naming %s", c.iso, err, c.want)
		}
	}
}

// Two isolated nodes of one control plane: each runs a pod, each pod has
// its node's pod network, reaches the apiserver through the kubernetes
// Service address, and sees its node's own bind-mounted folder; the
// apiserver reaches both kubelets (logs); Stop of one leaves the other
// running, and Stop of both leaves nothing behind.
func TestTwoIsolatedNodes(t *testing.T) {
	bin, ctx, work, images := nodeTest(t, 10*time.Minute)
	tunablesBefore := readTunables()

	var cfgs []Config
	var apiArgs []string
	var err error
	for i, name := range []string{"a", "b"} {
		data := filepath.Join(work, "data-"+name)
		if err := os.MkdirAll(data, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(data, "whoami"), []byte("node-"+name+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		cfg := Config{
			BinDir: bin, WorkDir: filepath.Join(work, name), ImageTars: images, PKIDir: filepath.Join(work, "node-pki"),
			PodCIDR:  fmt.Sprintf("10.244.%d.0/24", i),
			Isolated: &Isolation{Name: name, IP: fmt.Sprintf("10.89.0.%d", i+2), Binds: []Bind{{Source: data, Target: "/var/lib/cairn-e2e-iso"}}},
		}
		if apiArgs, err = APIServerArgs(cfg); err != nil {
			t.Fatal(err)
		}
		cfgs = append(cfgs, cfg)
	}
	c, err := cluster.Start(ctx, cluster.Config{BinDir: bin, WorkDir: filepath.Join(work, "cluster"),
		ExtraServingIPs:    []net.IP{net.ParseIP(HostIP)},
		ExtraAPIServerArgs: append(apiArgs, "--bind-address=0.0.0.0")})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	client, err := kubernetes.NewForConfig(c.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}

	var nodes []*Kubelet
	defer func() {
		for _, k := range nodes {
			if t.Failed() {
				for _, f := range []string{"kubelet.log", "containerd.log"} {
					t.Logf("--- %s %s:\n%s", k.NodeName(), f, proc.LogTail(filepath.Join(k.LogDir(), f), 4000))
				}
			}
			_ = k.Stop()
		}
	}()
	for _, cfg := range cfgs {
		cfg.Kubeconfig = c.AdminKubeconfig()
		k, err := Start(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, k)
		tm := k.Timings()
		t.Logf("node %s (%s): ready in %v", k.NodeName(), k.IP(), tm.Total.Round(time.Millisecond))
	}

	for i, k := range nodes {
		name := "probe-" + cfgs[i].Isolated.Name
		pod := fmt.Sprintf(`
apiVersion: v1
kind: Pod
metadata:
  name: %s
spec:
  nodeName: %s
  restartPolicy: Never
  containers:
  - name: main
    image: docker.io/library/busybox:1.36
    imagePullPolicy: Never
    command: ["sh", "-c", "cat /host/whoami && nc -w 10 $KUBERNETES_SERVICE_HOST $KUBERNETES_SERVICE_PORT </dev/null && echo apiserver-reachable"]
    volumeMounts:
    - name: host
      mountPath: /host
  volumes:
  - name: host
    hostPath:
      path: /var/lib/cairn-e2e-iso
`, name, k.NodeName())
		if _, err := c.Apply(ctx, []byte(pod)); err != nil {
			t.Fatal(err)
		}
		p := waitPod(ctx, t, client, name, func(p *corev1.Pod) bool {
			return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
		})
		_, podNet, _ := net.ParseCIDR(cfgs[i].PodCIDR)
		if ip := net.ParseIP(p.Status.PodIP); ip == nil || !podNet.Contains(ip) {
			t.Errorf("pod %s has IP %q, not one of its node's %s", name, p.Status.PodIP, podNet)
		}
		logs, err := client.CoreV1().Pods("default").GetLogs(name, &corev1.PodLogOptions{}).DoRaw(ctx)
		if err != nil {
			t.Fatalf("logs of %s (the apiserver dials kubelet %s): %v", name, k.IP(), err)
		}
		t.Logf("pod %s on %s (%s): %s", name, k.NodeName(), p.Status.PodIP, strings.ReplaceAll(strings.TrimSpace(string(logs)), "\n", " | "))
		if p.Status.Phase != corev1.PodSucceeded || !strings.Contains(string(logs), "node-"+cfgs[i].Isolated.Name) || !strings.Contains(string(logs), "apiserver-reachable") {
			t.Errorf("pod %s: phase %s, logs %q: want its node's folder and the apiserver reachable", name, p.Status.Phase, logs)
		}
	}

	// Pod to pod across nodes: a pod on node a reaches a pod on node b at
	// its pod IP (the host routes each node's pod network to the node).
	server := fmt.Sprintf(`
apiVersion: v1
kind: Pod
metadata:
  name: listener-b
spec:
  nodeName: %s
  containers:
  - name: main
    image: docker.io/library/busybox:1.36
    imagePullPolicy: Never
    command: ["sh", "-c", "while true; do echo from-pod-on-b | nc -l -p 9000; done"]
`, nodes[1].NodeName())
	if _, err := c.Apply(ctx, []byte(server)); err != nil {
		t.Fatal(err)
	}
	srv := waitPod(ctx, t, client, "listener-b", func(p *corev1.Pod) bool {
		return p.Status.Phase == corev1.PodRunning && p.Status.PodIP != ""
	})
	dialer := fmt.Sprintf(`
apiVersion: v1
kind: Pod
metadata:
  name: dialer-a
spec:
  nodeName: %s
  restartPolicy: Never
  containers:
  - name: main
    image: docker.io/library/busybox:1.36
    imagePullPolicy: Never
    command: ["sh", "-c", "for i in 1 2 3 4 5; do nc -w 5 %s 9000 </dev/null && exit 0; sleep 1; done; exit 1"]
`, nodes[0].NodeName(), srv.Status.PodIP)
	if _, err := c.Apply(ctx, []byte(dialer)); err != nil {
		t.Fatal(err)
	}
	p := waitPod(ctx, t, client, "dialer-a", func(p *corev1.Pod) bool {
		return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
	})
	logs, _ := client.CoreV1().Pods("default").GetLogs("dialer-a", &corev1.PodLogOptions{}).DoRaw(ctx)
	if p.Status.Phase != corev1.PodSucceeded || !strings.Contains(string(logs), "from-pod-on-b") {
		t.Errorf("pod dialer-a on %s -> %s:9000 on %s: phase %s, logs %q: want the other node's pod reachable",
			nodes[0].NodeName(), srv.Status.PodIP, nodes[1].NodeName(), p.Status.Phase, logs)
	}

	// Node a stops; node b keeps running pods.
	if err := nodes[0].Stop(); err != nil {
		t.Errorf("Stop %s: %v", nodes[0].NodeName(), err)
	}
	if _, err := os.Stat("/run/netns/cairn-a"); err == nil {
		t.Error("network namespace cairn-a left after its node stopped")
	}
	if _, err := os.Stat("/sys/class/net/" + HostBridge); err != nil {
		t.Errorf("host bridge gone while node b runs: %v", err)
	}
	n, err := client.CoreV1().Nodes().Get(ctx, nodes[1].NodeName(), metav1.GetOptions{})
	if err != nil || nodeUsable(n) != nil {
		t.Errorf("node b after node a stopped: %v %v", err, nodeUsable(n))
	}
	if err := nodes[1].Stop(); err != nil {
		t.Errorf("Stop %s: %v", nodes[1].NodeName(), err)
	}
	for _, p := range []string{"/run/netns", "/run/netns/cairn-b", "/sys/class/net/" + HostBridge, nsDir,
		"/var/lib/cairn-e2e-iso", strings.TrimSuffix(stateFile, ".json") + "-a.json", strings.TrimSuffix(stateFile, ".json") + "-b.json"} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s left after both nodes stopped", p)
		}
	}
	for _, k := range nodes {
		for _, d := range k.host.CgroupDirs {
			if _, err := os.Stat(d); err == nil {
				t.Errorf("cgroup %s left", d)
			}
		}
		if m := mountsUnder(k.cfg.WorkDir); len(m) > 0 {
			t.Errorf("mounts left under %s: %v", k.cfg.WorkDir, m)
		}
	}
	if out, _ := exec.Command("ip", "route", "show", "via", cfgs[0].Isolated.IP).Output(); len(out) > 0 {
		t.Errorf("host route left after the nodes stopped: %s", out)
	}
	if after := readTunables(); fmt.Sprint(after) != fmt.Sprint(tunablesBefore) {
		t.Errorf("sysctls changed: before %v, after %v", tunablesBefore, after)
	}
}
