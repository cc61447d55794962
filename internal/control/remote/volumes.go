package remote

import (
	"context"
	"errors"
	"sort"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cairn-csi/cairn/internal/kube"
	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
	"github.com/cairn-csi/cairn/internal/model"
)

// CreateVolume records a Volume on the chosen node and waits until it is
// ready. Clones and restores from local snapshots go to their source's
// node when the requirements allow it, else to an allowed node with room,
// whose agent copies the source from its node; restores from backups go
// wherever there is room.
func (r *Remote) CreateVolume(ctx context.Context, req model.CreateVolumeRequest, where model.Placement) (*model.Volume, error) {
	id := model.VolumeIDForName(req.Name)
	var vol cairnv1.Volume
	err := r.Client.Get(ctx, client.ObjectKey{Name: id}, &vol)
	switch {
	case apierrors.IsNotFound(err):
		if err := r.createVolumeObject(ctx, id, req, where); err != nil {
			return nil, err
		}
	case err != nil:
		return nil, apiError("get volume "+id, err)
	}
	v, err := r.waitVolume(ctx, id, 0, func(v *cairnv1.Volume) bool { return v.Status.Phase == cairnv1.PhaseReady })
	if err != nil {
		var failed *finalFailure
		if errors.As(err, &failed) && v.Status.SizeBytes == 0 {
			// Nothing usable was made: drop the object so a retry starts
			// over. An object whose status once recorded a size is a
			// volume that existed: it stays, so nothing new is made in
			// its place.
			r.deleteObject(ctx, failed.obj)
		}
		return nil, err
	}
	info := volumeInfo(v)
	// The same name asked for again: compatible, or AlreadyExists.
	if err := info.Answers(req); err != nil {
		return nil, err
	}
	return info, nil
}

func (r *Remote) createVolumeObject(ctx context.Context, id string, req model.CreateVolumeRequest, where model.Placement) error {
	spec := cairnv1.VolumeSpec{
		Name: req.Name, RequiredBytes: req.RequiredBytes, LimitBytes: req.LimitBytes,
		Block: req.Block, FsType: req.FsType, Parameters: req.Parameters,
		IOLimits: kube.IOLimitsObject(req.IOLimits),
	}
	var (
		node    string
		srcSize int64
	)
	switch {
	case req.SourceSnapshotID != "" && model.IsBackupHandle(req.SourceSnapshotID):
		spec.Source = &cairnv1.VolumeSource{Kind: cairnv1.SourceBackup, ID: req.SourceSnapshotID}
	case req.SourceSnapshotID != "":
		var snap cairnv1.Snapshot
		if err := r.Client.Get(ctx, client.ObjectKey{Name: kube.SnapshotObjectName(req.SourceSnapshotID)}, &snap); err != nil {
			return notFoundOr(err, "volume_content_source.snapshot.snapshot_id: snapshot %q not found", req.SourceSnapshotID)
		}
		spec.Source = &cairnv1.VolumeSource{Kind: cairnv1.SourceSnapshot, ID: req.SourceSnapshotID}
		node, srcSize = snap.Spec.NodeName, snap.Status.SizeBytes
	case req.SourceVolumeID != "":
		var src cairnv1.Volume
		if err := r.Client.Get(ctx, client.ObjectKey{Name: req.SourceVolumeID}, &src); err != nil {
			return notFoundOr(err, "volume_content_source.volume.volume_id: volume %q not found", req.SourceVolumeID)
		}
		spec.Source = &cairnv1.VolumeSource{Kind: cairnv1.SourceVolume, ID: req.SourceVolumeID}
		node, srcSize = src.Spec.NodeName, src.Status.SizeBytes
	}
	if node == "" || !where.Allows(node) {
		// A new volume, a restore from a backup, or a source on a node
		// the requirements exclude, which is then copied from there.
		size, err := model.PickSize(max(req.RequiredBytes, srcSize), req.LimitBytes, req.FsType)
		if err != nil {
			return err
		}
		srcNode := node
		if node, err = r.place(ctx, where, size); err != nil {
			return err
		}
		if srcNode != "" {
			spec.Source.NodeName = srcNode
		}
	}
	spec.NodeName = node
	vol := &cairnv1.Volume{
		ObjectMeta: metav1.ObjectMeta{Name: id, Labels: map[string]string{cairnv1.NodeLabel: node}, Finalizers: []string{cairnv1.Finalizer}},
		Spec:       spec,
	}
	if err := r.Client.Create(ctx, vol); err != nil && !apierrors.IsAlreadyExists(err) {
		return apiError("create volume "+id, err)
	}
	klog.InfoS("Volume recorded", "volumeID", id, "name", req.Name, "node", node, "source", spec.Source)
	return nil
}

