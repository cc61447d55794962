package model

import "time"

// CreateVolumeRequest asks for a new volume (validated by the CSI layer).
type CreateVolumeRequest struct {
	Name          string
	RequiredBytes int64
	LimitBytes    int64 // 0: no limit
	Block         bool
	FsType        string // for filesystem volumes; "" means DefaultFsType
	Parameters    map[string]string
	// IOLimits are enforced on the volume's device while it is staged.
	IOLimits IOLimits
	// At most one source. A bs:// snapshot ID names a backup.
	SourceSnapshotID string
	SourceVolumeID   string
}

// Volume is a volume as a backend reports it.
type Volume struct {
	ID         string
	Name       string
	SizeBytes  int64
	Block      bool
	FsType     string // "" for block volumes
	Source     *Source
	Parameters map[string]string
	IOLimits   IOLimits
	CreatedAt  time.Time
	// AllocatedBytes is what the volume's file occupies on disk (0 where
	// the backend does not know it).
	AllocatedBytes int64
	// Node is the node the volume lives on ("" where the backend is one
	// node's engine).
	Node string
}

// Snapshot is a local snapshot as a backend reports it.
type Snapshot struct {
	ID             string
	Name           string
	SourceVolumeID string
	SizeBytes      int64
	Block          bool
	FsType         string
	Parameters     map[string]string
	CreatedAt      time.Time
	AllocatedBytes int64
	Node           string // as Volume.Node
	// GroupSnapshotID names the group snapshot this one is a member of.
	GroupSnapshotID string
}

// GroupSnapshot describes a group snapshot: its members were taken at one
// point in time.
type GroupSnapshot struct {
	ID        string
	Name      string
	Members   []*Snapshot // sorted by source volume ID
	CreatedAt time.Time
	// Frozen is how long the members' file systems were frozen.
	Frozen time.Duration
	Node   string // as Volume.Node
	// SourceVolumeIDs are the volumes the group was taken of, sorted (a
	// member deleted alone leaves Members but stays here).
	SourceVolumeIDs []string
	Parameters      map[string]string
}

// BackupInfo describes a backup snapshot.
type BackupInfo struct {
	Handle       BackupHandle
	SnapshotName string
	SizeBytes    int64
	CreatedAt    time.Time
	Ready        bool
	BytesDone    int64         // upload progress while not ready
	Elapsed      time.Duration // how long the upload has run (this node's process)
	LastError    string        // last upload error while retrying
}

// VerifyResult is what reading back every block of one backup found.
type VerifyResult struct {
	Blocks int   // distinct stored blocks checked
	Bytes  int64 // their raw bytes
	// Problems describe the damage found, each naming the volume offset,
	// the block and its pack (or the manifest); none: the backup restores.
	Problems []string
}

// ExpandResult is a volume's size after an expansion and whether the node
// must still grow its file system.
type ExpandResult struct {
	SizeBytes             int64
	NodeExpansionRequired bool
}

// CloneMode is how a data root makes snapshots and clones.
type CloneMode string

// Clone modes.
const (
	CloneReflink CloneMode = "reflink" // O(1), shared extents
	CloneCopy    CloneMode = "copy"    // sparse copy, O(data)
)

// Placement is where the CO allows (Requisite) and prefers (Preferred, in
// order) a new object, as node names; a nil Requisite allows every node.
type Placement struct {
	Requisite []string
	Preferred []string
}

// StageRequest asks to make a volume usable on this node at StagingPath: a
// loop device, and for filesystem access a formatted, mounted file system.
type StageRequest struct {
	VolumeID    string
	StagingPath string
	Block       bool
	FsType      string
	MountFlags  []string
	ReadOnly    bool
}

// PublishRequest asks to expose a staged volume at TargetPath.
type PublishRequest struct {
	VolumeID     string
	StagingPath  string
	TargetPath   string
	Block        bool
	ReadOnly     bool
	MountFlags   []string
	SingleWriter bool // SINGLE_NODE_SINGLE_WRITER: one target at most
	// PodUID is the pod the target is for ("" outside Kubernetes): its
	// cgroups get the volume's I/O limits.
	PodUID string
}

// VolumeStats is what NodeGetVolumeStats reports.
type VolumeStats struct {
	Block                                 bool
	TotalBytes, AvailableBytes, UsedBytes int64
	TotalInodes, FreeInodes, UsedInodes   int64
}

// HealthKind is how bad a health problem is (the CSI VolumeHealthErrorType
// and StorageHealthErrorType).
type HealthKind string

const (
	HealthDegraded     HealthKind = "Degraded"     // usable, not as it should be
	HealthInaccessible HealthKind = "Inaccessible" // cannot be used now
	HealthDataLoss     HealthKind = "DataLoss"     // data is lost or about to be
)

// HealthProblem is one abnormal condition of a volume or of a data root:
// Reason is a CamelCase word, Message says what to do about it.
type HealthProblem struct {
	Kind    HealthKind
	Reason  string
	Message string
}
