package csi

import (
	"context"

	"github.com/cairn-csi/cairn/internal/model"
)

// ControllerBackend is what the controller service drives. In standalone
// mode it is the node's own engine (internal/control/local); in
// Kubernetes mode it is the remote backend (internal/control/remote),
// which records desired state in Cairn custom resources and waits for the
// node agent that owns the volume.
//
// Requests reaching a backend are validated; errors carry a model.Kind,
// mapped to gRPC codes in errors.go.
type ControllerBackend interface {
	// Health reports whether the backend can serve calls.
	Health(ctx context.Context) error
	// BackupTargets lists the backup target names snapshots may use.
	BackupTargets(ctx context.Context) ([]string, error)
	// Capacity is what a new volume can get on node ("" = any node).
	Capacity(ctx context.Context, node string) (int64, error)

	CreateVolume(ctx context.Context, req model.CreateVolumeRequest, where model.Placement) (*model.Volume, error)
	DeleteVolume(ctx context.Context, id string) error
	GetVolume(ctx context.Context, id string) (*model.Volume, error)
	ListVolumes(ctx context.Context) ([]*model.Volume, error)
	ExpandVolume(ctx context.Context, id string, required, limit int64) (*model.ExpandResult, error)
	// ModifyVolume changes the volume's I/O limits by the mutable
	// parameters (validated; a key left out keeps its limit).
	ModifyVolume(ctx context.Context, id string, params map[string]string) error
	// VolumeHealth lists a volume's health problems (none: healthy);
	// ErrNotFound for an unknown volume.
	VolumeHealth(ctx context.Context, id string) ([]model.HealthProblem, error)

	CreateSnapshot(ctx context.Context, name, volumeID string, params map[string]string, where model.Placement) (*model.Snapshot, error)
	DeleteSnapshot(ctx context.Context, id string) error
	GetSnapshot(ctx context.Context, id string) (*model.Snapshot, error)
	ListSnapshots(ctx context.Context) ([]*model.Snapshot, error)

	CreateBackup(ctx context.Context, name, volumeID, target string) (*model.BackupInfo, error)
	DeleteBackup(ctx context.Context, handle string) error
	GetBackup(ctx context.Context, handle string) (*model.BackupInfo, error)
	ListBackups(ctx context.Context) ([]*model.BackupInfo, error)
}

// NodeBackend is what the node service drives: this node's engine.
// Requests reaching it are validated; errors carry a model.Kind.
type NodeBackend interface {
	// Health reports whether the data root can serve calls.
	Health() error
	// CloneMode says how the data root makes snapshots and clones.
	CloneMode() model.CloneMode
	// OwnsPath reports whether p is inside what the data root keeps (no
	// CO path may point there).
	OwnsPath(p string) bool

	StageVolume(ctx context.Context, req model.StageRequest) error
	UnstageVolume(ctx context.Context, id, stagingPath string) error
	PublishVolume(ctx context.Context, req model.PublishRequest) error
	UnpublishVolume(ctx context.Context, id, target string) error
	VolumeStats(ctx context.Context, id, path string) (*model.VolumeStats, error)
	NodeExpandVolume(ctx context.Context, id, volumePath string, required int64) (int64, error)
	// VolumeHealth lists a volume's health problems on this node.
	VolumeHealth(ctx context.Context, id string) ([]model.HealthProblem, error)
	// StorageHealth lists the data root's health problems.
	StorageHealth(ctx context.Context) []model.HealthProblem
}
