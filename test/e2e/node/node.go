// Package node runs a real Kubernetes node on this machine for a test: a
// containerd (CRI) and a kubelet that registers with a control plane (for
// instance one from test/e2e/cluster), runs pods with a bridge pod
// network, and serves logs and exec to the apiserver.
//
// It needs root, cgroups, containerd, runc and the CNI plugins
// (hack/node-deps.sh installs them on Debian) and the kubelet binary
// (hack/k8s-tools.sh). There is no registry: images come from OCI
// tarballs (hack/images builds busybox and the pause image) and pods must
// use imagePullPolicy Never or IfNotPresent.
//
// Use:
//
//	cfg := node.Config{BinDir: bin, WorkDir: dir, ...}
//	args, _ := node.APIServerArgs(cfg)           // before the control plane starts
//	c, _ := cluster.Start(ctx, cluster.Config{..., ExtraAPIServerArgs: args})
//	cfg.Kubeconfig = c.AdminKubeconfig()
//	k, _ := node.Start(ctx, cfg)
//	defer k.Stop()
//
// Only one node runs on the host itself (the kubelet owns the kubepods
// cgroups and, by default, /var/lib/kubelet); several run side by side
// when each has Config.Isolated (its own network and mount namespaces,
// the way kind runs nodes). See docs/NODE.md.
package node

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cairn-csi/cairn/internal/testsupport/machinelock"
	"github.com/cairn-csi/cairn/internal/testsupport/proc"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// Defaults of Config.
const (
	DefaultRootDir      = "/var/lib/kubelet"
	DefaultSandboxImage = "registry.k8s.io/pause:3.10"
	DefaultPodCIDR      = "10.88.0.0/24"
	DefaultBridge       = "cairn0"
	// socketName ends the path of the containerd socket; it identifies
	// this package's containerd shims among the machine's processes.
	socketName = "cairn-containerd.sock"
)

// policy is how the node waits for its processes and reports their exits.
var policy = proc.Policy{ExitNote: "exited", TailBytes: 4000, CheckTimeout: 10 * time.Second, Poll: 250 * time.Millisecond}

// Config describes the node.
type Config struct {
	// BinDir holds kubelet. containerd, containerd-shim-runc-v2, ctr and
	// runc are taken from BinDir when there, else from PATH.
	BinDir string
	// WorkDir receives everything but the kubelet's root folder:
	// containerd/ (root and state), cni/, pki/, kubelet/ (config), pod-logs/,
	// logs/ (containerd.log, kubelet.log). Its path must be short enough
	// for a unix socket (under about 80 bytes).
	WorkDir string
	// Kubeconfig is the kubelet's kubeconfig (required by Start). The
	// admin kubeconfig of the test control plane will do: the kubelet
	// then acts as system:masters instead of system:node:<name>.
	Kubeconfig string
	// NodeName is the Node's name (--hostname-override). It must resolve
	// to 127.0.0.1 only, since the apiserver dials the kubelet by it.
	// Default: the host name if it does, else "localhost".
	NodeName string
	// RootDir is the kubelet's --root-dir. Default /var/lib/kubelet, where
	// CSI drivers expect it. It must not exist or be empty. Stop unmounts
	// everything below it and removes it (or empties it, if it was there).
	RootDir string
	// ImageTars are OCI or Docker archives imported into containerd's
	// k8s.io namespace before the kubelet starts.
	ImageTars []string
	// SandboxImage is the pod sandbox ("pause") image; it must be among
	// the imported images. Default registry.k8s.io/pause:3.10.
	SandboxImage string
	// PodCIDR is the bridge network's range. Default 10.88.0.0/24.
	PodCIDR string
	// Bridge is the name of the bridge the pods attach to. Default cairn0.
	Bridge string
	// ExtraKubeletArgs are appended to the kubelet's flags.
	ExtraKubeletArgs []string
	// ReadyTimeout bounds the wait for the Node to be Ready. Default 2m.
	ReadyTimeout time.Duration
	// PKIDir holds the kubelet CA, the apiserver's client certificate for
	// kubelets and each node's serving certificate. Nodes of one cluster
	// must share it (the apiserver trusts one kubelet CA). Default
	// <WorkDir>/pki.
	PKIDir string
	// Isolated, when set, runs the node in its own network and mount
	// namespaces (see Isolation); RootDir is then a path inside the mount
	// namespace, backed by <WorkDir>/root, and NodeName defaults to
	// cairn-<Name>.
	Isolated *Isolation
}

