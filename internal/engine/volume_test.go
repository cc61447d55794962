package engine

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cairn-csi/cairn/internal/model"
)

func TestCreateGetListDeleteVolume(t *testing.T) {
	forEachRoot(t, func(t *testing.T, e *Engine) {
		ctx := context.Background()
		req := model.CreateVolumeRequest{Name: "pvc-a", RequiredBytes: 64 * mib, Parameters: map[string]string{"k": "v"}}
		v := must(e.CreateVolume(ctx, req))(t)
		if v.ID != model.VolumeIDForName("pvc-a") || !model.ValidVolumeID(v.ID) {
			t.Fatalf("volume ID %q, want %q", v.ID, model.VolumeIDForName("pvc-a"))
		}
		if v.Name != "pvc-a" || v.SizeBytes != 64*mib || v.Block || v.FsType != "ext4" || v.Source != nil || v.Parameters["k"] != "v" {
			t.Fatalf("unexpected volume %+v", v)
		}
		if v.AllocatedBytes > mib {
			t.Fatalf("new empty volume: %d bytes allocated", v.AllocatedBytes)
		}
		if got := fileSize(t, e.volumeData(v.ID)); got != 64*mib {
			t.Fatalf("data file has %d bytes, want %d", got, 64*mib)
		}

		// Idempotent: the same request returns the same volume, untouched.
		marker := []byte("written after create")
		writeAt(t, e.volumeData(v.ID), 4096, marker)
		again := must(e.CreateVolume(ctx, req))(t)
		if again.ID != v.ID || !again.CreatedAt.Equal(v.CreatedAt) || again.SizeBytes != v.SizeBytes {
			t.Fatalf("repeated create returned %+v, want %+v", again, v)
		}
		if got := readAt(t, e.volumeData(v.ID), 4096, len(marker)); string(got) != string(marker) {
			t.Fatalf("repeated create rewrote the volume's data: %q", got)
		}
		// A smaller requirement within no limit is compatible, too.
		if again := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "pvc-a", RequiredBytes: 32 * mib}))(t); again.ID != v.ID || again.SizeBytes != 64*mib {
			t.Fatalf("compatible create returned %+v", again)
		}

		for what, bad := range map[string]model.CreateVolumeRequest{
			"larger":          {Name: "pvc-a", RequiredBytes: 128 * mib},
			"limit below":     {Name: "pvc-a", RequiredBytes: 16 * mib, LimitBytes: 32 * mib},
			"block":           {Name: "pvc-a", RequiredBytes: 64 * mib, Block: true},
			"other fs":        {Name: "pvc-a", RequiredBytes: 64 * mib, FsType: "xfs"},
			"other source":    {Name: "pvc-a", RequiredBytes: 64 * mib, SourceVolumeID: model.VolumeIDForName("other")},
			"snapshot source": {Name: "pvc-a", RequiredBytes: 64 * mib, SourceSnapshotID: model.SnapshotIDForName("other")},
		} {
			_, err := e.CreateVolume(ctx, bad)
			wantErr(t, err, model.ErrAlreadyExists, "incompatible create ("+what+")")
		}

		_, err := e.CreateVolume(ctx, model.CreateVolumeRequest{RequiredBytes: mib})
		wantErr(t, err, model.ErrInvalidArgument, "create without a name")
		_, err = e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "two-sources", SourceVolumeID: v.ID, SourceSnapshotID: model.SnapshotIDForName("x")})
		wantErr(t, err, model.ErrInvalidArgument, "create with two sources")

		b := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "pvc-b", RequiredBytes: 8 * mib, Block: true, FsType: "xfs"}))(t)
		if !b.Block || b.FsType != "" {
			t.Fatalf("block volume: block %v, fs type %q", b.Block, b.FsType)
		}

		got := must(e.GetVolume(ctx, v.ID))(t)
		if got.ID != v.ID || got.SizeBytes != v.SizeBytes || got.Name != "pvc-a" || got.AllocatedBytes == 0 {
			t.Fatalf("GetVolume = %+v (allocated %d)", got, got.AllocatedBytes)
		}
		_, err = e.GetVolume(ctx, model.VolumeIDForName("missing"))
		wantErr(t, err, model.ErrNotFound, "get missing volume")

		list := must(e.ListVolumes(ctx))(t)
		if len(list) != 2 || list[0].ID > list[1].ID {
			t.Fatalf("ListVolumes returned %d volumes (want 2, sorted)", len(list))
		}
		ids := map[string]bool{list[0].ID: true, list[1].ID: true}
		if !ids[v.ID] || !ids[b.ID] {
			t.Fatalf("ListVolumes = %v, want %s and %s", ids, v.ID, b.ID)
		}

		ok(t, e.DeleteVolume(ctx, v.ID))
		_, err = e.GetVolume(ctx, v.ID)
		wantErr(t, err, model.ErrNotFound, "get deleted volume")
		if _, err := os.Stat(e.volumeDir(v.ID)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("deleted volume's directory still there: %v", err)
		}
		ok(t, e.DeleteVolume(ctx, v.ID))                           // second delete
		ok(t, e.DeleteVolume(ctx, model.VolumeIDForName("never"))) // never existed
		ok(t, e.DeleteVolume(ctx, "v-xyz"))                        // malformed
		if list := must(e.ListVolumes(ctx))(t); len(list) != 1 || list[0].ID != b.ID {
			t.Fatalf("after delete ListVolumes has %d volumes", len(list))
		}
		assertNoLeftovers(t, e)

		// The name is free again and a new volume is empty.
		v2 := must(e.CreateVolume(ctx, req))(t)
		if v2.ID != v.ID || v2.CreatedAt.Equal(v.CreatedAt) {
			t.Fatalf("re-created volume %+v", v2)
		}
		assertZeros(t, e.volumeData(v2.ID), 0, 64*mib)
		ok(t, e.DeleteVolume(ctx, v2.ID))
		ok(t, e.DeleteVolume(ctx, b.ID))
	})
}

