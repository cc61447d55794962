package engine

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/cairn-csi/cairn/internal/fsops"
	"github.com/cairn-csi/cairn/internal/model"
)

func TestSnapshotAndRestore(t *testing.T) {
	forEachRoot(t, func(t *testing.T, e *Engine) {
		ctx := context.Background()
		src := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "src", RequiredBytes: 64 * mib, Block: true}))(t)
		want := fillVolume(t, e, src.ID, 11)

		snap := must(e.CreateSnapshot(ctx, "snap-1", src.ID, map[string]string{"type": "snap"}))(t)
		if snap.ID != model.SnapshotIDForName("snap-1") || snap.SourceVolumeID != src.ID || snap.SizeBytes != 64*mib || !snap.Block || snap.Parameters["type"] != "snap" {
			t.Fatalf("snapshot %+v", snap)
		}
		path := must(e.SnapshotDataPath(snap.ID))(t)
		assertContent(t, path, want)

		// Idempotent for the same source; the name is taken for others.
		again := must(e.CreateSnapshot(ctx, "snap-1", src.ID, nil))(t)
		if again.ID != snap.ID || !again.CreatedAt.Equal(snap.CreatedAt) {
			t.Fatalf("repeated snapshot returned %+v", again)
		}
		other := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "other", RequiredBytes: mib, Block: true}))(t)
		_, err := e.CreateSnapshot(ctx, "snap-1", other.ID, nil)
		wantErr(t, err, model.ErrAlreadyExists, "snapshot name reused for another volume")
		_, err = e.CreateSnapshot(ctx, "snap-x", model.VolumeIDForName("missing"), nil)
		wantErr(t, err, model.ErrNotFound, "snapshot of a missing volume")
		_, err = e.CreateSnapshot(ctx, "", src.ID, nil)
		wantErr(t, err, model.ErrInvalidArgument, "snapshot without a name")
		_, err = e.CreateSnapshot(ctx, "snap-y", "", nil)
		wantErr(t, err, model.ErrInvalidArgument, "snapshot without a source")

		got := must(e.GetSnapshot(ctx, snap.ID))(t)
		if got.SourceVolumeID != src.ID || got.SizeBytes != snap.SizeBytes {
			t.Fatalf("GetSnapshot = %+v", got)
		}
		if list := must(e.ListSnapshots(ctx))(t); len(list) != 1 || list[0].ID != snap.ID {
			t.Fatalf("ListSnapshots returned %d snapshots", len(list))
		}

		// The snapshot is a point in time: later writes to the source do
		// not reach it.
		writeAt(t, e.volumeData(src.ID), 0, pattern(99, 64<<10))
		writeAt(t, e.volumeData(src.ID), 40*mib, pattern(98, int(mib)))
		assertContent(t, path, want)

		// Restore into a volume of the same size.
		eq := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "restore-eq", RequiredBytes: 64 * mib, Block: true, SourceSnapshotID: snap.ID}))(t)
		if eq.SizeBytes != 64*mib || eq.Source == nil || *eq.Source != (model.Source{Kind: model.SourceSnapshot, ID: snap.ID}) {
			t.Fatalf("restored volume %+v", eq)
		}
		assertContent(t, e.volumeData(eq.ID), want)
		// Repeating the restore returns the same volume.
		if again := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "restore-eq", RequiredBytes: 64 * mib, Block: true, SourceSnapshotID: snap.ID}))(t); again.ID != eq.ID {
			t.Fatalf("repeated restore returned another volume")
		}

		// No size asked, or less than the snapshot without a limit: the
		// snapshot's size.
		for _, req := range []int64{0, 32 * mib} {
			v := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: fmt.Sprintf("restore-small-%d", req), RequiredBytes: req, Block: true, SourceSnapshotID: snap.ID}))(t)
			if v.SizeBytes != 64*mib {
				t.Fatalf("restore asking for %d bytes got %d", req, v.SizeBytes)
			}
			assertContent(t, e.volumeData(v.ID), want)
			ok(t, e.DeleteVolume(ctx, v.ID))
		}

		// Restore into a larger volume: the data, then zeros.
		big := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "restore-big", RequiredBytes: 160 * mib, Block: true, SourceSnapshotID: snap.ID}))(t)
		if big.SizeBytes != 160*mib || fileSize(t, e.volumeData(big.ID)) != 160*mib {
			t.Fatalf("larger restore has size %d", big.SizeBytes)
		}
		assertPrefix(t, e.volumeData(big.ID), want)
		assertZeros(t, e.volumeData(big.ID), 64*mib, 96*mib)

		// Restore into a smaller volume is refused.
		_, err = e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "restore-smaller", RequiredBytes: 32 * mib, LimitBytes: 32 * mib, Block: true, SourceSnapshotID: snap.ID})
		wantErr(t, err, model.ErrOutOfRange, "restore into a smaller volume")
		_, err = e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "restore-missing", SourceSnapshotID: model.SnapshotIDForName("missing")})
		wantErr(t, err, model.ErrNotFound, "restore from a missing snapshot")

		// Restored volumes are independent of the snapshot and each other.
		writeAt(t, e.volumeData(eq.ID), 0, pattern(97, 4096))
		assertContent(t, path, want)
		assertPrefix(t, e.volumeData(big.ID), want)

		// Snapshots outlive their source volume; restores outlive the
		// snapshot.
		ok(t, e.DeleteVolume(ctx, src.ID))
		assertContent(t, path, want)
		ok(t, e.DeleteSnapshot(ctx, snap.ID))
		_, err = e.GetSnapshot(ctx, snap.ID)
		wantErr(t, err, model.ErrNotFound, "get deleted snapshot")
		if _, err := os.Stat(e.snapshotDir(snap.ID)); !os.IsNotExist(err) {
			t.Fatalf("deleted snapshot's directory still there: %v", err)
		}
		ok(t, e.DeleteSnapshot(ctx, snap.ID))
		ok(t, e.DeleteSnapshot(ctx, model.SnapshotIDForName("never")))
		assertPrefix(t, e.volumeData(big.ID), want)
		assertNoLeftovers(t, e)
		for _, id := range []string{eq.ID, big.ID, other.ID} {
			ok(t, e.DeleteVolume(ctx, id))
		}
	})
}

