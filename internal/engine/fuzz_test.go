package engine

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/klog/v2"

	"github.com/cairn-csi/cairn/internal/model"
)

// Fuzz targets for every request field the engine turns into an ID, a
// path or a handle (make fuzz runs them; seed corpora in testdata/fuzz).
// The property everywhere: no panic, and whatever is accepted cannot
// leave the data root.

// underDir checks that joining name to dir gives a direct child of dir.
func underDir(t *testing.T, dir, name string) {
	t.Helper()
	p := filepath.Join(dir, name)
	if filepath.Dir(p) != dir || filepath.Base(p) != name || strings.ContainsAny(name, "/\x00") || name == ".." || name == "." {
		t.Fatalf("accepted name %q joined to %s gives %s, not a child of it", name, dir, p)
	}
}

// FuzzIDs: IDs derived from any name are valid and distinct per kind; any
// string the validators accept is a plain child of its directory.
func FuzzIDs(f *testing.F) {
	f.Add("pvc-1", "v-0123456789abcdef0123456789abcdef")
	f.Add("", "s-0123456789abcdef0123456789abcdef")
	f.Add("../../etc", "v-../../../../../../../../etc/xx")
	f.Add("a/b", "v-0123456789ABCDEF0123456789ABCDEF")
	f.Add("\x00", "v-0123456789abcdef0123456789abcdef\n")
	const root = "/data-root"
	f.Fuzz(func(t *testing.T, name, id string) {
		vid, sid := model.VolumeIDForName(name), model.SnapshotIDForName(name)
		if !model.ValidVolumeID(vid) || !model.ValidSnapshotID(sid) || model.ValidSnapshotID(vid) || model.ValidVolumeID(sid) {
			t.Fatalf("name %q derives volume %q and snapshot %q", name, vid, sid)
		}
		if model.VolumeIDForName(name) != vid {
			t.Fatal("derivation is not deterministic")
		}
		for _, c := range []struct {
			valid func(string) bool
			dir   string
		}{{model.ValidVolumeID, volumesDir}, {model.ValidSnapshotID, snapshotsDir}} {
			if c.valid(id) {
				underDir(t, filepath.Join(root, c.dir), id)
				if model.IsBackupHandle(id) {
					t.Fatalf("%q is both an ID and a backup handle", id)
				}
			}
		}
		if model.ValidVolumeID(id) && model.ValidSnapshotID(id) {
			t.Fatalf("%q is a volume and a snapshot ID", id)
		}
	})
}

// FuzzBackupHandle: ParseBackupHandle never panics; what it accepts has
// valid parts, formats back to the same string and joins under the data
// root; formatting valid parts parses back to them.
func FuzzBackupHandle(f *testing.F) {
	f.Add("bs://t1/v-0123456789abcdef0123456789abcdef/b-0123456789abcdef0123456789abcdef")
	f.Add("bs://t1/v-0123456789abcdef0123456789abcdef/b-0123456789abcdef0123456789abcdef/")
	f.Add("bs://../v-0123456789abcdef0123456789abcdef/b-0123456789abcdef0123456789abcdef")
	f.Add("bs://t1//v-0123456789abcdef0123456789abcdef/b-0123456789abcdef0123456789abcdef")
	f.Add("bs:///")
	f.Add("s-0123456789abcdef0123456789abcdef")
	const root = "/data-root"
	f.Fuzz(func(t *testing.T, s string) {
		h, err := model.ParseBackupHandle(s)
		if err != nil {
			if !errors.Is(err, model.ErrNotFound) {
				t.Fatalf("ParseBackupHandle(%q): %v, want ErrNotFound", s, err)
			}
			return
		}
		if !model.IsBackupHandle(s) || !model.ValidTargetName(h.Target) || h.String() != s {
			t.Fatalf("ParseBackupHandle(%q) = %+v, formats as %q", s, h, h.String())
		}
		underDir(t, filepath.Join(root, backupsDir), h.BackupID)
		for _, part := range []string{h.Target, h.VolumeID, h.BackupID} {
			if part == "" || strings.ContainsAny(part, "/\x00") || strings.Contains(part, "..") {
				t.Fatalf("handle %q has part %q", s, part)
			}
		}
		if again, err := model.ParseBackupHandle(h.String()); err != nil || again != h {
			t.Fatalf("format∘parse of %q: %+v, %v", s, again, err)
		}
	})
}

// FuzzTargetName: an accepted backup target name is a plain path and
// handle element.
func FuzzTargetName(f *testing.F) {
	for _, s := range []string{"t1", "nas", "-x", "a/b", "..", "A", strings.Repeat("a", 64), "a\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if !model.ValidTargetName(name) {
			return
		}
		underDir(t, "/targets", name)
		h := model.BackupHandle{Target: name, VolumeID: "v-0123456789abcdef0123456789abcdef", BackupID: "b-0123456789abcdef0123456789abcdef"}
		if got, err := model.ParseBackupHandle(h.String()); err != nil || got != h {
			t.Fatalf("handle with target %q does not round-trip: %+v, %v", name, got, err)
		}
	})
}

