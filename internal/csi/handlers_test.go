package csi

import (
	"context"
	"strings"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cairn-csi/cairn/internal/model"
)

// recordingNode is a NodeBackend that records requests and answers err.
type recordingNode struct {
	stage   []model.StageRequest
	publish []model.PublishRequest
	calls   int
	err     error
	owned   string
	health  []model.HealthProblem // VolumeHealth and StorageHealth answer it
}

func (n *recordingNode) Health() error              { return n.err }
func (n *recordingNode) CloneMode() model.CloneMode { return model.CloneReflink }
func (n *recordingNode) OwnsPath(p string) bool {
	return n.owned != "" && strings.HasPrefix(p, n.owned)
}
func (n *recordingNode) StageVolume(_ context.Context, r model.StageRequest) error {
	n.calls++
	n.stage = append(n.stage, r)
	return n.err
}
func (n *recordingNode) UnstageVolume(context.Context, string, string) error { n.calls++; return n.err }
func (n *recordingNode) PublishVolume(_ context.Context, r model.PublishRequest) error {
	n.calls++
	n.publish = append(n.publish, r)
	return n.err
}
func (n *recordingNode) UnpublishVolume(context.Context, string, string) error {
	n.calls++
	return n.err
}
func (n *recordingNode) VolumeStats(context.Context, string, string) (*model.VolumeStats, error) {
	n.calls++
	return &model.VolumeStats{TotalBytes: 10, AvailableBytes: 4, UsedBytes: 6, TotalInodes: 3, FreeInodes: 1, UsedInodes: 2}, n.err
}
func (n *recordingNode) NodeExpandVolume(_ context.Context, _, _ string, req int64) (int64, error) {
	n.calls++
	return req, n.err
}
func (n *recordingNode) VolumeHealth(context.Context, string) ([]model.HealthProblem, error) {
	n.calls++
	return n.health, n.err
}
func (n *recordingNode) StorageHealth(context.Context) []model.HealthProblem { return n.health }

// The node service turns CSI requests into the backend's terms and
// validates before it calls: a malformed request never reaches the
// backend.
func TestNodeHandlers(t *testing.T) {
	ctx := context.Background()
	b := &recordingNode{owned: "/var/lib/cairn"}
	n := &nodeServer{s: New(b, nil, Options{NodeID: "node-a"})}
	vc := mountCap(csipb.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY, "")
	vc.GetMount().MountFlags = []string{"noatime"}
	if _, err := n.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: "v-1", StagingTargetPath: "/staging/v-1", VolumeCapability: vc, VolumeContext: map[string]string{"fsType": "xfs"}}); err != nil {
		t.Fatal(err)
	}
	if got := b.stage[0]; got.VolumeID != "v-1" || got.StagingPath != "/staging/v-1" || got.Block || got.FsType != "xfs" || !got.ReadOnly || len(got.MountFlags) != 1 {
		t.Errorf("stage request %+v", got)
	}
	uid := "0b8f7f52-2a5c-4c39-9f5e-3a0d61b8f1e2"
	if _, err := n.NodePublishVolume(ctx, &csipb.NodePublishVolumeRequest{VolumeId: "v-1", StagingTargetPath: "/staging/v-1", TargetPath: "/pods/p/v", Readonly: true,
		VolumeCapability: blockCap(csipb.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER), VolumeContext: map[string]string{"csi.storage.k8s.io/pod.uid": uid}}); err != nil {
		t.Fatal(err)
	}
	if _, err := n.NodePublishVolume(ctx, &csipb.NodePublishVolumeRequest{VolumeId: "v-1", StagingTargetPath: "/staging/v-1", TargetPath: "/pods/p/v",
		VolumeCapability: blockCap(csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER), VolumeContext: map[string]string{"csi.storage.k8s.io/pod.uid": "../../kubepods"}}); err != nil || b.publish[1].PodUID != "" {
		t.Errorf("publish with a path as pod UID: %v, passed on %q (want the publish, without the UID)", err, b.publish[len(b.publish)-1].PodUID)
	}
	if got := b.publish[0]; got.TargetPath != "/pods/p/v" || !got.Block || !got.ReadOnly || !got.SingleWriter || got.PodUID != uid || len(b.publish) != 2 {
		t.Errorf("publish request %+v", got)
	}
	stats, err := n.NodeGetVolumeStats(ctx, &csipb.NodeGetVolumeStatsRequest{VolumeId: "v-1", VolumePath: "/pods/p/v"})
	if err != nil || len(stats.GetUsage()) != 2 || stats.GetUsage()[0].GetUsed() != 6 || stats.GetUsage()[1].GetAvailable() != 1 {
		t.Errorf("stats %v, %v", stats, err)
	}

	calls := b.calls
	for what, call := range map[string]func() error{
		"stage without volume_id": func() error {
			_, err := n.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{StagingTargetPath: "/s", VolumeCapability: vc})
			return err
		},
		"stage into the data root": func() error {
			_, err := n.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: "v-1", StagingTargetPath: "/var/lib/cairn/volumes", VolumeCapability: vc})
			return err
		},
		"stage without capability": func() error {
			_, err := n.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: "v-1", StagingTargetPath: "/s"})
			return err
		},
		"publish to a relative path": func() error {
			_, err := n.NodePublishVolume(ctx, &csipb.NodePublishVolumeRequest{VolumeId: "v-1", StagingTargetPath: "/s", TargetPath: "pods/x", VolumeCapability: vc})
			return err
		},
		"unpublish an unclean path": func() error {
			_, err := n.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: "v-1", TargetPath: "/pods/../etc"})
			return err
		},
		"unstage without path": func() error {
			_, err := n.NodeUnstageVolume(ctx, &csipb.NodeUnstageVolumeRequest{VolumeId: "v-1"})
			return err
		},
		"stats without path": func() error {
			_, err := n.NodeGetVolumeStats(ctx, &csipb.NodeGetVolumeStatsRequest{VolumeId: "v-1"})
			return err
		},
		"expand with a multi-node mode": func() error {
			_, err := n.NodeExpandVolume(ctx, &csipb.NodeExpandVolumeRequest{VolumeId: "v-1", VolumePath: "/p",
				VolumeCapability: mountCap(csipb.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER, "")})
			return err
		},
	} {
		if err := call(); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", what, err)
		}
	}
	if b.calls != calls {
		t.Errorf("invalid requests reached the backend %d times", b.calls-calls)
	}

	// Backend errors keep their kind's code and their message.
	b.err = model.Errorf(model.ErrNotFound, "volume v-9 not found")
	_, err = n.NodeUnstageVolume(ctx, &csipb.NodeUnstageVolumeRequest{VolumeId: "v-9", StagingTargetPath: "/s"})
	if status.Code(err) != codes.NotFound || !strings.Contains(err.Error(), "v-9") {
		t.Errorf("unstage error %v", err)
	}
	id := &identityServer{s: n.s}
	if _, err := id.Probe(ctx, &csipb.ProbeRequest{}); status.Code(err) != codes.Unavailable {
		t.Errorf("probe of an unhealthy node: %v, want Unavailable", err)
	}
}

