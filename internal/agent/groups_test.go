package agent

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
	"github.com/cairn-csi/cairn/internal/model"
)

// TestGroupSnapshotThroughObjects: a group snapshot of two volumes of one
// node through the controller's backend: its members are Snapshot objects
// that restore like any snapshot, a repeated create is the same group,
// volumes on two nodes are refused, objects deleted by hand come back from
// the data root, and the CSI delete removes the group and its members.
func TestGroupSnapshotThroughObjects(t *testing.T) {
	f := newFixture(t)
	var vols []string
	for _, n := range []string{"db-data", "db-log"} {
		v, err := f.create(n, 512*mib, onlyNode(testNode), nil)
		if err != nil {
			t.Fatal(err)
		}
		vols = append(vols, v.ID)
	}
	params := map[string]string{"csi.storage.k8s.io/volumegroupsnapshot/name": "vgs-1"}
	g, err := f.remote.CreateGroupSnapshot(f.ctx, "group-1", vols, params)
	if err != nil {
		t.Fatal(err)
	}
	if g.ID != model.GroupSnapshotIDForName("group-1") || len(g.Members) != 2 || g.Node != testNode {
		t.Fatalf("group %+v", g)
	}
	var memberIDs []string
	for _, m := range g.Members {
		if m.GroupSnapshotID != g.ID || !slices.Contains(vols, m.SourceVolumeID) || m.SizeBytes != 512*mib || m.CreatedAt.IsZero() {
			t.Errorf("member %+v", m)
		}
		memberIDs = append(memberIDs, m.ID)
	}
	var obj cairnv1.GroupSnapshot
	if err := f.cl.Get(f.ctx, client.ObjectKey{Name: g.ID}, &obj); err != nil {
		t.Fatal(err)
	}
	if !obj.Status.ReadyToUse || len(obj.Status.Members) != 2 || !strings.Contains(obj.Status.Message, "one point in time") {
		t.Errorf("group object status %+v", obj.Status)
	}

	// Idempotent by name; another volume set under the name is refused.
	again, err := f.remote.CreateGroupSnapshot(f.ctx, "group-1", []string{vols[1], vols[0]}, params)
	if err != nil || again.ID != g.ID || len(again.Members) != 2 {
		t.Fatalf("repeated create: %+v %v", again, err)
	}
	if _, err := f.remote.CreateGroupSnapshot(f.ctx, "group-1", vols[:1], params); !errors.Is(err, model.ErrAlreadyExists) {
		t.Errorf("same name, other volumes: %v, want AlreadyExists", err)
	}
	if _, err := f.remote.GetGroupSnapshot(f.ctx, g.ID, []string{"s-0000000000000000000000000000000000000000000000000000000000000000"}); !errors.Is(err, model.ErrInvalidArgument) {
		t.Errorf("get with a foreign snapshot id: %v, want InvalidArgument", err)
	}

	// Members on two nodes: refused, naming the nodes.
	f.addNode("node-b")
	other, err := f.create("elsewhere", 512*mib, onlyNode("node-b"), nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.remote.CreateGroupSnapshot(f.ctx, "group-2", []string{vols[0], other.ID}, nil)
	if !errors.Is(err, model.ErrFailedPrecondition) || !strings.Contains(err.Error(), "node-b") || !strings.Contains(err.Error(), testNode) {
		t.Errorf("group across nodes: %v, want FailedPrecondition naming both nodes", err)
	}

	// A member restores like any snapshot; ListSnapshots names its group.
	restored, err := f.create("from-member", 512*mib, model.Placement{}, func(r *model.CreateVolumeRequest) { r.SourceSnapshotID = memberIDs[0] })
	if err != nil || restored.Node != testNode {
		t.Fatalf("restore from a member: %+v %v", restored, err)
	}
	snaps, err := f.remote.ListSnapshots(f.ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range snaps {
		if slices.Contains(memberIDs, s.ID) && s.GroupSnapshotID != g.ID {
			t.Errorf("listed member %s without its group (%q)", s.ID, s.GroupSnapshotID)
		}
	}

	// Deleted by hand: the data stays and the objects come back.
	var s0 cairnv1.Snapshot
	if err := f.cl.Get(f.ctx, client.ObjectKey{Name: memberIDs[0]}, &s0); err != nil {
		t.Fatal(err)
	}
	for _, o := range []client.Object{&obj, &s0} {
		if err := f.cl.Delete(f.ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	var g1 cairnv1.GroupSnapshot
	var s1 cairnv1.Snapshot
	f.waitRecovered(&g1, g.ID, obj.UID)
	f.waitRecovered(&s1, memberIDs[0], s0.UID)
	if !slices.Equal(g1.Spec.SourceVolumeIDs, obj.Spec.SourceVolumeIDs) || g1.Spec.Name != "group-1" || !g1.Status.ReadyToUse || len(g1.Status.Members) != 2 {
		t.Errorf("re-created group %+v %+v", g1.Spec, g1.Status)
	}
	if s1.Spec.GroupSnapshot != g.ID || s1.Spec.Name != s0.Spec.Name {
		t.Errorf("re-created member spec %+v, want %+v", s1.Spec, s0.Spec)
	}
	if again, err := f.remote.CreateGroupSnapshot(f.ctx, "group-1", vols, params); err != nil || again.ID != g.ID {
		t.Fatalf("create after the objects came back: %+v %v", again, err)
	}

	// The CSI delete removes the group and every member, for good.
	if err := f.remote.DeleteGroupSnapshot(f.ctx, g.ID, memberIDs); err != nil {
		t.Fatal(err)
	}
	if err := f.remote.DeleteGroupSnapshot(f.ctx, g.ID, memberIDs); err != nil {
		t.Fatalf("second delete: %v", err)
	}
	if gs, _ := f.eng.ListGroupSnapshots(f.ctx); len(gs) != 0 {
		t.Errorf("engine still has %d groups", len(gs))
	}
	time.Sleep(3 * time.Second) // three recovery passes
	for _, id := range memberIDs {
		if _, err := f.eng.GetSnapshot(f.ctx, id); !errors.Is(err, model.ErrNotFound) {
			t.Errorf("member %s still on the data root: %v", id, err)
		}
		if err := f.cl.Get(f.ctx, client.ObjectKey{Name: id}, &cairnv1.Snapshot{}); !apierrors.IsNotFound(err) {
			t.Errorf("member object %s came back: %v", id, err)
		}
	}
	if err := f.cl.Get(f.ctx, client.ObjectKey{Name: g.ID}, &cairnv1.GroupSnapshot{}); !apierrors.IsNotFound(err) {
		t.Errorf("group object came back: %v", err)
	}
	f.agentRunning()
}
