package csi

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cairn-csi/cairn/internal/model"
)

// Fuzz targets for the CSI request fields that become paths, node names,
// IDs or handles (make fuzz runs them; seed corpora in testdata/fuzz).

// FuzzCheckPath: an accepted staging or target path is absolute, clean,
// has no NUL and no "..", and is outside the data root's layout; a
// refused one is InvalidArgument naming the field.
func FuzzCheckPath(f *testing.F) {
	for _, s := range []string{"/var/lib/kubelet/pods/x/volumes/kubernetes.io~csi/pv/mount", "", "rel/path", "/a/../b", "/a/", "//a", "/a/./b", "/a\x00b", "/data/volumes/v-1", "/data", "/data/kubelet/x", "/data/cairn.json", "/datax/volumes"} {
		f.Add(s)
	}
	const root = "/data"
	owned := func(p string) bool {
		rel, err := filepath.Rel(root, p)
		if err != nil || strings.HasPrefix(rel, "..") {
			return false
		}
		first, _, _ := strings.Cut(rel, "/")
		return rel == "." || slices.Contains([]string{"cairn.json", "volumes", "snapshots", "backups", "tmp", "trash"}, first)
	}
	f.Fuzz(func(t *testing.T, p string) {
		err := checkPath(p, "staging_target_path", owned)
		if err != nil {
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "staging_target_path") {
				t.Fatalf("checkPath(%q): %v, want InvalidArgument naming the field", p, err)
			}
			return
		}
		if !filepath.IsAbs(p) || filepath.Clean(p) != p || strings.Contains(p, "\x00") || slices.Contains(strings.Split(p, "/"), "..") || owned(p) {
			t.Fatalf("checkPath accepted %q", p)
		}
	})
}

// FuzzTopology: node names taken from topology segments are valid node
// IDs (no '/', no "..", at most 63 characters) and exactly the segments'
// values; anything else is InvalidArgument naming the field.
func FuzzTopology(f *testing.F) {
	for _, s := range []string{"node-a", "", "../x", "a/b", "n.example.com", strings.Repeat("n", 64), "-n", "n_1", "ñ"} {
		f.Add(s, TopologyKey)
	}
	f.Add("node-a", "topology.kubernetes.io/zone")
	f.Fuzz(func(t *testing.T, node, key string) {
		req := &csipb.TopologyRequirement{
			Requisite: []*csipb.Topology{{Segments: map[string]string{key: node}}},
			Preferred: []*csipb.Topology{{Segments: map[string]string{key: node}}},
		}
		p, err := placement(req, "accessibility_requirements")
		if err != nil {
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "accessibility_requirements.requisite[0]") {
				t.Fatalf("placement(%q=%q): %v", key, node, err)
			}
			return
		}
		if key != TopologyKey || !slices.Equal(p.Requisite, []string{node}) || !slices.Equal(p.Preferred, []string{node}) {
			t.Fatalf("placement(%q=%q) = %+v", key, node, p)
		}
		if CheckNodeID(node, "node") != nil || len(node) > 63 || strings.ContainsAny(node, "/\x00") || node == ".." {
			t.Fatalf("placement accepted node %q", node)
		}
		if !p.Allows(node) || slices.Contains(p.Candidates(), node+"x") {
			t.Fatalf("placement %+v does not allow exactly %q", p, node)
		}
	})
}

// FuzzPageToken: any starting_token and max_entries give a valid page of
// the list or Aborted (a token not issued) / InvalidArgument (negative max).
func FuzzPageToken(f *testing.F) {
	ids := []string{model.VolumeIDForName("a"), model.VolumeIDForName("b"), model.VolumeIDForName("c")}
	slices.Sort(ids)
	f.Add(ids[1], int32(1))
	f.Add("", int32(0))
	f.Add("v-ffffffffffffffffffffffffffffffff", int32(-1))
	f.Add("../../x", int32(2147483647))
	f.Fuzz(func(t *testing.T, token string, maxEntries int32) {
		start, end, next, err := page(ids, token, maxEntries, model.ValidVolumeID)
		if err != nil {
			if c := status.Code(err); c != codes.Aborted && c != codes.InvalidArgument {
				t.Fatalf("page(%q, %d): %v", token, maxEntries, err)
			}
			return
		}
		if start < 0 || start > end || end > len(ids) || (next != "" && !slices.Contains(ids, next)) {
			t.Fatalf("page(%q, %d) = [%d:%d] next %q", token, maxEntries, start, end, next)
		}
	})
}

// fakeBackend answers every call NotFound, recording what reached it.
type fakeBackend struct {
	ControllerBackend
	t *testing.T
}

