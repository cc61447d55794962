// Package cluster runs a real Kubernetes control plane (etcd,
// kube-apiserver, kube-controller-manager, kube-scheduler) as child
// processes of a Go test, on 127.0.0.1, without containers. There is no
// kubelet: RegisterNode creates Nodes and CSINodes and keeps them Ready the
// way a kubelet would, so controllers and the scheduler treat them as real.
//
// The binaries come from hack/k8s-tools.sh (.tools/bin).
package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/cairn-csi/cairn/internal/testsupport/proc"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
)

// policy is how the cluster waits for its processes and reports their exits.
var policy = proc.Policy{ExitNote: "exited during start-up", TailBytes: 3000, CheckTimeout: 5 * time.Second, Poll: 200 * time.Millisecond}

var errStopped = errors.New("cluster stopped")

// FieldManager is the server-side apply field manager of Apply.
const FieldManager = "cairn-e2e"

// Config says where the binaries are and where the cluster keeps its files.
type Config struct {
	// BinDir holds etcd, kube-apiserver, kube-controller-manager and
	// kube-scheduler.
	BinDir string
	// WorkDir receives everything: pki/, etcd/, logs/, kubeconfigs/.
	WorkDir string
	// ExtraServingIPs are added to the apiserver's serving certificate
	// (besides 127.0.0.1 and 10.0.0.1), for clients that reach it at
	// another address (with --bind-address=0.0.0.0 among the extra args).
	ExtraServingIPs []net.IP
	// Extra flags appended to the defaults (a repeated flag wins).
	ExtraAPIServerArgs         []string
	ExtraControllerManagerArgs []string
	ExtraSchedulerArgs         []string
}

// Cluster is a running control plane. Stop it when done.
type Cluster struct {
	cfg      Config
	logDir   string
	kcfgDir  string
	pki      *pki
	host     string // https://127.0.0.1:port
	admin    *rest.Config
	adminKC  string
	client   kubernetes.Interface
	dyn      dynamic.Interface
	mapper   *restmapper.DeferredDiscoveryRESTMapper
	ctx      context.Context // cancelled by Stop; ends the node heartbeats
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	mu       sync.Mutex
	procs    []*proc.Proc // in start order
	nodes    map[string]bool
	stopped  bool
	stopOnce sync.Once
}

