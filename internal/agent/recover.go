package agent

// Kubernetes objects never own the data: the node agent deletes a volume,
// a local snapshot or a backup only when its object carries the delete
// annotation the controller sets for CSI DeleteVolume / DeleteSnapshot
// (cairnv1.DataDeletionRequested). An object deleted any other way — by a
// person, by removing the CRDs, by a restore tool — only loses its
// finalizer, and the agent re-creates the Volume and Snapshot objects for
// what its data root holds, the source of truth (docs/FORMAT.md,
// "Kubernetes objects").

import (
	"context"
	"errors"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	"github.com/cairn-csi/cairn/internal/kube"
	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
	"github.com/cairn-csi/cairn/internal/model"
)

// deleteVolume carries out the deletion of a Volume object: the data goes
// only if a CSI DeleteVolume asked for it; the finalizer goes in any case.
func (a *Agent) deleteVolume(ctx context.Context, log klog.Logger, v *cairnv1.Volume) error {
	if !controllerutil.ContainsFinalizer(v, cairnv1.Finalizer) {
		return nil
	}
	a.dataMu.RLock()
	defer a.dataMu.RUnlock()
	// An object whose name is not its spec's volume ID is no object the
	// controller wrote: it never deletes data.
	if !cairnv1.DataDeletionRequested(v) || v.Name != model.VolumeIDForName(v.Spec.Name) {
		defer a.recoverSoon()
		if _, err := a.Engine.GetVolume(ctx, v.Name); err == nil {
			log.Info("Volume object deleted without a CSI delete; data kept", "node", a.Node)
			a.event(v, v.Spec.Parameters, true, "DataKept", "Volume object deleted without a CSI DeleteVolume (no %s annotation): the data stays on node %s, which re-creates the object", cairnv1.DeleteDataAnnotation, a.Node)
		} else {
			log.V(2).Info("Volume object deleted without a CSI delete; it had no data on this node")
		}
		return a.removeFinalizer(ctx, v)
	}
	if err := a.Engine.DeleteVolume(ctx, v.Name); err != nil {
		a.event(v, v.Spec.Parameters, true, "DeleteFailed", "Deleting the volume's data failed: %v", err)
		return err
	}
	a.capacityChanged()
	log.Info("Volume data removed")
	a.event(v, nil, false, "Deleted", "Volume data removed from node %s", a.Node)
	return a.removeFinalizer(ctx, v)
}

// deleteSnapshot carries out the deletion of a Snapshot object: the local
// snapshot or the backup goes only if a CSI DeleteSnapshot asked for it.
func (a *Agent) deleteSnapshot(ctx context.Context, log klog.Logger, s *cairnv1.Snapshot) error {
	if !controllerutil.ContainsFinalizer(s, cairnv1.Finalizer) {
		return nil
	}
	if s.Spec.Type == cairnv1.SnapshotLocal {
		// Only local snapshots are re-created (a backup deletion, which
		// may be slow, need not hold up the recovery).
		a.dataMu.RLock()
		defer a.dataMu.RUnlock()
	}
	if !cairnv1.DataDeletionRequested(s) || snapshotNameProblem(s) != "" {
		defer a.recoverSoon()
		switch _, err := a.Engine.GetSnapshot(ctx, s.Name); {
		case s.Spec.Name == "":
			// An import nobody asked to delete (e.g. the controller's
			// clean-up of a failed lookup): forget it.
			log.Info("Imported backup forgotten; it stays in its target")
		case s.Spec.Type != cairnv1.SnapshotLocal:
			log.Info("Backup snapshot object deleted without a CSI delete; the backup stays in its target", "target", s.Spec.BackupTarget)
			a.event(s, s.Spec.Parameters, true, "DataKept", "Snapshot object deleted without a CSI DeleteSnapshot (no %s annotation): the backup stays in target %s; CSI calls naming its handle import it again", cairnv1.DeleteDataAnnotation, s.Spec.BackupTarget)
		case err == nil:
			log.Info("Snapshot object deleted without a CSI delete; data kept", "node", a.Node)
			a.event(s, s.Spec.Parameters, true, "DataKept", "Snapshot object deleted without a CSI DeleteSnapshot (no %s annotation): the snapshot stays on node %s, which re-creates the object", cairnv1.DeleteDataAnnotation, a.Node)
		default:
			log.V(2).Info("Snapshot object deleted without a CSI delete; it had no data on this node")
		}
		return a.removeFinalizer(ctx, s)
	}
	var err error
	if s.Spec.Type == cairnv1.SnapshotLocal {
		err = a.Engine.DeleteSnapshot(ctx, s.Name)
	} else if err = a.ensureTarget(ctx, s.Spec.BackupTarget); err == nil {
		err = a.Engine.DeleteBackup(ctx, s.Spec.Handle)
	}
	if err != nil {
		a.event(s, s.Spec.Parameters, true, "DeleteFailed", "Deleting the snapshot failed: %v", err)
		return err
	}
	a.capacityChanged()
	log.Info("Snapshot deleted")
	return a.removeFinalizer(ctx, s)
}

