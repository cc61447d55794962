package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Labels, finalizers and condition types shared by controller and node agent.
const (
	// NodeLabel carries the owning node's name on Volumes and Snapshots, so
	// each node agent watches only its own objects.
	NodeLabel = "cairn.csi.dev/node"
	// Finalizer keeps a Volume or Snapshot until the node agent has
	// removed its data.
	Finalizer = "cairn.csi.dev/data"
	// DeleteDataAnnotation ("true") on a Volume or Snapshot asks the node
	// agent to delete the object's data (the volume, the local snapshot,
	// the backup in its target) when the object goes. The controller sets
	// it just before deleting the object for CSI DeleteVolume or
	// DeleteSnapshot; an object deleted without it (by a person, by
	// removing the CRDs, by a restore tool, by the controller cleaning up
	// a failed create) only loses its finalizer, and the data stays. See
	// DataDeletionRequested, the one place that reads it.
	DeleteDataAnnotation = "cairn.csi.dev/delete-data"
	// DeleteBackupAnnotation is the older name of DeleteDataAnnotation,
	// which controllers before delete-data set on imported backups only.
	// It is still honoured, and still set on backup Snapshots for agents
	// that predate delete-data.
	DeleteBackupAnnotation = "cairn.csi.dev/delete-backup"
	// RecoveredAnnotation (an RFC 3339 time) marks a Volume or Snapshot the
	// node agent re-created from what its data root holds, after the
	// object had been deleted without a CSI delete. The agent never
	// creates data for such an object: if the data is gone, it reports
	// NotFound instead of making a new, empty volume or a new snapshot.
	RecoveredAnnotation = "cairn.csi.dev/recovered"
	// VerifyRequestAnnotation on a ready backup Snapshot asks its node
	// agent to verify the backup; a new value (1 to 63 characters) asks
	// again. status.verification answers the value (docs/FORMAT.md).
	VerifyRequestAnnotation = "cairn.csi.dev/verify-request"
	// ConditionReady is True once the object is usable.
	ConditionReady = "Ready"
	// ConditionHealthy is False while a Volume has health problems.
	ConditionHealthy = "Healthy"
)

// DataDeletionRequested tells whether deleting obj may delete its data:
// only when it carries DeleteDataAnnotation (or the older
// DeleteBackupAnnotation) set to "true".
func DataDeletionRequested(obj metav1.Object) bool {
	a := obj.GetAnnotations()
	return a[DeleteDataAnnotation] == "true" || a[DeleteBackupAnnotation] == "true"
}

// Phases of a Volume or Snapshot.
const (
	PhasePending = "Pending" // recorded, not yet done by the node agent
	PhaseReady   = "Ready"   // usable
	PhaseFailed  = "Failed"  // the last attempt failed; the agent retries
)

// Source kinds of a Volume.
const (
	SourceSnapshot = "snapshot" // a local snapshot on the same node
	SourceVolume   = "volume"   // a clone of a volume on the same node
	SourceBackup   = "backup"   // a restore from a backup target, any node
)

// VolumeSpec is the desired volume, written by the controller.
type VolumeSpec struct {
	// Name is the CSI volume name (the PV name); the volume ID, which is
	// this object's name, is derived from it.
	// +kubebuilder:validation:MinLength=1
	Name string `json:"name"`
	// NodeName is the node whose data root holds the volume. Immutable.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="nodeName is immutable"
	NodeName string `json:"nodeName"`
	// RequiredBytes is the capacity asked for; raising it expands the volume.
	// +kubebuilder:validation:Minimum=0
	RequiredBytes int64 `json:"requiredBytes,omitempty"`
	// LimitBytes caps the capacity; 0 means no cap.
	// +kubebuilder:validation:Minimum=0
	LimitBytes int64 `json:"limitBytes,omitempty"`
	// Block is true for a raw block volume.
	Block bool `json:"block,omitempty"`
	// FsType is the file system of a filesystem volume (ext4, xfs).
	FsType string `json:"fsType,omitempty"`
	// Parameters are the StorageClass parameters.
	Parameters map[string]string `json:"parameters,omitempty"`
	// Source is what the volume is created from, if anything.
	Source *VolumeSource `json:"source,omitempty"`
	// IOLimits are the volume's I/O limits (StorageClass parameters and
	// the VolumeAttributesClass); mutable (ControllerModifyVolume).
	IOLimits *IOLimits `json:"ioLimits,omitempty"`
}