func (cfg *Config) defaults() error {
	if cfg.BinDir == "" || cfg.WorkDir == "" {
		return errors.New("node: Config.BinDir and Config.WorkDir are required")
	}
	wd, err := filepath.Abs(cfg.WorkDir)
	if err != nil {
		return err
	}
	cfg.WorkDir = wd
	if cfg.RootDir == "" {
		cfg.RootDir = DefaultRootDir
	}
	if cfg.RootDir, err = filepath.Abs(cfg.RootDir); err != nil {
		return err
	}
	if cfg.SandboxImage == "" {
		cfg.SandboxImage = DefaultSandboxImage
	}
	if cfg.PodCIDR == "" {
		cfg.PodCIDR = DefaultPodCIDR
	}
	if cfg.Bridge == "" {
		cfg.Bridge = DefaultBridge
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 2 * time.Minute
	}
	if cfg.PKIDir == "" {
		cfg.PKIDir = filepath.Join(cfg.WorkDir, "pki")
	}
	if iso := cfg.Isolated; iso != nil {
		if err := iso.check(); err != nil {
			return err
		}
		if cfg.NodeName == "" {
			cfg.NodeName = "cairn-" + iso.Name
		}
		return nil
	}
	if cfg.NodeName == "" {
		cfg.NodeName = "localhost"
		if h, err := os.Hostname(); err == nil && resolvesToLoopback(h) {
			cfg.NodeName = strings.ToLower(h)
		}
	}
	if !resolvesToLoopback(cfg.NodeName) {
		return fmt.Errorf("node: node name %q does not resolve to 127.0.0.1 only; the apiserver could not reach the kubelet", cfg.NodeName)
	}
	return nil
}

func resolvesToLoopback(name string) bool {
	addrs, err := net.LookupHost(name)
	if err != nil || len(addrs) == 0 {
		return false
	}
	for _, a := range addrs {
		if ip := net.ParseIP(a); ip == nil || !ip.Equal(net.IPv4(127, 0, 0, 1)) {
			return false
		}
	}
	return true
}

// APIServerArgs writes the node's certificates into PKIDir (unless
// there already) and returns the kube-apiserver flags that let the
// apiserver reach this kubelet (for logs, exec, port-forward):
// --kubelet-client-certificate/--kubelet-client-key (an identity in
// system:masters that the kubelet trusts), --kubelet-certificate-authority
// (the kubelet's serving certificate is verified for the node name and
// address) and --kubelet-preferred-address-types: Hostname (the apiserver
// dials the node name, which resolves to 127.0.0.1; the kubelet listens
// there only) or, for isolated nodes, InternalIP (Isolation.IP). Call it
// before the control plane starts, with the Config later given to Start;
// for several nodes, once per node (same PKIDir; the flags are the same).
func APIServerArgs(cfg Config) ([]string, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	p, err := ensurePKI(cfg.PKIDir, cfg.NodeName, cfg.ips())
	if err != nil {
		return nil, fmt.Errorf("node: certificates: %w", err)
	}
	if cfg.Isolated != nil {
		return p.apiServerArgs("InternalIP"), nil
	}
	return p.apiServerArgs("Hostname"), nil
}

// ips are the node's addresses besides 127.0.0.1.
func (cfg *Config) ips() []net.IP {
	if cfg.Isolated != nil {
		return []net.IP{net.ParseIP(cfg.Isolated.IP)}
	}
	return nil
}

// address is where the kubelet listens.
func (cfg *Config) address() string {
	if cfg.Isolated != nil {
		return cfg.Isolated.IP
	}
	return "127.0.0.1"
}

