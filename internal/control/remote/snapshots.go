package remote

import (
	"context"
	"errors"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"

	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
	"github.com/cairn-csi/cairn/internal/model"
)

// CreateSnapshot records a local Snapshot on the volume's node and waits.
func (r *Remote) CreateSnapshot(ctx context.Context, name, volumeID string, params map[string]string, where model.Placement) (*model.Snapshot, error) {
	id := model.SnapshotIDForName(name)
	spec := cairnv1.SnapshotSpec{Name: name, Type: cairnv1.SnapshotLocal, SourceVolumeID: volumeID, Parameters: params}
	snap, err := r.ensureSnapshot(ctx, id, spec, func(node string) error {
		if !where.Allows(node) {
			return model.LocalSnapshotExcluded(node)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	snap, err = r.waitSnapshot(ctx, snap.Name, func(s *cairnv1.Snapshot) bool { return s.Status.ReadyToUse })
	if err != nil {
		return nil, err
	}
	return snapshotInfo(snap), nil
}

// ensureSnapshot creates the Snapshot object for spec on its source
// volume's node unless it exists; an existing one for another source or
// type is AlreadyExists.
func (r *Remote) ensureSnapshot(ctx context.Context, objName string, spec cairnv1.SnapshotSpec, allow func(node string) error) (*cairnv1.Snapshot, error) {
	var snap cairnv1.Snapshot
	err := r.Client.Get(ctx, client.ObjectKey{Name: objName}, &snap)
	if err == nil {
		if snap.Spec.SourceVolumeID != spec.SourceVolumeID || snap.Spec.Type != spec.Type {
			return nil, model.Errorf(model.ErrAlreadyExists, "snapshot name %q is already used for a %s of volume %s", spec.Name, snap.Spec.Type, snap.Spec.SourceVolumeID)
		}
		return &snap, nil
	}
	if !apierrors.IsNotFound(err) {
		return nil, apiError("get snapshot "+objName, err)
	}
	var vol cairnv1.Volume
	if err := r.Client.Get(ctx, client.ObjectKey{Name: spec.SourceVolumeID}, &vol); err != nil || !model.ValidVolumeID(spec.SourceVolumeID) {
		return nil, notFoundOr(err, "source_volume_id: volume %q not found", spec.SourceVolumeID)
	}
	if allow != nil {
		if err := allow(vol.Spec.NodeName); err != nil {
			return nil, err
		}
	}
	spec.NodeName = vol.Spec.NodeName
	return r.createSnapshotObject(ctx, objName, spec)
}

func (r *Remote) createSnapshotObject(ctx context.Context, objName string, spec cairnv1.SnapshotSpec) (*cairnv1.Snapshot, error) {
	snap := &cairnv1.Snapshot{
		ObjectMeta: metav1.ObjectMeta{Name: objName, Labels: map[string]string{cairnv1.NodeLabel: spec.NodeName}, Finalizers: []string{cairnv1.Finalizer}},
		Spec:       spec,
	}
	if err := r.Client.Create(ctx, snap); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, apiError("create snapshot "+objName, err)
	}
	klog.InfoS("Snapshot recorded", "object", objName, "type", spec.Type, "name", spec.Name, "volumeID", spec.SourceVolumeID, "handle", spec.Handle, "node", spec.NodeName)
	return snap, nil
}

func (r *Remote) waitSnapshot(ctx context.Context, objName string, done func(*cairnv1.Snapshot) bool) (*cairnv1.Snapshot, error) {
	var s cairnv1.Snapshot
	err := r.wait(ctx, func() (bool, string, error) {
		if err := r.Client.Get(ctx, client.ObjectKey{Name: objName}, &s); err != nil {
			return absent(err)
		}
		return r.judge(&s, s.Generation, s.Status.ObservedGeneration, s.Status.Phase, s.Status.Reason, s.Status.Message, func() bool { return done(&s) })
	}, "snapshot "+objName)
	if err != nil {
		var failed *finalFailure
		if errors.As(err, &failed) {
			r.deleteObject(ctx, failed.obj)
		}
		return nil, err
	}
	return &s, nil
}

func snapshotInfo(s *cairnv1.Snapshot) *model.Snapshot {
	out := &model.Snapshot{
		ID: s.Name, Name: s.Spec.Name, SourceVolumeID: s.Spec.SourceVolumeID, SizeBytes: s.Status.SizeBytes,
		Parameters: s.Spec.Parameters, Node: s.Spec.NodeName, GroupSnapshotID: s.Spec.GroupSnapshot,
	}
	if s.Status.CreationTime != nil {
		out.CreatedAt = s.Status.CreationTime.Time
	}
	return out
}

func (r *Remote) getSnapshotObject(ctx context.Context, objName string) (*cairnv1.Snapshot, error) {
	var s cairnv1.Snapshot
	if err := r.Client.Get(ctx, client.ObjectKey{Name: objName}, &s); err != nil {
		return nil, notFoundOr(err, "snapshot %q not found", objName)
	}
	return &s, nil
}

// DeleteSnapshot deletes a local Snapshot and waits for its node.
func (r *Remote) DeleteSnapshot(ctx context.Context, id string) error {
	if !model.ValidSnapshotID(id) {
		return nil
	}
	return r.deleteData(ctx, &cairnv1.Snapshot{ObjectMeta: metav1.ObjectMeta{Name: id}})
}

// GetSnapshot describes a local snapshot.
func (r *Remote) GetSnapshot(ctx context.Context, id string) (*model.Snapshot, error) {
	s, err := r.readySnapshot(ctx, id)
	if err != nil {
		return nil, err
	}
	return snapshotInfo(s), nil
}

// readySnapshot is the ready local Snapshot object of id (NotFound
// otherwise, as CSI answers for a snapshot it does not know).
func (r *Remote) readySnapshot(ctx context.Context, id string) (*cairnv1.Snapshot, error) {
	if !model.ValidSnapshotID(id) {
		return nil, model.Errorf(model.ErrNotFound, "snapshot %q not found", id)
	}
	s, err := r.getSnapshotObject(ctx, id)
	if err != nil {
		return nil, err
	}
	if s.Spec.Type != cairnv1.SnapshotLocal || !s.Status.ReadyToUse {
		return nil, model.Errorf(model.ErrNotFound, "snapshot %q not found", id)
	}
	return s, nil
}

// ListSnapshots lists the ready local snapshots.
func (r *Remote) ListSnapshots(ctx context.Context) ([]*model.Snapshot, error) {
	var list cairnv1.SnapshotList
	if err := r.Client.List(ctx, &list); err != nil {
		return nil, apiError("list snapshots", err)
	}
	var out []*model.Snapshot
	for i := range list.Items {
		if s := &list.Items[i]; s.Spec.Type == cairnv1.SnapshotLocal && s.Status.ReadyToUse {
			out = append(out, snapshotInfo(s))
		}
	}
	return out, nil
}