// IOLimits limit a volume's reads and writes, each (docs/IOLIMITS.md).
type IOLimits struct {
	// IOPS: operations per second; 0 or absent: no limit.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=10000000
	IOPS int64 `json:"iops,omitempty"`
	// ThroughputMiBps: MiB per second; 0 or absent: no limit.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000000
	ThroughputMiBps int64 `json:"throughputMiBps,omitempty"`
}

// VolumeSource names a snapshot, volume or backup to create a volume from.
type VolumeSource struct {
	// +kubebuilder:validation:Enum=snapshot;volume;backup
	Kind string `json:"kind"`
	// ID is the snapshot ID, volume ID or bs:// backup handle.
	// +kubebuilder:validation:MinLength=1
	ID string `json:"id"`
	// NodeName is the node a snapshot or volume source lives on when that
	// is not the volume's node: the volume is then copied from that
	// node's agent (docs/FORMAT.md#cross-node-copies). Empty otherwise.
	NodeName string `json:"nodeName,omitempty"`
}

// VolumeStatus is what the node agent reports.
type VolumeStatus struct {
	Phase string `json:"phase,omitempty"`
	// SizeBytes is the volume's current capacity.
	SizeBytes int64 `json:"sizeBytes,omitempty"`
	// FsType is the file system the volume has or will get (a restore
	// keeps its snapshot's); empty for block volumes.
	FsType string `json:"fsType,omitempty"`
	// NodeExpansionRequired is true when the last expansion must still be
	// finished by the node service (the volume was staged).
	NodeExpansionRequired bool `json:"nodeExpansionRequired,omitempty"`
	// IOLimits are the limits the node enforces now.
	IOLimits *IOLimits `json:"ioLimits,omitempty"`
	// Message describes progress or the last error.
	Message string `json:"message,omitempty"`
	// Reason is a machine-readable cause for Phase Failed: an engine
	// error kind (NotFound, OutOfRange, ResourceExhausted, ...).
	Reason string `json:"reason,omitempty"`
	// ObservedGeneration is the spec generation the status describes.
	ObservedGeneration int64              `json:"observedGeneration,omitempty"`
	Conditions         []metav1.Condition `json:"conditions,omitempty"`
	// Health lists the problems the node agent's last health check found
	// (docs/HEALTH.md); empty when healthy. The Healthy condition sums it
	// up.
	Health []HealthProblem `json:"health,omitempty"`
	// HealthChangedTime is when the node agent last found the volume's
	// health changed (it checks every heartbeat, writes on change only).
	HealthChangedTime *metav1.Time `json:"healthChangedTime,omitempty"`
	// AllocatedBytes is what the volume's sparse file occupies on the
	// node's data root (its allocated blocks, file system metadata
	// included; extents it shares with snapshots count in full). The node
	// agent refreshes it each heartbeat when it moved by AllocatedStep(size)
	// or more.
	AllocatedBytes int64 `json:"allocatedBytes,omitempty"`
}

// AllocatedStep is the smallest change of the allocated bytes of a volume
// of size bytes that the node agent writes to its status: 1 MiB, or 1/256
// of the size for volumes over 256 MiB (fewer writes for busy volumes).
func AllocatedStep(size int64) int64 { return max(1<<20, size/256) }

// HealthProblem is one abnormal condition of a volume.
type HealthProblem struct {
	// Type is Degraded, Inaccessible or DataLoss.
	Type    string `json:"type"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

// Volume is one Cairn volume: a sparse file on one node's data root.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=cvol
// +kubebuilder:printcolumn:name="Name",type=string,JSONPath=`.spec.name`
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.spec.nodeName`
// +kubebuilder:printcolumn:name="Size",type=integer,JSONPath=`.status.sizeBytes`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type Volume struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   VolumeSpec   `json:"spec"`
	Status VolumeStatus `json:"status,omitempty"`
}

// VolumeList is a list of Volumes.
//
// +kubebuilder:object:root=true
type VolumeList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Volume `json:"items"`
}