// A filesystem volume's snapshot records the file system, and restores
// keep it whatever the request says: the data decides.
func TestRestoreKeepsFsType(t *testing.T) {
	forEachRoot(t, func(t *testing.T, e *Engine) {
		ctx := context.Background()
		src := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "fs-src", RequiredBytes: model.MinXFSSize, FsType: "xfs"}))(t)
		snap := must(e.CreateSnapshot(ctx, "fs-snap", src.ID, nil))(t)
		if snap.FsType != "xfs" || snap.Block {
			t.Fatalf("snapshot of an xfs volume: fs %q block %v", snap.FsType, snap.Block)
		}
		r := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "fs-restore", FsType: "ext4", SourceSnapshotID: snap.ID}))(t)
		if r.FsType != "xfs" || r.SizeBytes != model.MinXFSSize {
			t.Fatalf("restore of an xfs snapshot: fs %q size %d", r.FsType, r.SizeBytes)
		}
		c := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "fs-clone", SourceVolumeID: src.ID}))(t)
		if c.FsType != "xfs" {
			t.Fatalf("clone of an xfs volume has fs %q", c.FsType)
		}
	})
}

func TestClone(t *testing.T) {
	forEachRoot(t, func(t *testing.T, e *Engine) {
		ctx := context.Background()
		src := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "src", RequiredBytes: 48 * mib, Block: true}))(t)
		want := fillVolume(t, e, src.ID, 21)

		c := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "clone", Block: true, SourceVolumeID: src.ID}))(t)
		if c.SizeBytes != 48*mib || c.Source == nil || *c.Source != (model.Source{Kind: model.SourceVolume, ID: src.ID}) {
			t.Fatalf("clone %+v", c)
		}
		assertContent(t, e.volumeData(c.ID), want)
		if again := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "clone", Block: true, SourceVolumeID: src.ID}))(t); again.ID != c.ID || !again.CreatedAt.Equal(c.CreatedAt) {
			t.Fatalf("repeated clone returned another volume")
		}

		// Writes to either side stay on that side.
		srcWant := append([]byte(nil), want...)
		p := pattern(22, 8192)
		writeAt(t, e.volumeData(src.ID), 4096, p)
		copy(srcWant[4096:], p)
		cloneWant := append([]byte(nil), want...)
		q := pattern(23, int(mib))
		writeAt(t, e.volumeData(c.ID), 20*mib, q)
		copy(cloneWant[20*mib:], q)
		assertContent(t, e.volumeData(src.ID), srcWant)
		assertContent(t, e.volumeData(c.ID), cloneWant)

		// A clone can be larger than its source.
		big := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "clone-big", RequiredBytes: 96 * mib, Block: true, SourceVolumeID: src.ID}))(t)
		assertPrefix(t, e.volumeData(big.ID), srcWant)
		assertZeros(t, e.volumeData(big.ID), 48*mib, 48*mib)
		_, err := e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "clone-small", RequiredBytes: 16 * mib, LimitBytes: 16 * mib, Block: true, SourceVolumeID: src.ID})
		wantErr(t, err, model.ErrOutOfRange, "clone into a smaller volume")
		_, err = e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "clone-missing", SourceVolumeID: model.VolumeIDForName("missing")})
		wantErr(t, err, model.ErrNotFound, "clone of a missing volume")

		// The clone outlives its source.
		ok(t, e.DeleteVolume(ctx, src.ID))
		assertContent(t, e.volumeData(c.ID), cloneWant)
		ok(t, e.DeleteVolume(ctx, c.ID))
		ok(t, e.DeleteVolume(ctx, big.ID))
		assertNoLeftovers(t, e)
	})
}

