package engine

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cairn-csi/cairn/internal/fsops"
	"github.com/cairn-csi/cairn/internal/loop"
	"github.com/cairn-csi/cairn/internal/model"
)

// Half-built objects in tmp/ and half-deleted ones in trash/ are removed at
// start-up, including loop devices attached to their files.
func TestReconcileRemovesLeftovers(t *testing.T) {
	forEachRoot(t, func(t *testing.T, e *Engine) {
		ctx := context.Background()
		keep := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "keep", RequiredBytes: 4 * mib, Block: true}))(t)
		want := fillVolume(t, e, keep.ID, 5)

		half := filepath.Join(e.root, tmpDir, volumesDir+"-"+model.VolumeIDForName("half"))
		ok(t, os.MkdirAll(half, 0o700))
		ok(t, os.WriteFile(filepath.Join(half, dataFile), make([]byte, mib), 0o600))
		dev, err := loop.Attach(filepath.Join(half, dataFile), false, "test")
		ok(t, err)
		ok(t, os.WriteFile(filepath.Join(e.root, tmpDir, "stray-file"), []byte("x"), 0o600))
		gone := filepath.Join(e.root, trashDir, "snapshots-"+model.SnapshotIDForName("gone")+"-1-1")
		ok(t, os.MkdirAll(filepath.Join(gone, "sub"), 0o700))
		ok(t, os.WriteFile(filepath.Join(gone, dataFile), []byte("old"), 0o600))

		e2 := reopen(t, e)
		assertNoLeftovers(t, e2)
		if devs, _ := loop.FindByBackingFile(filepath.Join(half, dataFile)); len(devs) != 0 {
			t.Fatalf("loop device %s of a leftover still attached", dev.Path)
		}
		got := must(e2.GetVolume(ctx, keep.ID))(t)
		if got.SizeBytes != 4*mib {
			t.Fatalf("committed volume changed: %+v", got)
		}
		assertContent(t, e2.volumeData(keep.ID), want)
		if list := must(e2.ListVolumes(ctx))(t); len(list) != 1 {
			t.Fatalf("%d volumes after reconcile, want 1", len(list))
		}
	})
}

// An expansion interrupted after its intent was recorded is finished at
// start-up, whether the file had grown yet or not, and an attached loop
// device is grown with it.
func TestReconcileFinishesExpansion(t *testing.T) {
	forEachRoot(t, func(t *testing.T, e *Engine) {
		ctx := context.Background()
		// Intent recorded, file not grown yet.
		a := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "a", RequiredBytes: 8 * mib, Block: true}))(t)
		want := fillVolume(t, e, a.ID, 9)
		ma := must(e.loadVolume(a.ID))(t)
		ma.PendingSizeBytes = 24 * mib
		ok(t, e.saveVolume(ma))

		// File grown too, loop device (of a staged block volume) not.
		b := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "b", RequiredBytes: 8 * mib, Block: true}))(t)
		staging := kubePath(e, "staging", "b")
		ok(t, e.StageVolume(ctx, model.StageRequest{VolumeID: b.ID, StagingPath: staging, Block: true}))
		mb := must(e.loadVolume(b.ID))(t)
		mb.PendingSizeBytes = 16 * mib
		ok(t, e.saveVolume(mb))
		ok(t, os.Truncate(e.volumeData(b.ID), 16*mib))

		e2 := reopen(t, e)
		for _, c := range []struct {
			id   string
			size int64
		}{{a.ID, 24 * mib}, {b.ID, 16 * mib}} {
			m := must(e2.loadVolume(c.id))(t)
			if m.SizeBytes != c.size || m.PendingSizeBytes != 0 {
				t.Fatalf("after reconcile: size %d pending %d, want %d and 0", m.SizeBytes, m.PendingSizeBytes, c.size)
			}
			if got := fileSize(t, e2.volumeData(c.id)); got != c.size {
				t.Fatalf("data file has %d bytes, want %d", got, c.size)
			}
		}
		assertPrefix(t, e2.volumeData(a.ID), want)
		devs := loopsOf(t, e2, b.ID)
		if len(devs) != 1 {
			t.Fatalf("staged volume has %d loop devices after reconcile, want 1", len(devs))
		}
		if got := must(loop.Size(devs[0].Path))(t); got != 16*mib {
			t.Fatalf("loop device of the grown volume has %d bytes, want %d", got, 16*mib)
		}
		ok(t, e2.UnstageVolume(ctx, b.ID, staging))
	})
}