// Snapshot types.
const (
	SnapshotLocal  = "snap"   // a reflink on the volume's node
	SnapshotBackup = "backup" // a backup in a backup target
)

// SnapshotSpec is the desired snapshot, written by the controller.
type SnapshotSpec struct {
	// Name is the CSI snapshot name; empty for an imported backup.
	Name string `json:"name,omitempty"`
	// +kubebuilder:validation:Enum=snap;backup
	Type string `json:"type"`
	// SourceVolumeID is the volume snapshotted; empty for an imported backup.
	SourceVolumeID string `json:"sourceVolumeID,omitempty"`
	// NodeName is the node that takes (or, for an imported backup, looks
	// after) the snapshot. Immutable.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="nodeName is immutable"
	NodeName string `json:"nodeName"`
	// BackupTarget names a BackupTarget, for type backup.
	BackupTarget string `json:"backupTarget,omitempty"`
	// Handle is the bs:// handle of a backup; set by the controller for
	// backups it creates (the handle is derived from the name) and for
	// backups it imports (taken elsewhere, e.g. by another cluster).
	Handle string `json:"handle,omitempty"`
	// Parameters are the VolumeSnapshotClass parameters.
	Parameters map[string]string `json:"parameters,omitempty"`
	// GroupSnapshot names the GroupSnapshot a local snapshot is a member
	// of (its object name, g-...); set by the node agent that took the
	// group. A member's spec.name is "<group's CSI name>/<source volume>".
	GroupSnapshot string `json:"groupSnapshot,omitempty"`
	// SourceClaim is the source volume's PVC as the controller found it,
	// for a backup: the manifest records it, so that the PVC can be
	// recreated from the backup elsewhere.
	SourceClaim *SourceClaim `json:"sourceClaim,omitempty"`
}

// SourceClaim describes a PersistentVolumeClaim (docs/FORMAT.md, the
// manifest's claim).
type SourceClaim struct {
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name,omitempty"`
	// +kubebuilder:validation:MaxLength=63
	Namespace string `json:"namespace,omitempty"`
	// +kubebuilder:validation:MaxLength=253
	StorageClassName string `json:"storageClassName,omitempty"`
	// +kubebuilder:validation:MaxItems=4
	AccessModes []string `json:"accessModes,omitempty"`
	// +kubebuilder:validation:Enum=Filesystem;Block
	VolumeMode string `json:"volumeMode,omitempty"`
	// +kubebuilder:validation:Minimum=0
	RequestBytes int64 `json:"requestBytes,omitempty"`
}

// SnapshotStatus is what the node agent reports.
type SnapshotStatus struct {
	Phase string `json:"phase,omitempty"`
	// SnapshotID is the CSI snapshot ID: s-... for a local snapshot, the
	// bs:// handle for a backup.
	SnapshotID string `json:"snapshotID,omitempty"`
	ReadyToUse bool   `json:"readyToUse,omitempty"`
	// SizeBytes is the size of the source volume when snapshotted.
	SizeBytes    int64        `json:"sizeBytes,omitempty"`
	CreationTime *metav1.Time `json:"creationTime,omitempty"`
	// SourceVolumeID is the snapshotted volume (known for imports too).
	SourceVolumeID string `json:"sourceVolumeID,omitempty"`
	// Message describes progress (bytes uploaded) or the last error.
	Message            string             `json:"message,omitempty"`
	Reason             string             `json:"reason,omitempty"`
	ObservedGeneration int64              `json:"observedGeneration,omitempty"`
	Conditions         []metav1.Condition `json:"conditions,omitempty"`
	// Verification is the last verification of a backup, asked for by
	// VerifyRequestAnnotation.
	Verification *Verification `json:"verification,omitempty"`
}

// Verification phases.
const (
	VerifyRunning  = "Verifying"
	VerifyOK       = "Verified"
	VerifyDamaged  = "Damaged"
	VerifyFailed   = "Failed" // could not run (the target unreachable, a bad request)
	MaxVerifyValue = 63       // the longest VerifyRequestAnnotation value
)