// gone handles a failed read of a reconciled object: an object that is
// gone may have been deleted without a CSI delete, so look for data
// without an object soon.
func (a *Agent) gone(err error) error {
	if apierrors.IsNotFound(err) {
		a.recoverSoon()
		return nil
	}
	return err
}

// recovered tells whether obj was re-created from the data root.
func recovered(obj metav1.Object) bool {
	return obj.GetAnnotations()[cairnv1.RecoveredAnnotation] != ""
}

// snapshotNameProblem says why a Snapshot object's name does not match
// what it describes (so it is no object the controller wrote), or "".
func snapshotNameProblem(s *cairnv1.Snapshot) string {
	switch {
	case s.Spec.GroupSnapshot != "":
		return memberNameProblem(s)
	case s.Spec.Type == cairnv1.SnapshotLocal && s.Name != model.SnapshotIDForName(s.Spec.Name):
		return fmt.Sprintf("object name %q is not the snapshot ID of spec.name %q", s.Name, s.Spec.Name)
	case s.Spec.Type != cairnv1.SnapshotLocal && s.Name != kube.SnapshotObjectName(s.Spec.Handle):
		return fmt.Sprintf("object name %q is not the object name of backup handle %q", s.Name, s.Spec.Handle)
	}
	return ""
}

// refuse reports, once, an object the agent will not act on.
func (a *Agent) refuse(ctx context.Context, obj client.Object, st statusFields, why string) error {
	if *st.phase == cairnv1.PhaseFailed && *st.message == why && *st.observed == obj.GetGeneration() {
		return nil
	}
	orig := obj.DeepCopyObject().(client.Object)
	setOutcome(st, obj.GetGeneration(), model.Errorf(model.ErrInvalidArgument, "%s", why), "")
	klog.FromContext(ctx).Info("Object refused", "object", obj.GetName(), "reason", why)
	return a.client.Status().Patch(ctx, obj, client.MergeFrom(orig))
}

func setLocalSnapshotStatus(s *cairnv1.Snapshot, snap *model.Snapshot) {
	s.Status.SnapshotID, s.Status.SizeBytes, s.Status.SourceVolumeID = snap.ID, snap.SizeBytes, snap.SourceVolumeID
	s.Status.CreationTime = &metav1.Time{Time: snap.CreatedAt}
	s.Status.ReadyToUse = true
}

// recoverSoon asks for a recovery pass.
func (a *Agent) recoverSoon() {
	select {
	case a.recoverKick <- struct{}{}:
	default:
	}
}

