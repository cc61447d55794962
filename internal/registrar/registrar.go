// Package registrar registers Cairn's node service with kubelet through
// kubelet's plugin registration API (pluginregistration/v1): a socket in
// kubelet's plugins_registry directory that answers GetInfo with the CSI
// endpoint and hears whether registration worked. It does in-process what
// the upstream node-driver-registrar sidecar does; the shipped DaemonSet
// keeps that sidecar, and `cairn node --registration-dir` uses this where
// the sidecar image is not available (the real-node e2e run).
package registrar

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"

	"google.golang.org/grpc"
	"k8s.io/klog/v2"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// Registrar serves the registration socket for one CSI driver.
type Registrar struct {
	registerapi.UnimplementedRegistrationServer
	// Driver is the CSI driver name.
	Driver string
	// Endpoint is the CSI socket path as kubelet sees it.
	Endpoint string

	mu     sync.Mutex
	status *registerapi.RegistrationStatus
}

// SocketPath is where the registration socket for driver goes in dir.
func SocketPath(dir, driver string) string { return filepath.Join(dir, driver+"-reg.sock") }

// GetInfo tells kubelet what plugin this is and where its CSI socket is.
func (r *Registrar) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	return &registerapi.PluginInfo{Type: registerapi.CSIPlugin, Name: r.Driver, Endpoint: r.Endpoint, SupportedVersions: []string{"1.0.0"}}, nil
}

// NotifyRegistrationStatus records kubelet's verdict.
func (r *Registrar) NotifyRegistrationStatus(_ context.Context, st *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	if st.PluginRegistered {
		klog.InfoS("Registered with kubelet", "driver", r.Driver, "endpoint", r.Endpoint)
	} else {
		klog.ErrorS(errors.New(st.Error), "Kubelet refused the registration", "driver", r.Driver)
	}
	r.mu.Lock()
	r.status = st
	r.mu.Unlock()
	return &registerapi.RegistrationStatusResponse{}, nil
}

// Status returns kubelet's last verdict: nil before it gave one.
func (r *Registrar) Status() *registerapi.RegistrationStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.status
}

// Serve creates the registration socket in dir and serves it until ctx
// ends, then removes it (kubelet then deregisters the plugin).
func (r *Registrar) Serve(ctx context.Context, dir string) error {
	if r.Driver == "" || r.Endpoint == "" {
		return errors.New("registrar: driver and endpoint are required")
	}
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return fmt.Errorf("registration directory %s: not a directory (is kubelet's plugins_registry mounted?): %v", dir, err)
	}
	path := SocketPath(dir, r.Driver)
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("remove stale registration socket: %w", err)
	}
	var lc net.ListenConfig
	lis, err := lc.Listen(ctx, "unix", path)
	if err != nil {
		return err
	}
	srv := grpc.NewServer()
	registerapi.RegisterRegistrationServer(srv, r)
	klog.InfoS("Serving kubelet plugin registration", "socket", path, "driver", r.Driver, "endpoint", r.Endpoint)
	errCh := make(chan error, 1)
	go func() { errCh <- srv.Serve(lis) }()
	select {
	case err := <-errCh:
		os.Remove(path)
		return err
	case <-ctx.Done():
	}
	srv.Stop()
	os.Remove(path)
	return nil
}