func (b fakeBackend) BackupTargets(context.Context) ([]string, error) { return []string{"t1"}, nil }
func (b fakeBackend) Capacity(_ context.Context, node string) (int64, error) {
	if node != "" && CheckNodeID(node, "node") != nil {
		b.t.Fatalf("Capacity passed on node %q", node)
	}
	return 0, nil
}
func (b fakeBackend) CreateVolume(_ context.Context, req model.CreateVolumeRequest, where model.Placement) (*model.Volume, error) {
	if req.Name == "" || req.RequiredBytes < 0 || req.LimitBytes < 0 {
		b.t.Fatalf("CreateVolume passed on %+v", req)
	}
	for _, n := range append(slices.Clone(where.Requisite), where.Preferred...) {
		if CheckNodeID(n, "node") != nil {
			b.t.Fatalf("CreateVolume passed on node %q", n)
		}
	}
	return nil, model.Errorf(model.ErrNotFound, "fake")
}
func (b fakeBackend) CreateSnapshot(context.Context, string, string, map[string]string, model.Placement) (*model.Snapshot, error) {
	return nil, model.Errorf(model.ErrNotFound, "fake")
}
func (b fakeBackend) CreateBackup(_ context.Context, name, volumeID, target string) (*model.BackupInfo, error) {
	if target != "t1" {
		b.t.Fatalf("CreateBackup passed on target %q", target)
	}
	return nil, model.Errorf(model.ErrNotFound, "fake")
}
func (b fakeBackend) DeleteVolume(context.Context, string) error   { return nil }
func (b fakeBackend) DeleteSnapshot(context.Context, string) error { return nil }
func (b fakeBackend) DeleteBackup(_ context.Context, h string) error {
	if !model.IsBackupHandle(h) {
		b.t.Fatalf("DeleteBackup passed on %q", h)
	}
	return nil
}
func (b fakeBackend) GetSnapshot(context.Context, string) (*model.Snapshot, error) {
	return nil, model.Errorf(model.ErrNotFound, "fake")
}
func (b fakeBackend) GetBackup(context.Context, string) (*model.BackupInfo, error) {
	return nil, model.Errorf(model.ErrNotFound, "fake")
}
func (b fakeBackend) ExpandVolume(context.Context, string, int64, int64) (*model.ExpandResult, error) {
	return nil, model.Errorf(model.ErrNotFound, "fake")
}
func (b fakeBackend) ModifyVolume(_ context.Context, _ string, params map[string]string) error {
	if _, err := (model.IOLimits{}).With(params, "mutable_parameters", true); err != nil {
		b.t.Fatalf("ModifyVolume passed on %v: %v", params, err)
	}
	return model.Errorf(model.ErrNotFound, "fake")
}
func (b fakeBackend) VolumeHealth(context.Context, string) ([]model.HealthProblem, error) {
	return nil, model.Errorf(model.ErrNotFound, "fake")
}

// FuzzControllerRequests sends controller requests built from arbitrary
// names, IDs, handles, parameters, node names and sizes: no panic, and
// every answer is a gRPC status with a code a CO can act on.
func FuzzControllerRequests(f *testing.F) {
	f.Add("pvc-1", "bs://t1/v-0123456789abcdef0123456789abcdef/b-0123456789abcdef0123456789abcdef", "backup", "t1", "node-a", int64(1<<20), int64(0))
	f.Add("", "", "", "", "", int64(-1), int64(-1))
	f.Add("x", "s-0123456789abcdef0123456789abcdef", "snap", "../t", "../n", int64(9223372036854775807), int64(1))
	f.Add("x", "v-0123456789abcdef0123456789abcdef", "weird", "", "n/a", int64(0), int64(9223372036854775807))
	f.Fuzz(func(t *testing.T, name, id, typ, target, node string, required, limit int64) {
		c := &controllerServer{s: New(nil, fakeBackend{t: t}, Options{NodeID: "node-a"})}
		ctx := context.Background()
		capRange := &csipb.CapacityRange{RequiredBytes: required, LimitBytes: limit}
		topo := &csipb.TopologyRequirement{Requisite: []*csipb.Topology{{Segments: map[string]string{TopologyKey: node}}}}
		params := map[string]string{"type": typ, "backupTarget": target}
		var errs []error
		_, err := c.CreateVolume(ctx, &csipb.CreateVolumeRequest{Name: name, CapacityRange: capRange, VolumeCapabilities: []*csipb.VolumeCapability{mountCap(csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, typ)}, AccessibilityRequirements: topo,
			VolumeContentSource: &csipb.VolumeContentSource{Type: &csipb.VolumeContentSource_Snapshot{Snapshot: &csipb.VolumeContentSource_SnapshotSource{SnapshotId: id}}}})
		errs = append(errs, err)
		_, err = c.CreateVolume(ctx, &csipb.CreateVolumeRequest{Name: name, CapacityRange: capRange, VolumeCapabilities: []*csipb.VolumeCapability{blockCap(csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)}, Parameters: params,
			VolumeContentSource: &csipb.VolumeContentSource{Type: &csipb.VolumeContentSource_Volume{Volume: &csipb.VolumeContentSource_VolumeSource{VolumeId: id}}}})
		errs = append(errs, err)
		_, err = c.CreateSnapshot(ctx, &csipb.CreateSnapshotRequest{Name: name, SourceVolumeId: id, Parameters: params, AccessibilityRequirements: topo})
		errs = append(errs, err)
		_, err = c.DeleteSnapshot(ctx, &csipb.DeleteSnapshotRequest{SnapshotId: id})
		errs = append(errs, err)
		_, err = c.GetSnapshot(ctx, &csipb.GetSnapshotRequest{SnapshotId: id})
		errs = append(errs, err)
		_, err = c.ControllerExpandVolume(ctx, &csipb.ControllerExpandVolumeRequest{VolumeId: id, CapacityRange: capRange})
		errs = append(errs, err)
		_, err = c.DeleteVolume(ctx, &csipb.DeleteVolumeRequest{VolumeId: id})
		errs = append(errs, err)
		_, err = c.ControllerModifyVolume(ctx, &csipb.ControllerModifyVolumeRequest{VolumeId: id, MutableParameters: map[string]string{typ: target, "iops": name}})
		errs = append(errs, err)
		_, err = c.GetCapacity(ctx, &csipb.GetCapacityRequest{AccessibleTopology: &csipb.Topology{Segments: map[string]string{TopologyKey: node}}})
		errs = append(errs, err)
		for i, err := range errs {
			if err == nil {
				continue
			}
			st, ok := status.FromError(err)
			if !ok || st.Code() == codes.Internal || st.Code() == codes.Unknown {
				t.Fatalf("call %d: %v", i, err)
			}
		}
	})
}
