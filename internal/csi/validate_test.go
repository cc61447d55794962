package csi

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cairn-csi/cairn/internal/model"
)

func mountCap(mode csipb.VolumeCapability_AccessMode_Mode, fs string) *csipb.VolumeCapability {
	return &csipb.VolumeCapability{
		AccessMode: &csipb.VolumeCapability_AccessMode{Mode: mode},
		AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{FsType: fs}},
	}
}

func blockCap(mode csipb.VolumeCapability_AccessMode_Mode) *csipb.VolumeCapability {
	return &csipb.VolumeCapability{
		AccessMode: &csipb.VolumeCapability_AccessMode{Mode: mode},
		AccessType: &csipb.VolumeCapability_Block{Block: &csipb.VolumeCapability_BlockVolume{}},
	}
}

// wantInvalid checks an InvalidArgument error whose message names field.
func wantInvalid(t *testing.T, err error, field string) {
	t.Helper()
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), field) {
		t.Errorf("got %v, want InvalidArgument naming %q", err, field)
	}
}

func TestCheckCapabilities(t *testing.T) {
	const snw = csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER
	s, err := checkCapabilities([]*csipb.VolumeCapability{mountCap(snw, "xfs")}, "volume_capabilities")
	if err != nil || s.Block || s.FsType != "xfs" {
		t.Errorf("xfs mount: %+v, %v", s, err)
	}
	s, err = checkCapabilities([]*csipb.VolumeCapability{blockCap(csipb.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER)}, "volume_capabilities")
	if err != nil || !s.Block {
		t.Errorf("block: %+v, %v", s, err)
	}
	_, err = checkCapabilities(nil, "volume_capabilities")
	wantInvalid(t, err, "volume_capabilities is required")
	_, err = checkCapabilities([]*csipb.VolumeCapability{mountCap(csipb.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER, "")}, "volume_capabilities")
	wantInvalid(t, err, "volume_capabilities[0].access_mode")
	_, err = checkCapabilities([]*csipb.VolumeCapability{mountCap(snw, "btrfs")}, "volume_capabilities")
	wantInvalid(t, err, "fs_type \"btrfs\"")
	_, err = checkCapabilities([]*csipb.VolumeCapability{mountCap(snw, ""), blockCap(snw)}, "volume_capabilities")
	wantInvalid(t, err, "block or mount")
	_, err = checkCapabilities([]*csipb.VolumeCapability{mountCap(snw, "ext4"), mountCap(snw, "xfs")}, "volume_capabilities")
	wantInvalid(t, err, "conflicting fs_type")
	_, err = checkCapabilities([]*csipb.VolumeCapability{{AccessMode: &csipb.VolumeCapability_AccessMode{Mode: snw}}}, "volume_capabilities")
	wantInvalid(t, err, "access_type")
}

func TestCheckParameters(t *testing.T) {
	fs, err := checkVolumeParameters(map[string]string{"csi.storage.k8s.io/fstype": "xfs", "csi.storage.k8s.io/pvc/name": "x"})
	if err != nil || fs != "xfs" {
		t.Errorf("fstype parameter: %q, %v", fs, err)
	}
	_, err = checkVolumeParameters(map[string]string{"fstype": "xfs"})
	wantInvalid(t, err, `unknown key "fstype"`)

	targets := []string{"nas"}
	k, err := checkSnapshotParameters(map[string]string{"type": "backup"}, targets)
	if err != nil || !k.Backup || k.Target != "nas" {
		t.Errorf("backup with the only target as default: %+v, %v", k, err)
	}
	_, err = checkSnapshotParameters(map[string]string{"type": "backup"}, []string{"a", "b"})
	wantInvalid(t, err, "backupTarget is required")
	_, err = checkSnapshotParameters(map[string]string{"type": "backup", "backupTarget": "s3"}, targets)
	wantInvalid(t, err, `backupTarget "s3" is not configured`)
	_, err = checkSnapshotParameters(map[string]string{"type": "clone"}, targets)
	wantInvalid(t, err, `type "clone"`)
	_, err = checkSnapshotParameters(map[string]string{"backupTarget": "nas"}, targets)
	wantInvalid(t, err, "type is not")
}

