package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cluster"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/cairn-csi/cairn/internal/agent"
	"github.com/cairn-csi/cairn/internal/control/policy"
	"github.com/cairn-csi/cairn/internal/control/remote"
	"github.com/cairn-csi/cairn/internal/control/standby"
	"github.com/cairn-csi/cairn/internal/csi"
	"github.com/cairn-csi/cairn/internal/engine"
	"github.com/cairn-csi/cairn/internal/kube"
	"github.com/cairn-csi/cairn/internal/registrar"
)

// kubeFlags are the flags both Kubernetes-mode commands share; names follow
// the CSI sidecars' conventions.
type kubeFlags struct {
	endpoint, kubeconfig, httpEndpoint string
	qps                                float64
	burst                              int
}

func (k *kubeFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&k.endpoint, "endpoint", "unix:///csi/csi.sock", "CSI endpoint (unix:///path or a socket path)")
	fs.StringVar(&k.endpoint, "csi-address", "unix:///csi/csi.sock", "alias of --endpoint")
	fs.StringVar(&k.kubeconfig, "kubeconfig", "", "kubeconfig file (in-cluster configuration if empty)")
	fs.StringVar(&k.httpEndpoint, "http-endpoint", "", "address for /healthz and /metrics, e.g. :9808 (off if empty)")
	fs.Float64Var(&k.qps, "kube-api-qps", 20, "queries per second to the API server")
	fs.IntVar(&k.burst, "kube-api-burst", 40, "burst of queries to the API server")
	klogFlags(fs)
}

func (k *kubeFlags) restConfig(agent string) (*rest.Config, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", k.kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	cfg.QPS, cfg.Burst = float32(k.qps), k.burst
	cfg.UserAgent = "cairn-" + agent + "/" + csi.Version
	return cfg, nil
}

// metricsRegistry holds Cairn's metrics in Kubernetes mode. It is served
// together with controller-runtime's registry (kubeGatherers), which
// already has the Go and process collectors: registering them here too
// made every scrape fail with duplicate metrics.
func metricsRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	csi.RegisterMetrics(reg)
	return reg
}

// kubeGatherers is what /metrics serves in Kubernetes mode.
func kubeGatherers(reg *prometheus.Registry) prometheus.Gatherers {
	return prometheus.Gatherers{reg, ctrlmetrics.Registry}
}

// runController serves the CSI controller for the sidecars over Cairn's
// custom resources. It holds no state, so replicas need no election of
// their own: the sidecars elect which replica they talk to.
func runController(args []string) error {
	fs := flag.NewFlagSet("controller", flag.ContinueOnError)
	var kf kubeFlags
	kf.register(fs)
	heartbeat := fs.Duration("heartbeat-timeout", 2*time.Minute, "a node whose agent has not reported for this long gets no new volumes")
	policies := fs.Bool("protection-policies", true, "run the ProtectionPolicies' schedules (on the replica that holds the Lease "+policy.LeaseName+")")
	electionNS := fs.String("leader-election-namespace", envOr("POD_NAMESPACE", "cairn-system"), "namespace of the protection policies' and standby volumes' Leases")
	resync := fs.Duration("policy-resync", 10*time.Second, "how often ProtectionPolicies are read and due runs started")
	standbys := fs.Bool("standby-volumes", true, "place StandbyVolumes, populate the PVCs that name one, and create activated ones' PVs (on the replica that holds the Lease "+standby.LeaseName+")")
	standbyResync := fs.Duration("standby-resync", 3*time.Second, "how often StandbyVolumes and the PVCs naming them are looked at")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	cfg, err := kf.restConfig("controller")
	if err != nil {
		return err
	}
	cl, err := cluster.New(cfg, func(o *cluster.Options) { o.Scheme = kube.Scheme })
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	go func() {
		if err := cl.Start(ctx); err != nil {
			klog.ErrorS(err, "Kubernetes cache stopped")
			os.Exit(1)
		}
	}()
	backend := &remote.Remote{Client: cl.GetClient(), Reader: cl.GetAPIReader(), HeartbeatTimeout: *heartbeat}
	reg := metricsRegistry()
	policy.RegisterMetrics(reg)
	if *policies || *standbys {
		kc, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return fmt.Errorf("kubernetes client: %w", err)
		}
		host, _ := os.Hostname()
		elect := kube.Election{Client: kc, Namespace: *electionNS, Identity: host + "_" + strconv.FormatInt(time.Now().UnixNano(), 36)}
		events := cl.GetEventRecorder("cairn-controller")
		if *policies {
			runner := &policy.Runner{Client: cl.GetClient(), Reader: cl.GetAPIReader(), Events: events, Driver: csi.DriverName, Resync: *resync}
			go kube.RunElected(ctx, elect, policy.LeaseName, "the protection policies", runner.Run)
		}
		if *standbys {
			sc := &standby.Controller{Client: cl.GetClient(), Events: events, Driver: csi.DriverName, TopologyKey: csi.TopologyKey,
				HeartbeatTimeout: *heartbeat, Resync: *standbyResync}
			go kube.RunElected(ctx, elect, standby.LeaseName, "the standby volumes", sc.Run)
		}
	}
	if kf.httpEndpoint != "" {
		go serveHTTP(kf.httpEndpoint, kubeGatherers(reg), func() error { return backend.Health(ctx) })
	}
	klog.InfoS("Cairn controller starting", "version", csi.Version, "endpoint", kf.endpoint)
	svc := csi.New(nil, backend, csi.Options{})
	return serveCSI(ctx, kf.endpoint, func(srv *grpc.Server) { svc.Register(srv, true, false) })
}