// Concurrent creates of one name are serialised: all get the same volume.
func TestCreateVolumeConcurrentSameName(t *testing.T) {
	forEachRoot(t, func(t *testing.T, e *Engine) {
		ctx := context.Background()
		var wg sync.WaitGroup
		vols := make([]*model.Volume, 6)
		errs := make([]error, len(vols))
		for i := range vols {
			wg.Go(func() {
				vols[i], errs[i] = e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "race", RequiredBytes: 16 * mib})
			})
		}
		wg.Wait()
		for i := range vols {
			if errs[i] != nil {
				t.Fatalf("create %d: %v", i, errs[i])
			}
			if vols[i].ID != vols[0].ID || !vols[i].CreatedAt.Equal(vols[0].CreatedAt) {
				t.Fatalf("create %d returned a different volume", i)
			}
		}
		if list := must(e.ListVolumes(ctx))(t); len(list) != 1 {
			t.Fatalf("%d volumes after concurrent creates of one name", len(list))
		}
		assertNoLeftovers(t, e)
	})
}

// IDs that are not well-formed are never turned into paths: operations
// answer NotFound (or succeed, for deletes) and leave a decoy that a path
// traversal would reach untouched.
func TestInvalidIDs(t *testing.T) {
	forEachRoot(t, func(t *testing.T, e *Engine) {
		ctx := context.Background()
		const traversal = "../../victim"
		// <root>/volumes/../../victim and <root>/snapshots/../../victim are
		// both this directory, next to the data root.
		victim := filepath.Clean(filepath.Join(e.root, volumesDir, traversal))
		if strings.HasPrefix(victim, e.root+"/") {
			t.Fatalf("decoy %s is inside the data root", victim)
		}
		ok(t, os.MkdirAll(victim, 0o700))
		volJSON, _ := json.Marshal(VolumeMeta{FormatVersion: 1, ID: traversal, Name: "victim", SizeBytes: mib, Stage: &StageInfo{Path: victim, State: stateStaged}})
		snapJSON, _ := json.Marshal(SnapshotMeta{FormatVersion: 1, ID: traversal, Name: "victim", SizeBytes: mib})
		ok(t, os.WriteFile(filepath.Join(victim, volumeMeta), volJSON, 0o600))
		ok(t, os.WriteFile(filepath.Join(victim, snapshotMeta), snapJSON, 0o600))
		data := pattern(1, int(mib))
		ok(t, os.WriteFile(filepath.Join(victim, dataFile), data, 0o600))

		src := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "real", RequiredBytes: mib}))(t)
		target := kubePath(e, "target")
		staging := kubePath(e, "staging")
		bad := []string{
			traversal, "../../etc", "v-xyz", "", "v-", "../volumes/" + src.ID, src.ID + "/..", "v-" + strings.Repeat("A", 32),
			"v-" + strings.Repeat("0", 31), "v-" + strings.Repeat("0", 33), model.SnapshotIDForName("x"),
			"v-../../victim", "/etc", "v-" + strings.Repeat("0", 32) + "\n",
		}
		for _, id := range bad {
			_, err := e.GetVolume(ctx, id)
			wantErr(t, err, model.ErrNotFound, "GetVolume("+id+")")
			ok(t, e.DeleteVolume(ctx, id))
			_, err = e.ExpandVolume(ctx, id, 2*mib, 0)
			wantErr(t, err, model.ErrNotFound, "ExpandVolume("+id+")")
			err = e.StageVolume(ctx, model.StageRequest{VolumeID: id, StagingPath: staging})
			wantErr(t, err, model.ErrNotFound, "StageVolume("+id+")")
			err = e.PublishVolume(ctx, model.PublishRequest{VolumeID: id, StagingPath: staging, TargetPath: target})
			wantErr(t, err, model.ErrNotFound, "PublishVolume("+id+")")
			ok(t, e.UnpublishVolume(ctx, id, target))
			ok(t, e.UnstageVolume(ctx, id, staging))
			_, err = e.NodeExpandVolume(ctx, id, victim, 0)
			wantErr(t, err, model.ErrNotFound, "NodeExpandVolume("+id+")")
			_, err = e.VolumeStats(ctx, id, victim)
			wantErr(t, err, model.ErrNotFound, "VolumeStats("+id+")")
			if id == "" {
				continue // an empty source is no source
			}
			_, err = e.CreateSnapshot(ctx, "snap-of-bad", id, nil)
			wantErr(t, err, model.ErrNotFound, "CreateSnapshot(source "+id+")")
			_, err = e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "clone-of-bad", SourceVolumeID: id})
			wantErr(t, err, model.ErrNotFound, "CreateVolume(source volume "+id+")")
			_, err = e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "restore-of-bad", SourceSnapshotID: id})
			wantErr(t, err, model.ErrNotFound, "CreateVolume(source snapshot "+id+")")
		}
		for _, id := range append(bad, "s-xyz", "s-"+strings.Repeat("A", 32), src.ID) {
			_, err := e.GetSnapshot(ctx, id)
			wantErr(t, err, model.ErrNotFound, "GetSnapshot("+id+")")
			_, err = e.SnapshotDataPath(id)
			wantErr(t, err, model.ErrNotFound, "SnapshotDataPath("+id+")")
			ok(t, e.DeleteSnapshot(ctx, id))
		}

		// The decoy is untouched and nothing was created or attached.
		for name, want := range map[string][]byte{volumeMeta: volJSON, snapshotMeta: snapJSON, dataFile: data} {
			if got, err := os.ReadFile(filepath.Join(victim, name)); err != nil || string(got) != string(want) {
				t.Errorf("decoy %s changed (err %v)", name, err)
			}
		}
		if devs := loopsOf(t, e, traversal); len(devs) > 0 {
			t.Errorf("decoy data file attached to %v", devs)
		}
		if list := must(e.ListVolumes(ctx))(t); len(list) != 1 {
			t.Errorf("%d volumes after invalid calls, want 1", len(list))
		}
		if list := must(e.ListSnapshots(ctx))(t); len(list) != 0 {
			t.Errorf("%d snapshots after invalid calls, want 0", len(list))
		}
		for _, p := range []string{staging, target} {
			if isMountPoint(p) {
				t.Errorf("%s is mounted", p)
			}
		}
		ok(t, e.DeleteVolume(ctx, src.ID))
		assertNoLeftovers(t, e)
	})
}

