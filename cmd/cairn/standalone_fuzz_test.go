package main

import (
	"strings"
	"testing"

	"github.com/cairn-csi/cairn/internal/backup"
	"github.com/cairn-csi/cairn/internal/engine"
)

// FuzzBackupTargetFlag: --backup-target NAME=URL accepts only names that
// are valid target names (plain path and handle elements).
func FuzzBackupTargetFlag(f *testing.F) {
	for _, s := range []string{"nas=file:///mnt/nfs/cairn", "s3=s3://b/p?endpoint=h:9000", "=x", "a=", "../x=file:///", "A=file:///", "a/b=file:///x", "a==b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		var tf targetFlags
		if err := tf.Set(v); err != nil {
			return
		}
		name, url, _ := strings.Cut(v, "=")
		if !engine.ValidTargetName(name) || url == "" || strings.ContainsAny(name, "/.") {
			t.Fatalf("--backup-target %q accepted", v)
		}
	})
}

// FuzzParseRef: the CLI's VOLUME/BACKUP-or-handle parser (parseRef, the
// twin of engine.ParseBackupHandle) accepts only valid IDs, and accepts
// every handle the engine accepts, with the same IDs.
func FuzzParseRef(f *testing.F) {
	for _, s := range []string{"v-0123456789abcdef0123456789abcdef/b-0123456789abcdef0123456789abcdef", "bs://t1/v-0123456789abcdef0123456789abcdef/b-0123456789abcdef0123456789abcdef", "bs://../v-0123456789abcdef0123456789abcdef/b-0123456789abcdef0123456789abcdef", "../../x", "v-x/b-y/z", "bs://a/b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ref, err := parseRef(s)
		if err == nil && (!backup.ValidVolumeID(ref.VolumeID) || !backup.ValidBackupID(ref.BackupID)) {
			t.Fatalf("parseRef(%q) = %+v", s, ref)
		}
		if h, herr := engine.ParseBackupHandle(s); herr == nil && (err != nil || ref.VolumeID != h.VolumeID || ref.BackupID != h.BackupID) {
			t.Fatalf("engine parses %q as %+v, parseRef as %+v, %v", s, h, ref, err)
		}
	})
}