// Verification reports reading back every block of one backup.
type Verification struct {
	// Request is the VerifyRequestAnnotation value this answers.
	Request string `json:"request"`
	// +kubebuilder:validation:Enum=Verifying;Verified;Damaged;Failed
	Phase          string       `json:"phase"`
	StartTime      *metav1.Time `json:"startTime,omitempty"`
	CompletionTime *metav1.Time `json:"completionTime,omitempty"`
	// Blocks is the number of distinct stored blocks checked.
	Blocks int64 `json:"blocks,omitempty"`
	// Bytes is the backup's raw block bytes; BytesDone those checked so far.
	Bytes     int64 `json:"bytes,omitempty"`
	BytesDone int64 `json:"bytesDone,omitempty"`
	// Message names the first problems found, or why it could not run.
	Message string `json:"message,omitempty"`
}

// Snapshot is one Cairn snapshot: a local reflink or a backup.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=csnap
// +kubebuilder:printcolumn:name="Type",type=string,JSONPath=`.spec.type`
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.spec.nodeName`
// +kubebuilder:printcolumn:name="Ready",type=boolean,JSONPath=`.status.readyToUse`
// +kubebuilder:printcolumn:name="Message",type=string,JSONPath=`.status.message`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type Snapshot struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   SnapshotSpec   `json:"spec"`
	Status SnapshotStatus `json:"status,omitempty"`
}

// SnapshotList is a list of Snapshots.
//
// +kubebuilder:object:root=true
type SnapshotList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Snapshot `json:"items"`
}

// GroupSnapshotSpec is the desired state of a group snapshot, written by
// the controller. The object's name is the group snapshot ID (g-...).
type GroupSnapshotSpec struct {
	// Name is the CSI group snapshot name.
	// +kubebuilder:validation:MinLength=1
	Name string `json:"name"`
	// NodeName is the node of every source volume, which takes the group.
	// Immutable.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="nodeName is immutable"
	NodeName string `json:"nodeName"`
	// SourceVolumeIDs are the volumes snapshotted together, sorted.
	// Immutable.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="sourceVolumeIDs is immutable"
	SourceVolumeIDs []string `json:"sourceVolumeIDs"`
	// Parameters are the VolumeGroupSnapshotClass parameters.
	Parameters map[string]string `json:"parameters,omitempty"`
}

// GroupSnapshotMember is one member of a taken group snapshot.
type GroupSnapshotMember struct {
	SourceVolumeID string `json:"sourceVolumeID"`
	// SnapshotID is the member's local snapshot (and Snapshot object).
	SnapshotID string `json:"snapshotID"`
	SizeBytes  int64  `json:"sizeBytes,omitempty"`
}

// GroupSnapshotStatus is what the node agent reports.
type GroupSnapshotStatus struct {
	Phase        string                `json:"phase,omitempty"`
	ReadyToUse   bool                  `json:"readyToUse,omitempty"`
	CreationTime *metav1.Time          `json:"creationTime,omitempty"`
	Members      []GroupSnapshotMember `json:"members,omitempty"`
	// FrozenMillis is how long the members' file systems were frozen.
	FrozenMillis       int64              `json:"frozenMillis,omitempty"`
	Message            string             `json:"message,omitempty"`
	Reason             string             `json:"reason,omitempty"`
	ObservedGeneration int64              `json:"observedGeneration,omitempty"`
	Conditions         []metav1.Condition `json:"conditions,omitempty"`
}

// GroupSnapshot is a group snapshot: local snapshots of several volumes
// of one node taken at one point in time (a VolumeGroupSnapshot).
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=cgsnap
// +kubebuilder:printcolumn:name="Name",type=string,JSONPath=`.spec.name`
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.spec.nodeName`
// +kubebuilder:printcolumn:name="Ready",type=boolean,JSONPath=`.status.readyToUse`
// +kubebuilder:printcolumn:name="Message",type=string,JSONPath=`.status.message`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type GroupSnapshot struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   GroupSnapshotSpec   `json:"spec"`
	Status GroupSnapshotStatus `json:"status,omitempty"`
}

// GroupSnapshotList is a list of GroupSnapshots.
//
// +kubebuilder:object:root=true
type GroupSnapshotList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []GroupSnapshot `json:"items"`
}