// A stage interrupted between its "staging" record and its completion is
// rolled back: unmounted, detached, forgotten.
func TestReconcileRollsBackInterruptedStage(t *testing.T) {
	forEachRoot(t, func(t *testing.T, e *Engine) {
		ctx := context.Background()
		fsVol, fsStaging := stageFS(t, e, "fs", "ext4")
		blk := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "blk", RequiredBytes: 4 * mib, Block: true}))(t)
		blkStaging := kubePath(e, "staging", "blk")
		ok(t, e.StageVolume(ctx, model.StageRequest{VolumeID: blk.ID, StagingPath: blkStaging, Block: true}))
		for _, id := range []string{fsVol.ID, blk.ID} {
			m := must(e.loadVolume(id))(t)
			m.Stage.State = stateStaging
			ok(t, e.saveVolume(m))
		}

		e2 := reopen(t, e)
		assertNotMounted(t, fsStaging)
		for _, id := range []string{fsVol.ID, blk.ID} {
			if n := len(loopsOf(t, e2, id)); n != 0 {
				t.Fatalf("volume %s has %d loop devices after its stage was rolled back", id, n)
			}
			if m := must(e2.loadVolume(id))(t); m.Stage != nil {
				t.Fatalf("stage record %+v survived the roll-back", m.Stage)
			}
		}
		// The volume can be staged again and keeps its file system.
		ok(t, os.Remove(fsStaging))
		ok(t, e2.StageVolume(ctx, model.StageRequest{VolumeID: fsVol.ID, StagingPath: fsStaging}))
		assertMounted(t, fsStaging, "ext4")
		ok(t, e2.UnstageVolume(ctx, fsVol.ID, fsStaging))
		ok(t, e2.DeleteVolume(ctx, fsVol.ID))
		ok(t, e2.DeleteVolume(ctx, blk.ID))
	})
}

// Loop devices backed by the files of volumes that are not staged are
// detached at start-up; those of staged volumes, their mounts and publish
// records stay, and publish records whose mount is gone are dropped.
func TestReconcileDetachesStrayLoopDevices(t *testing.T) {
	forEachRoot(t, func(t *testing.T, e *Engine) {
		ctx := context.Background()
		idle := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "idle", RequiredBytes: 4 * mib, Block: true}))(t)
		d, err := loop.Attach(e.volumeData(idle.ID), false, "stray")
		ok(t, err)
		snap := must(e.CreateSnapshot(ctx, "snap", idle.ID, nil))(t)
		sd, err := loop.Attach(filepath.Join(e.snapshotDir(snap.ID), dataFile), true, "stray")
		ok(t, err)

		live, staging := stageFS(t, e, "live", "ext4")
		target := kubePath(e, "pods", "live")
		ok(t, e.PublishVolume(ctx, model.PublishRequest{VolumeID: live.ID, StagingPath: staging, TargetPath: target}))
		m := must(e.loadVolume(live.ID))(t)
		m.Published = append(m.Published, PublishInfo{Target: kubePath(e, "pods", "vanished")})
		ok(t, e.saveVolume(m))
		liveDevs := loopsOf(t, e, live.ID)

		e2 := reopen(t, e)
		if n := len(loopsOf(t, e2, idle.ID)); n != 0 {
			t.Fatalf("stray loop device %s of an unstaged volume still attached", d.Path)
		}
		if devs, _ := loop.FindByBackingFile(filepath.Join(e.snapshotDir(snap.ID), dataFile)); len(devs) != 0 {
			t.Fatalf("stray loop device %s of a snapshot still attached", sd.Path)
		}
		if devs := loopsOf(t, e2, live.ID); len(devs) != 1 || devs[0].Path != liveDevs[0].Path {
			t.Fatalf("staged volume's loop devices changed from %v to %v", liveDevs, devs)
		}
		assertMounted(t, staging, "ext4")
		assertMounted(t, target, "ext4")
		got := must(e2.loadVolume(live.ID))(t)
		if got.Stage == nil || got.Stage.State != stateStaged || len(got.Published) != 1 || got.Published[0].Target != target {
			t.Fatalf("staged volume's records after reconcile: stage %+v, published %+v", got.Stage, got.Published)
		}
		ok(t, e2.UnpublishVolume(ctx, live.ID, target))
		ok(t, e2.UnstageVolume(ctx, live.ID, staging))
	})
}

// A file system left frozen (a crash between freeze and thaw) is thawed at
// start-up.
func TestReconcileThawsFrozenStage(t *testing.T) {
	forEachRoot(t, func(t *testing.T, e *Engine) {
		ctx := context.Background()
		v, staging := stageFS(t, e, "frozen", "ext4")
		ok(t, fsops.Freeze(staging))
		reopen(t, e)
		writeWithin(t, staging, "after-restart", []byte("x"), 10*time.Second)
		ok(t, e.UnstageVolume(ctx, v.ID, staging))
	})
}
