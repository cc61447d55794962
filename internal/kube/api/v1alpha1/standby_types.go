package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// StandbyVolumeKind is the kind a PVC's dataSourceRef names to activate a
// StandbyVolume.
const StandbyVolumeKind = "StandbyVolume"

// Phases of a StandbyVolume (PhasePending and PhaseFailed as for Volumes).
const (
	StandbyRestoring  = "Restoring"  // the first, full restore
	StandbyFollowing  = "Following"  // holds a backup, follows newer ones
	StandbyActivating = "Activating" // becoming a volume
	StandbyActivated  = "Activated"  // a volume now (status.volumeID)
)

// StandbyVolumeSpec says which volume's backups a standby copy follows,
// on which node, and whether to turn it into a volume (docs/STANDBY.md).
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.nodeName) || size(oldSelf.nodeName) == 0 || (has(self.nodeName) && self.nodeName == oldSelf.nodeName)",message="spec.nodeName cannot change once set"
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.activate) || !oldSelf.activate || (has(self.activate) && self.activate)",message="spec.activate cannot be undone"
type StandbyVolumeSpec struct {
	// BackupTargetName names the BackupTarget holding the backups.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="spec.backupTargetName is immutable"
	BackupTargetName string `json:"backupTargetName"`
	// SourceVolumeID is the volume's ID in the target, as `cairn backup
	// list` shows it (the middle part of its bs:// handles).
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="spec.sourceVolumeID is immutable"
	SourceVolumeID string `json:"sourceVolumeID"`
	// NodeName is the node that keeps the copy; empty: the controller
	// picks one. Cannot change once set. At most 63 characters (it is
	// also the value of the node label).
	// +kubebuilder:validation:MaxLength=63
	NodeName string `json:"nodeName,omitempty"`
	// PollInterval is how often the node looks for a newer backup
	// (default 1m, at least 10s).
	PollInterval *metav1.Duration `json:"pollInterval,omitempty"`
	// Activate turns the copy into a volume and stops following. Set by a
	// person, or by the controller when a PVC names this object in its
	// dataSourceRef. Cannot be undone.
	Activate bool `json:"activate,omitempty"`
	// StorageClassName is the class of the PersistentVolume made at
	// activation when no PVC names one (default: the class the backup
	// recorded).
	// +kubebuilder:validation:MaxLength=253
	StorageClassName string `json:"storageClassName,omitempty"`
}

// StandbyClaim is the PVC that activates a StandbyVolume.
type StandbyClaim struct {
	Namespace string    `json:"namespace"`
	Name      string    `json:"name"`
	UID       types.UID `json:"uid"`
	// RequestBytes is the PVC's storage request: the volume is grown to
	// it if the backup is smaller.
	RequestBytes int64 `json:"requestBytes,omitempty"`
}

// StandbyVolumeStatus is written by the node agent that keeps the copy,
// except Claim and PersistentVolumeName, which the controller writes.
type StandbyVolumeStatus struct {
	Phase string `json:"phase,omitempty"`
	// BackupID, BackupHandle and BackupTime name the backup the copy
	// holds and when it was completed (the recovery point).
	BackupID     string       `json:"backupID,omitempty"`
	BackupHandle string       `json:"backupHandle,omitempty"`
	BackupTime   *metav1.Time `json:"backupTime,omitempty"`
	// LatestBackupID and LatestBackupTime are the newest committed backup
	// of the volume in the target at the last check.
	LatestBackupID   string       `json:"latestBackupID,omitempty"`
	LatestBackupTime *metav1.Time `json:"latestBackupTime,omitempty"`
	// BehindBackups counts committed backups newer than BackupID.
	BehindBackups int32 `json:"behindBackups,omitempty"`
	// LastSyncTime is the last check that succeeded.
	LastSyncTime *metav1.Time `json:"lastSyncTime,omitempty"`
	// LastSyncBytes and LastSyncBlocks are the stored bytes and blocks
	// the last step that changed the copy downloaded; LastSyncFull says
	// it was the first, full restore.
	LastSyncBytes  int64 `json:"lastSyncBytes,omitempty"`
	LastSyncBlocks int32 `json:"lastSyncBlocks,omitempty"`
	LastSyncFull   bool  `json:"lastSyncFull,omitempty"`
	// SizeBytes, FsType and Block describe the held backup; SourceClaim
	// is the PVC it was taken of, as the backup recorded it.
	SizeBytes   int64        `json:"sizeBytes,omitempty"`
	FsType      string       `json:"fsType,omitempty"`
	Block       bool         `json:"block,omitempty"`
	SourceClaim *SourceClaim `json:"sourceClaim,omitempty"`
	// Claim is the PVC activating this standby (the controller).
	Claim *StandbyClaim `json:"claim,omitempty"`
	// VolumeID is the CSI volume the copy became; PersistentVolumeName
	// its PV (the controller); ActivationDuration how long the node took.
	VolumeID             string           `json:"volumeID,omitempty"`
	PersistentVolumeName string           `json:"persistentVolumeName,omitempty"`
	ActivatedTime        *metav1.Time     `json:"activatedTime,omitempty"`
	ActivationDuration   *metav1.Duration `json:"activationDuration,omitempty"`

	Reason             string             `json:"reason,omitempty"`
	Message            string             `json:"message,omitempty"`
	ObservedGeneration int64              `json:"observedGeneration,omitempty"`
	Conditions         []metav1.Condition `json:"conditions,omitempty"`
}

// StandbyVolume is a copy of a volume kept on a node by following the
// volume's backups in a target, until it is activated into a volume.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Namespaced,shortName=sbv
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.spec.nodeName`
// +kubebuilder:printcolumn:name="Backup",type=string,JSONPath=`.status.backupID`
// +kubebuilder:printcolumn:name="Behind",type=integer,JSONPath=`.status.behindBackups`
// +kubebuilder:printcolumn:name="Recovery-Point",type=date,JSONPath=`.status.backupTime`
// +kubebuilder:printcolumn:name="PV",type=string,JSONPath=`.status.persistentVolumeName`,priority=1
// +kubebuilder:printcolumn:name="Message",type=string,JSONPath=`.status.message`,priority=1
type StandbyVolume struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   StandbyVolumeSpec   `json:"spec"`
	Status StandbyVolumeStatus `json:"status,omitempty"`
}

// StandbyVolumeList is a list of StandbyVolumes.
// +kubebuilder:object:root=true
type StandbyVolumeList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []StandbyVolume `json:"items"`
}

// StandbyID is the data-root name of a StandbyVolume's copy.
func StandbyID(uid types.UID) string { return "sb-" + string(uid) }

// StandbyVolumeName is the CSI name of the volume a StandbyVolume
// becomes (its volume ID follows from it), and the name of its PV. Both
// sides derive it from the object's UID, never from its status.
func StandbyVolumeName(uid types.UID) string { return "standby-" + string(uid) }
