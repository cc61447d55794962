package model

import (
	"errors"
	"strings"
	"testing"
)

func TestBackupHandles(t *testing.T) {
	h := BackupHandle{Target: "nfs-1", VolumeID: VolumeIDForName("pvc"), BackupID: BackupIDForName("snap")}
	got, err := ParseBackupHandle(h.String())
	if err != nil || got != h || !ValidSnapshotHandle(h.String()) {
		t.Fatalf("round trip of %s: %+v, %v", h, got, err)
	}
	for _, bad := range []string{
		"", "bs://", "bs://t/v", "bs://t/v/b/extra", "bs://T/v-x/" + h.BackupID,
		"bs://t/../" + h.BackupID, "bs://t/" + h.VolumeID + "/b-short", "s3://t/v/b",
		"bs://t//" + h.BackupID, "bs://-t/" + h.VolumeID + "/" + h.BackupID,
	} {
		if _, err := ParseBackupHandle(bad); !errors.Is(err, ErrNotFound) {
			t.Errorf("ParseBackupHandle(%q) = %v, want NotFound", bad, err)
		}
		if ValidSnapshotHandle(bad) {
			t.Errorf("ValidSnapshotHandle(%q) = true", bad)
		}
	}
	if !ValidSnapshotHandle(SnapshotIDForName("x")) || ValidSnapshotHandle(VolumeIDForName("x")) {
		t.Error("local snapshot IDs are handles, volume IDs are not")
	}
}

func TestIDs(t *testing.T) {
	for _, c := range []struct {
		id    string
		valid func(string) bool
	}{{VolumeIDForName("a"), ValidVolumeID}, {SnapshotIDForName("a"), ValidSnapshotID}, {BackupIDForName("a"), ValidBackupID}} {
		if !c.valid(c.id) || c.valid(c.id+"0") || c.valid(strings.ToUpper(c.id)) {
			t.Errorf("validity of %s", c.id)
		}
	}
	if VolumeIDForName("a") == VolumeIDForName("b") || VolumeIDForName("a") != VolumeIDForName("a") {
		t.Error("IDs are a function of the name")
	}
	// The store accepts any DNS-like volume key, Cairn's own IDs included.
	if !ValidStoreVolumeID(VolumeIDForName("a")) || !ValidStoreVolumeID("pvc-1.data") || ValidStoreVolumeID("../x") || ValidStoreVolumeID("") {
		t.Error("store volume IDs")
	}
}

func TestAnswers(t *testing.T) {
	snap := SnapshotIDForName("s")
	handle := BackupHandle{Target: "t", VolumeID: VolumeIDForName("v"), BackupID: BackupIDForName("b")}.String()
	fs := &Volume{Name: "n", SizeBytes: 2 * mib, FsType: DefaultFsType}
	fromSnap := &Volume{Name: "n", SizeBytes: 2 * mib, FsType: FsXFS, Source: &Source{Kind: SourceSnapshot, ID: snap}}
	fromBackup := &Volume{Name: "n", SizeBytes: 2 * mib, Block: true, Source: &Source{Kind: SourceBackup, ID: handle}}
	for _, c := range []struct {
		what string
		v    *Volume
		req  CreateVolumeRequest
		ok   bool
	}{
		{"same", fs, CreateVolumeRequest{Name: "n", RequiredBytes: 2 * mib}, true},
		{"smaller", fs, CreateVolumeRequest{Name: "n", RequiredBytes: mib}, true},
		{"larger", fs, CreateVolumeRequest{Name: "n", RequiredBytes: 3 * mib}, false},
		{"over limit", fs, CreateVolumeRequest{Name: "n", LimitBytes: mib}, false},
		{"block", fs, CreateVolumeRequest{Name: "n", Block: true}, false},
		{"explicit default fs", fs, CreateVolumeRequest{Name: "n", FsType: DefaultFsType}, true},
		{"other fs", fs, CreateVolumeRequest{Name: "n", FsType: FsXFS}, false},
		{"source added", fs, CreateVolumeRequest{Name: "n", SourceSnapshotID: snap}, false},
		{"same snapshot, fs from the data", fromSnap, CreateVolumeRequest{Name: "n", SourceSnapshotID: snap}, true},
		{"other snapshot", fromSnap, CreateVolumeRequest{Name: "n", SourceSnapshotID: SnapshotIDForName("t")}, false},
		{"volume instead", fromSnap, CreateVolumeRequest{Name: "n", SourceVolumeID: snap}, false},
		{"same backup", fromBackup, CreateVolumeRequest{Name: "n", Block: true, SourceSnapshotID: handle}, true},
		{"no source", fromBackup, CreateVolumeRequest{Name: "n", Block: true}, false},
	} {
		err := c.v.Answers(c.req)
		if (err == nil) != c.ok || (err != nil && !errors.Is(err, ErrAlreadyExists)) {
			t.Errorf("%s: %v, want ok=%v", c.what, err, c.ok)
		}
	}
}

func TestEffectiveFsType(t *testing.T) {
	if EffectiveFsType(true, "xfs") != "" || EffectiveFsType(false, "") != DefaultFsType || EffectiveFsType(false, FsXFS) != FsXFS {
		t.Error("EffectiveFsType")
	}
}

func TestPlacement(t *testing.T) {
	p := Placement{Requisite: []string{"a", "b", "c"}, Preferred: []string{"c"}}
	if got := strings.Join(p.Candidates(), ","); got != "c,a,b" {
		t.Errorf("candidates %s", got)
	}
	if !p.Allows("a") || p.Allows("z") || !(Placement{}).Allows("z") {
		t.Error("Allows")
	}
}