func volumeInfo(v *cairnv1.Volume) *model.Volume {
	out := &model.Volume{
		ID: v.Name, Name: v.Spec.Name, SizeBytes: v.Status.SizeBytes, Block: v.Spec.Block,
		FsType: v.Spec.FsType, Parameters: v.Spec.Parameters, CreatedAt: v.CreationTimestamp.Time,
		Node: v.Spec.NodeName, IOLimits: kube.IOLimits(v.Status.IOLimits),
	}
	if s := v.Spec.Source; s != nil {
		out.Source = &model.Source{Kind: model.SourceKind(s.Kind), ID: s.ID}
	}
	if v.Status.FsType != "" {
		out.FsType = v.Status.FsType
	} else {
		out.FsType = model.EffectiveFsType(out.Block, out.FsType)
	}
	return out
}

// deleteObject deletes obj and waits until its finalizer is gone. Without
// the mark deleteData sets, the node agent only forgets the object (a
// failed create's clean-up: nothing was made, or what exists is not this
// call's to remove).
func (r *Remote) DeleteVolume(ctx context.Context, id string) error {
	if !model.ValidVolumeID(id) {
		return nil // can never have existed
	}
	return r.deleteData(ctx, &cairnv1.Volume{ObjectMeta: metav1.ObjectMeta{Name: id}})
}

// GetVolume describes a volume.
func (r *Remote) GetVolume(ctx context.Context, id string) (*model.Volume, error) {
	var v cairnv1.Volume
	if !model.ValidVolumeID(id) {
		return nil, model.Errorf(model.ErrNotFound, "volume %q not found", id)
	}
	if err := r.Client.Get(ctx, client.ObjectKey{Name: id}, &v); err != nil {
		return nil, notFoundOr(err, "volume %q not found", id)
	}
	return volumeInfo(&v), nil
}