func TestExpandVolume(t *testing.T) {
	forEachRoot(t, func(t *testing.T, e *Engine) {
		ctx := context.Background()
		v := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "grow", RequiredBytes: 64 * mib}))(t)
		want := fillVolume(t, e, v.ID, 7)

		res := must(e.ExpandVolume(ctx, v.ID, 128*mib, 0))(t)
		if res.SizeBytes != 128*mib || res.NodeExpansionRequired {
			t.Fatalf("expand to 128MiB: %+v", res)
		}
		if got := fileSize(t, e.volumeData(v.ID)); got != 128*mib {
			t.Fatalf("data file has %d bytes after expand", got)
		}
		got := must(e.loadVolume(v.ID))(t)
		if got.SizeBytes != 128*mib || got.PendingSizeBytes != 0 {
			t.Fatalf("after expand: size %d, pending %d", got.SizeBytes, got.PendingSizeBytes)
		}
		assertPrefix(t, e.volumeData(v.ID), want)
		assertZeros(t, e.volumeData(v.ID), 64*mib, 64*mib)

		// Same size, or less without a limit below it: no-op.
		for _, r := range []struct{ req, lim int64 }{{128 * mib, 0}, {64 * mib, 0}, {64 * mib, 256 * mib}, {128 * mib, 128 * mib}} {
			res := must(e.ExpandVolume(ctx, v.ID, r.req, r.lim))(t)
			if res.SizeBytes != 128*mib {
				t.Fatalf("expand(%d, %d) of a 128MiB volume: %+v", r.req, r.lim, res)
			}
		}
		if got := fileSize(t, e.volumeData(v.ID)); got != 128*mib {
			t.Fatalf("no-op expand changed the file to %d bytes", got)
		}
		// Shrinking is refused.
		_, err := e.ExpandVolume(ctx, v.ID, 64*mib, 64*mib)
		wantErr(t, err, model.ErrOutOfRange, "shrink to 64MiB")
		_, err = e.ExpandVolume(ctx, v.ID, 256*mib, 200*mib)
		wantErr(t, err, model.ErrOutOfRange, "required above limit")
		_, err = e.ExpandVolume(ctx, v.ID, 0, 0)
		wantErr(t, err, model.ErrInvalidArgument, "expand without required bytes")
		_, err = e.ExpandVolume(ctx, model.VolumeIDForName("missing"), 2*mib, 0)
		wantErr(t, err, model.ErrNotFound, "expand missing volume")

		// Unaligned requests are rounded up.
		res = must(e.ExpandVolume(ctx, v.ID, 130*mib+1, 0))(t)
		if res.SizeBytes != 131*mib || fileSize(t, e.volumeData(v.ID)) != 131*mib {
			t.Fatalf("expand to 130MiB+1: %+v", res)
		}
		if got := must(e.GetVolume(ctx, v.ID))(t); got.SizeBytes != 131*mib {
			t.Fatalf("metadata size %d after expand", got.SizeBytes)
		}

		// Block volumes grow too and never need node expansion when
		// unstaged.
		b := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "grow-block", RequiredBytes: 4 * mib, Block: true}))(t)
		res = must(e.ExpandVolume(ctx, b.ID, 8*mib, 0))(t)
		if res.SizeBytes != 8*mib || res.NodeExpansionRequired || fileSize(t, e.volumeData(b.ID)) != 8*mib {
			t.Fatalf("expand block volume: %+v", res)
		}
		ok(t, e.DeleteVolume(ctx, v.ID))
		ok(t, e.DeleteVolume(ctx, b.ID))
	})
}