// recoverLoop re-creates missing objects at start, every Resync and when
// asked, until ctx ends. While the CRDs are gone every pass fails; the
// first pass after they are back re-creates the objects.
func (a *Agent) recoverLoop(ctx context.Context) {
	t := time.NewTicker(a.Resync)
	defer t.Stop()
	for {
		if n, err := a.recoverObjects(ctx); err != nil && ctx.Err() == nil {
			klog.ErrorS(err, "Re-creating objects for the data root failed; retrying", "node", a.Node, "recreated", n, "retryIn", a.Resync)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-a.recoverKick:
		}
	}
}

// recoverObjects re-creates the Volume, Snapshot and GroupSnapshot objects
// missing for the volumes, local snapshots and group snapshots on this
// node's data root, and reports
// how many it made. Backups are not on the data root: a backup's object
// that was deleted without a CSI delete comes back as an import when a
// CSI call names its handle.
func (a *Agent) recoverObjects(ctx context.Context) (int, error) {
	vols, err := a.Engine.ListVolumes(ctx)
	if err != nil {
		return 0, fmt.Errorf("list volumes: %w", err)
	}
	snaps, err := a.Engine.ListSnapshots(ctx)
	if err != nil {
		return 0, fmt.Errorf("list snapshots: %w", err)
	}
	// Only the members of a committed group (group.json written) are
	// recovered: a member of a group still being taken, or being rolled
	// back, is not a snapshot yet.
	groups, err := a.Engine.ListGroupSnapshots(ctx)
	if err != nil {
		return 0, fmt.Errorf("list group snapshots: %w", err)
	}
	committed := map[string]bool{}
	for _, g := range groups {
		committed[g.ID] = true
	}
	n := 0
	var errs []error
	for _, ev := range vols {
		made, err := a.recoverOne(ctx, "Volume", &cairnv1.Volume{}, ev.ID, func() (client.Object, func(client.Object), error) {
			ev, err := a.Engine.GetVolume(ctx, ev.ID)
			if err != nil {
				return nil, nil, err
			}
			return a.recoveredVolume(ev), func(o client.Object) {
				v := o.(*cairnv1.Volume)
				v.Status.SizeBytes, v.Status.FsType = ev.SizeBytes, ev.FsType
				setOutcome(volumeStatus(v), v.Generation, nil, fmt.Sprintf("%d bytes on node %s (object re-created from the data root)", ev.SizeBytes, a.Node))
			}, nil
		})
		n += made
		errs = append(errs, err)
	}
	for _, es := range snaps {
		if es.GroupSnapshotID != "" && !committed[es.GroupSnapshotID] {
			continue
		}
		made, err := a.recoverOne(ctx, "Snapshot", &cairnv1.Snapshot{}, es.ID, func() (client.Object, func(client.Object), error) {
			es, err := a.Engine.GetSnapshot(ctx, es.ID)
			if err != nil {
				return nil, nil, err
			}
			return a.recoveredSnapshot(es), func(o client.Object) {
				s := o.(*cairnv1.Snapshot)
				setLocalSnapshotStatus(s, es)
				setOutcome(snapshotStatus(s), s.Generation, nil, "snapshot on node "+a.Node+" (object re-created from the data root)")
			}, nil
		})
		n += made
		errs = append(errs, err)
	}
	for _, eg := range groups {
		made, err := a.recoverOne(ctx, "GroupSnapshot", &cairnv1.GroupSnapshot{}, eg.ID, func() (client.Object, func(client.Object), error) {
			eg, err := a.Engine.GetGroupSnapshot(ctx, eg.ID, nil)
			if err != nil {
				return nil, nil, err
			}
			return a.recoveredGroup(eg), func(o client.Object) {
				g := o.(*cairnv1.GroupSnapshot)
				setGroupStatus(g, eg)
				setOutcome(groupStatus(g), g.Generation, nil, "group snapshot on node "+a.Node+" (object re-created from the data root)")
			}, nil
		})
		n += made
		errs = append(errs, err)
	}
	return n, errors.Join(errs...)
}

