// Package kube holds what both sides of Kubernetes mode share: the
// scheme with Cairn's custom resources (api/v1alpha1) and the names of
// objects derived from CSI IDs, so every controller replica and every
// retry lands on the same object. The controller's side is
// internal/control/remote, the node agent's internal/agent.
package kube

import (
	"crypto/sha256"
	"encoding/hex"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"

	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
	"github.com/cairn-csi/cairn/internal/model"
)

// Scheme holds the Kubernetes built-in types, the VolumeSnapshot types
// (which protection policies create) and Cairn's.
var Scheme = runtime.NewScheme()

func init() {
	if err := clientgoscheme.AddToScheme(Scheme); err != nil {
		panic(err)
	}
	if err := snapv1.AddToScheme(Scheme); err != nil {
		panic(err)
	}
	if err := cairnv1.AddToScheme(Scheme); err != nil {
		panic(err)
	}
}

// SnapshotObjectName is the name of the Snapshot object for a CSI snapshot
// ID: the ID itself for a local snapshot (s-<hex>), b-<hash> for a bs://
// backup handle, which is not a valid object name.
func SnapshotObjectName(snapshotID string) string {
	if !model.IsBackupHandle(snapshotID) {
		return snapshotID
	}
	sum := sha256.Sum256([]byte("cairn/backup-handle/" + snapshotID))
	return "b-" + hex.EncodeToString(sum[:16])
}

// IOLimits converts a Volume's limits (nil: none) to the model's.
func IOLimits(l *cairnv1.IOLimits) model.IOLimits {
	if l == nil {
		return model.IOLimits{}
	}
	return model.IOLimits{IOPS: l.IOPS, ThroughputMiBps: l.ThroughputMiBps}
}

// IOLimitsObject converts the model's limits to a Volume's (nil: none).
func IOLimitsObject(l model.IOLimits) *cairnv1.IOLimits {
	if l.Zero() {
		return nil
	}
	return &cairnv1.IOLimits{IOPS: l.IOPS, ThroughputMiBps: l.ThroughputMiBps}
}

// Claim converts a Snapshot's source claim (nil: none) to the model's;
// it is checked like store input, and a claim that fails is dropped.
func Claim(c *cairnv1.SourceClaim) *model.Claim {
	if c == nil {
		return nil
	}
	m := &model.Claim{Name: c.Name, Namespace: c.Namespace, StorageClassName: c.StorageClassName,
		AccessModes: c.AccessModes, VolumeMode: c.VolumeMode, RequestBytes: c.RequestBytes}
	if m.Check() != nil {
		return nil
	}
	return m
}

// ClaimObject converts the model's claim to a Snapshot's (nil: none).
func ClaimObject(c *model.Claim) *cairnv1.SourceClaim {
	if c == nil {
		return nil
	}
	return &cairnv1.SourceClaim{Name: c.Name, Namespace: c.Namespace, StorageClassName: c.StorageClassName,
		AccessModes: c.AccessModes, VolumeMode: c.VolumeMode, RequestBytes: c.RequestBytes}
}
