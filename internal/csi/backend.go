package csi

import (
	"context"
	"slices"

	"github.com/cairn-csi/cairn/internal/engine"
)

// Backend is what the controller service drives. In standalone mode it is
// the node's own engine (Local); in Kubernetes mode it is internal/kube's
// remote backend, which records desired state in Cairn custom resources
// and waits for the node agent that owns the volume.
//
// Requests reaching a Backend are validated; errors are engine errors
// (engine.ErrNotFound, ...), mapped to gRPC codes in errors.go.
type Backend interface {
	// Health reports whether the backend can serve calls.
	Health(ctx context.Context) error
	// BackupTargets lists the backup target names snapshots may use.
	BackupTargets(ctx context.Context) ([]string, error)
	// Capacity is what a new volume can get on node ("" = any node).
	Capacity(ctx context.Context, node string) (int64, error)

	CreateVolume(ctx context.Context, req engine.CreateVolumeRequest, where Placement) (*VolumeInfo, error)
	DeleteVolume(ctx context.Context, id string) error
	GetVolume(ctx context.Context, id string) (*VolumeInfo, error)
	ListVolumes(ctx context.Context) ([]*VolumeInfo, error)
	ExpandVolume(ctx context.Context, id string, required, limit int64) (*engine.ExpandResult, error)

	CreateSnapshot(ctx context.Context, name, volumeID string, params map[string]string, where Placement) (*SnapshotInfo, error)
	DeleteSnapshot(ctx context.Context, id string) error
	GetSnapshot(ctx context.Context, id string) (*SnapshotInfo, error)
	ListSnapshots(ctx context.Context) ([]*SnapshotInfo, error)

	CreateBackup(ctx context.Context, name, volumeID, target string) (*engine.BackupInfo, error)
	DeleteBackup(ctx context.Context, handle string) error
	GetBackup(ctx context.Context, handle string) (*engine.BackupInfo, error)
	ListBackups(ctx context.Context) ([]*engine.BackupInfo, error)
}

// VolumeInfo is a volume and the node it lives on.
type VolumeInfo struct {
	*engine.Volume
	Node string
}

// SnapshotInfo is a local snapshot and the node it lives on.
type SnapshotInfo struct {
	*engine.Snapshot
	Node string
}

// Placement is where the CO allows (Requisite) and prefers (Preferred, in
// order) a new object, as node names; a nil Requisite allows every node.
type Placement struct {
	Requisite []string
	Preferred []string
}

// Allows reports whether node may hold the object.
func (p Placement) Allows(node string) bool {
	return p.Requisite == nil || slices.Contains(p.Requisite, node)
}

// Candidates lists the nodes to try, preferred ones first.
func (p Placement) Candidates() []string {
	out := slices.Clone(p.Preferred)
	for _, n := range p.Requisite {
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out
}

// Local is the Backend of standalone mode: one engine on this node.
type Local struct {
	Engine *engine.Engine
	Node   string
}

var _ Backend = Local{}

func (l Local) Health(context.Context) error { return l.Engine.Health() }

func (l Local) BackupTargets(context.Context) ([]string, error) { return l.Engine.BackupTargets(), nil }

func (l Local) Capacity(_ context.Context, node string) (int64, error) {
	if node != "" && node != l.Node {
		return 0, nil
	}
	c, err := l.Engine.Capacity()
	return c.AvailableBytes, err
}

func (l Local) volume(v *engine.Volume, err error) (*VolumeInfo, error) {
	if err != nil {
		return nil, err
	}
	return &VolumeInfo{Volume: v, Node: l.Node}, nil
}

func (l Local) snapshot(s *engine.Snapshot, err error) (*SnapshotInfo, error) {
	if err != nil {
		return nil, err
	}
	return &SnapshotInfo{Snapshot: s, Node: l.Node}, nil
}

func (l Local) CreateVolume(ctx context.Context, req engine.CreateVolumeRequest, where Placement) (*VolumeInfo, error) {
	if !where.Allows(l.Node) {
		return nil, engine.Errorf(engine.ErrResourceExhausted, "accessibility_requirements: this driver serves only node %q", l.Node)
	}
	return l.volume(l.Engine.CreateVolume(ctx, req))
}

func (l Local) DeleteVolume(ctx context.Context, id string) error {
	return l.Engine.DeleteVolume(ctx, id)
}

func (l Local) GetVolume(ctx context.Context, id string) (*VolumeInfo, error) {
	return l.volume(l.Engine.GetVolume(ctx, id))
}

func (l Local) ListVolumes(ctx context.Context) ([]*VolumeInfo, error) {
	vols, err := l.Engine.ListVolumes(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]*VolumeInfo, len(vols))
	for i, v := range vols {
		out[i] = &VolumeInfo{Volume: v, Node: l.Node}
	}
	return out, nil
}

func (l Local) ExpandVolume(ctx context.Context, id string, required, limit int64) (*engine.ExpandResult, error) {
	return l.Engine.ExpandVolume(ctx, id, required, limit)
}

func (l Local) CreateSnapshot(ctx context.Context, name, volumeID string, params map[string]string, where Placement) (*SnapshotInfo, error) {
	if !where.Allows(l.Node) {
		return nil, engine.Errorf(engine.ErrResourceExhausted, "accessibility_requirements: a local snapshot lives on node %q, which the requirements exclude (use type: backup for a snapshot usable anywhere)", l.Node)
	}
	return l.snapshot(l.Engine.CreateSnapshot(ctx, name, volumeID, params))
}

func (l Local) DeleteSnapshot(ctx context.Context, id string) error {
	return l.Engine.DeleteSnapshot(ctx, id)
}

func (l Local) GetSnapshot(ctx context.Context, id string) (*SnapshotInfo, error) {
	return l.snapshot(l.Engine.GetSnapshot(ctx, id))
}

func (l Local) ListSnapshots(ctx context.Context) ([]*SnapshotInfo, error) {
	snaps, err := l.Engine.ListSnapshots(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]*SnapshotInfo, len(snaps))
	for i, s := range snaps {
		out[i] = &SnapshotInfo{Snapshot: s, Node: l.Node}
	}
	return out, nil
}

func (l Local) CreateBackup(ctx context.Context, name, volumeID, target string) (*engine.BackupInfo, error) {
	return l.Engine.CreateBackup(ctx, name, volumeID, target)
}

func (l Local) DeleteBackup(ctx context.Context, handle string) error {
	return l.Engine.DeleteBackup(ctx, handle)
}

func (l Local) GetBackup(ctx context.Context, handle string) (*engine.BackupInfo, error) {
	return l.Engine.GetBackup(ctx, handle)
}

func (l Local) ListBackups(ctx context.Context) ([]*engine.BackupInfo, error) {
	return l.Engine.ListBackups(ctx)
}
