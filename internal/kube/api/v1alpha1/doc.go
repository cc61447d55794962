// Package v1alpha1 holds Cairn's custom resources (API group cairn.csi.dev):
// the desired state the Kubernetes-mode controller records and the status
// the node agent on the owning node reports. docs/ARCHITECTURE.md
// ("Kubernetes mode") describes who writes which field.
//
// +kubebuilder:object:generate=true
// +groupName=cairn.csi.dev
package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	// GroupVersion is cairn.csi.dev/v1alpha1.
	GroupVersion = schema.GroupVersion{Group: "cairn.csi.dev", Version: "v1alpha1"}
	// SchemeBuilder registers the types.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}
	// AddToScheme adds the types to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func init() {
	SchemeBuilder.Register(&Volume{}, &VolumeList{}, &Snapshot{}, &SnapshotList{},
		&GroupSnapshot{}, &GroupSnapshotList{}, &BackupTarget{}, &BackupTargetList{}, &StorageNode{}, &StorageNodeList{},
		&ProtectionPolicy{}, &ProtectionPolicyList{}, &StandbyVolume{}, &StandbyVolumeList{})
}
