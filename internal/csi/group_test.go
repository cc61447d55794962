package csi

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cairn-csi/cairn/internal/model"
)

// groupBackend serves group snapshots and records the create request.
type groupBackend struct {
	fakeBackend
	name   string
	vols   []string
	params map[string]string
	calls  int
}

func (b *groupBackend) CreateGroupSnapshot(_ context.Context, name string, vols []string, params map[string]string) (*model.GroupSnapshot, error) {
	b.calls++
	b.name, b.vols, b.params = name, vols, params
	gid := model.GroupSnapshotIDForName(name)
	g := &model.GroupSnapshot{ID: gid, Name: name, CreatedAt: time.Unix(100, 0)}
	for _, v := range vols {
		g.Members = append(g.Members, &model.Snapshot{ID: model.GroupMemberSnapshotID(name, v), SourceVolumeID: v, SizeBytes: 1 << 20, CreatedAt: g.CreatedAt, GroupSnapshotID: gid})
	}
	return g, nil
}

func (b *groupBackend) DeleteGroupSnapshot(context.Context, string, []string) error {
	b.calls++
	return nil
}

func (b *groupBackend) GetGroupSnapshot(context.Context, string, []string) (*model.GroupSnapshot, error) {
	b.calls++
	return nil, model.Errorf(model.ErrNotFound, "group snapshot not found")
}

func TestGroupController(t *testing.T) {
	ctx := context.Background()
	b := &groupBackend{fakeBackend: fakeBackend{t: t}}
	s := New(nil, b, Options{})
	if _, ok := s.groups(); !ok {
		t.Fatal("a backend with group snapshots gets no GroupController")
	}
	if _, ok := New(nil, &fakeBackend{t: t}, Options{}).groups(); ok {
		t.Error("a backend without group snapshots gets a GroupController")
	}
	caps, _ := (&identityServer{s: s, controller: true}).GetPluginCapabilities(ctx, &csipb.GetPluginCapabilitiesRequest{})
	if !strings.Contains(caps.String(), "GROUP_CONTROLLER_SERVICE") {
		t.Errorf("plugin capabilities %v lack GROUP_CONTROLLER_SERVICE", caps)
	}
	g, _ := s.groups()
	gc := &groupControllerServer{g: g}

	a, bv := model.VolumeIDForName("a"), model.VolumeIDForName("b")
	resp, err := gc.CreateVolumeGroupSnapshot(ctx, &csipb.CreateVolumeGroupSnapshotRequest{
		Name: "gs", SourceVolumeIds: []string{a, bv},
		// deletionPolicy: the upstream e2e framework copies the class's
		// field into its parameters; it is ignored.
		Parameters: map[string]string{"csi.storage.k8s.io/volumegroupsnapshot/name": "x", "type": "snap", "deletionPolicy": "Delete"},
	})
	if err != nil {
		t.Fatal(err)
	}
	gs := resp.GetGroupSnapshot()
	if gs.GetGroupSnapshotId() != model.GroupSnapshotIDForName("gs") || !gs.GetReadyToUse() || len(gs.GetSnapshots()) != 2 {
		t.Fatalf("group snapshot %v", gs)
	}
	for _, m := range gs.GetSnapshots() {
		if m.GetGroupSnapshotId() != gs.GetGroupSnapshotId() || m.GetSourceVolumeId() == "" || !m.GetReadyToUse() {
			t.Errorf("member %v", m)
		}
	}

	b.calls = 0
	for what, req := range map[string]*csipb.CreateVolumeGroupSnapshotRequest{
		"no name":       {SourceVolumeIds: []string{a}},
		"no volumes":    {Name: "x"},
		"empty volume":  {Name: "x", SourceVolumeIds: []string{a, ""}},
		"backup type":   {Name: "x", SourceVolumeIds: []string{a}, Parameters: map[string]string{"type": "backup"}},
		"unknown param": {Name: "x", SourceVolumeIds: []string{a}, Parameters: map[string]string{"tpye": "snap"}},
		"listed twice":  {Name: "x", SourceVolumeIds: []string{a, a}},
		"too many":      {Name: "x", SourceVolumeIds: manyIDs(model.MaxGroupMembers + 1)},
	} {
		if _, err := gc.CreateVolumeGroupSnapshot(ctx, req); status.Code(err) != codes.InvalidArgument || (req.Name != "" && !strings.Contains(err.Error(), "parameters") && !strings.Contains(err.Error(), "source_volume_ids")) {
			t.Errorf("%s: %v, want InvalidArgument", what, err)
		}
	}
	if _, err := gc.DeleteVolumeGroupSnapshot(ctx, &csipb.DeleteVolumeGroupSnapshotRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("delete without an ID: %v", err)
	}
	if _, err := gc.GetVolumeGroupSnapshot(ctx, &csipb.GetVolumeGroupSnapshotRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("get without an ID: %v", err)
	}
	if b.calls != 0 {
		t.Errorf("%d invalid requests reached the backend", b.calls)
	}
	if _, err := gc.GetVolumeGroupSnapshot(ctx, &csipb.GetVolumeGroupSnapshotRequest{GroupSnapshotId: "g-x"}); status.Code(err) != codes.NotFound {
		t.Errorf("get of a missing group: %v, want NotFound", err)
	}
}

func manyIDs(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("v-%d", i)
	}
	return out
}
