package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cairn-csi/cairn/internal/backup"
	"github.com/cairn-csi/cairn/internal/csi"
	"github.com/cairn-csi/cairn/internal/engine"
	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
)

// Remote is the controller's csi.Backend in Kubernetes mode. It never
// touches a disk: it writes Volume and Snapshot objects assigned to a node
// and waits until that node's agent reports them done. It keeps no state
// of its own, so any number of replicas can serve the sidecars.
type Remote struct {
	// Client reads (from an informer cache) and writes Cairn objects.
	Client client.Client
	// HeartbeatTimeout is how old a StorageNode's heartbeat may be for the
	// node to get new volumes.
	HeartbeatTimeout time.Duration
	// Poll is how often a waiting call re-reads status.
	Poll time.Duration
}

var _ csi.Backend = (*Remote)(nil)

func (r *Remote) poll() time.Duration {
	if r.Poll > 0 {
		return r.Poll
	}
	return 200 * time.Millisecond
}

// Health checks that the API server answers.
func (r *Remote) Health(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var nodes cairnv1.StorageNodeList
	if err := r.Client.List(ctx, &nodes, client.Limit(1)); err != nil {
		return fmt.Errorf("list storage nodes: %w", err)
	}
	return nil
}

// BackupTargets lists the BackupTarget objects.
func (r *Remote) BackupTargets(ctx context.Context) ([]string, error) {
	var list cairnv1.BackupTargetList
	if err := r.Client.List(ctx, &list); err != nil {
		return nil, apiError("list backup targets", err)
	}
	var out []string
	for _, t := range list.Items {
		out = append(out, t.Name)
	}
	sort.Strings(out)
	return out, nil
}

// nodeState is a StorageNode as placement sees it.
type nodeState struct {
	name      string
	available int64
	why       string // non-empty if the node can take nothing
}

func (r *Remote) nodes(ctx context.Context) (map[string]nodeState, error) {
	var list cairnv1.StorageNodeList
	if err := r.Client.List(ctx, &list); err != nil {
		return nil, apiError("list storage nodes", err)
	}
	timeout := r.HeartbeatTimeout
	if timeout <= 0 {
		timeout = 2 * time.Minute
	}
	out := map[string]nodeState{}
	for _, n := range list.Items {
		s := nodeState{name: n.Name, available: n.Status.AvailableBytes}
		if age := time.Since(n.Status.HeartbeatTime.Time); n.Status.HeartbeatTime.IsZero() || age > timeout {
			s.why = fmt.Sprintf("node agent silent for %s", age.Round(time.Second))
		}
		out[n.Name] = s
	}
	return out, nil
}

// Capacity is the space a new volume can get on node; with no node, the
// most any node offers.
func (r *Remote) Capacity(ctx context.Context, node string) (int64, error) {
	nodes, err := r.nodes(ctx)
	if err != nil {
		return 0, err
	}
	var best int64
	for _, n := range nodes {
		if n.why == "" && (node == "" || n.name == node) {
			best = max(best, n.available)
		}
	}
	return best, nil
}

// place picks the node for a new volume of size bytes: the first
// preferred node with room, else the allowed node with the most room.
func (r *Remote) place(ctx context.Context, where csi.Placement, size int64) (string, error) {
	nodes, err := r.nodes(ctx)
	if err != nil {
		return "", err
	}
	cands := where.Candidates()
	if len(where.Requisite) == 0 {
		var rest []string
		for name := range nodes {
			if !slices.Contains(cands, name) {
				rest = append(rest, name)
			}
		}
		sort.Slice(rest, func(i, j int) bool { return nodes[rest[i]].available > nodes[rest[j]].available })
		cands = append(cands, rest...)
	} else {
		pref := len(where.Preferred)
		if pref > len(cands) {
			pref = len(cands)
		}
		rest := cands[pref:]
		sort.SliceStable(rest, func(i, j int) bool { return nodes[rest[i]].available > nodes[rest[j]].available })
	}
	var refusals []string
	for _, name := range cands {
		n, ok := nodes[name]
		switch {
		case !ok:
			refusals = append(refusals, name+": no Cairn node agent")
		case n.why != "":
			refusals = append(refusals, name+": "+n.why)
		case n.available < size:
			refusals = append(refusals, fmt.Sprintf("%s: %d bytes available", name, n.available))
		default:
			return name, nil
		}
	}
	if len(refusals) == 0 {
		return "", engine.Errorf(engine.ErrResourceExhausted, "no Cairn node is registered (is the node DaemonSet running?)")
	}
	return "", engine.Errorf(engine.ErrResourceExhausted, "no node can hold %d bytes (%s)", size, strings.Join(refusals, "; "))
}

