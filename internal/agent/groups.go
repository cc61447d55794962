package agent

import (
	"context"
	"fmt"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
	"github.com/cairn-csi/cairn/internal/model"
)

// reconcileGroupSnapshot takes a group snapshot on this node (one freeze
// window for all its members, engine.CreateGroupSnapshot), records each
// member as a Snapshot object, and only then reports the group ready.
func (a *Agent) reconcileGroupSnapshot(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	var g cairnv1.GroupSnapshot
	if err := a.client.Get(ctx, req.NamespacedName, &g); err != nil {
		return reconcile.Result{}, a.gone(err)
	}
	if g.Spec.NodeName != a.Node {
		return reconcile.Result{}, nil
	}
	log := klog.FromContext(ctx).WithValues("groupSnapshot", g.Name, "name", g.Spec.Name)
	if !g.DeletionTimestamp.IsZero() {
		return reconcile.Result{}, a.deleteGroupSnapshot(ctx, log, &g)
	}
	if g.Name != model.GroupSnapshotIDForName(g.Spec.Name) {
		return reconcile.Result{}, a.refuse(ctx, &g, groupStatus(&g), fmt.Sprintf("object name %q is not the group snapshot ID of spec.name %q", g.Name, g.Spec.Name))
	}
	if g.Status.ReadyToUse && g.Status.ObservedGeneration == g.Generation {
		return reconcile.Result{}, nil
	}
	orig := g.DeepCopy()
	var taken *model.GroupSnapshot
	var err error
	if recovered(&g) {
		// Never take a new group in place of one that is gone.
		taken, err = a.Engine.GetGroupSnapshot(ctx, g.Name, nil)
	} else {
		taken, err = a.Engine.CreateGroupSnapshot(ctx, g.Spec.Name, g.Spec.SourceVolumeIDs, g.Spec.Parameters)
	}
	if err == nil {
		err = a.recordMembers(ctx, &g, taken)
	}
	msg := ""
	if err == nil {
		setGroupStatus(&g, taken)
		msg = fmt.Sprintf("%d members taken on node %s at one point in time (file systems frozen %d ms)", len(taken.Members), a.Node, taken.Frozen.Milliseconds())
	}
	setOutcome(groupStatus(&g), g.Generation, err, msg)
	switch {
	case err == nil:
		log.Info("Group snapshot ready", "members", len(taken.Members), "frozenFor", taken.Frozen)
		a.event(&g, g.Spec.Parameters, false, "Ready", "%s", msg)
	case orig.Status.Message != g.Status.Message:
		log.Error(err, "Group snapshot not ready")
		a.event(&g, g.Spec.Parameters, true, "Failed", "%v", err)
	}
	if perr := a.client.Status().Patch(ctx, &g, client.MergeFrom(orig)); perr != nil {
		return reconcile.Result{}, perr
	}
	return a.retryAfter(err)
}

// recordMembers makes sure every member of taken has its Snapshot object,
// ready, before the group is reported ready: a restore from a member's
// VolumeSnapshot finds it.
func (a *Agent) recordMembers(ctx context.Context, g *cairnv1.GroupSnapshot, taken *model.GroupSnapshot) error {
	for _, m := range taken.Members {
		var s cairnv1.Snapshot
		err := a.client.Get(ctx, client.ObjectKey{Name: m.ID}, &s)
		if apierrors.IsNotFound(err) {
			s = *a.memberSnapshot(m, recovered(g))
			if err = a.client.Create(ctx, &s); apierrors.IsAlreadyExists(err) {
				err = a.reader.Get(ctx, client.ObjectKey{Name: m.ID}, &s)
			}
		}
		if err != nil {
			return model.Errorf(model.ErrUnavailable, "member snapshot %s: Kubernetes API: %v", m.ID, err)
		}
		if s.Status.ReadyToUse {
			continue
		}
		orig := s.DeepCopy()
		setLocalSnapshotStatus(&s, m)
		setOutcome(snapshotStatus(&s), s.Generation, nil, "member of group snapshot "+g.Name+" on node "+a.Node)
		if err := a.client.Status().Patch(ctx, &s, client.MergeFrom(orig)); err != nil {
			return model.Errorf(model.ErrUnavailable, "member snapshot %s status: Kubernetes API: %v", m.ID, err)
		}
	}
	return nil
}