// Timings says how long the parts of Start took.
type Timings struct {
	Containerd   time.Duration // start until the CRI socket answers
	Images       time.Duration // importing ImageTars
	KubeletReady time.Duration // kubelet start until its healthz answers
	NodeReady    time.Duration // kubelet start until the Node is Ready and untainted
	Total        time.Duration
}

// Kubelet is a running node: containerd and kubelet. Stop it when done.
type Kubelet struct {
	cfg        Config
	logDir     string
	sock       string
	runcRoot   string
	client     kubernetes.Interface
	host       *hostState
	mu         sync.Mutex
	containerd *proc.Proc
	kubelet    *proc.Proc
	timings    Timings
	stopOnce   sync.Once
	stopErr    error
	unlock     func() // releases the machine lock (machinelock), at Stop
}

func newKubelet(cfg Config) *Kubelet {
	return &Kubelet{
		cfg:      cfg,
		logDir:   filepath.Join(cfg.WorkDir, "logs"),
		sock:     filepath.Join(cfg.WorkDir, socketName),
		runcRoot: filepath.Join(cfg.WorkDir, "runc"),
	}
}

// recovered is the Kubelet of an earlier run, from its state file, for
// stop to clean up after.
func recovered(h *hostState) *Kubelet {
	k := newKubelet(Config{BinDir: h.BinDir, WorkDir: h.WorkDir, RootDir: h.RootDir, Bridge: h.Bridge, Isolated: h.Isolated})
	k.host = h
	return k
}