// dataRanges returns the allocated ranges of a file.
func dataRanges(t *testing.T, path string) [][2]int64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	var out [][2]int64
	err = fsops.ForEachDataRange(f, st.Size(), func(off, n int64) error {
		out = append(out, [2]int64{off, n})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Clones and snapshots of a sparse volume stay sparse in both modes: a
// reflink shares only the allocated extents, a copy copies only data
// ranges.
func TestSparseCloneAndCloneMode(t *testing.T) {
	forEachRoot(t, func(t *testing.T, e *Engine) {
		ctx := context.Background()
		wantMode := model.CloneCopy
		if e.reflink {
			wantMode = model.CloneReflink
		}
		if got := e.CloneMode(); got != wantMode {
			t.Fatalf("CloneMode() = %s, want %s", got, wantMode)
		}

		const size = 512 * mib
		src := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "sparse", RequiredBytes: size, Block: true}))(t)
		path := e.volumeData(src.ID)
		written := int64(0)
		regions := map[int64][]byte{}
		for i, off := range []int64{0, 100 * mib, 300*mib + 4096, size - 2*mib} {
			p := pattern(uint64(30+i), int(mib))
			writeAt(t, path, off, p)
			regions[off] = p
			written += mib
		}
		srcAlloc := must(fsops.AllocatedBytes(path))(t)
		if srcAlloc < written || srcAlloc > written+4*mib {
			t.Fatalf("source volume allocates %d bytes for %d written", srcAlloc, written)
		}

		check := func(what, p string, alloc int64) {
			t.Helper()
			if alloc < written || alloc > written+4*mib {
				t.Errorf("%s allocates %d bytes, want ~%d (the data written, not the %d-byte size)", what, alloc, written, int64(size))
			}
			if got := must(fsops.AllocatedBytes(p))(t); got != alloc {
				t.Errorf("%s: reported %d allocated bytes, file has %d", what, alloc, got)
			}
			if got := fileSize(t, p); got != size {
				t.Fatalf("%s has %d bytes, want %d", what, got, int64(size))
			}
			for off, want := range regions {
				if got := readAt(t, p, off, len(want)); string(got) != string(want) {
					t.Fatalf("%s: data at %d differs from the source", what, off)
				}
			}
			var dataLen int64
			for _, r := range dataRanges(t, p) {
				dataLen += r[1]
			}
			if dataLen > written+4*mib {
				t.Errorf("%s has %d bytes of data ranges for %d written: holes were filled", what, dataLen, written)
			}
			assertZeros(t, p, 200*mib, 64*mib) // a hole reads as zeros
		}

		clone := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "sparse-clone", Block: true, SourceVolumeID: src.ID}))(t)
		check("clone", e.volumeData(clone.ID), clone.AllocatedBytes)
		snap := must(e.CreateSnapshot(ctx, "sparse-snap", src.ID, nil))(t)
		check("snapshot", filepath.Join(e.snapshotDir(snap.ID), dataFile), snap.AllocatedBytes)
		restore := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "sparse-restore", Block: true, SourceSnapshotID: snap.ID}))(t)
		check("restore", e.volumeData(restore.ID), restore.AllocatedBytes)

		if e.reflink {
			// ForceCopy turns reflinks off even where they work.
			e2, err := Open(ctx, Config{DataRoot: e.Root(), ForceCopy: true})
			if err != nil {
				t.Fatal(err)
			}
			if e2.CloneMode() != model.CloneCopy {
				t.Fatalf("ForceCopy engine has clone mode %s", e2.CloneMode())
			}
			c2 := must(e2.CreateVolume(ctx, model.CreateVolumeRequest{Name: "sparse-copy", Block: true, SourceVolumeID: src.ID}))(t)
			check("forced copy", e2.volumeData(c2.ID), c2.AllocatedBytes)
		}
	})
}
