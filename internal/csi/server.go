// Package csi serves the CSI Identity, Controller and Node services over
// gRPC on a unix socket. Each handler validates its request (requests.go),
// calls a backend (backend.go) and maps errors to gRPC codes (errors.go); no
// storage logic lives here.
package csi

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"k8s.io/klog/v2"

	"github.com/cairn-csi/cairn/internal/model"
)

// Driver identity.
const (
	DriverName  = "cairn.csi.dev"
	TopologyKey = "topology.cairn.csi.dev/node"
)

// Version is set at build time.
var Version = "dev"

// Options configures the servers.
type Options struct {
	NodeID string
	// MaxVolumesPerNode is reported by NodeGetInfo; 0 means no limit.
	MaxVolumesPerNode int64
}

// Services serves the CSI services: the Node service over a NodeBackend,
// the Controller service over a ControllerBackend.
type Services struct {
	opts    Options
	node    NodeBackend       // nil for a controller without local storage
	backend ControllerBackend // nil for a node-only server
}

// New returns CSI services over node (nil: no node service) and
// controller (nil: no controller service).
func New(node NodeBackend, controller ControllerBackend, opts Options) *Services {
	return &Services{node: node, backend: controller, opts: opts}
}

// Register adds the selected services to a gRPC server.
func (s *Services) Register(srv *grpc.Server, controller, node bool) {
	if node && s.node == nil {
		panic("csi: node service needs a node backend")
	}
	if controller && s.backend == nil {
		panic("csi: controller service needs a controller backend")
	}
	csipb.RegisterIdentityServer(srv, &identityServer{s: s, controller: controller})
	if controller {
		csipb.RegisterControllerServer(srv, &controllerServer{s: s})
		if g, ok := s.groups(); ok {
			csipb.RegisterGroupControllerServer(srv, &groupControllerServer{g: g})
		}
		if m, ok := s.metadata(); ok {
			csipb.RegisterSnapshotMetadataServer(srv, &snapshotMetadataServer{m: m})
		}
	}
	if node {
		csipb.RegisterNodeServer(srv, &nodeServer{s: s})
	}
}

// NewGRPCServer returns a gRPC server with Cairn's interceptor chain.
func NewGRPCServer() *grpc.Server {
	return grpc.NewServer(grpc.ChainUnaryInterceptor(requestIDInterceptor, loggingInterceptor, metricsInterceptor, recoverInterceptor),
		grpc.ChainStreamInterceptor(streamInterceptor))
}

// Listen opens the endpoint, unix:///path or a plain path, removing a
// stale socket left by a previous process.
func Listen(endpoint string) (net.Listener, error) {
	path := endpoint
	if strings.HasPrefix(endpoint, "unix:") {
		u, err := url.Parse(endpoint)
		if err != nil {
			return nil, fmt.Errorf("endpoint %q: %w", endpoint, err)
		}
		path = u.Path
		if path == "" {
			path = u.Opaque
		}
	} else if strings.Contains(endpoint, "://") {
		return nil, fmt.Errorf("endpoint %q: only unix:// sockets are supported", endpoint)
	}
	if path == "" {
		return nil, fmt.Errorf("endpoint %q names no socket path", endpoint)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, err
	}
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	klog.InfoS("Listening for CSI calls", "endpoint", path)
	return l, nil
}

func topology(node string) []*csipb.Topology {
	return []*csipb.Topology{{Segments: map[string]string{TopologyKey: node}}}
}

type identityServer struct {
	csipb.UnimplementedIdentityServer
	s          *Services
	controller bool
}

func (i *identityServer) GetPluginInfo(context.Context, *csipb.GetPluginInfoRequest) (*csipb.GetPluginInfoResponse, error) {
	resp := &csipb.GetPluginInfoResponse{Name: DriverName, VendorVersion: Version}
	if i.s.node != nil {
		// How snapshots and clones are made on this data root.
		resp.Manifest = map[string]string{DriverName + "/clone-mode": string(i.s.node.CloneMode())}
	}
	return resp, nil
}

func (i *identityServer) GetPluginCapabilities(context.Context, *csipb.GetPluginCapabilitiesRequest) (*csipb.GetPluginCapabilitiesResponse, error) {
	svc := func(t csipb.PluginCapability_Service_Type) *csipb.PluginCapability {
		return &csipb.PluginCapability{Type: &csipb.PluginCapability_Service_{Service: &csipb.PluginCapability_Service{Type: t}}}
	}
	exp := func(t csipb.PluginCapability_VolumeExpansion_Type) *csipb.PluginCapability {
		return &csipb.PluginCapability{Type: &csipb.PluginCapability_VolumeExpansion_{VolumeExpansion: &csipb.PluginCapability_VolumeExpansion{Type: t}}}
	}
	caps := []*csipb.PluginCapability{
		svc(csipb.PluginCapability_Service_VOLUME_ACCESSIBILITY_CONSTRAINTS),
		// Not SNAPSHOT_ACCESSIBILITY_CONSTRAINTS yet, although local
		// snapshots live on one node: csi-test v5.6.0 compares the
		// reported topology with reflect-based equality, which fails on
		// protobuf internals for any driver that reports it.
		exp(csipb.PluginCapability_VolumeExpansion_ONLINE),
		exp(csipb.PluginCapability_VolumeExpansion_OFFLINE),
	}
	if i.controller {
		caps = append([]*csipb.PluginCapability{svc(csipb.PluginCapability_Service_CONTROLLER_SERVICE)}, caps...)
		if _, ok := i.s.groups(); ok {
			caps = append(caps, svc(csipb.PluginCapability_Service_GROUP_CONTROLLER_SERVICE))
		}
		if _, ok := i.s.metadata(); ok {
			caps = append(caps, svc(csipb.PluginCapability_Service_SNAPSHOT_METADATA_SERVICE))
		}
	}
	return &csipb.GetPluginCapabilitiesResponse{Capabilities: caps}, nil
}

func (i *identityServer) Probe(ctx context.Context, _ *csipb.ProbeRequest) (*csipb.ProbeResponse, error) {
	var err error
	if i.s.node != nil {
		err = i.s.node.Health()
	} else {
		err = i.s.backend.Health(ctx)
	}
	if err != nil {
		klog.ErrorS(err, "Probe failed")
		return nil, toStatus(model.Errorf(model.ErrUnavailable, "unavailable: %w", err))
	}
	if i.s.node == nil {
		return &csipb.ProbeResponse{}, nil
	}
	klog.V(5).InfoS("Probe ok", "cloneMode", i.s.node.CloneMode())
	if i.s.node.CloneMode() == model.CloneCopy {
		klog.V(2).InfoS("Data root cannot reflink: snapshots and clones are sparse copies, O(data) instead of O(1)")
	}
	return &csipb.ProbeResponse{}, nil
}