// Start starts containerd, imports the images, starts the kubelet and
// waits until the Node is Ready and the scheduler may use it. ctx bounds
// the start only. On error nothing is left running.
func Start(ctx context.Context, cfg Config) (k *Kubelet, err error) {
	t0 := time.Now()
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	if cfg.Kubeconfig == "" {
		return nil, errors.New("node: Config.Kubeconfig is required")
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("node: needs root")
	}
	// One node at a time on a machine, and none while other tests mount
	// file systems: its pods would pin their mounts (see machinelock).
	unlock, err := machinelock.Exclusive(ctx)
	if err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	defer func() {
		if k == nil || err != nil {
			unlock()
		} else {
			k.unlock = unlock
		}
	}()
	bins := map[string]string{}
	for _, b := range []string{"kubelet", "containerd", "containerd-shim-runc-v2", "ctr", "runc"} {
		p, err := findBin(cfg.BinDir, b)
		if err != nil {
			if b == "kubelet" {
				return nil, fmt.Errorf("node: %w (build it with hack/k8s-tools.sh)", err)
			}
			return nil, fmt.Errorf("node: %w (install with hack/node-deps.sh)", err)
		}
		bins[b] = p
	}
	for _, p := range processes() {
		if p.comm != "kubelet" {
			continue
		}
		if cfg.Isolated == nil {
			return nil, fmt.Errorf("node: a kubelet is running already (pid %d): one node on the host (use Config.Isolated for more)", p.pid)
		}
		if hasArg(p.args, "--hostname-override", cfg.NodeName) {
			return nil, fmt.Errorf("node: a kubelet for node %s is running already (pid %d)", cfg.NodeName, p.pid)
		}
	}
	// An earlier run whose test process was killed left its state files:
	// undo what it left (orphaned shims and containers, mounts, cgroups,
	// namespaces, sysctls, folders) first.
	olds, err := loadStates()
	if err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	for _, old := range olds {
		if old.Owner == os.Getpid() {
			continue // a node of this test process, running
		}
		if err := recovered(old).stop(); err != nil {
			return nil, fmt.Errorf("node: cleaning up after an earlier run that did not stop: %w", err)
		}
	}
	sweepShims()

	k = newKubelet(cfg)
	if len(k.sock)+len(".ttrpc") >= 104 {
		return nil, fmt.Errorf("node: WorkDir %s is too long for a unix socket path", cfg.WorkDir)
	}
	restCfg, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("node: kubeconfig: %w", err)
	}
	if k.client, err = kubernetes.NewForConfig(restCfg); err != nil {
		return nil, err
	}
	pki, err := ensurePKI(cfg.PKIDir, cfg.NodeName, cfg.ips())
	if err != nil {
		return nil, fmt.Errorf("node: certificates: %w", err)
	}

	k.host = recordHost(cfg)
	if err := k.host.save(); err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	defer func() {
		if err != nil {
			k.Stop()
			k = nil
		}
	}()
	kubeconfig := cfg.Kubeconfig
	if iso := cfg.Isolated; iso != nil {
		// The kubelet's root folder is <WorkDir>/root, mounted at RootDir
		// in the node's mount namespace.
		if ents, err := os.ReadDir(k.dir("root")); err == nil && len(ents) > 0 {
			return k, fmt.Errorf("node: kubelet root folder %s is not empty (an earlier run's?); remove it", k.dir("root"))
		}
		addr, err := apiServerAddress(cfg.Kubeconfig)
		if err != nil {
			return k, fmt.Errorf("node: %w", err)
		}
		if err := os.MkdirAll(k.dir("kubelet"), 0o755); err != nil {
			return k, err
		}
		kubeconfig = k.dir("kubelet", "kubeconfig")
		if err := nodeKubeconfig(cfg.Kubeconfig, addr, kubeconfig); err != nil {
			return k, fmt.Errorf("node: %w", err)
		}
		if err := iso.setUp(cfg.WorkDir, cfg.RootDir, addr, cfg.PodCIDR); err != nil {
			return k, err
		}
	} else if ents, err := os.ReadDir(cfg.RootDir); err == nil && len(ents) > 0 {
		// The root folder must be new or empty: Stop clears it.
		return k, fmt.Errorf("node: kubelet root folder %s is not empty (another kubelet's?); remove it or set Config.RootDir", cfg.RootDir)
	} else if errors.Is(err, os.ErrNotExist) {
		k.host.CreatedRoot = true
		if err := k.host.save(); err != nil {
			return k, err
		}
		if err := os.MkdirAll(cfg.RootDir, 0o750); err != nil {
			return k, err
		}
	}
	for _, d := range []string{k.logDir, k.dir("cni", "net.d"), k.dir("kubelet"), k.dir("pod-logs"), k.dir("volume-plugins"), k.runcRoot} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return k, err
		}
	}

	// containerd
	tc := time.Now()
	if err := k.writeContainerdConfig(bins); err != nil {
		return k, err
	}
	if err := k.writeCNIConfig(); err != nil {
		return k, err
	}
	if k.containerd, err = k.start("containerd", bins["containerd"], "--config", k.dir("containerd.toml")); err != nil {
		return k, err
	}
	if err := policy.WaitFor(ctx, k.containerd, 60*time.Second, func(ctx context.Context) error {
		_, err := k.Ctr(ctx, "version")
		return err
	}); err != nil {
		return k, err
	}
	k.timings.Containerd = time.Since(tc)

	ti := time.Now()
	for _, tar := range cfg.ImageTars {
		if out, err := k.Ctr(ctx, "images", "import", tar); err != nil {
			return k, fmt.Errorf("node: import %s: %w\n%s", tar, err, out)
		}
	}
	if out, err := k.Ctr(ctx, "images", "ls", "-q"); err != nil || !containsLine(out, cfg.SandboxImage) {
		return k, fmt.Errorf("node: sandbox image %s is not in containerd (import it with Config.ImageTars): %v", cfg.SandboxImage, err)
	}
	k.timings.Images = time.Since(ti)

	// kubelet
	ports, err := proc.FreePorts(2)
	if err != nil {
		return k, err
	}
	if err := k.writeKubeletConfig(pki, ports[0], ports[1]); err != nil {
		return k, err
	}
	args := []string{
		"--config=" + k.dir("kubelet", "config.yaml"),
		"--kubeconfig=" + kubeconfig,
		"--root-dir=" + cfg.RootDir,
		"--cert-dir=" + k.dir("kubelet", "pki"),
		"--hostname-override=" + cfg.NodeName,
		"--v=2",
	}
	if iso := cfg.Isolated; iso != nil {
		args = append(args, "--node-ip="+iso.IP, "--cgroup-root="+iso.cgroupRoot())
	}
	args = append(args, cfg.ExtraKubeletArgs...)
	tk := time.Now()
	if k.kubelet, err = k.start("kubelet", bins["kubelet"], args...); err != nil {
		return k, err
	}
	healthz := "http://" + net.JoinHostPort(cfg.address(), strconv.Itoa(ports[1])) + "/healthz"
	if err := policy.WaitFor(ctx, k.kubelet, 60*time.Second, func(ctx context.Context) error {
		return proc.HTTPOK(ctx, http.DefaultClient, healthz)
	}); err != nil {
		return k, err
	}
	k.timings.KubeletReady = time.Since(tk)
	if err := policy.WaitFor(ctx, k.kubelet, cfg.ReadyTimeout, func(ctx context.Context) error {
		n, err := k.client.CoreV1().Nodes().Get(ctx, cfg.NodeName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		return nodeUsable(n)
	}); err != nil {
		return k, err
	}
	k.timings.NodeReady = time.Since(tk)
	k.timings.Total = time.Since(t0)
	return k, nil
}

