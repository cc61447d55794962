package remote

import (
	"context"
	"errors"

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
	spec := cairnv1.SnapshotSpec{Name: name, Type: cairnv1.SnapshotBackup, SourceVolumeID: volumeID, BackupTarget: target, Handle: h.String()}
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
