package main

import (
	"strings"
	"testing"

	"github.com/cairn-csi/cairn/internal/model"
)

// The command line's parsers are thin wrappers of the engine's rules,
// which are fuzzed where they live (engine FuzzTargetName,
// FuzzBackupHandle); fuzzing them here would instrument the whole binary's
// dependencies (minutes of build time in CI) for no extra input space.
// These cases pin the wrappers to those rules.

// TestBackupTargetFlag: --backup-target NAME=URL accepts only valid target
// names (plain path and handle elements) and a URL.
func TestBackupTargetFlag(t *testing.T) {
	for _, v := range []string{"nas=file:///mnt/nfs/cairn", "s3=s3://b/p?endpoint=h:9000", "=x", "a=", "../x=file:///", "A=file:///", "a/b=file:///x", "a==b", "a.b=file:///"} {
		var tf targetFlags
		err := tf.Set(v)
		name, url, _ := strings.Cut(v, "=")
		if want := model.ValidTargetName(name) && url != ""; (err == nil) != want {
			t.Errorf("--backup-target %q: %v, want accepted %v", v, err, want)
		}
		if err == nil && strings.ContainsAny(name, "/.") {
			t.Errorf("--backup-target %q accepted a name with a path element", v)
		}
	}
}

// TestParseRef: the CLI names a backup as VOLUME/BACKUP or by its handle,
// parsed by the engine's one rule.
func TestParseRef(t *testing.T) {
	const vol, id = "v-0123456789abcdef0123456789abcdef", "b-0123456789abcdef0123456789abcdef"
	for s, ok := range map[string]bool{
		vol + "/" + id: true, "bs://t1/" + vol + "/" + id: true, "bs://../" + vol + "/" + id: false,
		"../../x": false, "v-x/b-y/z": false, "bs://a/b": false, vol + "/" + id + "/x": false,
	} {
		ref, err := parseRef(s)
		if (err == nil) != ok {
			t.Errorf("parseRef(%q): %v, want ok %v", s, err, ok)
			continue
		}
		if err == nil && (!model.ValidStoreVolumeID(ref.VolumeID) || !model.ValidBackupID(ref.BackupID) || ref.VolumeID != vol || ref.BackupID != id) {
			t.Errorf("parseRef(%q) = %+v", s, ref)
		}
	}
}