// nodeUsable is nil once the node is Ready and has no taint that keeps
// ordinary pods away (the node lifecycle controller removes not-ready
// a moment after Ready).
func nodeUsable(n *corev1.Node) error {
	ready := false
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			if c.Status != corev1.ConditionTrue {
				return fmt.Errorf("node %s not Ready: %s: %s", n.Name, c.Reason, c.Message)
			}
			ready = true
		}
	}
	if !ready {
		return fmt.Errorf("node %s has no Ready condition yet", n.Name)
	}
	for _, t := range n.Spec.Taints {
		if t.Effect == corev1.TaintEffectNoSchedule || t.Effect == corev1.TaintEffectNoExecute {
			return fmt.Errorf("node %s has taint %s", n.Name, t.Key)
		}
	}
	return nil
}

func (k *Kubelet) dir(parts ...string) string {
	return filepath.Join(append([]string{k.cfg.WorkDir}, parts...)...)
}

func (k *Kubelet) start(name, bin string, args ...string) (*proc.Proc, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if iso := k.cfg.Isolated; iso != nil {
		bin, args = iso.wrap(bin, args...)
	}
	return proc.Start(k.logDir, name, bin, args...)
}

// NodeName returns the Node's name.
func (k *Kubelet) NodeName() string { return k.cfg.NodeName }

// RootDir returns the kubelet's root folder.
func (k *Kubelet) RootDir() string { return k.cfg.RootDir }

// LogDir returns the folder of containerd.log and kubelet.log.
func (k *Kubelet) LogDir() string { return k.logDir }

// ContainerdSocket returns the path of containerd's (CRI) socket.
func (k *Kubelet) ContainerdSocket() string { return k.sock }

// Timings says how long Start took, part by part.
func (k *Kubelet) Timings() Timings { return k.timings }

// Ctr runs ctr against this node's containerd in namespace k8s.io and
// returns its combined output.
func (k *Kubelet) Ctr(ctx context.Context, args ...string) (string, error) {
	bin, err := findBin(k.cfg.BinDir, "ctr")
	if err != nil {
		return "", err
	}
	cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(cctx, bin, append([]string{"--address", k.sock, "--namespace", "k8s.io"}, args...)...).CombinedOutput()
	return string(out), err
}

// writeContainerdConfig writes containerd.toml (config version 2, which
// containerd 1.6, 1.7 and 2.x read): everything under WorkDir/containerd,
// the CRI plugin with the local sandbox image, restrict_oom_score_adj
// (the sandbox has no CAP_SYS_RESOURCE), cgroupfs, the bridge CNI
// network, and network namespaces under the state folder.
func (k *Kubelet) writeContainerdConfig(bins map[string]string) error {
	q := strconv.Quote
	conf := fmt.Sprintf(`version = 2
root = %s
state = %s
oom_score = 0

[grpc]
  address = %s

[ttrpc]
  address = %s

[debug]
  level = "info"

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = %s
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = %s
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          BinaryName = %s
          Root = %s
          SystemdCgroup = false
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = %s
      max_conf_num = 1
`, q(k.dir("containerd", "root")), q(k.dir("containerd", "state")), q(k.sock), q(k.sock+".ttrpc"),
		q(k.dir("containerd", "opt")), q(k.cfg.SandboxImage), q(bins["runc"]), q(k.runcRoot), q(k.dir("cni", "net.d")))
	return os.WriteFile(k.dir("containerd.toml"), []byte(conf), 0o644)
}

