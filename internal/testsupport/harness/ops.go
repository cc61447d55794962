package harness

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
)

// Cap returns a SINGLE_NODE_WRITER capability: raw block, or a mount with
// the given file system ("" for the driver's default).
func Cap(block bool, fsType string) *csipb.VolumeCapability {
	c := &csipb.VolumeCapability{AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}
	if block {
		c.AccessType = &csipb.VolumeCapability_Block{Block: &csipb.VolumeCapability_BlockVolume{}}
	} else {
		c.AccessType = &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{FsType: fsType}}
	}
	return c
}

// VolumeSpec describes a CreateVolume call.
type VolumeSpec struct {
	Name         string
	Bytes        int64
	Block        bool
	FsType       string
	FromSnapshot string
	FromVolume   string
	Parameters   map[string]string
}

// CreateVolume calls CreateVolume and returns the volume.
func (d *Driver) CreateVolume(ctx context.Context, s VolumeSpec) (*csipb.Volume, error) {
	req := &csipb.CreateVolumeRequest{
		Name:               s.Name,
		CapacityRange:      &csipb.CapacityRange{RequiredBytes: s.Bytes},
		VolumeCapabilities: []*csipb.VolumeCapability{Cap(s.Block, s.FsType)},
		Parameters:         s.Parameters,
	}
	switch {
	case s.FromSnapshot != "":
		req.VolumeContentSource = &csipb.VolumeContentSource{Type: &csipb.VolumeContentSource_Snapshot{Snapshot: &csipb.VolumeContentSource_SnapshotSource{SnapshotId: s.FromSnapshot}}}
	case s.FromVolume != "":
		req.VolumeContentSource = &csipb.VolumeContentSource{Type: &csipb.VolumeContentSource_Volume{Volume: &csipb.VolumeContentSource_VolumeSource{VolumeId: s.FromVolume}}}
	}
	resp, err := d.Controller().CreateVolume(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("CreateVolume %s: %w", s.Name, err)
	}
	return resp.GetVolume(), nil
}

// Mounted is a volume staged and published by Mount.
type Mounted struct {
	VolumeID string
	Staging  string
	Target   string // a directory (filesystem) or a device file (block)
	Block    bool
}

// Mount stages and publishes a volume under dir the way kubelet would and
// returns where it is.
func (d *Driver) Mount(ctx context.Context, volumeID, dir string, block bool, fsType string) (*Mounted, error) {
	return MountVia(ctx, d.Node(), volumeID, dir, block, fsType, nil)
}

// MountVia stages and publishes a volume through any node service, with
// the volume context the controller returned (as kubelet passes it).
func MountVia(ctx context.Context, node csipb.NodeClient, volumeID, dir string, block bool, fsType string, volumeContext map[string]string) (*Mounted, error) {
	m := &Mounted{VolumeID: volumeID, Staging: filepath.Join(dir, volumeID, "staging"), Target: filepath.Join(dir, volumeID, "target"), Block: block}
	if err := os.MkdirAll(m.Staging, 0o750); err != nil {
		return nil, err
	}
	c := Cap(block, fsType)
	if _, err := node.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: volumeID, StagingTargetPath: m.Staging, VolumeCapability: c, VolumeContext: volumeContext}); err != nil {
		return nil, fmt.Errorf("NodeStageVolume %s: %w", volumeID, err)
	}
	if _, err := node.NodePublishVolume(ctx, &csipb.NodePublishVolumeRequest{VolumeId: volumeID, StagingTargetPath: m.Staging, TargetPath: m.Target, VolumeCapability: c, VolumeContext: volumeContext}); err != nil {
		return nil, fmt.Errorf("NodePublishVolume %s: %w", volumeID, err)
	}
	return m, nil
}

// Unmount unpublishes and unstages a mounted volume.
func (d *Driver) Unmount(ctx context.Context, m *Mounted) error { return UnmountVia(ctx, d.Node(), m) }

// UnmountVia unpublishes and unstages through any node service.
func UnmountVia(ctx context.Context, node csipb.NodeClient, m *Mounted) error {
	if _, err := node.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: m.VolumeID, TargetPath: m.Target}); err != nil {
		return fmt.Errorf("NodeUnpublishVolume %s: %w", m.VolumeID, err)
	}
	if _, err := node.NodeUnstageVolume(ctx, &csipb.NodeUnstageVolumeRequest{VolumeId: m.VolumeID, StagingTargetPath: m.Staging}); err != nil {
		return fmt.Errorf("NodeUnstageVolume %s: %w", m.VolumeID, err)
	}
	return nil
}

// Snapshot calls CreateSnapshot.
func (d *Driver) Snapshot(ctx context.Context, name, volumeID string) (*csipb.Snapshot, error) {
	resp, err := d.Controller().CreateSnapshot(ctx, &csipb.CreateSnapshotRequest{Name: name, SourceVolumeId: volumeID})
	if err != nil {
		return nil, fmt.Errorf("CreateSnapshot %s: %w", name, err)
	}
	return resp.GetSnapshot(), nil
}

// Expand calls ControllerExpandVolume and, if the driver asks for it,
// NodeExpandVolume at path.
func (d *Driver) Expand(ctx context.Context, volumeID string, bytes int64, path string) (int64, error) {
	resp, err := d.Controller().ControllerExpandVolume(ctx, &csipb.ControllerExpandVolumeRequest{VolumeId: volumeID, CapacityRange: &csipb.CapacityRange{RequiredBytes: bytes}})
	if err != nil {
		return 0, fmt.Errorf("ControllerExpandVolume %s: %w", volumeID, err)
	}
	if !resp.GetNodeExpansionRequired() {
		return resp.GetCapacityBytes(), nil
	}
	if path == "" {
		return 0, fmt.Errorf("volume %s needs node expansion but no path was given", volumeID)
	}
	nresp, err := d.Node().NodeExpandVolume(ctx, &csipb.NodeExpandVolumeRequest{VolumeId: volumeID, VolumePath: path, CapacityRange: &csipb.CapacityRange{RequiredBytes: bytes}})
	if err != nil {
		return 0, fmt.Errorf("NodeExpandVolume %s: %w", volumeID, err)
	}
	return nresp.GetCapacityBytes(), nil
}