// CreateVolume records a Volume on the chosen node and waits until it is
// ready. Clones and restores from local snapshots go to their source's
// node; restores from backups go wherever there is room.
func (r *Remote) CreateVolume(ctx context.Context, req engine.CreateVolumeRequest, where csi.Placement) (*csi.VolumeInfo, error) {
	id := engine.VolumeIDForName(req.Name)
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
	v, err := r.waitVolume(ctx, id, func(v *cairnv1.Volume) bool { return v.Status.Phase == cairnv1.PhaseReady })
	if err != nil {
		var failed *finalFailure
		if errors.As(err, &failed) {
			// Nothing usable was made: drop the object (the node agent's
			// finalizer removes any partial data) so a retry starts over.
			r.deleteObject(ctx, failed.obj)
		}
		return nil, err
	}
	info := volumeInfo(v)
	fsType := req.FsType
	if req.Block {
		fsType = ""
	} else if fsType == "" {
		fsType = "ext4"
	}
	// The same name asked for again: compatible, or AlreadyExists.
	if err := engine.CheckExisting(&info.VolumeMeta, req, fsType); err != nil {
		return nil, err
	}
	return info, nil
}

func (r *Remote) createVolumeObject(ctx context.Context, id string, req engine.CreateVolumeRequest, where csi.Placement) error {
	spec := cairnv1.VolumeSpec{
		Name: req.Name, RequiredBytes: req.RequiredBytes, LimitBytes: req.LimitBytes,
		Block: req.Block, FsType: req.FsType, Parameters: req.Parameters,
	}
	var node string
	switch {
	case req.SourceSnapshotID != "" && engine.IsBackupHandle(req.SourceSnapshotID):
		spec.Source = &cairnv1.VolumeSource{Kind: cairnv1.SourceBackup, ID: req.SourceSnapshotID}
	case req.SourceSnapshotID != "":
		var snap cairnv1.Snapshot
		if err := r.Client.Get(ctx, client.ObjectKey{Name: SnapshotObjectName(req.SourceSnapshotID)}, &snap); err != nil {
			return notFoundOr(err, "volume_content_source.snapshot.snapshot_id: snapshot %q not found", req.SourceSnapshotID)
		}
		spec.Source = &cairnv1.VolumeSource{Kind: cairnv1.SourceSnapshot, ID: req.SourceSnapshotID}
		node = snap.Spec.NodeName
	case req.SourceVolumeID != "":
		var src cairnv1.Volume
		if err := r.Client.Get(ctx, client.ObjectKey{Name: req.SourceVolumeID}, &src); err != nil {
			return notFoundOr(err, "volume_content_source.volume.volume_id: volume %q not found", req.SourceVolumeID)
		}
		spec.Source = &cairnv1.VolumeSource{Kind: cairnv1.SourceVolume, ID: req.SourceVolumeID}
		node = src.Spec.NodeName
	}
	if node != "" {
		if !where.Allows(node) {
			return engine.Errorf(engine.ErrResourceExhausted, "accessibility_requirements: the source lives on node %q, which the requirements exclude (%v); a clone or local-snapshot restore stays on its source's node — restore from a type: backup snapshot to use another node", node, where.Requisite)
		}
	} else {
		size, err := engine.PickSize(req.RequiredBytes, req.LimitBytes, req.FsType)
		if err != nil {
			return err
		}
		if node, err = r.place(ctx, where, size); err != nil {
			return err
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

// finalFailure is a failure the node reported that no retry can fix.
type finalFailure struct {
	obj client.Object
	err error
}

func (f *finalFailure) Error() string { return f.err.Error() }
func (f *finalFailure) Unwrap() error { return f.err }

// waitVolume polls a Volume until done says so for a status that describes
// its current spec, a final failure, or the context's deadline (Aborted,
// so the sidecar retries and the retry picks up the same object).
func (r *Remote) waitVolume(ctx context.Context, id string, done func(*cairnv1.Volume) bool) (*cairnv1.Volume, error) {
	var v cairnv1.Volume
	err := r.wait(ctx, func() (bool, string, error) {
		if err := r.Client.Get(ctx, client.ObjectKey{Name: id}, &v); err != nil {
			return absent(err)
		}
		return r.judge(&v, v.Status.ObservedGeneration, v.Status.Phase, v.Status.Reason, v.Status.Message, func() bool { return done(&v) })
	}, "volume "+id)
	return &v, err
}

// absent is how a wait treats a failed read: an object it just created may
// not have reached the informer cache yet, so NotFound means keep waiting
// (a retry after the deadline recreates an object that is really gone).
func absent(err error) (bool, string, error) {
	if apierrors.IsNotFound(err) {
		return false, "waiting for the object to appear", nil
	}
	return false, "", apiError("read status", err)
}

// judge decides from a reported status whether a wait is over.
func (r *Remote) judge(obj client.Object, observed int64, phase, reason, msg string, done func() bool) (bool, string, error) {
	if observed < obj.GetGeneration() {
		return false, "waiting for node agent on " + obj.GetLabels()[cairnv1.NodeLabel], nil
	}
	if phase == cairnv1.PhaseFailed {
		err, final := failure(reason, msg)
		if final {
			return false, "", &finalFailure{obj: obj, err: err}
		}
		return false, msg, nil
	}
	if done() {
		return true, "", nil
	}
	return false, msg, nil
}

// wait runs check until it reports done or an error; at the deadline it
// answers Aborted with the last progress message.
func (r *Remote) wait(ctx context.Context, check func() (bool, string, error), what string) error {
	// Leave time to answer before the caller's deadline.
	if dl, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, dl.Add(-min(time.Second, time.Until(dl)/10)))
		defer cancel()
	}
	tick := time.NewTicker(r.poll())
	defer tick.Stop()
	var last string
	for {
		done, msg, err := check()
		if err != nil || done {
			return err
		}
		if msg != "" {
			last = msg
		}
		select {
		case <-ctx.Done():
			if last == "" {
				last = "no progress reported"
			}
			return engine.Errorf(engine.ErrAborted, "%s is not done yet (%s); retry", what, last)
		case <-tick.C:
		}
	}
}

func volumeInfo(v *cairnv1.Volume) *csi.VolumeInfo {
	m := engine.VolumeMeta{
		ID: v.Name, Name: v.Spec.Name, SizeBytes: v.Status.SizeBytes, Block: v.Spec.Block,
		FsType: v.Spec.FsType, Parameters: v.Spec.Parameters, CreatedAt: v.CreationTimestamp.Time,
	}
	if s := v.Spec.Source; s != nil {
		kind := s.Kind
		if kind == cairnv1.SourceBackup {
			kind = cairnv1.SourceSnapshot // a backup is a CSI snapshot
		}
		m.Source = &engine.Source{Kind: kind, ID: s.ID}
	}
	if v.Status.FsType != "" {
		m.FsType = v.Status.FsType
	} else if !m.Block && m.FsType == "" {
		m.FsType = "ext4"
	}
	return &csi.VolumeInfo{Volume: &engine.Volume{VolumeMeta: m}, Node: v.Spec.NodeName}
}

// deleteObject deletes obj and waits until its finalizer is gone. Without
// the mark deleteData sets, the node agent only forgets the object (a
// failed create's clean-up: nothing was made, or what exists is not this
// call's to remove).
func (r *Remote) deleteObject(ctx context.Context, obj client.Object) error {
	if err := r.Client.Delete(ctx, obj); err != nil && !apierrors.IsNotFound(err) {
		return apiError("delete "+obj.GetName(), err)
	}
	key := client.ObjectKeyFromObject(obj)
	return r.wait(ctx, func() (bool, string, error) {
		err := r.Client.Get(ctx, key, obj)
		if apierrors.IsNotFound(err) {
			return true, "", nil
		}
		if err != nil {
			return false, "", apiError("get "+key.Name, err)
		}
		return false, "waiting for the node agent on " + obj.GetLabels()[cairnv1.NodeLabel] + " to remove the data", nil
	}, "deletion of "+key.Name)
}

// deleteData is how a CSI delete removes data: it marks obj with the
// delete annotation (cairnv1.DataDeletionRequested; on a backup's Snapshot
// also with its older name, for agents that predate it), then deletes it
// and waits until its node removed the data. The mark goes straight to the
// API server (a merge patch, not a cached read), so an object this
// replica's cache has not seen yet is still found; a missing object is
// already deleted.
func (r *Remote) deleteData(ctx context.Context, obj client.Object) error {
	ann := map[string]string{cairnv1.DeleteDataAnnotation: "true"}
	if s, ok := obj.(*cairnv1.Snapshot); ok && engine.IsBackupHandle(s.Spec.Handle) {
		ann[cairnv1.DeleteBackupAnnotation] = "true"
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": ann}})
	if err != nil {
		return err
	}
	if err := r.Client.Patch(ctx, obj, client.RawPatch(types.MergePatchType, patch)); apierrors.IsNotFound(err) {
		return nil
	} else if err != nil {
		return apiError("mark "+obj.GetName()+" for deletion", err)
	}
	return r.deleteObject(ctx, obj)
}

// DeleteVolume deletes the Volume and waits until its node removed the data.
func (r *Remote) DeleteVolume(ctx context.Context, id string) error {
	if !engine.ValidVolumeID(id) {
		return nil // can never have existed
	}
	return r.deleteData(ctx, &cairnv1.Volume{ObjectMeta: metav1.ObjectMeta{Name: id}})
}

// GetVolume describes a volume.
func (r *Remote) GetVolume(ctx context.Context, id string) (*csi.VolumeInfo, error) {
	var v cairnv1.Volume
	if !engine.ValidVolumeID(id) {
		return nil, engine.Errorf(engine.ErrNotFound, "volume %q not found", id)
	}
	if err := r.Client.Get(ctx, client.ObjectKey{Name: id}, &v); err != nil {
		return nil, notFoundOr(err, "volume %q not found", id)
	}
	return volumeInfo(&v), nil
}

// ListVolumes lists every volume that is ready.
func (r *Remote) ListVolumes(ctx context.Context) ([]*csi.VolumeInfo, error) {
	var list cairnv1.VolumeList
	if err := r.Client.List(ctx, &list); err != nil {
		return nil, apiError("list volumes", err)
	}
	var out []*csi.VolumeInfo
	for i := range list.Items {
		if list.Items[i].Status.Phase == cairnv1.PhaseReady {
			out = append(out, volumeInfo(&list.Items[i]))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// ExpandVolume raises the Volume's requested size and waits for the node.
func (r *Remote) ExpandVolume(ctx context.Context, id string, required, limit int64) (*engine.ExpandResult, error) {
	var v cairnv1.Volume
	if !engine.ValidVolumeID(id) {
		return nil, engine.Errorf(engine.ErrNotFound, "volume %q not found", id)
	}
	if err := r.Client.Get(ctx, client.ObjectKey{Name: id}, &v); err != nil {
		return nil, notFoundOr(err, "volume %q not found", id)
	}
	if v.Status.Phase != cairnv1.PhaseReady && v.Status.SizeBytes == 0 {
		return nil, engine.Errorf(engine.ErrFailedPrecondition, "volume %s is not ready yet", id)
	}
	size, err := engine.ExpandSize(id, v.Status.SizeBytes, required, limit, v.Spec.FsType)
	if err != nil {
		return nil, err
	}
	if size > v.Spec.RequiredBytes {
		patch := client.MergeFrom(v.DeepCopy())
		v.Spec.RequiredBytes = size
		v.Spec.LimitBytes = limit
		if err := r.Client.Patch(ctx, &v, patch); err != nil {
			return nil, apiError("expand volume "+id, err)
		}
		klog.InfoS("Volume expansion recorded", "volumeID", id, "size", size, "node", v.Spec.NodeName)
	}
	got, err := r.waitVolume(ctx, id, func(v *cairnv1.Volume) bool {
		return v.Status.Phase == cairnv1.PhaseReady && v.Status.SizeBytes >= size
	})
	if err != nil {
		return nil, err
	}
	return &engine.ExpandResult{SizeBytes: got.Status.SizeBytes, NodeExpansionRequired: got.Status.NodeExpansionRequired}, nil
}

// CreateSnapshot records a local Snapshot on the volume's node and waits.
func (r *Remote) CreateSnapshot(ctx context.Context, name, volumeID string, params map[string]string, where csi.Placement) (*csi.SnapshotInfo, error) {
	id := engine.SnapshotIDForName(name)
	spec := cairnv1.SnapshotSpec{Name: name, Type: cairnv1.SnapshotLocal, SourceVolumeID: volumeID, Parameters: params}
	snap, err := r.ensureSnapshot(ctx, id, spec, func(node string) error {
		if !where.Allows(node) {
			return engine.Errorf(engine.ErrResourceExhausted, "accessibility_requirements: a local snapshot lives on node %q, which the requirements exclude (use type: backup for a snapshot usable anywhere)", node)
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
			return nil, engine.Errorf(engine.ErrAlreadyExists, "snapshot name %q is already used for a %s of volume %s", spec.Name, snap.Spec.Type, snap.Spec.SourceVolumeID)
		}
		return &snap, nil
	}
	if !apierrors.IsNotFound(err) {
		return nil, apiError("get snapshot "+objName, err)
	}
	var vol cairnv1.Volume
	if err := r.Client.Get(ctx, client.ObjectKey{Name: spec.SourceVolumeID}, &vol); err != nil || !engine.ValidVolumeID(spec.SourceVolumeID) {
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
		return r.judge(&s, s.Status.ObservedGeneration, s.Status.Phase, s.Status.Reason, s.Status.Message, func() bool { return done(&s) })
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

func snapshotInfo(s *cairnv1.Snapshot) *csi.SnapshotInfo {
	m := engine.SnapshotMeta{ID: s.Name, Name: s.Spec.Name, SourceVolumeID: s.Spec.SourceVolumeID, SizeBytes: s.Status.SizeBytes, Parameters: s.Spec.Parameters}
	if s.Status.CreationTime != nil {
		m.CreatedAt = s.Status.CreationTime.Time
	}
	return &csi.SnapshotInfo{Snapshot: &engine.Snapshot{SnapshotMeta: m}, Node: s.Spec.NodeName}
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
	if !engine.ValidSnapshotID(id) {
		return nil
	}
	return r.deleteData(ctx, &cairnv1.Snapshot{ObjectMeta: metav1.ObjectMeta{Name: id}})
}

// GetSnapshot describes a local snapshot.
func (r *Remote) GetSnapshot(ctx context.Context, id string) (*csi.SnapshotInfo, error) {
	if !engine.ValidSnapshotID(id) {
		return nil, engine.Errorf(engine.ErrNotFound, "snapshot %q not found", id)
	}
	s, err := r.getSnapshotObject(ctx, id)
	if err != nil {
		return nil, err
	}
	if s.Spec.Type != cairnv1.SnapshotLocal || !s.Status.ReadyToUse {
		return nil, engine.Errorf(engine.ErrNotFound, "snapshot %q not found", id)
	}
	return snapshotInfo(s), nil
}

// ListSnapshots lists the ready local snapshots.
func (r *Remote) ListSnapshots(ctx context.Context) ([]*csi.SnapshotInfo, error) {
	var list cairnv1.SnapshotList
	if err := r.Client.List(ctx, &list); err != nil {
		return nil, apiError("list snapshots", err)
	}
	var out []*csi.SnapshotInfo
	for i := range list.Items {
		if s := &list.Items[i]; s.Spec.Type == cairnv1.SnapshotLocal && s.Status.ReadyToUse {
			out = append(out, snapshotInfo(s))
		}
	}
	return out, nil
}

// CreateBackup records a backup Snapshot on the volume's node and returns
// once the node has taken the point-in-time copy; the upload goes on in
// the background and later calls report its progress.
func (r *Remote) CreateBackup(ctx context.Context, name, volumeID, target string) (*engine.BackupInfo, error) {
	h := engine.BackupHandle{Target: target, VolumeID: volumeID, BackupID: backup.BackupIDForName(name)}
	if !engine.ValidVolumeID(volumeID) {
		return nil, engine.Errorf(engine.ErrNotFound, "source_volume_id: volume %q not found", volumeID)
	}
	spec := cairnv1.SnapshotSpec{Name: name, Type: cairnv1.SnapshotBackup, SourceVolumeID: volumeID, BackupTarget: target, Handle: h.String()}
	snap, err := r.ensureSnapshot(ctx, SnapshotObjectName(h.String()), spec, nil)
	if err != nil {
		return nil, err
	}
	snap, err = r.waitSnapshot(ctx, snap.Name, func(s *cairnv1.Snapshot) bool { return s.Status.CreationTime != nil })
	if err != nil {
		return nil, err
	}
	return backupInfo(snap), nil
}

func backupInfo(s *cairnv1.Snapshot) *engine.BackupInfo {
	h, _ := engine.ParseBackupHandle(s.Spec.Handle)
	info := &engine.BackupInfo{Handle: h, SnapshotName: s.Spec.Name, SizeBytes: s.Status.SizeBytes, Ready: s.Status.ReadyToUse}
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
	h, err := engine.ParseBackupHandle(handle)
	if err != nil {
		return nil, err
	}
	objName := SnapshotObjectName(h.String())
	s, err := r.getSnapshotObject(ctx, objName)
	if err == nil || !errors.Is(err, engine.ErrNotFound) {
		return s, err
	}
	node, err := r.place(ctx, csi.Placement{}, 0)
	if err != nil {
		return nil, err
	}
	return r.createSnapshotObject(ctx, objName, cairnv1.SnapshotSpec{Type: cairnv1.SnapshotBackup, BackupTarget: h.Target, Handle: h.String(), NodeName: node})
}

// GetBackup describes a backup, importing it if this cluster has no object
// for it yet.
func (r *Remote) GetBackup(ctx context.Context, handle string) (*engine.BackupInfo, error) {
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
	if _, err := engine.ParseBackupHandle(handle); err != nil {
		return nil // can never have existed
	}
	s, err := r.backupObject(ctx, handle)
	if err != nil {
		return err
	}
	return r.deleteData(ctx, s)
}

// ListBackups lists the backups this cluster knows.
func (r *Remote) ListBackups(ctx context.Context) ([]*engine.BackupInfo, error) {
	var list cairnv1.SnapshotList
	if err := r.Client.List(ctx, &list); err != nil {
		return nil, apiError("list snapshots", err)
	}
	var out []*engine.BackupInfo
	for i := range list.Items {
		if s := &list.Items[i]; s.Spec.Type == cairnv1.SnapshotBackup && s.Status.CreationTime != nil {
			out = append(out, backupInfo(s))
		}
	}
	return out, nil
}

// notFoundOr maps an API NotFound to the engine's, with msg; other errors
// are API errors.
func notFoundOr(err error, format string, args ...any) error {
	if err == nil || apierrors.IsNotFound(err) {
		return engine.Errorf(engine.ErrNotFound, format, args...)
	}
	return apiError(fmt.Sprintf(format, args...), err)
}

// apiError reports a failed API call as Unavailable, so the sidecar retries.
func apiError(what string, err error) error {
	if apierrors.IsInvalid(err) || apierrors.IsBadRequest(err) {
		return engine.Errorf(engine.ErrInvalidArgument, "%s: %v", what, err)
	}
	return engine.Errorf(engine.ErrUnavailable, "%s: Kubernetes API: %v", what, err)
}