// writeCNIConfig writes the pod network: a bridge with the node's side as
// gateway (the node reaches pod IPs), host-local addresses from PodCIDR
// kept under WorkDir. On the host: no masquerading and no default route
// (pods reach the node and each other, nothing beyond). Isolated: a
// default route and masquerading behind the node's address, so pods
// reach the host (the apiserver) and the other nodes. containerd adds the
// loopback interface itself (the loopback plugin from the same bin
// folder).
func (k *Kubelet) writeCNIConfig() error {
	iso := k.cfg.Isolated != nil
	conf := fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "cairn-e2e",
  "plugins": [
    {
      "type": "bridge",
      "bridge": %q,
      "isGateway": true,
      "isDefaultGateway": %t,
      "ipMasq": %t,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": %q,
        "ranges": [[{"subnet": %q}]]
      }
    }
  ]
}
`, k.cfg.Bridge, iso, iso, k.dir("cni", "ipam"), k.cfg.PodCIDR)
	return os.WriteFile(k.dir("cni", "net.d", "10-cairn-e2e.conflist"), []byte(conf), 0o644)
}

// writeKubeletConfig writes the KubeletConfiguration: cgroupfs on cgroup
// v1, swap tolerated, containerd's socket, x509 (the cluster's CA and the
// node's CA) plus webhook authentication and webhook authorization, a
// serving certificate for the node name, listening on 127.0.0.1 only,
// no static pods, pod logs and the flex volume folder under WorkDir, and
// eviction and image garbage collection relaxed so that a busy test
// machine neither evicts pods nor deletes the imported images.
func (k *Kubelet) writeKubeletConfig(p *pki, port, healthzPort int) error {
	// The kubelet accepts client certificates of the cluster's CA (taken
	// from the kubeconfig) and of the node's CA (the apiserver's client
	// certificate for kubelets).
	kc, err := clientcmd.LoadFromFile(k.cfg.Kubeconfig)
	if err != nil {
		return err
	}
	var bundle bytes.Buffer
	if ctx := kc.Contexts[kc.CurrentContext]; ctx != nil {
		if cl := kc.Clusters[ctx.Cluster]; cl != nil {
			ca := cl.CertificateAuthorityData
			if len(ca) == 0 && cl.CertificateAuthority != "" {
				if ca, err = os.ReadFile(cl.CertificateAuthority); err != nil {
					return err
				}
			}
			bundle.Write(ca)
		}
	}
	nodeCA, err := os.ReadFile(p.caCert)
	if err != nil {
		return err
	}
	bundle.Write(nodeCA)
	clientCA := k.dir("kubelet", "client-ca.crt")
	if err := os.WriteFile(clientCA, bundle.Bytes(), 0o644); err != nil {
		return err
	}
	resolv := "/etc/resolv.conf"
	if _, err := os.Stat(resolv); err != nil {
		resolv = ""
	}
	conf := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: %s
port: %d
readOnlyPort: 0
healthzBindAddress: %s
healthzPort: %d
tlsCertFile: %q
tlsPrivateKeyFile: %q
rotateCertificates: false
serverTLSBootstrap: false
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
    cacheTTL: 10s
  x509:
    clientCAFile: %q
authorization:
  mode: Webhook
  webhook:
    cacheAuthorizedTTL: 10s
    cacheUnauthorizedTTL: 5s
containerRuntimeEndpoint: %q
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
cgroupsPerQOS: true
enforceNodeAllocatable: ["pods"]
resolvConf: %q
clusterDomain: cluster.local
podLogsDir: %q
volumePluginDir: %q
registerNode: true
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "1%%"
  nodefs.inodesFree: "1%%"
  imagefs.available: "1%%"
  imagefs.inodesFree: "1%%"
evictionPressureTransitionPeriod: 10s
nodeStatusUpdateFrequency: 5s
syncFrequency: 10s
runtimeRequestTimeout: 2m
shutdownGracePeriod: 0s
logging:
  format: text
`, k.cfg.address(), port, k.cfg.address(), healthzPort, p.servingCert, p.servKey, clientCA, "unix://"+k.sock, resolv,
		k.dir("pod-logs"), k.dir("volume-plugins"))
	return os.WriteFile(k.dir("kubelet", "config.yaml"), []byte(conf), 0o644)
}