// Start brings up etcd, kube-apiserver, kube-controller-manager and
// kube-scheduler and returns once the apiserver is ready and the
// controller manager is working (the default ServiceAccount exists). ctx
// bounds the start-up only: the cluster runs until Stop. On error nothing
// is left running.
func Start(ctx context.Context, cfg Config) (c *Cluster, err error) {
	if cfg.BinDir == "" || cfg.WorkDir == "" {
		return nil, errors.New("cluster: Config.BinDir and Config.WorkDir are required")
	}
	for _, b := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"} {
		if _, err := os.Stat(filepath.Join(cfg.BinDir, b)); err != nil {
			return nil, fmt.Errorf("cluster: %w (build with hack/k8s-tools.sh)", err)
		}
	}
	c = &Cluster{
		cfg:     cfg,
		logDir:  filepath.Join(cfg.WorkDir, "logs"),
		kcfgDir: filepath.Join(cfg.WorkDir, "kubeconfigs"),
		nodes:   map[string]bool{},
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	defer func() {
		if err != nil {
			c.Stop()
			c = nil
		}
	}()
	for _, d := range []string{c.logDir, c.kcfgDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return c, err
		}
	}
	if c.pki, err = genPKI(filepath.Join(cfg.WorkDir, "pki"), cfg.ExtraServingIPs); err != nil {
		return c, fmt.Errorf("cluster: generate certificates: %w", err)
	}
	ports, err := proc.FreePorts(3)
	if err != nil {
		return c, err
	}
	etcdClient, etcdPeer, apiPort := ports[0], ports[1], ports[2]

	// etcd
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(etcdClient)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(etcdPeer)
	etcd, err := c.start("etcd",
		"--name=etcd0",
		"--data-dir="+filepath.Join(cfg.WorkDir, "etcd"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=etcd0="+peerURL,
		"--unsafe-no-fsync",
		"--log-level=warn",
	)
	if err != nil {
		return c, err
	}
	if err := policy.WaitFor(ctx, etcd, 60*time.Second, func(ctx context.Context) error {
		return proc.HTTPOK(ctx, http.DefaultClient, etcdURL+"/health")
	}); err != nil {
		return c, err
	}

	// kube-apiserver
	c.host = "https://127.0.0.1:" + strconv.Itoa(apiPort)
	apiArgs := append([]string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(apiPort),
		"--tls-cert-file=" + c.pki.servingCert,
		"--tls-private-key-file=" + c.pki.servKey,
		"--client-ca-file=" + c.pki.caCert,
		"--authorization-mode=Node,RBAC",
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file=" + c.pki.saKey,
		"--service-account-signing-key-file=" + c.pki.saKey,
		"--service-cluster-ip-range=10.0.0.0/24",
		"--allow-privileged=true",
		// The Endpoints of the kubernetes Service cannot hold a loopback
		// address; do not let the apiserver try.
		"--endpoint-reconciler-type=none",
		"--profiling=false",
	}, cfg.ExtraAPIServerArgs...)
	api, err := c.start("kube-apiserver", apiArgs...)
	if err != nil {
		return c, err
	}
	c.admin = &rest.Config{
		Host: c.host,
		TLSClientConfig: rest.TLSClientConfig{
			CAData:   c.pki.caPEM,
			CertData: c.pki.adminCertPEM,
			KeyData:  c.pki.adminKeyPEM,
		},
		QPS:   100,
		Burst: 200,
	}
	if c.client, err = kubernetes.NewForConfig(c.admin); err != nil {
		return c, err
	}
	if c.dyn, err = dynamic.NewForConfig(c.admin); err != nil {
		return c, err
	}
	c.mapper = restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(c.client.Discovery()))
	if err := policy.WaitFor(ctx, api, 120*time.Second, func(ctx context.Context) error {
		body, err := c.client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err != nil {
			return err
		}
		if string(body) != "ok" {
			return fmt.Errorf("readyz: %s", body)
		}
		return nil
	}); err != nil {
		return c, err
	}
	c.adminKC = filepath.Join(c.kcfgDir, "admin.kubeconfig")
	if err := writeKubeconfig(c.adminKC, "admin", "", c.host, c.pki.caPEM, authInfo{certPEM: c.pki.adminCertPEM, keyPEM: c.pki.adminKeyPEM}); err != nil {
		return c, err
	}

	// kube-controller-manager
	kcmArgs := append([]string{
		"--kubeconfig=" + c.adminKC,
		"--service-account-private-key-file=" + c.pki.saKey,
		"--root-ca-file=" + c.pki.caCert,
		"--cluster-signing-cert-file=" + c.pki.caCert,
		"--cluster-signing-key-file=" + c.pki.caKey,
		"--use-service-account-credentials=false",
		"--controllers=*",
		"--leader-elect=false",
		"--bind-address=127.0.0.1",
		"--secure-port=0",
		"--profiling=false",
		// A claim whose PV the binder's cache had not seen yet when the
		// claim came in waits for the next full sync (15s by default).
		"--pvclaimbinder-sync-period=2s",
	}, cfg.ExtraControllerManagerArgs...)
	kcm, err := c.start("kube-controller-manager", kcmArgs...)
	if err != nil {
		return c, err
	}

	// kube-scheduler (the flags --kubeconfig and --leader-elect are
	// deprecated in favour of its configuration file)
	schedCfg := filepath.Join(cfg.WorkDir, "kube-scheduler.yaml")
	if err := os.WriteFile(schedCfg, []byte(fmt.Sprintf(`apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: %q
leaderElection:
  leaderElect: false
`, c.adminKC)), 0o644); err != nil {
		return c, err
	}
	schedArgs := append([]string{
		"--config=" + schedCfg,
		"--bind-address=127.0.0.1",
		"--secure-port=0",
	}, cfg.ExtraSchedulerArgs...)
	sched, err := c.start("kube-scheduler", schedArgs...)
	if err != nil {
		return c, err
	}

	// The serviceaccount controller creates default/default: the
	// controller manager is up and its informers have synced.
	if err := policy.WaitFor(ctx, kcm, 120*time.Second, func(ctx context.Context) error {
		if sched.Exited() {
			return proc.Abort(policy.ExitError(sched))
		}
		_, err := c.client.CoreV1().ServiceAccounts(metav1.NamespaceDefault).Get(ctx, "default", metav1.GetOptions{})
		return err
	}); err != nil {
		return c, err
	}
	return c, nil
}

func (c *Cluster) start(name string, args ...string) (*proc.Proc, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return nil, errStopped
	}
	p, err := proc.Start(c.logDir, name, filepath.Join(c.cfg.BinDir, name), args...)
	if err != nil {
		return nil, err
	}
	c.procs = append(c.procs, p)
	return p, nil
}

// Stop ends the node heartbeats and kills every process (newest first),
// waiting for each. It may be called more than once.
func (c *Cluster) Stop() {
	c.stopOnce.Do(func() {
		c.mu.Lock()
		c.stopped = true
		procs := c.procs
		c.mu.Unlock()
		c.cancel()
		c.wg.Wait()
		for i := len(procs) - 1; i >= 0; i-- {
			procs[i].Kill()
		}
	})
}

// RESTConfig returns a copy of the admin (system:masters) client
// configuration; it carries the CA, so no environment is needed.
func (c *Cluster) RESTConfig() *rest.Config { return rest.CopyConfig(c.admin) }

// AdminKubeconfig returns the path of a kubeconfig file for the admin.
func (c *Cluster) AdminKubeconfig() string { return c.adminKC }

// LogDir returns the folder of the processes' logs (<name>.log).
func (c *Cluster) LogDir() string { return c.logDir }

// Host returns the apiserver URL, https://127.0.0.1:<port>.
func (c *Cluster) Host() string { return c.host }

// CACert returns the PEM of the CA that signed the apiserver's serving
// certificate (the one in every kubeconfig and in kube-root-ca.crt).
func (c *Cluster) CACert() []byte { return append([]byte(nil), c.pki.caPEM...) }
