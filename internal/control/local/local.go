// Package local is the controller backend of standalone mode: the CSI
// controller service over this node's own engine, all objects on one
// node.
package local

import (
	"context"

	"github.com/cairn-csi/cairn/internal/csi"
	"github.com/cairn-csi/cairn/internal/engine"
	"github.com/cairn-csi/cairn/internal/model"
)

// Backend drives one engine on the node Node.
type Backend struct {
	Engine *engine.Engine
	Node   string
}

var (
	_ csi.ControllerBackend = Backend{}
	_ csi.GroupBackend      = Backend{}
	_ csi.MetadataBackend   = Backend{}
)

func (l Backend) Health(context.Context) error { return l.Engine.Health() }

func (l Backend) BackupTargets(context.Context) ([]string, error) {
	return l.Engine.BackupTargets(), nil
}

func (l Backend) Capacity(_ context.Context, node string) (int64, error) {
	if node != "" && node != l.Node {
		return 0, nil
	}
	c, err := l.Engine.Capacity()
	return c.AvailableBytes, err
}

func (l Backend) volume(v *model.Volume, err error) (*model.Volume, error) {
	if err != nil {
		return nil, err
	}
	v.Node = l.Node
	return v, nil
}

func (l Backend) snapshot(s *model.Snapshot, err error) (*model.Snapshot, error) {
	if err != nil {
		return nil, err
	}
	s.Node = l.Node
	return s, nil
}

func (l Backend) CreateVolume(ctx context.Context, req model.CreateVolumeRequest, where model.Placement) (*model.Volume, error) {
	if !where.Allows(l.Node) {
		return nil, model.Errorf(model.ErrResourceExhausted, "accessibility_requirements: this driver serves only node %q", l.Node)
	}
	return l.volume(l.Engine.CreateVolume(ctx, req))
}

func (l Backend) DeleteVolume(ctx context.Context, id string) error {
	return l.Engine.DeleteVolume(ctx, id)
}

func (l Backend) GetVolume(ctx context.Context, id string) (*model.Volume, error) {
	return l.volume(l.Engine.GetVolume(ctx, id))
}

func (l Backend) ListVolumes(ctx context.Context) ([]*model.Volume, error) {
	vols, err := l.Engine.ListVolumes(ctx)
	for _, v := range vols {
		v.Node = l.Node
	}
	return vols, err
}

func (l Backend) ExpandVolume(ctx context.Context, id string, required, limit int64) (*model.ExpandResult, error) {
	return l.Engine.ExpandVolume(ctx, id, required, limit)
}

func (l Backend) CreateSnapshot(ctx context.Context, name, volumeID string, params map[string]string, where model.Placement) (*model.Snapshot, error) {
	if !where.Allows(l.Node) {
		return nil, model.LocalSnapshotExcluded(l.Node)
	}
	return l.snapshot(l.Engine.CreateSnapshot(ctx, name, volumeID, params))
}

func (l Backend) DeleteSnapshot(ctx context.Context, id string) error {
	return l.Engine.DeleteSnapshot(ctx, id)
}

func (l Backend) GetSnapshot(ctx context.Context, id string) (*model.Snapshot, error) {
	return l.snapshot(l.Engine.GetSnapshot(ctx, id))
}

func (l Backend) ListSnapshots(ctx context.Context) ([]*model.Snapshot, error) {
	snaps, err := l.Engine.ListSnapshots(ctx)
	for _, s := range snaps {
		s.Node = l.Node
	}
	return snaps, err
}

func (l Backend) CreateBackup(ctx context.Context, name, volumeID, target string) (*model.BackupInfo, error) {
	return l.Engine.CreateBackup(ctx, name, volumeID, target, nil)
}

func (l Backend) DeleteBackup(ctx context.Context, handle string) error {
	return l.Engine.DeleteBackup(ctx, handle)
}

func (l Backend) GetBackup(ctx context.Context, handle string) (*model.BackupInfo, error) {
	return l.Engine.GetBackup(ctx, handle)
}

func (l Backend) ListBackups(ctx context.Context) ([]*model.BackupInfo, error) {
	return l.Engine.ListBackups(ctx)
}

func (l Backend) group(g *model.GroupSnapshot, err error) (*model.GroupSnapshot, error) {
	if err != nil {
		return nil, err
	}
	g.Node = l.Node
	for _, m := range g.Members {
		m.Node = l.Node
	}
	return g, nil
}

func (l Backend) CreateGroupSnapshot(ctx context.Context, name string, volumeIDs []string, params map[string]string) (*model.GroupSnapshot, error) {
	return l.group(l.Engine.CreateGroupSnapshot(ctx, name, volumeIDs, params))
}

func (l Backend) DeleteGroupSnapshot(ctx context.Context, id string, snapshotIDs []string) error {
	return l.Engine.DeleteGroupSnapshot(ctx, id, snapshotIDs)
}

func (l Backend) GetGroupSnapshot(ctx context.Context, id string, snapshotIDs []string) (*model.GroupSnapshot, error) {
	return l.group(l.Engine.GetGroupSnapshot(ctx, id, snapshotIDs))
}

func (l Backend) VolumeHealth(ctx context.Context, id string) ([]model.HealthProblem, error) {
	return l.Engine.VolumeHealth(ctx, id)
}

func (l Backend) ModifyVolume(ctx context.Context, id string, params map[string]string) error {
	v, err := l.Engine.GetVolume(ctx, id)
	if err != nil {
		return err
	}
	limits, err := v.IOLimits.With(params, "mutable_parameters", true)
	if err != nil {
		return err
	}
	_, err = l.Engine.ModifyVolume(ctx, id, limits)
	return err
}

func (l Backend) SnapshotMetadata(ctx context.Context, q model.MetadataQuery, emit func(model.MetadataChunk) error) error {
	return l.Engine.SnapshotMetadata(ctx, q, emit)
}