// memberSnapshot is the Snapshot object of a group member on this node;
// a re-created group's members are marked re-created too.
func (a *Agent) memberSnapshot(m *model.Snapshot, recreated bool) *cairnv1.Snapshot {
	om := metav1.ObjectMeta{Name: m.ID, Labels: map[string]string{cairnv1.NodeLabel: a.Node}, Finalizers: []string{cairnv1.Finalizer}}
	if recreated {
		om = a.recoveredMeta(m.ID)
	}
	return &cairnv1.Snapshot{
		ObjectMeta: om,
		Spec: cairnv1.SnapshotSpec{
			Name: m.Name, Type: cairnv1.SnapshotLocal, SourceVolumeID: m.SourceVolumeID,
			NodeName: a.Node, Parameters: m.Parameters, GroupSnapshot: m.GroupSnapshotID,
		},
	}
}

func setGroupStatus(g *cairnv1.GroupSnapshot, taken *model.GroupSnapshot) {
	g.Status.ReadyToUse = true
	g.Status.CreationTime = &metav1.Time{Time: taken.CreatedAt}
	g.Status.FrozenMillis = taken.Frozen.Milliseconds()
	g.Status.Members = nil
	for _, m := range taken.Members {
		g.Status.Members = append(g.Status.Members, cairnv1.GroupSnapshotMember{SourceVolumeID: m.SourceVolumeID, SnapshotID: m.ID, SizeBytes: m.SizeBytes})
	}
}

func groupStatus(g *cairnv1.GroupSnapshot) statusFields {
	return statusFields{&g.Status.Phase, &g.Status.Reason, &g.Status.Message, &g.Status.ObservedGeneration, &g.Status.Conditions}
}

// deleteGroupSnapshot carries out the deletion of a GroupSnapshot object:
// the group and its members' data go only if a CSI
// DeleteVolumeGroupSnapshot asked for it.
func (a *Agent) deleteGroupSnapshot(ctx context.Context, log klog.Logger, g *cairnv1.GroupSnapshot) error {
	if !controllerutil.ContainsFinalizer(g, cairnv1.Finalizer) {
		return nil
	}
	a.dataMu.RLock()
	defer a.dataMu.RUnlock()
	if !cairnv1.DataDeletionRequested(g) || g.Name != model.GroupSnapshotIDForName(g.Spec.Name) {
		defer a.recoverSoon()
		if _, err := a.Engine.GetGroupSnapshot(ctx, g.Name, nil); err == nil {
			log.Info("Group snapshot object deleted without a CSI delete; data kept", "node", a.Node)
			a.event(g, g.Spec.Parameters, true, "DataKept", "GroupSnapshot object deleted without a CSI DeleteVolumeGroupSnapshot (no %s annotation): the group and its members stay on node %s, which re-creates the object", cairnv1.DeleteDataAnnotation, a.Node)
		}
		return a.removeFinalizer(ctx, g)
	}
	if err := a.Engine.DeleteGroupSnapshot(ctx, g.Name, nil); err != nil {
		a.event(g, g.Spec.Parameters, true, "DeleteFailed", "Deleting the group snapshot failed: %v", err)
		return err
	}
	a.capacityChanged()
	log.Info("Group snapshot deleted")
	return a.removeFinalizer(ctx, g)
}

// recoveredGroup is the GroupSnapshot the controller would have written
// for a group snapshot on the data root.
func (a *Agent) recoveredGroup(eg *model.GroupSnapshot) *cairnv1.GroupSnapshot {
	return &cairnv1.GroupSnapshot{ObjectMeta: a.recoveredMeta(eg.ID), Spec: cairnv1.GroupSnapshotSpec{
		Name: eg.Name, NodeName: a.Node, SourceVolumeIDs: eg.SourceVolumeIDs, Parameters: eg.Parameters,
	}}
}

// memberNameProblem says why a member Snapshot's name does not match the
// group member it claims to be, or "".
func memberNameProblem(s *cairnv1.Snapshot) string {
	group, ok := strings.CutSuffix(s.Spec.Name, "/"+s.Spec.SourceVolumeID)
	switch {
	case s.Spec.Type != cairnv1.SnapshotLocal:
		return "spec.groupSnapshot is set on a snapshot of type " + string(s.Spec.Type) + "; only local snapshots are group members"
	case !ok || s.Spec.GroupSnapshot != model.GroupSnapshotIDForName(group):
		return fmt.Sprintf("spec.name %q is not <group name>/<source volume> of group snapshot %q", s.Spec.Name, s.Spec.GroupSnapshot)
	case s.Name != model.GroupMemberSnapshotID(group, s.Spec.SourceVolumeID):
		return fmt.Sprintf("object name %q is not the member snapshot ID of spec.name %q", s.Name, s.Spec.Name)
	}
	return ""
}