// BackupTargetSpec configures a backup store. The object's name is the
// target name VolumeSnapshotClasses use (parameters.backupTarget).
type BackupTargetSpec struct {
	// URL is file:///path (a filesystem or NFS mount present on every
	// node) or s3://bucket/prefix?endpoint=host:port&region=...
	// +kubebuilder:validation:Pattern=`^(file|s3)://`
	URL string `json:"url"`
	// CredentialsSecret names a Secret in Cairn's namespace with the keys
	// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (S3 only).
	CredentialsSecret string `json:"credentialsSecret,omitempty"`
	// EncryptionKeySecret names a Secret in Cairn's namespace whose entry
	// "key" holds the target's master key (32 random bytes): the target's
	// backups are then encrypted (docs/FORMAT.md, "Encrypted stores").
	// +kubebuilder:validation:MaxLength=253
	EncryptionKeySecret string `json:"encryptionKeySecret,omitempty"`
}

// BackupTarget is a backup store every node can back up to and restore from.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=cbt
// +kubebuilder:printcolumn:name="URL",type=string,JSONPath=`.spec.url`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type BackupTarget struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec BackupTargetSpec `json:"spec"`
}

// BackupTargetList is a list of BackupTargets.
//
// +kubebuilder:object:root=true
type BackupTargetList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []BackupTarget `json:"items"`
}

// StorageNodeStatus is a node agent's report on its data root.
type StorageNodeStatus struct {
	// CapacityBytes is the size of the data root's file system.
	CapacityBytes int64 `json:"capacityBytes,omitempty"`
	// AvailableBytes is what a new volume can get (free space minus what
	// existing volumes may still allocate).
	AvailableBytes int64 `json:"availableBytes,omitempty"`
	// FreeBytes is the data root's free space; ReservedBytes what existing
	// volumes and standby copies may still allocate (AvailableBytes is
	// their difference). Capacity minus free is what is used.
	FreeBytes     int64 `json:"freeBytes,omitempty"`
	ReservedBytes int64 `json:"reservedBytes,omitempty"`
	// CloneMode is reflink (O(1) snapshots and clones) or copy.
	CloneMode string `json:"cloneMode,omitempty"`
	// IOLimits says whether the node can enforce volumes' I/O limits
	// ("cgroup-v1", "cgroup-v2"), or why not.
	IOLimits string `json:"ioLimits,omitempty"`
	// BackupTargets are the targets this node has opened.
	BackupTargets []string `json:"backupTargets,omitempty"`
	// Version of the node agent.
	Version string `json:"version,omitempty"`
	// HeartbeatTime is when the agent last wrote this status; the
	// controller places nothing on a node whose heartbeat is stale.
	HeartbeatTime metav1.Time `json:"heartbeatTime,omitempty"`
	// Transfer is where this node's agent serves its snapshots and
	// volumes to other nodes' agents, and the pin of its certificate.
	Transfer   *TransferEndpoint  `json:"transfer,omitempty"`
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// TransferEndpoint is a node agent's endpoint for cross-node copies.
type TransferEndpoint struct {
	// Address is host:port of the agent's TLS listener; empty if the
	// agent only fetches.
	Address string `json:"address,omitempty"`
	// CertificateSHA256 is the lowercase hex SHA-256 of the DER of the
	// agent's self-signed certificate, which both sides of a copy check
	// the other's against.
	// +kubebuilder:validation:Pattern=`^[0-9a-f]{64}$`
	CertificateSHA256 string `json:"certificateSHA256"`
}

// StorageNode is one node's Cairn data root, named after the node.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=csn
// +kubebuilder:printcolumn:name="Available",type=integer,JSONPath=`.status.availableBytes`
// +kubebuilder:printcolumn:name="Capacity",type=integer,JSONPath=`.status.capacityBytes`
// +kubebuilder:printcolumn:name="Clone",type=string,JSONPath=`.status.cloneMode`
// +kubebuilder:printcolumn:name="Heartbeat",type=date,JSONPath=`.status.heartbeatTime`
type StorageNode struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Status StorageNodeStatus `json:"status,omitempty"`
}

// StorageNodeList is a list of StorageNodes.
//
// +kubebuilder:object:root=true
type StorageNodeList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []StorageNode `json:"items"`
}
