package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Labels and annotations of the VolumeSnapshots a ProtectionPolicy makes.
const (
	// PolicyLabel names the ProtectionPolicy that made a VolumeSnapshot;
	// only snapshots with it are ever pruned, and only by that policy.
	PolicyLabel = "cairn.csi.dev/policy"
	// ScheduleTimeAnnotation is the schedule time (RFC 3339) of the run
	// that made a VolumeSnapshot.
	ScheduleTimeAnnotation = "cairn.csi.dev/schedule-time"
	// PVCUIDAnnotation is the UID of the PVC a policy's VolumeSnapshot is
	// of: a PVC deleted and made again under the same name is another
	// PVC, and its policy never prunes the old one's snapshots.
	PVCUIDAnnotation = "cairn.csi.dev/pvc-uid"
)

// ProtectionPolicySpec says when to snapshot which PVCs, how, and how
// many snapshots to keep (docs/PROTECTION.md).
type ProtectionPolicySpec struct {
	// Schedule is a standard 5-field cron expression, a macro (@yearly,
	// @monthly, @weekly, @daily, @hourly) or @every <duration> (at least
	// 1m).
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	Schedule string `json:"schedule"`
	// TimeZone is the IANA time zone the schedule is read in; default UTC.
	// +kubebuilder:validation:MaxLength=128
	TimeZone string `json:"timeZone,omitempty"`
	// SnapshotClassName is the VolumeSnapshotClass of the snapshots: it
	// decides local snapshot or backup, and the backup target.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	SnapshotClassName string `json:"snapshotClassName"`
	// Retain is how many ready snapshots to keep per PVC.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000
	Retain int32 `json:"retain"`
	// MaxAge also prunes ready snapshots older than this (a duration such
	// as 168h), except each PVC's newest ready one.
	MaxAge *metav1.Duration `json:"maxAge,omitempty"`
	// Concurrency is how many PVCs are snapshotted at once; default 1.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	Concurrency int32 `json:"concurrency,omitempty"`
	// Selector picks PVCs by label (all namespaces unless Namespaces
	// narrows it).
	Selector *metav1.LabelSelector `json:"selector,omitempty"`
	// Namespaces, when set, limits the policy to PVCs in these namespaces.
	// +kubebuilder:validation:MaxItems=1000
	Namespaces []string `json:"namespaces,omitempty"`
	// Suspend stops new runs (and pruning) while true.
	Suspend bool `json:"suspend,omitempty"`
}

// ProtectionPolicyStatus is what the controller reports about a policy.
type ProtectionPolicyStatus struct {
	// ObservedGeneration is the spec generation the status describes.
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// LastScheduleTime is the schedule time of the last completed run.
	LastScheduleTime *metav1.Time `json:"lastScheduleTime,omitempty"`
	// LastRunTime is when the last completed run started.
	LastRunTime *metav1.Time `json:"lastRunTime,omitempty"`
	// LastCompletionTime is when it ended.
	LastCompletionTime *metav1.Time `json:"lastCompletionTime,omitempty"`
	// NextScheduleTime is the next schedule time.
	NextScheduleTime *metav1.Time `json:"nextScheduleTime,omitempty"`
	// Volumes holds the last run's outcome per PVC.
	Volumes []PolicyVolumeStatus `json:"volumes,omitempty"`
	// Message summarizes the last run.
	Message    string             `json:"message,omitempty"`
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// PolicyVolumeStatus is one PVC's outcome under a policy.
type PolicyVolumeStatus struct {
	Namespace             string `json:"namespace"`
	PersistentVolumeClaim string `json:"persistentVolumeClaim"`
	// LastSnapshot is the VolumeSnapshot of the last run.
	LastSnapshot string `json:"lastSnapshot,omitempty"`
	// LastSnapshotTime is when the last run created it.
	LastSnapshotTime *metav1.Time `json:"lastSnapshotTime,omitempty"`
	// LastSuccessTime is the creation time of the PVC's newest ready
	// snapshot of this policy: its recovery point.
	LastSuccessTime *metav1.Time `json:"lastSuccessTime,omitempty"`
	// Snapshots is how many snapshots of this policy the PVC has.
	Snapshots int32 `json:"snapshots,omitempty"`
	// LastError is the last run's error for this PVC; empty on success.
	LastError string `json:"lastError,omitempty"`
}

// ProtectionPolicy takes VolumeSnapshots of the PVCs it applies to on a
// schedule and prunes them beyond its retention.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=cpp
// +kubebuilder:validation:XValidation:rule="self.metadata.name.size() <= 63",message="a ProtectionPolicy's name is at most 63 characters (it is a label value)"
// +kubebuilder:printcolumn:name="Schedule",type=string,JSONPath=`.spec.schedule`
// +kubebuilder:printcolumn:name="Class",type=string,JSONPath=`.spec.snapshotClassName`
// +kubebuilder:printcolumn:name="Retain",type=integer,JSONPath=`.spec.retain`
// +kubebuilder:printcolumn:name="Last",type=date,JSONPath=`.status.lastScheduleTime`
// +kubebuilder:printcolumn:name="Next",type=string,JSONPath=`.status.nextScheduleTime`
// +kubebuilder:printcolumn:name="Message",type=string,JSONPath=`.status.message`,priority=1
type ProtectionPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   ProtectionPolicySpec   `json:"spec"`
	Status ProtectionPolicyStatus `json:"status,omitempty"`
}

// ProtectionPolicyList is a list of ProtectionPolicies.
//
// +kubebuilder:object:root=true
type ProtectionPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ProtectionPolicy `json:"items"`
}