// runNode serves the CSI node service for kubelet and runs the node agent
// that carries out the controller's Volumes and Snapshots on this node.
func runNode(args []string) error {
	fs := flag.NewFlagSet("node", flag.ContinueOnError)
	var kf kubeFlags
	kf.register(fs)
	nodeID := fs.String("node-id", os.Getenv("NODE_NAME"), "this node's name (default $NODE_NAME)")
	dataRoot := fs.String("data-root", "/var/lib/cairn", "directory holding volumes and snapshots")
	namespace := fs.String("namespace", envOr("POD_NAMESPACE", "cairn-system"), "namespace of backup target credential Secrets ($POD_NAMESPACE overrides the default when set)")
	freezeTimeout := fs.Duration("freeze-timeout", 10*time.Second, "longest a mounted file system stays frozen for a snapshot or clone")
	cgroupFS := fs.String("cgroup-fs", "/sys/fs/cgroup", "where the host's cgroup file systems are mounted, to enforce volumes' I/O limits (iops, throughput); \"none\" turns limits off")
	maxVolumes := fs.Int64("max-volumes", 0, "volumes per node reported to the scheduler (0: no limit)")
	forceCopy := fs.Bool("force-copy", false, "copy instead of reflink even where the data root supports reflinks")
	heartbeat := fs.Duration("heartbeat-interval", 30*time.Second, "how often the StorageNode status (capacity, health) is refreshed")
	regDir := fs.String("registration-dir", "", "register with kubelet through this plugins_registry directory (e.g. /var/lib/kubelet/plugins_registry) instead of the node-driver-registrar sidecar; off if empty")
	xferEndpoint := fs.String("transfer-endpoint", "", "listen address ([host]:port) of the TLS endpoint that serves this node's snapshots and volumes to other nodes' agents for cross-node clones and restores; off if empty")
	xferAddress := fs.String("transfer-address", "", "host:port other nodes' agents dial for --transfer-endpoint (default: $POD_IP and the endpoint's port)")
	regPath := fs.String("kubelet-registration-path", "", "the CSI socket path kubelet should use, with --registration-dir (default: --endpoint's path)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *nodeID == "" {
		return errors.New("--node-id (or $NODE_NAME) is required")
	}
	if err := checkNodeIDFlag(*nodeID); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	cfg, err := kf.restConfig("node")
	if err != nil {
		return err
	}
	eng, err := engine.Open(ctx, engine.Config{DataRoot: *dataRoot, FreezeTimeout: *freezeTimeout, ForceCopy: *forceCopy, CgroupRoot: *cgroupFS})
	if err != nil {
		return err
	}
	defer eng.Close()
	ctrl.SetLogger(klog.NewKlogr())
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 kube.Scheme,
		Cache:                  agent.CacheOptions(*nodeID, *namespace),
		Metrics:                metricsserver.Options{BindAddress: "0"}, // served with ours below
		HealthProbeBindAddress: "0",
		LeaderElection:         false,
	})
	if err != nil {
		return fmt.Errorf("kubernetes manager: %w", err)
	}
	addr := *xferAddress
	if addr == "" && *xferEndpoint != "" && os.Getenv("POD_IP") != "" {
		_, port, err := net.SplitHostPort(*xferEndpoint)
		if err != nil {
			return fmt.Errorf("--transfer-endpoint %q: %w", *xferEndpoint, err)
		}
		addr = net.JoinHostPort(os.Getenv("POD_IP"), port)
	}
	nodeAgent := &agent.Agent{Engine: eng, Node: *nodeID, Namespace: *namespace, Version: csi.Version, Heartbeat: *heartbeat,
		TransferEndpoint: *xferEndpoint, TransferAddress: addr}
	if err := nodeAgent.SetupWithManager(mgr); err != nil {
		return err
	}
	go func() {
		if err := mgr.Start(ctx); err != nil {
			klog.ErrorS(err, "Node agent stopped")
			os.Exit(1)
		}
	}()
	reg := metricsRegistry()
	engine.RegisterMetrics(reg, eng)
	if kf.httpEndpoint != "" {
		go serveHTTP(kf.httpEndpoint, kubeGatherers(reg), eng.Health)
	}
	if *regDir != "" {
		path := *regPath
		if path == "" {
			path = strings.TrimPrefix(kf.endpoint, "unix://")
		}
		reg := &registrar.Registrar{Driver: csi.DriverName, Endpoint: path}
		go func() {
			if err := reg.Serve(ctx, *regDir); err != nil {
				klog.ErrorS(err, "Kubelet plugin registration failed")
				os.Exit(1)
			}
		}()
	}
	klog.InfoS("Cairn node starting", "version", csi.Version, "node", *nodeID, "dataRoot", eng.Root(), "cloneMode", eng.CloneMode(), "endpoint", kf.endpoint)
	svc := csi.New(eng, nil, csi.Options{NodeID: *nodeID, MaxVolumesPerNode: *maxVolumes})
	return serveCSI(ctx, kf.endpoint, func(srv *grpc.Server) { svc.Register(srv, false, true) })
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
