package backup

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestRestoreDelta follows a volume's backups as a standby does: a full
// restore of the first, then each later one applied by its changed
// blocks only, byte-identical every time, and idempotent after an
// interrupted apply.
func TestRestoreDelta(t *testing.T) {
	ctx := context.Background()
	r, _ := newRepo(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "vol")
	sparseFile(t, src, 40*mib)
	writeAt(t, src, 0, randBytes(t, 24*mib)) // blocks 0-5
	m1, err := r.Backup(ctx, Source{Path: src}, meta("b1", "v-1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	standby := restoreTo(t, r, m1, dir)

	// Change blocks 1 and 4, zero block 2 (a hole now), write block 8,
	// and grow the volume by a block.
	writeAt(t, src, 1*mib*4+100, randBytes(t, 1000))
	writeAt(t, src, 4*mib*4, randBytes(t, 4*mib))
	f, err := os.OpenFile(src, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 2*4*mib, 4*mib); err != nil {
		t.Fatal(err)
	}
	f.Truncate(44 * mib)
	f.Close()
	writeAt(t, src, 8*4*mib, randBytes(t, 4*mib))
	m2, err := r.Backup(ctx, Source{Path: src}, meta("b2", "v-1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	st, err := r.RestoreDelta(ctx, m1.Blocks, m2, standby)
	if err != nil {
		t.Fatal(err)
	}
	sameContent(t, src, standby)
	if st.BlocksFetched != 3 || st.BlocksZeroed != 1 || st.BlocksKept != 3 || st.BytesDownloaded > 3*4*mib+3*4096 {
		t.Errorf("delta stats %+v; want 3 fetched (blocks 1, 4, 8), 1 zeroed (2), 3 kept (0, 3, 5), about 12 MiB downloaded", st)
	}

	// An interrupted apply leaves a mix; applying again finishes it.
	writeAt(t, standby, 4*4*mib, randBytes(t, 4096))
	if _, err := r.RestoreDelta(ctx, m1.Blocks, m2, standby); err != nil {
		t.Fatal(err)
	}
	sameContent(t, src, standby)
	// Nothing to do between a backup and itself.
	st, err = r.RestoreDelta(ctx, m2.Blocks, m2, standby)
	if err != nil || st.BlocksFetched != 0 || st.BytesDownloaded != 0 {
		t.Errorf("a backup applied onto itself: %+v, %v", st, err)
	}
	sameContent(t, src, standby)
}

// TestStandbyFollowsBackups: after each of several incremental backups a
// standby step leaves the image byte-identical to the volume, downloading
// about the changed blocks; retention deleting the backup it holds does
// not stop it, and an interrupted apply is finished by the next step.
func TestStandbyFollowsBackups(t *testing.T) {
	ctx := context.Background()
	r, _ := newRepo(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "vol")
	sparseFile(t, src, 64*mib)
	writeAt(t, src, 0, randBytes(t, 32*mib))
	s := &Standby{Repo: r, VolumeID: "v-1", File: filepath.Join(dir, "standby.img")}
	if _, err := s.Step(ctx); err == nil {
		t.Fatal("a standby of a volume without backups stepped")
	}
	var prev *Manifest
	for i := range 4 {
		if i > 0 {
			writeAt(t, src, int64(i)*4*mib*3, randBytes(t, 8192)) // one block changed
		}
		m, err := r.Backup(ctx, Source{Path: src}, meta(fmt.Sprintf("b%d", i), "v-1"), nil)
		if err != nil {
			t.Fatal(err)
		}
		rep, err := s.Step(ctx)
		if err != nil {
			t.Fatal(err)
		}
		sameContent(t, src, s.File)
		if rep.BackupID != m.ID || rep.Behind != 0 || !rep.Applied {
			t.Errorf("step %d: %+v", i, rep)
		}
		if i == 0 && !rep.Full {
			t.Errorf("the first step was not a full restore: %+v", rep)
		}
		if i > 0 && (rep.Delta.BlocksFetched != 1 || rep.Delta.BytesDownloaded > 4*mib+4096) {
			t.Errorf("step %d downloaded %d blocks, %d bytes; want the one changed block", i, rep.Delta.BlocksFetched, rep.Delta.BytesDownloaded)
		}
		// Retention may delete the backup the standby holds.
		if prev != nil {
			if err := r.Delete(ctx, prev.VolumeID, prev.ID); err != nil {
				t.Fatal(err)
			}
		}
		prev = m
	}
	if rep, err := s.Step(ctx); err != nil || rep.Applied || rep.Behind != 0 {
		t.Errorf("a step with nothing new: %+v, %v", rep, err)
	}
	// Interrupt an apply: the state says Applying, the image is a mix.
	writeAt(t, src, 0, randBytes(t, 4*mib))
	m, err := r.Backup(ctx, Source{Path: src}, meta("b-last", "v-1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := s.State()
	st.Applying = m.ID
	if err := s.save(st); err != nil {
		t.Fatal(err)
	}
	writeAt(t, s.File, 0, randBytes(t, 4096)) // half-written block
	if _, err := s.Step(ctx); err != nil {
		t.Fatal(err)
	}
	sameContent(t, src, s.File)
	// A damaged state (a block's hash edited) is refused, not trusted.
	b, _ := os.ReadFile(s.statePath())
	var raw map[string]any
	json.Unmarshal(b, &raw)
	raw["blocks"].([]any)[0].(map[string]any)["h"] = strings.Repeat("0", 64)
	b, _ = json.Marshal(raw)
	os.WriteFile(s.statePath(), b, 0o600)
	if _, err := s.Step(ctx); err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Errorf("a step with an edited block list: %v, want it refused as damaged", err)
	}
	// A file that is not a standby is never overwritten.
	other := &Standby{Repo: r, VolumeID: "v-1", File: src}
	if _, err := other.Step(ctx); err == nil {
		t.Error("a standby step overwrote a file that was not its image")
	}
}