func TestPage(t *testing.T) {
	ids := []string{"v-a", "v-b", "v-c", "v-d", "v-e"}
	valid := func(s string) bool { return strings.HasPrefix(s, "v-") }
	var got []string
	token := ""
	for {
		start, end, next, err := page(ids, token, 2, valid)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, ids[start:end]...)
		if next == "" {
			break
		}
		token = next
	}
	if fmt.Sprint(got) != fmt.Sprint(ids) {
		t.Errorf("pages gave %v", got)
	}
	if _, _, _, err := page(ids, "bogus", 0, valid); status.Code(err) != codes.Aborted {
		t.Errorf("bad token: %v, want Aborted", err)
	}
	if _, _, _, err := page(ids, "", -1, valid); status.Code(err) != codes.InvalidArgument {
		t.Errorf("negative max: %v, want InvalidArgument", err)
	}
}

func TestToStatus(t *testing.T) {
	for kind, code := range map[error]codes.Code{
		model.ErrNotFound: codes.NotFound, model.ErrAlreadyExists: codes.AlreadyExists,
		model.ErrInvalidArgument: codes.InvalidArgument, model.ErrOutOfRange: codes.OutOfRange,
		model.ErrFailedPrecondition: codes.FailedPrecondition, model.ErrResourceExhausted: codes.ResourceExhausted,
		model.ErrUnavailable: codes.Unavailable, model.ErrAborted: codes.Aborted,
	} {
		err := toStatus(fmt.Errorf("context: %w", kind))
		if status.Code(err) != code || !strings.Contains(err.Error(), "context") {
			t.Errorf("%v -> %v, want %v with the message kept", kind, err, code)
		}
	}
	if status.Code(toStatus(fmt.Errorf("disk on fire"))) != codes.Internal {
		t.Error("unknown errors must be Internal")
	}
	// A status passes as it is; a kinded error that wraps one keeps its
	// own kind's code.
	if st := toStatus(status.Error(codes.Aborted, "busy")); status.Code(st) != codes.Aborted {
		t.Errorf("status changed: %v", st)
	}
	wrapped := model.Errorf(model.ErrUnavailable, "unavailable: %w", status.Error(codes.NotFound, "inner"))
	if st := toStatus(wrapped); status.Code(st) != codes.Unavailable || !strings.Contains(st.Error(), "inner") {
		t.Errorf("kinded error wrapping a status: %v, want Unavailable", st)
	}
}

func TestPlacement(t *testing.T) {
	seg := func(n string) *csipb.Topology { return &csipb.Topology{Segments: map[string]string{TopologyKey: n}} }
	req := &csipb.TopologyRequirement{Requisite: []*csipb.Topology{seg("n1"), seg("n2")}, Preferred: []*csipb.Topology{seg("n2")}}
	p, err := placement(req, "accessibility_requirements")
	if err != nil {
		t.Fatal(err)
	}
	if !p.Allows("n1") || p.Allows("n3") || !slices.Equal(p.Candidates(), []string{"n2", "n1"}) {
		t.Errorf("placement %+v: allows/candidates wrong", p)
	}
	if none, _ := placement(nil, "x"); !none.Allows("any") || len(none.Candidates()) != 0 {
		t.Error("no requirement must allow every node")
	}
	bad := &csipb.TopologyRequirement{Requisite: []*csipb.Topology{{Segments: map[string]string{"zone": "a"}}}}
	if _, err := placement(bad, "accessibility_requirements"); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "accessibility_requirements.requisite[0]") {
		t.Errorf("foreign key: %v, want InvalidArgument naming the field", err)
	}
}