func TestCapacity(t *testing.T) {
	forEachRoot(t, func(t *testing.T, e *Engine) {
		ctx := context.Background()
		c0 := must(e.Capacity())(t)
		if c0.TotalBytes < 7*gib || c0.TotalBytes > rootImageSize || c0.FreeBytes <= 0 || c0.FreeBytes > c0.TotalBytes {
			t.Fatalf("capacity of an empty 8GiB root: %+v", c0)
		}
		if c0.ReservedBytes != 0 || c0.AvailableBytes != c0.FreeBytes {
			t.Fatalf("empty root reserves space: %+v", c0)
		}

		v := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "empty", RequiredBytes: gib}))(t)
		c1 := must(e.Capacity())(t)
		if c1.ReservedBytes != gib {
			t.Errorf("reserved %d bytes after a new empty 1GiB volume, want %d", c1.ReservedBytes, gib)
		}
		if drop := c0.AvailableBytes - c1.AvailableBytes; drop < gib || drop > gib+mib {
			t.Errorf("available dropped by %d bytes for a new empty 1GiB volume, want ~%d", drop, gib)
		}

		// Writing into the volume moves space from reserved to used: the
		// available space stays.
		writeAt(t, e.volumeData(v.ID), 0, pattern(3, int(8*mib)))
		c2 := must(e.Capacity())(t)
		if c2.ReservedBytes > gib-8*mib {
			t.Errorf("reserved %d bytes after writing 8MiB, want <= %d", c2.ReservedBytes, gib-8*mib)
		}
		if d := c1.AvailableBytes - c2.AvailableBytes; d < -mib || d > mib {
			t.Errorf("available changed by %d bytes when a volume used its reserved space", d)
		}

		// A volume larger than what is available is refused and leaves
		// nothing behind.
		_, err := e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "too-big", RequiredBytes: c2.AvailableBytes + 64*mib})
		wantErr(t, err, model.ErrResourceExhausted, "create volume larger than available")
		_, err = e.GetVolume(ctx, model.VolumeIDForName("too-big"))
		wantErr(t, err, model.ErrNotFound, "refused volume")
		assertNoLeftovers(t, e)

		// Growing past what is available is refused (OutOfRange, which
		// Kubernetes records as infeasible) and records no intent; a
		// smaller request then succeeds (recovery from expansion failure).
		_, err = e.ExpandVolume(ctx, v.ID, gib+c2.AvailableBytes+64*mib, 0)
		wantErr(t, err, model.ErrOutOfRange, "expand beyond available")
		if got := must(e.loadVolume(v.ID))(t); got.SizeBytes != gib || got.PendingSizeBytes != 0 || fileSize(t, e.volumeData(v.ID)) != gib {
			t.Fatalf("refused expansion changed the volume: size %d, pending %d", got.SizeBytes, got.PendingSizeBytes)
		}
		if res := must(e.ExpandVolume(ctx, v.ID, gib+64*mib, 0))(t); res.SizeBytes != gib+64*mib {
			t.Fatalf("smaller retry after a refused expansion: %+v", res)
		}
		c2 = must(e.Capacity())(t)

		// What is available can be taken, and then nothing more.
		rest := (c2.AvailableBytes - 16*mib) / mib * mib
		big := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "rest", RequiredBytes: rest, Block: true}))(t)
		c3 := must(e.Capacity())(t)
		if c3.AvailableBytes > 17*mib {
			t.Errorf("%d bytes available after taking all but 16MiB", c3.AvailableBytes)
		}
		_, err = e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "one-more", RequiredBytes: 64 * mib})
		wantErr(t, err, model.ErrResourceExhausted, "create on a fully reserved root")

		ok(t, e.DeleteVolume(ctx, big.ID))
		ok(t, e.DeleteVolume(ctx, v.ID))
		// Freed blocks may be returned in the background (XFS inode GC).
		var c4 Capacity
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			c4 = must(e.Capacity())(t)
			if c4.ReservedBytes == 0 && c4.AvailableBytes >= c0.AvailableBytes-mib || time.Now().After(deadline) {
				break
			}
		}
		if c4.ReservedBytes != 0 || c4.AvailableBytes < c0.AvailableBytes-mib {
			t.Errorf("capacity not given back after deletes: %+v, started with %+v", c4, c0)
		}
	})
}