// FuzzRequests drives the engine's ID-taking calls with arbitrary names,
// IDs, handles and sizes on a scratch data root (a temporary directory: no
// mounts, no loop devices). Nothing may panic, every error must be one of
// the engine's kinds, and nothing may appear outside the data root's
// layout.
func FuzzRequests(f *testing.F) {
	f.Add("pvc-1", "v-0123456789abcdef0123456789abcdef", int64(1<<20), int64(0))
	f.Add("../x", "../../../etc", int64(-1), int64(-1))
	f.Add("snap", "bs://t1/v-0123456789abcdef0123456789abcdef/b-0123456789abcdef0123456789abcdef", int64(1<<62), int64(1<<20))
	f.Add("big", "s-0123456789abcdef0123456789abcdef", int64(9223372036854775807), int64(0))
	f.Add("", "", int64(0), int64(9223372036854775807))
	requireRoot(f)
	klog.LogToStderr(false) // one line per create and delete, thousands a second
	klog.SetOutput(io.Discard)
	f.Cleanup(func() { klog.LogToStderr(true) })
	dir := f.TempDir()
	e, err := Open(context.Background(), Config{DataRoot: dir, ForceCopy: true})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(e.Close)
	kinds := []error{model.ErrNotFound, model.ErrAlreadyExists, model.ErrInvalidArgument, model.ErrOutOfRange, model.ErrFailedPrecondition, model.ErrResourceExhausted, model.ErrUnavailable, model.ErrAborted}
	f.Fuzz(func(t *testing.T, name, id string, required, limit int64) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		check := func(what string, err error) {
			t.Helper()
			if err != nil && !slices.ContainsFunc(kinds, func(k error) bool { return errors.Is(err, k) }) {
				t.Fatalf("%s: error of no kind: %v", what, err)
			}
		}
		// Small sizes only for what is created: the root is a tmp dir.
		v, err := e.CreateVolume(ctx, model.CreateVolumeRequest{Name: name, RequiredBytes: min(max(required, 0), 4<<20), LimitBytes: limit, Block: true})
		check("CreateVolume", err)
		_, err = e.CreateVolume(ctx, model.CreateVolumeRequest{Name: name + "-clone", RequiredBytes: required, LimitBytes: limit, Block: true, SourceVolumeID: id})
		check("CreateVolume from volume "+id, err)
		_, err = e.CreateVolume(ctx, model.CreateVolumeRequest{Name: name + "-restore", RequiredBytes: required, LimitBytes: limit, SourceSnapshotID: id})
		check("CreateVolume from snapshot "+id, err)
		if v != nil {
			_, err = e.ExpandVolume(ctx, v.ID, required, limit)
			check("ExpandVolume", err)
			_, err = e.CreateSnapshot(ctx, name, v.ID, nil)
			check("CreateSnapshot", err)
		}
		_, err = e.CreateSnapshot(ctx, name+"-of-id", id, nil)
		check("CreateSnapshot of "+id, err)
		_, err = e.CreateBackup(ctx, name, id, "t1", nil)
		check("CreateBackup", err)
		_, err = e.GetVolume(ctx, id)
		check("GetVolume", err)
		_, err = e.GetSnapshot(ctx, id)
		check("GetSnapshot", err)
		_, err = e.GetBackup(ctx, id)
		check("GetBackup", err)
		_, err = e.ExpandVolume(ctx, id, required, limit)
		check("ExpandVolume "+id, err)
		_, err = e.VolumeStats(ctx, id, "/nonexistent/"+name)
		check("VolumeStats", err)
		check("DeleteBackup", e.DeleteBackup(ctx, id))
		check("DeleteSnapshot", e.DeleteSnapshot(ctx, id))
		check("DeleteVolume", e.DeleteVolume(ctx, id))
		for _, n := range []string{name, name + "-of-id"} {
			check("DeleteSnapshot", e.DeleteSnapshot(ctx, model.SnapshotIDForName(n)))
		}
		for _, n := range []string{name, name + "-clone", name + "-restore"} {
			check("DeleteVolume", e.DeleteVolume(ctx, model.VolumeIDForName(n)))
		}
		// Everything left is the layout itself.
		err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(dir, p)
			if rel == "." || rel == rootMetaFile || slices.Contains(layoutDirs, rel) {
				return nil
			}
			return errors.New("left behind: " + rel)
		})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(filepath.Dir(dir), "etc")); err == nil {
			t.Fatal("something was created next to the data root")
		}
	})
}
