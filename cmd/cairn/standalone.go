package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/cairn-csi/cairn/internal/backup"
	"github.com/cairn-csi/cairn/internal/control/local"
	"github.com/cairn-csi/cairn/internal/csi"
	"github.com/cairn-csi/cairn/internal/engine"
	"github.com/cairn-csi/cairn/internal/model"
	"github.com/cairn-csi/cairn/internal/objstore"
)

func version() string { return "cairn " + csi.Version }

func runStandalone(args []string) error {
	fs := flag.NewFlagSet("standalone", flag.ContinueOnError)
	endpoint := fs.String("endpoint", "unix:///run/cairn/csi.sock", "CSI endpoint (unix:///path or a socket path)")
	dataRoot := fs.String("data-root", "", "directory holding volumes and snapshots (required)")
	nodeID := fs.String("node-id", "", "this node's ID, reported by NodeGetInfo and used as topology (required)")
	httpEndpoint := fs.String("http-endpoint", "", "address for /healthz and /metrics, e.g. 127.0.0.1:9808 (off if empty)")
	freezeTimeout := fs.Duration("freeze-timeout", 10*time.Second, "longest a mounted file system stays frozen for a snapshot or clone")
	cgroupFS := fs.String("cgroup-fs", "/sys/fs/cgroup", "where the host's cgroup file systems are mounted, to enforce volumes' I/O limits (iops, throughput); \"none\" turns limits off")
	maxVolumes := fs.Int64("max-volumes", 0, "volumes per node reported to the scheduler (0: no limit)")
	forceCopy := fs.Bool("force-copy", false, "copy instead of reflink even where the data root supports reflinks")
	var targets targetFlags
	fs.Var(&targets, "backup-target", "a backup target NAME=URL (repeatable): file:///path or s3://bucket/prefix?endpoint=host:port; S3 credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
	var keys keyFlags
	fs.Var(&keys, "backup-key", "NAME=FILE (repeatable): the master key of backup target NAME, a file of exactly 32 random bytes; the target's backups are encrypted (docs/FORMAT.md)")
	klogFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dataRoot == "" {
		return errors.New("--data-root is required")
	}
	if *nodeID == "" {
		return errors.New("--node-id is required")
	}
	if err := checkNodeIDFlag(*nodeID); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	stores, err := targets.open(ctx)
	if err != nil {
		return err
	}
	backupKeys, err := keys.read()
	if err != nil {
		return err
	}
	eng, err := engine.Open(ctx, engine.Config{DataRoot: *dataRoot, FreezeTimeout: *freezeTimeout, ForceCopy: *forceCopy, BackupTargets: stores, BackupKeys: backupKeys, CgroupRoot: *cgroupFS})
	if err != nil {
		return err
	}
	defer eng.Close()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	csi.RegisterMetrics(reg)
	engine.RegisterMetrics(reg, eng)

	if *httpEndpoint != "" {
		go serveHTTP(*httpEndpoint, reg, eng.Health)
	}
	klog.InfoS("Cairn standalone starting", "version", csi.Version, "nodeID", *nodeID, "dataRoot", eng.Root(), "cloneMode", eng.CloneMode())
	svc := csi.New(eng, local.Backend{Engine: eng, Node: *nodeID}, csi.Options{NodeID: *nodeID, MaxVolumesPerNode: *maxVolumes})
	return serveCSI(ctx, *endpoint, func(srv *grpc.Server) { svc.Register(srv, true, true) })
}

// serveCSI serves CSI on endpoint until ctx ends, then stops gracefully.
func serveCSI(ctx context.Context, endpoint string, register func(*grpc.Server)) error {
	srv := csi.NewGRPCServer()
	register(srv)
	lis, err := csi.Listen(endpoint)
	if err != nil {
		return err
	}
	errCh := make(chan error, 1)
	go func() { errCh <- srv.Serve(lis) }()
	select {
	case err := <-errCh:
		return err
	case <-ctx.Done():
	}
	klog.InfoS("Shutting down")
	done := make(chan struct{})
	go func() { srv.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		srv.Stop()
	}
	return nil
}

// klogFlags adds klog's flags (-v, ...) to fs.
func klogFlags(fs *flag.FlagSet) {
	kfs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(kfs)
	kfs.VisitAll(func(f *flag.Flag) { fs.Var(f.Value, f.Name, f.Usage) })
}

// serveHTTP serves /healthz (the engine's health) and /metrics.
func serveHTTP(addr string, reg prometheus.Gatherer, health func() error) {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if err := health(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	klog.InfoS("Serving health and metrics", "address", addr)
	if err := http.ListenAndServe(addr, mux); err != nil {
		klog.ErrorS(err, "HTTP endpoint failed", "address", addr)
		os.Exit(1)
	}
}

// keyFlags collects --backup-key NAME=FILE flags.
type keyFlags []string

func (k *keyFlags) String() string { return strings.Join(*k, ",") }

func (k *keyFlags) Set(v string) error {
	name, file, ok := strings.Cut(v, "=")
	if !ok || !model.ValidTargetName(name) || file == "" {
		return fmt.Errorf("%q: want NAME=FILE, NAME a backup target's name", v)
	}
	*k = append(*k, v)
	return nil
}

// read loads the key files, by target name.
func (k keyFlags) read() (map[string][]byte, error) {
	out := map[string][]byte{}
	for _, v := range k {
		name, file, _ := strings.Cut(v, "=")
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("--backup-key: target %q given twice", name)
		}
		key, err := backup.ReadKeyFile(file)
		if err != nil {
			return nil, fmt.Errorf("--backup-key %s: %w", name, err)
		}
		out[name] = key
	}
	return out, nil
}

// targetFlags collects --backup-target NAME=URL flags.
type targetFlags []string

func (t *targetFlags) String() string { return strings.Join(*t, ",") }

func (t *targetFlags) Set(v string) error {
	name, url, ok := strings.Cut(v, "=")
	if !ok || !model.ValidTargetName(name) || url == "" {
		return fmt.Errorf("%q: want NAME=URL with NAME of lower-case letters, digits and '-'", v)
	}
	*t = append(*t, v)
	return nil
}

func (t targetFlags) open(ctx context.Context) (map[string]objstore.Store, error) {
	out := map[string]objstore.Store{}
	for _, v := range t {
		name, url, _ := strings.Cut(v, "=")
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("--backup-target %s given twice", name)
		}
		st, err := objstore.Open(ctx, url, objstore.Credentials{})
		if err != nil {
			return nil, fmt.Errorf("--backup-target %s: %w", name, err)
		}
		out[name] = st
		klog.InfoS("Backup target configured", "name", name, "store", st.String())
	}
	return out, nil
}

// checkNodeIDFlag checks --node-id with CSI's rule for node IDs.
func checkNodeIDFlag(id string) error {
	if err := csi.CheckNodeID(id, "--node-id"); err != nil {
		return errors.New(status.Convert(err).Message())
	}
	return nil
}