// ListVolumes lists every volume that is ready.
func (r *Remote) ListVolumes(ctx context.Context) ([]*model.Volume, error) {
	var list cairnv1.VolumeList
	if err := r.Client.List(ctx, &list); err != nil {
		return nil, apiError("list volumes", err)
	}
	var out []*model.Volume
	for i := range list.Items {
		if list.Items[i].Status.Phase == cairnv1.PhaseReady {
			out = append(out, volumeInfo(&list.Items[i]))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// ExpandVolume raises the Volume's requested size and waits for the node.
func (r *Remote) ExpandVolume(ctx context.Context, id string, required, limit int64) (*model.ExpandResult, error) {
	var v cairnv1.Volume
	if !model.ValidVolumeID(id) {
		return nil, model.Errorf(model.ErrNotFound, "volume %q not found", id)
	}
	if err := r.Client.Get(ctx, client.ObjectKey{Name: id}, &v); err != nil {
		return nil, notFoundOr(err, "volume %q not found", id)
	}
	if v.Status.Phase != cairnv1.PhaseReady && v.Status.SizeBytes == 0 {
		return nil, model.Errorf(model.ErrFailedPrecondition, "volume %s is not ready yet", id)
	}
	size, err := model.ExpandSize(id, v.Status.SizeBytes, required, limit, v.Spec.FsType)
	if err != nil {
		return nil, err
	}
	for _, h := range v.Status.Health {
		if h.Type == string(model.HealthDataLoss) {
			return nil, model.Errorf(model.ErrFailedPrecondition, "volume %s cannot be expanded: %s", id, h.Message)
		}
	}
	// A larger request, or a smaller one in place of a larger one that was
	// never reached (recovery from a failed expansion: ExpandSize keeps it
	// at or above the current size).
	var wrote int64
	if size > v.Spec.RequiredBytes || (size < v.Spec.RequiredBytes && v.Status.SizeBytes < v.Spec.RequiredBytes) {
		patch := client.MergeFrom(v.DeepCopy())
		v.Spec.RequiredBytes = size
		v.Spec.LimitBytes = limit
		if err := r.Client.Patch(ctx, &v, patch); err != nil {
			return nil, apiError("expand volume "+id, err)
		}
		wrote = v.Generation
		klog.InfoS("Volume expansion recorded", "volumeID", id, "size", size, "node", v.Spec.NodeName)
	}
	got, err := r.waitVolume(ctx, id, wrote, func(v *cairnv1.Volume) bool {
		return v.Status.Phase == cairnv1.PhaseReady && v.Status.SizeBytes >= size
	})
	if err != nil {
		return nil, err
	}
	return &model.ExpandResult{SizeBytes: got.Status.SizeBytes, NodeExpansionRequired: got.Status.NodeExpansionRequired}, nil
}

// ModifyVolume records the volume's new I/O limits (the mutable
// parameters over the current ones) and waits for its node to enforce
// them. A node that cannot limit I/O refuses before anything is written.
func (r *Remote) ModifyVolume(ctx context.Context, id string, params map[string]string) error {
	var v cairnv1.Volume
	if !model.ValidVolumeID(id) {
		return model.Errorf(model.ErrNotFound, "volume %q not found", id)
	}
	if err := r.Client.Get(ctx, client.ObjectKey{Name: id}, &v); err != nil {
		return notFoundOr(err, "volume %q not found", id)
	}
	want, err := kube.IOLimits(v.Spec.IOLimits).With(params, "mutable_parameters", true)
	if err != nil {
		return err
	}
	if !want.Zero() {
		// Refused before anything is written: a node that cannot limit
		// I/O (or an agent too old to say) would fail the Volume.
		var sn cairnv1.StorageNode
		if err := r.Client.Get(ctx, client.ObjectKey{Name: v.Spec.NodeName}, &sn); err != nil {
			return model.Errorf(model.ErrUnavailable, "volume %s: node %s's StorageNode cannot be read: %v", id, v.Spec.NodeName, err)
		}
		if s := sn.Status.IOLimits; s == "" || strings.HasPrefix(s, "unsupported") {
			if s == "" {
				s = "its agent does not report I/O limit support"
			}
			return model.Errorf(model.ErrInvalidArgument, "mutable_parameters: I/O limits (%s) cannot be enforced on node %s: %s", want, v.Spec.NodeName, s)
		}
	}
	var wrote int64
	if kube.IOLimits(v.Spec.IOLimits) != want {
		patch := client.MergeFrom(v.DeepCopy())
		v.Spec.IOLimits = kube.IOLimitsObject(want)
		if err := r.Client.Patch(ctx, &v, patch); err != nil {
			return apiError("modify volume "+id, err)
		}
		wrote = v.Generation
		klog.InfoS("Volume I/O limits recorded", "volumeID", id, "limits", want.String(), "node", v.Spec.NodeName)
	}
	_, err = r.waitVolume(ctx, id, wrote, func(v *cairnv1.Volume) bool {
		return v.Status.Phase == cairnv1.PhaseReady && kube.IOLimits(v.Status.IOLimits) == want
	})
	return err
}