// volumeBackend serves one volume and records the create request.
type volumeBackend struct {
	fakeBackend
	got   *model.CreateVolumeRequest
	where model.Placement
	vol   *model.Volume
}

func (b *volumeBackend) CreateVolume(_ context.Context, req model.CreateVolumeRequest, where model.Placement) (*model.Volume, error) {
	b.got, b.where = &req, where
	return b.vol, nil
}
func (b *volumeBackend) GetVolume(context.Context, string) (*model.Volume, error) { return b.vol, nil }

func TestControllerCreateAndDescribe(t *testing.T) {
	ctx := context.Background()
	handle := model.BackupHandle{Target: "t1", VolumeID: model.VolumeIDForName("src"), BackupID: model.BackupIDForName("b")}.String()
	b := &volumeBackend{fakeBackend: fakeBackend{t: t}, vol: &model.Volume{
		ID: model.VolumeIDForName("pvc"), SizeBytes: 2 << 20, FsType: "xfs", Node: "node-b",
		Source: &model.Source{Kind: model.SourceBackup, ID: handle}, CreatedAt: time.Now(),
	}}
	c := &controllerServer{s: New(nil, b, Options{})}
	resp, err := c.CreateVolume(ctx, &csipb.CreateVolumeRequest{
		Name: "pvc", CapacityRange: &csipb.CapacityRange{RequiredBytes: 1 << 20},
		VolumeCapabilities: []*csipb.VolumeCapability{mountCap(csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, "")},
		Parameters:         map[string]string{"csi.storage.k8s.io/fstype": "xfs"},
		AccessibilityRequirements: &csipb.TopologyRequirement{
			Requisite: []*csipb.Topology{{Segments: map[string]string{TopologyKey: "node-b"}}},
			Preferred: []*csipb.Topology{{Segments: map[string]string{TopologyKey: "node-b"}}},
		},
		VolumeContentSource: &csipb.VolumeContentSource{Type: &csipb.VolumeContentSource_Snapshot{Snapshot: &csipb.VolumeContentSource_SnapshotSource{SnapshotId: handle}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if g := b.got; g.Name != "pvc" || g.FsType != "xfs" || g.RequiredBytes != 1<<20 || g.SourceSnapshotID != handle || g.Block {
		t.Errorf("create request %+v", g)
	}
	if len(b.where.Requisite) != 1 || b.where.Requisite[0] != "node-b" || len(b.where.Preferred) != 1 {
		t.Errorf("placement %+v", b.where)
	}
	// A volume restored from a backup reports the backup as its snapshot
	// source, in both answers, with its node's topology.
	get, err := c.ControllerGetVolume(ctx, &csipb.ControllerGetVolumeRequest{VolumeId: b.vol.ID})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []*csipb.Volume{resp.GetVolume(), get.GetVolume()} {
		if v.GetContentSource().GetSnapshot().GetSnapshotId() != handle || v.GetVolumeContext()["fsType"] != "xfs" ||
			v.GetAccessibleTopology()[0].GetSegments()[TopologyKey] != "node-b" || v.GetCapacityBytes() != 2<<20 {
			t.Errorf("volume %v", v)
		}
	}
	// Invalid requests never reach the backend.
	b.got = nil
	for what, req := range map[string]*csipb.CreateVolumeRequest{
		"no name":         {VolumeCapabilities: []*csipb.VolumeCapability{blockCap(csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)}},
		"no capabilities": {Name: "x"},
		"unknown param":   {Name: "x", VolumeCapabilities: []*csipb.VolumeCapability{blockCap(csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)}, Parameters: map[string]string{"sise": "1"}},
		"empty source":    {Name: "x", VolumeCapabilities: []*csipb.VolumeCapability{blockCap(csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)}, VolumeContentSource: &csipb.VolumeContentSource{}},
		"bad topology": {Name: "x", VolumeCapabilities: []*csipb.VolumeCapability{blockCap(csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)},
			AccessibilityRequirements: &csipb.TopologyRequirement{Requisite: []*csipb.Topology{{Segments: map[string]string{"zone": "a"}}}}},
	} {
		if _, err := c.CreateVolume(ctx, req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", what, err)
		}
	}
	if b.got != nil {
		t.Errorf("an invalid request reached the backend: %+v", b.got)
	}
}

// TestControllerModify: a VolumeAttributesClass's parameters reach the
// create request as I/O limits, over the StorageClass's; a modify with an
// unknown key or a bad value is INVALID_ARGUMENT naming the field and
// never reaches the backend.
func TestControllerModify(t *testing.T) {
	ctx := context.Background()
	b := &volumeBackend{fakeBackend: fakeBackend{t: t}, vol: &model.Volume{ID: model.VolumeIDForName("pvc"), SizeBytes: 1 << 30, CreatedAt: time.Now()}}
	c := &controllerServer{s: New(nil, b, Options{})}
	_, err := c.CreateVolume(ctx, &csipb.CreateVolumeRequest{
		Name: "pvc", VolumeCapabilities: []*csipb.VolumeCapability{blockCap(csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)},
		Parameters:        map[string]string{"iops": "100", "throughput": "20"},
		MutableParameters: map[string]string{"iops": "300"},
	})
	if err != nil || b.got.IOLimits != (model.IOLimits{IOPS: 300, ThroughputMiBps: 20}) {
		t.Fatalf("create: %v, limits %+v", err, b.got)
	}
	for what, req := range map[string]*csipb.CreateVolumeRequest{
		"bad class value":   {Name: "x", Parameters: map[string]string{"iops": "lots"}},
		"unknown VAC key":   {Name: "x", MutableParameters: map[string]string{"fsType": "xfs"}},
		"VAC value too big": {Name: "x", MutableParameters: map[string]string{"throughput": "99999999"}},
	} {
		req.VolumeCapabilities = []*csipb.VolumeCapability{blockCap(csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)}
		if _, err := c.CreateVolume(ctx, req); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "parameters") {
			t.Errorf("%s: %v, want InvalidArgument naming the parameters", what, err)
		}
	}
	for what, req := range map[string]*csipb.ControllerModifyVolumeRequest{
		"no volume":   {MutableParameters: map[string]string{"iops": "1"}},
		"unknown key": {VolumeId: "v-1", MutableParameters: map[string]string{"xxInvalidParameterKey": "xxInvalidParameterValue"}},
		"bad value":   {VolumeId: "v-1", MutableParameters: map[string]string{"iops": "-1"}},
	} {
		if _, err := c.ControllerModifyVolume(ctx, req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", what, err)
		}
	}
	if _, err := c.ControllerModifyVolume(ctx, &csipb.ControllerModifyVolumeRequest{VolumeId: "v-1", MutableParameters: map[string]string{"iops": "5"}}); status.Code(err) != codes.NotFound {
		t.Errorf("modify of a missing volume: %v, want NotFound", err)
	}
	caps, _ := c.ControllerGetCapabilities(ctx, &csipb.ControllerGetCapabilitiesRequest{})
	found := false
	for _, cp := range caps.GetCapabilities() {
		found = found || cp.GetRpc().GetType() == csipb.ControllerServiceCapability_RPC_MODIFY_VOLUME
	}
	if !found {
		t.Error("MODIFY_VOLUME not advertised")
	}
}