// Stop stops the kubelet, every container it started, and containerd;
// unmounts everything under the kubelet's root folder and WorkDir;
// removes the kubepods cgroups, the bridge, the kubelet's iptables chains
// and the folders Start created outside WorkDir; and puts back the
// sysctls the kubelet changed. It may be called more than once and
// returns what it could not undo.
func (k *Kubelet) Stop() error {
	k.stopOnce.Do(func() {
		k.stopErr = k.stop()
		if k.unlock != nil {
			k.unlock()
		}
	})
	return k.stopErr
}

func (k *Kubelet) stop() error {
	var errs []error
	k.mu.Lock()
	kubelet, containerd := k.kubelet, k.containerd
	k.mu.Unlock()
	if kubelet != nil {
		kubelet.Stop(5 * time.Second)
	}
	if containerd != nil && !containerd.Exited() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		errs = append(errs, k.removeContainers(ctx))
		cancel()
	}
	if containerd != nil {
		containerd.Stop(5 * time.Second)
	}
	// What is left: shims whose containerd is gone, runc containers,
	// processes in the pods' cgroups.
	killShims(k.sock)
	if runc, err := findBin(k.cfg.BinDir, "runc"); err == nil {
		if out, err := exec.Command(runc, "--root", k.runcRoot, "list", "-q").Output(); err == nil {
			for _, id := range strings.Fields(string(out)) {
				_ = exec.Command(runc, "--root", k.runcRoot, "delete", "--force", id).Run()
			}
		}
	}
	if k.host != nil {
		errs = append(errs, k.host.killCgroups())
	}
	// The machine-wide things (sysctls, folders at fixed places, the
	// host bridge) go back with the last node.
	last := k.host == nil || k.host.last()
	if iso := k.cfg.Isolated; iso != nil {
		// Its processes are gone: the namespaces and what is mounted in
		// them go with their files.
		errs = append(errs, iso.tearDown(last), unmountAll(k.cfg.WorkDir))
	} else {
		errs = append(errs, unmountAll(k.cfg.RootDir), unmountAll(k.cfg.WorkDir))
		if _, err := os.Stat("/sys/class/net/" + k.cfg.Bridge); err == nil {
			if out, err := exec.Command("ip", "link", "delete", k.cfg.Bridge).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("delete bridge %s: %v: %s", k.cfg.Bridge, err, out))
			}
		}
	}
	if k.host == nil {
		return errors.Join(errs...)
	}
	if last {
		errs = append(errs, k.host.restore())
		for _, p := range k.host.Absent {
			if p == k.cfg.RootDir && k.cfg.Isolated == nil {
				continue
			}
			if p == "/run/containerd" && otherContainerd(k.sock) {
				continue
			}
			errs = append(errs, removeTree(p))
		}
	}
	if k.cfg.Isolated != nil {
		// <WorkDir>/root was the root folder; WorkDir is the caller's.
	} else if k.host.CreatedRoot {
		errs = append(errs, removeTree(k.cfg.RootDir))
	} else if err := unmountAll(k.cfg.RootDir); err != nil {
		errs = append(errs, err)
	} else {
		// The root folder was there, empty: empty it again.
		ents, _ := os.ReadDir(k.cfg.RootDir)
		for _, e := range ents {
			errs = append(errs, os.RemoveAll(filepath.Join(k.cfg.RootDir, e.Name())))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	// Everything is undone: the next Start has nothing to recover.
	if err := os.Remove(k.host.file()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// removeContainers kills and deletes every task and container in
// containerd's k8s.io namespace (pods and their sandboxes), so no shim
// stays behind.
func (k *Kubelet) removeContainers(ctx context.Context) error {
	out, err := k.Ctr(ctx, "containers", "ls", "-q")
	if err != nil {
		return fmt.Errorf("list containers: %v: %s", err, out)
	}
	var errs []error
	for _, id := range strings.Fields(out) {
		_, _ = k.Ctr(ctx, "tasks", "kill", "--all", "--signal", "SIGKILL", id)
		var terr error
		for range 50 {
			var o string
			o, terr = k.Ctr(ctx, "tasks", "delete", "--force", id)
			if terr == nil || strings.Contains(o, "not found") {
				terr = nil
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if terr != nil {
			errs = append(errs, fmt.Errorf("delete task %s: %w", id, terr))
		}
		if o, err := k.Ctr(ctx, "containers", "delete", id); err != nil && !strings.Contains(o, "not found") {
			errs = append(errs, fmt.Errorf("delete container %s: %v: %s", id, err, o))
		}
	}
	return errors.Join(errs...)
}

// killShims SIGKILLs the containerd shims started for the containerd at
// sock.
func killShims(sock string) {
	for _, p := range processes() {
		if strings.HasPrefix(p.comm, "containerd-shim") && hasArg(p.args, "-address", sock) {
			_ = syscall.Kill(p.pid, syscall.SIGKILL)
		}
	}
}

// sweepShims kills shims of this package's earlier containerds that are
// gone (a test process that was killed cannot Stop).
func sweepShims() {
	for _, p := range processes() {
		if !strings.HasPrefix(p.comm, "containerd-shim") {
			continue
		}
		for i, a := range p.args {
			if a == "-address" && i+1 < len(p.args) && strings.HasSuffix(p.args[i+1], "/"+socketName) {
				if _, err := os.Stat(p.args[i+1]); err != nil {
					_ = syscall.Kill(p.pid, syscall.SIGKILL)
				}
			}
		}
	}
}

// otherContainerd reports whether a containerd other than the one at sock
// is running (it may use /run/containerd).
func otherContainerd(sock string) bool {
	for _, p := range processes() {
		if p.comm == "containerd" || strings.HasPrefix(p.comm, "containerd-shim") {
			if !strings.Contains(strings.Join(p.args, " "), filepath.Dir(sock)) {
				return true
			}
		}
	}
	return false
}

func containsLine(s, line string) bool {
	for _, l := range strings.Split(s, "\n") {
		if strings.TrimSpace(l) == line {
			return true
		}
	}
	return false
}

func findBin(binDir, name string) (string, error) {
	if p := filepath.Join(binDir, name); fileExecutable(p) {
		return p, nil
	}
	return exec.LookPath(name)
}

func fileExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
}

// KubeletClient returns an HTTPS client and base URL for the kubelet's own
// API, authenticating with the apiserver's kubelet client certificate (a
// test may call /pods, /stats/summary, ...).
func (k *Kubelet) KubeletClient() (*http.Client, string, error) {
	p := pkiPaths(k.cfg.PKIDir, k.cfg.NodeName)
	cert, err := tls.LoadX509KeyPair(p.apiClientCert, p.apiKey)
	if err != nil {
		return nil, "", err
	}
	caPEM, err := os.ReadFile(p.caCert)
	if err != nil {
		return nil, "", err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	n, err := k.client.CoreV1().Nodes().Get(context.Background(), k.cfg.NodeName, metav1.GetOptions{})
	if err != nil {
		return nil, "", err
	}
	port := n.Status.DaemonEndpoints.KubeletEndpoint.Port
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		Certificates: []tls.Certificate{cert}, RootCAs: pool, ServerName: k.cfg.NodeName,
	}}}
	host := k.cfg.NodeName
	if k.cfg.Isolated != nil {
		host = k.cfg.Isolated.IP
	}
	return hc, "https://" + net.JoinHostPort(host, strconv.Itoa(int(port))), nil
}