// recoverOne re-creates the object named id, of probe's kind, unless this
// agent's cache has it. build re-reads the engine (under the lock, so a
// deletion that has just removed the data is seen) and returns the object
// and how to fill its status.
func (a *Agent) recoverOne(ctx context.Context, kind string, probe client.Object, id string, build func() (client.Object, func(client.Object), error)) (int, error) {
	a.dataMu.Lock()
	defer a.dataMu.Unlock()
	err := a.client.Get(ctx, client.ObjectKey{Name: id}, probe)
	if err == nil || !apierrors.IsNotFound(err) {
		return 0, err // there (perhaps being deleted: its deletion asks again), or unreadable
	}
	obj, fill, err := build()
	if errors.Is(err, model.ErrNotFound) {
		return 0, nil // deleted meanwhile
	}
	if err != nil {
		return 0, err
	}
	if err := a.client.Create(ctx, obj); apierrors.IsAlreadyExists(err) {
		// Not in this agent's cache yet (or another node's object).
		klog.V(4).InfoS("Object exists, not re-created", "kind", kind, "object", id)
		return 0, nil
	} else if err != nil {
		return 0, fmt.Errorf("re-create %s %s: %w", kind, id, err)
	}
	orig := obj.DeepCopyObject().(client.Object)
	fill(obj)
	if err := a.client.Status().Patch(ctx, obj, client.MergeFrom(orig)); err != nil {
		// The reconcile of the new object fills it in too.
		klog.ErrorS(err, "Status of a re-created object not written", "kind", kind, "object", id)
	}
	klog.InfoS("Object re-created from the data root", "kind", kind, "object", id, "node", a.Node)
	a.event(obj, nil, false, "Recovered", "%s %s re-created from node %s's data root: its object had been deleted without a CSI delete", kind, id, a.Node)
	return 1, nil
}

// objectMeta is the metadata the controller gives an object of this
// node: the node label and the finalizer.
func (a *Agent) objectMeta(name string) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name:       name,
		Labels:     map[string]string{cairnv1.NodeLabel: a.Node},
		Finalizers: []string{cairnv1.Finalizer},
	}
}

// recoveredMeta is the metadata of a re-created object: objectMeta and
// RecoveredAnnotation.
func (a *Agent) recoveredMeta(name string) metav1.ObjectMeta {
	m := a.objectMeta(name)
	m.Annotations = map[string]string{cairnv1.RecoveredAnnotation: time.Now().UTC().Format(time.RFC3339)}
	return m
}

// volumeObject is the Volume the controller would have written for a
// volume on the data root: its CSI name, size, access type, file system,
// parameters and source, on this node.
func (a *Agent) volumeObject(ev *model.Volume) *cairnv1.Volume {
	spec := cairnv1.VolumeSpec{
		Name: ev.Name, NodeName: a.Node, RequiredBytes: ev.SizeBytes,
		Block: ev.Block, FsType: ev.FsType, Parameters: ev.Parameters,
	}
	if s := ev.Source; s != nil {
		spec.Source = &cairnv1.VolumeSource{Kind: string(s.Kind), ID: s.ID} // snapshot, volume or backup, as in the CRD
	}
	return &cairnv1.Volume{ObjectMeta: a.objectMeta(ev.ID), Spec: spec}
}

// recoveredVolume is volumeObject marked as re-created.
func (a *Agent) recoveredVolume(ev *model.Volume) *cairnv1.Volume {
	v := a.volumeObject(ev)
	v.ObjectMeta = a.recoveredMeta(ev.ID)
	return v
}

// recoveredSnapshot is the Snapshot the controller would have written for
// a local snapshot on the data root.
func (a *Agent) recoveredSnapshot(es *model.Snapshot) *cairnv1.Snapshot {
	return &cairnv1.Snapshot{ObjectMeta: a.recoveredMeta(es.ID), Spec: cairnv1.SnapshotSpec{
		Name: es.Name, Type: cairnv1.SnapshotLocal, SourceVolumeID: es.SourceVolumeID,
		NodeName: a.Node, Parameters: es.Parameters, GroupSnapshot: es.GroupSnapshotID,
	}}
}
