package remote

import (
	"context"
	"maps"
	"slices"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cairn-csi/cairn/internal/csi"
	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
	"github.com/cairn-csi/cairn/internal/model"
)

var _ csi.GroupBackend = (*Remote)(nil)

// CreateGroupSnapshot records a GroupSnapshot on the node of its volumes
// and waits until that node's agent took it (one freeze window there) and
// recorded its members as Snapshots. Volumes on different nodes are
// FailedPrecondition: a point in time across nodes would need a freeze
// coordinated over the network, which Cairn does not do.
func (r *Remote) CreateGroupSnapshot(ctx context.Context, name string, volumeIDs []string, params map[string]string) (*model.GroupSnapshot, error) {
	vols := slices.Clone(volumeIDs)
	slices.Sort(vols)
	id := model.GroupSnapshotIDForName(name)
	var g cairnv1.GroupSnapshot
	err := r.Client.Get(ctx, client.ObjectKey{Name: id}, &g)
	switch {
	case err == nil:
		if !slices.Equal(g.Spec.SourceVolumeIDs, vols) || !maps.Equal(g.Spec.Parameters, params) {
			return nil, model.Errorf(model.ErrAlreadyExists, "group snapshot name %q is already used for other source_volume_ids or parameters", name)
		}
	case !apierrors.IsNotFound(err):
		return nil, apiError("get group snapshot "+id, err)
	default:
		node := ""
		where := map[string][]string{}
		for i, v := range vols {
			if i > 0 && v == vols[i-1] {
				return nil, model.Errorf(model.ErrInvalidArgument, "source_volume_ids: volume %q is listed twice", v)
			}
			var vol cairnv1.Volume
			if err := r.Client.Get(ctx, client.ObjectKey{Name: v}, &vol); err != nil || !model.ValidVolumeID(v) {
				return nil, notFoundOr(err, "source_volume_ids: volume %q not found", v)
			}
			node = vol.Spec.NodeName
			where[node] = append(where[node], v)
		}
		if len(where) > 1 {
			var parts []string
			for _, n := range slices.Sorted(maps.Keys(where)) {
				parts = append(parts, n+": "+strings.Join(where[n], ", "))
			}
			return nil, model.Errorf(model.ErrFailedPrecondition, "source_volume_ids: the volumes are on different nodes (%s); a group snapshot is taken on one node", strings.Join(parts, "; "))
		}
		g = cairnv1.GroupSnapshot{
			ObjectMeta: metav1.ObjectMeta{Name: id, Labels: map[string]string{cairnv1.NodeLabel: node}, Finalizers: []string{cairnv1.Finalizer}},
			Spec:       cairnv1.GroupSnapshotSpec{Name: name, NodeName: node, SourceVolumeIDs: vols, Parameters: params},
		}
		if err := r.Client.Create(ctx, &g); err != nil && !apierrors.IsAlreadyExists(err) {
			return nil, apiError("create group snapshot "+id, err)
		}
		klog.InfoS("Group snapshot recorded", "object", id, "name", name, "volumes", vols, "node", node)
	}
	err = r.wait(ctx, func() (bool, string, error) {
		if err := r.Client.Get(ctx, client.ObjectKey{Name: id}, &g); err != nil {
			return absent(err)
		}
		return r.judge(&g, g.Generation, g.Status.ObservedGeneration, g.Status.Phase, g.Status.Reason, g.Status.Message, func() bool { return g.Status.ReadyToUse })
	}, "group snapshot "+id)
	if err != nil {
		return nil, err
	}
	return r.describeGroup(ctx, &g)
}

// describeGroup is a ready GroupSnapshot with its members' Snapshots.
func (r *Remote) describeGroup(ctx context.Context, g *cairnv1.GroupSnapshot) (*model.GroupSnapshot, error) {
	out := &model.GroupSnapshot{ID: g.Name, Name: g.Spec.Name, Node: g.Spec.NodeName}
	if g.Status.CreationTime != nil {
		out.CreatedAt = g.Status.CreationTime.Time
	}
	for _, m := range g.Status.Members {
		s, err := r.getSnapshotObject(ctx, m.SnapshotID)
		if model.KindOf(err) == model.ErrNotFound {
			continue // deleted alone: no longer a member
		}
		if err != nil {
			return nil, err
		}
		out.Members = append(out.Members, snapshotInfo(s))
	}
	return out, nil
}

func (r *Remote) getGroupObject(ctx context.Context, id string) (*cairnv1.GroupSnapshot, error) {
	var g cairnv1.GroupSnapshot
	if !model.ValidGroupSnapshotID(id) {
		return nil, model.Errorf(model.ErrNotFound, "group snapshot %q not found", id)
	}
	if err := r.Client.Get(ctx, client.ObjectKey{Name: id}, &g); err != nil {
		return nil, notFoundOr(err, "group snapshot %q not found", id)
	}
	return &g, nil
}

// checkGroupMembers requires every one of snapshotIDs to be a member.
func checkGroupMembers(g *cairnv1.GroupSnapshot, snapshotIDs []string) error {
	for _, sid := range snapshotIDs {
		if !slices.ContainsFunc(g.Status.Members, func(m cairnv1.GroupSnapshotMember) bool { return m.SnapshotID == sid }) {
			return model.Errorf(model.ErrInvalidArgument, "snapshot_ids: %q is not a member of group snapshot %s", sid, g.Name)
		}
	}
	return nil
}

// GetGroupSnapshot describes a ready group snapshot.
func (r *Remote) GetGroupSnapshot(ctx context.Context, id string, snapshotIDs []string) (*model.GroupSnapshot, error) {
	g, err := r.getGroupObject(ctx, id)
	if err != nil {
		return nil, err
	}
	if !g.Status.ReadyToUse {
		return nil, model.Errorf(model.ErrNotFound, "group snapshot %q not found", id)
	}
	if err := checkGroupMembers(g, snapshotIDs); err != nil {
		return nil, err
	}
	return r.describeGroup(ctx, g)
}

// DeleteGroupSnapshot deletes the group's member Snapshots (their nodes
// delete the data), then the GroupSnapshot (its node deletes the group).
// Members go first, so a crash between the two leaves a group the retry
// finds, not member objects without a group. The members are derived from
// the spec (name and volumes), never from the node-written status, and
// each must say it belongs to this group on its node.
func (r *Remote) DeleteGroupSnapshot(ctx context.Context, id string, snapshotIDs []string) error {
	g, err := r.getGroupObject(ctx, id)
	if model.KindOf(err) == model.ErrNotFound {
		return nil
	}
	if err != nil {
		return err
	}
	if g.Status.ReadyToUse {
		if err := checkGroupMembers(g, snapshotIDs); err != nil {
			return err
		}
	}
	if g.Name == model.GroupSnapshotIDForName(g.Spec.Name) {
		for _, v := range g.Spec.SourceVolumeIDs {
			mid := model.GroupMemberSnapshotID(g.Spec.Name, v)
			s, err := r.getSnapshotObject(ctx, mid)
			if model.KindOf(err) == model.ErrNotFound {
				continue
			}
			if err != nil {
				return err
			}
			if s.Spec.GroupSnapshot != g.Name || s.Spec.Type != cairnv1.SnapshotLocal || s.Spec.NodeName != g.Spec.NodeName || s.Spec.SourceVolumeID != v {
				klog.InfoS("Snapshot object with a member's name is not this group's member; left alone", "object", mid, "groupSnapshot", g.Name)
				continue
			}
			if err := r.deleteData(ctx, s); err != nil {
				return err
			}
		}
	}
	return r.deleteData(ctx, g)
}
