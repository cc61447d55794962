package remote

import (
	"context"
	"errors"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cairn-csi/cairn/internal/kube"
	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
	"github.com/cairn-csi/cairn/internal/model"
)

// CreateBackup records a backup Snapshot on the volume's node and returns
// once the node has taken the point-in-time copy; the upload goes on in
// the background and later calls report its progress.
func (r *Remote) CreateBackup(ctx context.Context, name, volumeID, target string) (*model.BackupInfo, error) {
	h := model.BackupHandle{Target: target, VolumeID: volumeID, BackupID: model.BackupIDForName(name)}
	if !model.ValidVolumeID(volumeID) {
		return nil, model.Errorf(model.ErrNotFound, "source_volume_id: volume %q not found", volumeID)
	}
	spec := cairnv1.SnapshotSpec{Name: name, Type: cairnv1.SnapshotBackup, SourceVolumeID: volumeID, BackupTarget: target, Handle: h.String(),
		SourceClaim: kube.ClaimObject(r.sourceClaim(ctx, volumeID))}
	snap, err := r.ensureSnapshot(ctx, kube.SnapshotObjectName(h.String()), spec, nil)
	if err != nil {
		return nil, err
	}
	snap, err = r.waitSnapshot(ctx, snap.Name, func(s *cairnv1.Snapshot) bool { return s.Status.CreationTime != nil })
	if err != nil {
		return nil, err
	}
	return backupInfo(snap), nil
}

// sourceClaim describes a volume's PVC for its backup's manifest: the
// PVC named by the volume's CreateVolume parameters, as it is now; what
// the parameters tell if it cannot be read; nil if they name none.
func (r *Remote) sourceClaim(ctx context.Context, volumeID string) *model.Claim {
	var vol cairnv1.Volume
	if err := r.Client.Get(ctx, client.ObjectKey{Name: volumeID}, &vol); err != nil {
		return nil // ensureSnapshot reports it
	}
	c := model.ClaimFromParameters(vol.Spec.Parameters, vol.Spec.Block)
	if c == nil || c.Namespace == "" {
		return c
	}
	reader := r.Reader
	if reader == nil {
		reader = r.Client
	}
	var pvc corev1.PersistentVolumeClaim
	if err := reader.Get(ctx, client.ObjectKey{Namespace: c.Namespace, Name: c.Name}, &pvc); err != nil {
		klog.V(2).InfoS("Reading a backup's source PVC", "pvc", klog.KRef(c.Namespace, c.Name), "err", err)
		return c
	}
	if pvc.Spec.StorageClassName != nil {
		c.StorageClassName = *pvc.Spec.StorageClassName
	}
	for _, m := range pvc.Spec.AccessModes {
		c.AccessModes = append(c.AccessModes, string(m))
	}
	if q, ok := pvc.Spec.Resources.Requests[corev1.ResourceStorage]; ok {
		c.RequestBytes = q.Value()
	}
	if c.Check() != nil {
		return model.ClaimFromParameters(vol.Spec.Parameters, vol.Spec.Block)
	}
	return c
}

func backupInfo(s *cairnv1.Snapshot) *model.BackupInfo {
	h, _ := model.ParseBackupHandle(s.Spec.Handle)
	info := &model.BackupInfo{Handle: h, SnapshotName: s.Spec.Name, SizeBytes: s.Status.SizeBytes, Ready: s.Status.ReadyToUse}
	if s.Status.CreationTime != nil {
		info.CreatedAt = s.Status.CreationTime.Time
	}
	if s.Status.Phase == cairnv1.PhaseFailed {
		info.LastError = s.Status.Message
	}
	return info
}

// backupObject finds the Snapshot object of a backup handle, importing the
// backup (a backup this cluster did not take, e.g. a pre-provisioned
// VolumeSnapshotContent) by asking a node to look it up in its target.
func (r *Remote) backupObject(ctx context.Context, handle string) (*cairnv1.Snapshot, error) {
	h, err := model.ParseBackupHandle(handle)
	if err != nil {
		return nil, err
	}
	objName := kube.SnapshotObjectName(h.String())
	s, err := r.getSnapshotObject(ctx, objName)
	if err == nil || !errors.Is(err, model.ErrNotFound) {
		return s, err
	}
	node, err := r.place(ctx, model.Placement{}, 0)
	if err != nil {
		return nil, err
	}
	return r.createSnapshotObject(ctx, objName, cairnv1.SnapshotSpec{Type: cairnv1.SnapshotBackup, BackupTarget: h.Target, Handle: h.String(), NodeName: node})
}

// GetBackup describes a backup, importing it if this cluster has no object
// for it yet.
func (r *Remote) GetBackup(ctx context.Context, handle string) (*model.BackupInfo, error) {
	s, err := r.backupObject(ctx, handle)
	if err != nil {
		return nil, err
	}
	if s.Spec.Name == "" { // an import: wait for the node's lookup
		if s, err = r.waitSnapshot(ctx, s.Name, func(s *cairnv1.Snapshot) bool { return s.Status.ReadyToUse }); err != nil {
			return nil, err
		}
	}
	return backupInfo(s), nil
}

// DeleteBackup deletes a backup through its Snapshot object (importing it
// first if needed): the node agent's finalizer deletes it from the target.
func (r *Remote) DeleteBackup(ctx context.Context, handle string) error {
	if _, err := model.ParseBackupHandle(handle); err != nil {
		return nil // can never have existed
	}
	s, err := r.backupObject(ctx, handle)
	if err != nil {
		return err
	}
	return r.deleteData(ctx, s)
}

// ListBackups lists the backups this cluster knows.
func (r *Remote) ListBackups(ctx context.Context) ([]*model.BackupInfo, error) {
	var list cairnv1.SnapshotList
	if err := r.Client.List(ctx, &list); err != nil {
		return nil, apiError("list snapshots", err)
	}
	var out []*model.BackupInfo
	for i := range list.Items {
		if s := &list.Items[i]; s.Spec.Type == cairnv1.SnapshotBackup && s.Status.CreationTime != nil {
			out = append(out, backupInfo(s))
		}
	}
	return out, nil
}

// notFoundOr maps an API NotFound to the engine's, with msg; other errors
// are API errors.
