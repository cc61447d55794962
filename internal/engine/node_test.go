package engine

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/loop"
	"github.com/cairn-csi/cairn/internal/model"
)

// fsVolumeSize is a small size every file system type accepts.
func fsVolumeSize(fsType string) int64 {
	if fsType == "xfs" {
		return model.MinXFSSize
	}
	return 64 * mib
}

// stageFS creates and stages a filesystem volume and returns it with its
// staging path.
func stageFS(t *testing.T, e *Engine, name, fsType string) (*model.Volume, string) {
	t.Helper()
	ctx := context.Background()
	v := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: name, RequiredBytes: fsVolumeSize(fsType), FsType: fsType}))(t)
	staging := kubePath(e, "staging", name)
	ok(t, e.StageVolume(ctx, model.StageRequest{VolumeID: v.ID, StagingPath: staging, FsType: fsType}))
	return v, staging
}

func assertMounted(t *testing.T, path, fsType string) {
	t.Helper()
	m, ok := mountAt(path)
	if !ok {
		t.Fatalf("%s is not mounted", path)
	}
	if fsType != "" && m.fsType != fsType {
		t.Fatalf("%s is mounted as %s, want %s", path, m.fsType, fsType)
	}
}

func assertNotMounted(t *testing.T, path string) {
	t.Helper()
	if m, ok := mountAt(path); ok {
		t.Fatalf("%s is still mounted (%s from %s)", path, m.fsType, m.source)
	}
}

func forEachFsType(t *testing.T, fn func(t *testing.T, fsType string)) {
	for _, fsType := range []string{"ext4", "xfs"} {
		t.Run(fsType, func(t *testing.T) { fn(t, fsType) })
	}
}

func TestStagePublishFilesystem(t *testing.T) {
	forEachRoot(t, func(t *testing.T, e *Engine) {
		forEachFsType(t, func(t *testing.T, fsType string) {
			ctx := context.Background()
			v, staging := stageFS(t, e, "fs-"+fsType, fsType)
			id := v.ID
			assertMounted(t, staging, fsType)
			devs := loopsOf(t, e, id)
			if len(devs) != 1 {
				t.Fatalf("staged volume has %d loop devices, want 1", len(devs))
			}
			if m, _ := mountAt(staging); m.source != devs[0].Path {
				t.Fatalf("staging path mounted from %s, want %s", m.source, devs[0].Path)
			}
			if got := must(e.loadVolume(id))(t); got.Stage == nil || got.Stage.State != stateStaged || got.Stage.Path != staging || got.Stage.FsType != fsType {
				t.Fatalf("stage record %+v", got.Stage)
			}

			// Repeating the stage is a no-op; conflicting stages are refused.
			ok(t, e.StageVolume(ctx, model.StageRequest{VolumeID: id, StagingPath: staging, FsType: fsType}))
			if n := len(loopsOf(t, e, id)); n != 1 {
				t.Fatalf("repeated stage left %d loop devices", n)
			}
			err := e.StageVolume(ctx, model.StageRequest{VolumeID: id, StagingPath: kubePath(e, "elsewhere"), FsType: fsType})
			wantErr(t, err, model.ErrFailedPrecondition, "stage at a second path")
			err = e.StageVolume(ctx, model.StageRequest{VolumeID: id, StagingPath: staging, Block: true})
			wantErr(t, err, model.ErrAlreadyExists, "stage again for block access")
			err = e.StageVolume(ctx, model.StageRequest{VolumeID: id, StagingPath: staging, FsType: fsType, MountFlags: []string{"noatime"}})
			wantErr(t, err, model.ErrAlreadyExists, "stage again with other mount flags")

			// Publish: the target shows the staged file system.
			target := kubePath(e, "pods", "p1", "mount")
			pub := model.PublishRequest{VolumeID: id, StagingPath: staging, TargetPath: target}
			ok(t, e.PublishVolume(ctx, pub))
			assertMounted(t, target, fsType)
			ok(t, e.PublishVolume(ctx, pub)) // idempotent
			content := pattern(40, 100_000)
			ok(t, os.WriteFile(filepath.Join(target, "hello"), content, 0o644))
			if got := readFile(t, filepath.Join(staging, "hello")); !bytes.Equal(got, content) {
				t.Fatal("file written through the target differs in the staging path")
			}

			err = e.PublishVolume(ctx, model.PublishRequest{VolumeID: id, StagingPath: staging, TargetPath: target, ReadOnly: true})
			wantErr(t, err, model.ErrAlreadyExists, "publish at the same target read-only")
			err = e.PublishVolume(ctx, model.PublishRequest{VolumeID: id, StagingPath: kubePath(e, "wrong"), TargetPath: kubePath(e, "pods", "p9")})
			wantErr(t, err, model.ErrFailedPrecondition, "publish from the wrong staging path")
			err = e.PublishVolume(ctx, model.PublishRequest{VolumeID: id, StagingPath: staging, TargetPath: kubePath(e, "pods", "p9"), Block: true})
			wantErr(t, err, model.ErrFailedPrecondition, "publish a filesystem stage for block access")
			err = e.PublishVolume(ctx, model.PublishRequest{VolumeID: id, StagingPath: staging, TargetPath: kubePath(e, "pods", "p9"), SingleWriter: true})
			wantErr(t, err, model.ErrFailedPrecondition, "single-writer publish beside another publish")

			// A second, read-only target.
			roTarget := kubePath(e, "pods", "p2", "mount")
			ok(t, e.PublishVolume(ctx, model.PublishRequest{VolumeID: id, StagingPath: staging, TargetPath: roTarget, ReadOnly: true}))
			if got := readFile(t, filepath.Join(roTarget, "hello")); !bytes.Equal(got, content) {
				t.Fatal("read-only target shows other content")
			}
			if err := os.WriteFile(filepath.Join(roTarget, "nope"), []byte("x"), 0o644); !errors.Is(err, unix.EROFS) {
				t.Fatalf("write to the read-only target: %v, want EROFS", err)
			}
			if got := must(e.loadVolume(id))(t); len(got.Published) != 2 {
				t.Fatalf("%d publish records, want 2", len(got.Published))
			}

			wantErr(t, e.DeleteVolume(ctx, id), model.ErrFailedPrecondition, "delete a published volume")
			wantErr(t, e.UnstageVolume(ctx, id, staging), model.ErrFailedPrecondition, "unstage a published volume")
			assertMounted(t, staging, fsType)

			for _, tg := range []string{target, roTarget} {
				ok(t, e.UnpublishVolume(ctx, id, tg))
				assertNotMounted(t, tg)
				if _, err := os.Lstat(tg); !os.IsNotExist(err) {
					t.Fatalf("unpublished target %s still exists: %v", tg, err)
				}
				ok(t, e.UnpublishVolume(ctx, id, tg)) // idempotent
			}
			if got := must(e.loadVolume(id))(t); len(got.Published) != 0 {
				t.Fatalf("%d publish records after unpublish", len(got.Published))
			}
			wantErr(t, e.DeleteVolume(ctx, id), model.ErrFailedPrecondition, "delete a staged volume")

			ok(t, e.UnstageVolume(ctx, id, staging))
			assertNotMounted(t, staging)
			if n := len(loopsOf(t, e, id)); n != 0 {
				t.Fatalf("unstaged volume still has %d loop devices", n)
			}
			if got := must(e.loadVolume(id))(t); got.Stage != nil {
				t.Fatalf("stage record %+v after unstage", got.Stage)
			}
			ok(t, e.UnstageVolume(ctx, id, staging)) // idempotent
			err = e.PublishVolume(ctx, pub)
			wantErr(t, err, model.ErrFailedPrecondition, "publish an unstaged volume")

			// Staging again mounts the same file system: the data is kept.
			ok(t, e.StageVolume(ctx, model.StageRequest{VolumeID: id, StagingPath: staging, FsType: fsType}))
			if got := readFile(t, filepath.Join(staging, "hello")); !bytes.Equal(got, content) {
				t.Fatal("file lost across unstage and stage: the volume was reformatted?")
			}
			ok(t, e.UnstageVolume(ctx, id, staging))
			ok(t, e.DeleteVolume(ctx, id))
		})
	})
}

func TestSingleWriterPublish(t *testing.T) {
	forEachRoot(t, func(t *testing.T, e *Engine) {
		ctx := context.Background()
		v, staging := stageFS(t, e, "sw", "ext4")
		t1, t2 := kubePath(e, "pods", "a"), kubePath(e, "pods", "b")
		ok(t, e.PublishVolume(ctx, model.PublishRequest{VolumeID: v.ID, StagingPath: staging, TargetPath: t1, SingleWriter: true}))
		err := e.PublishVolume(ctx, model.PublishRequest{VolumeID: v.ID, StagingPath: staging, TargetPath: t2})
		wantErr(t, err, model.ErrFailedPrecondition, "second target of a single-writer volume")
		assertNotMounted(t, t2)
		ok(t, e.UnpublishVolume(ctx, v.ID, t1))
		ok(t, e.UnstageVolume(ctx, v.ID, staging))
	})
}

func TestStagePublishBlock(t *testing.T) {
	forEachRoot(t, func(t *testing.T, e *Engine) {
		ctx := context.Background()
		const size = 64 * mib
		v := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "blk", RequiredBytes: size, Block: true}))(t)
		pre := pattern(50, 8192)
		writeAt(t, e.volumeData(v.ID), 3*mib, pre) // before staging

		staging := kubePath(e, "staging", "blk")
		ok(t, e.StageVolume(ctx, model.StageRequest{VolumeID: v.ID, StagingPath: staging, Block: true}))
		devs := loopsOf(t, e, v.ID)
		if len(devs) != 1 {
			t.Fatalf("staged block volume has %d loop devices", len(devs))
		}
		ok(t, e.StageVolume(ctx, model.StageRequest{VolumeID: v.ID, StagingPath: staging, Block: true}))
		if n := len(loopsOf(t, e, v.ID)); n != 1 {
			t.Fatalf("repeated stage: %d loop devices", n)
		}

		target := kubePath(e, "pods", "p1", "dev", "blk")
		pub := model.PublishRequest{VolumeID: v.ID, StagingPath: staging, TargetPath: target, Block: true}
		ok(t, e.PublishVolume(ctx, pub))
		ok(t, e.PublishVolume(ctx, pub))
		m, mounted := mountAt(target)
		if !mounted {
			t.Fatalf("block target %s not mounted", target)
		}
		var st unix.Stat_t
		ok(t, unix.Stat(target, &st))
		if st.Mode&unix.S_IFMT != unix.S_IFBLK {
			t.Fatalf("block target is not a block device (mode %o, mounted from %s)", st.Mode, m.source)
		}
		if got := must(loop.Size(target))(t); got != size {
			t.Fatalf("block target has %d bytes, want %d", got, int64(size))
		}
		if got := readAt(t, target, 3*mib, len(pre)); !bytes.Equal(got, pre) {
			t.Fatal("data written before staging is not visible through the block target")
		}

		// Write through the device; read back from the device and, after
		// unstaging, from the volume's file.
		data := pattern(51, int(2*mib))
		writeAt(t, target, 10*mib, data)
		if got := readAt(t, target, 10*mib, len(data)); !bytes.Equal(got, data) {
			t.Fatal("block target reads back other data")
		}
		stats := must(e.VolumeStats(ctx, v.ID, target))(t)
		if !stats.Block || stats.TotalBytes != size {
			t.Fatalf("block volume stats %+v", stats)
		}

		ok(t, e.UnpublishVolume(ctx, v.ID, target))
		assertNotMounted(t, target)
		if _, err := os.Lstat(target); !os.IsNotExist(err) {
			t.Fatalf("block target still exists: %v", err)
		}
		ok(t, e.UnstageVolume(ctx, v.ID, staging))
		if n := len(loopsOf(t, e, v.ID)); n != 0 {
			t.Fatalf("%d loop devices after unstage", n)
		}
		if got := readAt(t, e.volumeData(v.ID), 10*mib, len(data)); !bytes.Equal(got, data) {
			t.Fatal("data written through the block device is not in the volume's file")
		}
		ok(t, e.DeleteVolume(ctx, v.ID))
	})
}

// hasCapSysResource reports whether this process may grow a mounted ext4
// file system (the kernel checks CAP_SYS_RESOURCE for EXT4_IOC_RESIZE_FS).
func hasCapSysResource() bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && caps&(1<<unix.CAP_SYS_RESOURCE) != 0
		}
	}
	return false
}

func TestNodeExpandOnline(t *testing.T) {
	forEachRoot(t, func(t *testing.T, e *Engine) {
		forEachFsType(t, func(t *testing.T, fsType string) {
			if fsType == "ext4" && !hasCapSysResource() {
				t.Skip("online ext4 growth needs CAP_SYS_RESOURCE, which this process lacks")
			}
			ctx := context.Background()
			v, staging := stageFS(t, e, "online-"+fsType, fsType)
			size := v.SizeBytes
			total0, _ := statfs(t, staging)
			content := pattern(60, 300_000)
			ok(t, os.WriteFile(filepath.Join(staging, "f"), content, 0o644))

			_, err := e.NodeExpandVolume(ctx, v.ID, staging, 2*size)
			wantErr(t, err, model.ErrOutOfRange, "node expand beyond the volume's size")

			res := must(e.ExpandVolume(ctx, v.ID, 2*size, 0))(t)
			if res.SizeBytes != 2*size || !res.NodeExpansionRequired {
				t.Fatalf("expand of a staged filesystem volume: %+v", res)
			}
			// The loop device already follows the file.
			devs := loopsOf(t, e, v.ID)
			if len(devs) != 1 {
				t.Fatalf("%d loop devices", len(devs))
			}
			if got := must(loop.Size(devs[0].Path))(t); got != 2*size {
				t.Fatalf("loop device has %d bytes after expand, want %d", got, 2*size)
			}
			_, err = e.NodeExpandVolume(ctx, v.ID, kubePath(e, "not-here"), 0)
			wantErr(t, err, model.ErrNotFound, "node expand at a path the volume is not at")

			got := must(e.NodeExpandVolume(ctx, v.ID, staging, 2*size))(t)
			if got != 2*size {
				t.Fatalf("NodeExpandVolume returned %d, want %d", got, 2*size)
			}
			total1, _ := statfs(t, staging)
			if total1 < total0+size*9/10 {
				t.Fatalf("file system has %d bytes after online growth, had %d; want about %d more", total1, total0, size)
			}
			stats := must(e.VolumeStats(ctx, v.ID, staging))(t)
			if stats.TotalBytes != total1 {
				t.Fatalf("VolumeStats total %d, statfs %d", stats.TotalBytes, total1)
			}
			if b := readFile(t, filepath.Join(staging, "f")); !bytes.Equal(b, content) {
				t.Fatal("file changed by online growth")
			}
			// Repeating it is harmless.
			if got := must(e.NodeExpandVolume(ctx, v.ID, staging, 0))(t); got != 2*size {
				t.Fatalf("repeated NodeExpandVolume returned %d", got)
			}

			ok(t, e.UnstageVolume(ctx, v.ID, staging))
			_, err = e.NodeExpandVolume(ctx, v.ID, staging, 0)
			wantErr(t, err, model.ErrFailedPrecondition, "node expand of an unstaged volume")
			ok(t, e.DeleteVolume(ctx, v.ID))
		})
	})
}

// A volume grown while unstaged gets a grown file system at its next stage.
func TestExpandOffline(t *testing.T) {
	forEachRoot(t, func(t *testing.T, e *Engine) {
		forEachFsType(t, func(t *testing.T, fsType string) {
			ctx := context.Background()
			v, staging := stageFS(t, e, "offline-"+fsType, fsType)
			size := v.SizeBytes
			content := pattern(70, 500_000)
			ok(t, os.WriteFile(filepath.Join(staging, "f"), content, 0o644))
			total0, _ := statfs(t, staging)
			ok(t, e.UnstageVolume(ctx, v.ID, staging))

			res := must(e.ExpandVolume(ctx, v.ID, 2*size, 0))(t)
			if res.SizeBytes != 2*size || res.NodeExpansionRequired {
				t.Fatalf("expand of an unstaged volume: %+v", res)
			}
			ok(t, e.StageVolume(ctx, model.StageRequest{VolumeID: v.ID, StagingPath: staging, FsType: fsType}))
			total1, _ := statfs(t, staging)
			if total1 < total0+size*9/10 {
				t.Fatalf("file system has %d bytes after offline growth, had %d; want about %d more", total1, total0, size)
			}
			if b := readFile(t, filepath.Join(staging, "f")); !bytes.Equal(b, content) {
				t.Fatal("file changed by offline growth")
			}
			ok(t, e.UnstageVolume(ctx, v.ID, staging))
			ok(t, e.DeleteVolume(ctx, v.ID))
		})
	})
}

func TestVolumeStats(t *testing.T) {
	forEachRoot(t, func(t *testing.T, e *Engine) {
		ctx := context.Background()
		v, staging := stageFS(t, e, "stats", "ext4")
		target := kubePath(e, "pods", "stats")
		ok(t, e.PublishVolume(ctx, model.PublishRequest{VolumeID: v.ID, StagingPath: staging, TargetPath: target}))

		s0 := must(e.VolumeStats(ctx, v.ID, target))(t)
		if s0.Block || s0.TotalBytes <= 0 || s0.TotalBytes > v.SizeBytes ||
			s0.AvailableBytes <= 0 || s0.UsedBytes < 0 || s0.AvailableBytes+s0.UsedBytes > s0.TotalBytes ||
			s0.TotalInodes <= 0 || s0.FreeInodes <= 0 || s0.UsedInodes != s0.TotalInodes-s0.FreeInodes {
			t.Fatalf("stats of a fresh volume: %+v", s0)
		}
		f, err := os.Create(filepath.Join(target, "big"))
		ok(t, err)
		_, err = f.Write(pattern(80, int(8*mib)))
		ok(t, err)
		ok(t, f.Sync())
		f.Close()
		s1 := must(e.VolumeStats(ctx, v.ID, staging))(t)
		if s1.UsedBytes < s0.UsedBytes+8*mib || s1.AvailableBytes > s0.AvailableBytes-8*mib || s1.UsedInodes != s0.UsedInodes+1 {
			t.Fatalf("stats after writing an 8MiB file: %+v, before %+v", s1, s0)
		}

		_, err = e.VolumeStats(ctx, v.ID, kubePath(e, "pods", "other"))
		wantErr(t, err, model.ErrNotFound, "stats at a path the volume is not at")
		_, err = e.VolumeStats(ctx, model.VolumeIDForName("missing"), staging)
		wantErr(t, err, model.ErrNotFound, "stats of a missing volume")

		// A lost mount reports no usage, not the host's file
		// system.
		ok(t, unix.Unmount(target, unix.MNT_DETACH)) // lazily: a passing reader must not fail the test
		s2 := must(e.VolumeStats(ctx, v.ID, target))(t)
		if s2.TotalBytes != 0 || s2.AvailableBytes != 0 || s2.TotalInodes != 0 {
			t.Fatalf("stats of an unmounted target: %+v", s2)
		}
		ok(t, e.UnpublishVolume(ctx, v.ID, target))
		ok(t, e.UnstageVolume(ctx, v.ID, staging))
		_, err = e.VolumeStats(ctx, v.ID, staging)
		wantErr(t, err, model.ErrNotFound, "stats of an unstaged volume")
		ok(t, e.DeleteVolume(ctx, v.ID))
	})
}

// Snapshots and clones of a staged, mounted file system are taken frozen:
// data not yet fsynced is in them, and the file system is thawed after.
func TestSnapshotOfStagedFilesystem(t *testing.T) {
	forEachRoot(t, func(t *testing.T, e *Engine) {
		forEachFsType(t, func(t *testing.T, fsType string) {
			ctx := context.Background()
			v, staging := stageFS(t, e, "live-"+fsType, fsType)
			before := pattern(90, 3_000_000)
			// Written without fsync: only the freeze flushes it.
			ok(t, os.WriteFile(filepath.Join(staging, "before"), before, 0o644))

			snap := must(e.CreateSnapshot(ctx, "live-snap-"+fsType, v.ID, nil))(t)
			// The file system is writable again.
			writeWithin(t, staging, "after-snapshot", []byte("x"), 10*time.Second)

			clone := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "live-clone-" + fsType, SourceVolumeID: v.ID}))(t)
			writeWithin(t, staging, "after-clone", []byte("y"), 10*time.Second)

			restore := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "live-restore-" + fsType, SourceSnapshotID: snap.ID}))(t)
			for _, c := range []struct {
				id, name string
				has      []string
				lacks    []string
			}{
				{restore.ID, "restore", nil, []string{"after-snapshot", "after-clone"}},
				{clone.ID, "clone", []string{"after-snapshot"}, []string{"after-clone"}},
			} {
				p := kubePath(e, "staging", c.name+"-"+fsType)
				// Beside the still mounted source: XFS needs nouuid for that.
				ok(t, e.StageVolume(ctx, model.StageRequest{VolumeID: c.id, StagingPath: p, FsType: fsType}))
				if got, err := os.ReadFile(filepath.Join(p, "before")); err != nil || !bytes.Equal(got, before) {
					t.Errorf("%s: file written before the snapshot: err %v, %d bytes, equal %v", c.name, err, len(got), bytes.Equal(got, before))
				}
				for _, f := range c.has {
					if _, err := os.Stat(filepath.Join(p, f)); err != nil {
						t.Errorf("%s lacks %s: %v", c.name, f, err)
					}
				}
				for _, f := range c.lacks {
					if _, err := os.Stat(filepath.Join(p, f)); !os.IsNotExist(err) {
						t.Errorf("%s has %s, written after it was taken (%v)", c.name, f, err)
					}
				}
				ok(t, e.UnstageVolume(ctx, c.id, p))
			}
			ok(t, e.UnstageVolume(ctx, v.ID, staging))
		})
	})
}

// A volume recorded as staged whose mount is gone (unmounted behind the
// driver's back) must not make the snapshot freeze whatever file system
// holds the empty staging directory: here that is the data root itself,
// where freezing it would block the copy until the freeze timeout.
func TestSnapshotOfStagedVolumeWithLostMount(t *testing.T) {
	forEachRoot(t, func(t *testing.T, e *Engine) {
		ctx := context.Background()
		e.freezeTimeout = 3 * time.Second
		v, staging := stageFS(t, e, "lost", "ext4")
		content := pattern(95, 100_000)
		f, err := os.Create(filepath.Join(staging, "f"))
		ok(t, err)
		_, err = f.Write(content)
		ok(t, err)
		ok(t, f.Sync())
		f.Close()
		ok(t, unix.Unmount(staging, unix.MNT_DETACH))

		start := time.Now()
		snap, err := e.CreateSnapshot(ctx, "lost-snap", v.ID, nil)
		if err != nil {
			t.Fatalf("snapshot of a staged volume whose mount is gone: %v (after %s)", err, time.Since(start))
		}
		// The data root was not frozen: writing to it does not block.
		writeWithin(t, e.Root(), "probe", []byte("x"), 5*time.Second)

		r := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "lost-restore", SourceSnapshotID: snap.ID}))(t)
		p := kubePath(e, "staging", "lost-restore")
		ok(t, e.StageVolume(ctx, model.StageRequest{VolumeID: r.ID, StagingPath: p}))
		if got := readFile(t, filepath.Join(p, "f")); !bytes.Equal(got, content) {
			t.Error("restored snapshot lacks the file")
		}
		ok(t, e.UnstageVolume(ctx, r.ID, p))
		ok(t, e.UnstageVolume(ctx, v.ID, staging))
	})
}

// NodeUnpublishVolume and NodeUnstageVolume touch only what Cairn recorded:
// for an unknown volume, or a target it never published, they used to
// unmount whatever was mounted at the path and remove the file there.
func TestUnpublishUnstageTouchOnlyRecordedPaths(t *testing.T) {
	requireRoot(t)
	e := newTestEngine(t, "ext4")
	ctx := context.Background()
	file := kubePath(e, "precious")
	ok(t, os.MkdirAll(filepath.Dir(file), 0o750))
	ok(t, os.WriteFile(file, []byte("not Cairn's"), 0o600))
	other := kubePath(e, "someone-elses-mount")
	ok(t, os.MkdirAll(other, 0o750))
	ok(t, unix.Mount("tmpfs", other, "tmpfs", 0, "size=1m"))
	defer unix.Unmount(other, 0)
	v := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "known", RequiredBytes: mib}))(t)
	for _, id := range []string{"x", model.VolumeIDForName("unknown"), v.ID} {
		ok(t, e.UnpublishVolume(ctx, id, file))
		ok(t, e.UnpublishVolume(ctx, id, other))
		ok(t, e.UnstageVolume(ctx, id, other))
		if _, err := os.Stat(file); err != nil {
			t.Fatalf("UnpublishVolume(%s) of a target it never published removed it: %v", id, err)
		}
		if !isMountPoint(other) {
			t.Fatalf("UnpublishVolume/UnstageVolume(%s) unmounted a path it never used", id)
		}
	}
	ok(t, e.DeleteVolume(ctx, v.ID))
	ok(t, unix.Unmount(other, 0))
	ok(t, os.RemoveAll(kubePath(e)))
}

// TestSELinuxContextMountOption: kubelet on an SELinux node (CSIDriver
// seLinuxMount: true) adds the pod's label as a mount option to NodeStage
// and NodePublish. The option, quoted because the label holds a comma,
// must reach mount(8) whole on both: a wrapper first in PATH records each
// mount(8) command line. (This kernel has no SELinux; libmount drops the
// option then, but a split option would reach the kernel and fail.)
func TestSELinuxContextMountOption(t *testing.T) {
	requireRoot(t)
	real, err := exec.LookPath("mount")
	if err != nil {
		t.Skip("no mount(8)")
	}
	bin := t.TempDir()
	log := filepath.Join(bin, "mount.log")
	script := "#!/bin/sh\nprintf '%s\\n' \"$*\" >>" + log + "\nexec " + real + " \"$@\"\n"
	ok(t, os.WriteFile(filepath.Join(bin, "mount"), []byte(script), 0o755))
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
	const label = `context="system_u:object_r:container_file_t:s0:c12,c34"`
	e := newTestEngine(t, "xfs")
	ctx := context.Background()
	for _, fsType := range []string{"ext4", "xfs"} {
		v := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "selinux-" + fsType, RequiredBytes: fsVolumeSize(fsType), FsType: fsType}))(t)
		staging := kubePath(e, "staging", v.Name)
		target := kubePath(e, "pods", v.Name, "mount")
		ok(t, e.StageVolume(ctx, model.StageRequest{VolumeID: v.ID, StagingPath: staging, FsType: fsType, MountFlags: []string{label}}))
		assertMounted(t, staging, fsType)
		ok(t, e.PublishVolume(ctx, model.PublishRequest{VolumeID: v.ID, StagingPath: staging, TargetPath: target, MountFlags: []string{label}}))
		assertMounted(t, target, fsType)
		lines := strings.Split(string(readFile(t, log)), "\n")
		var stageLine, publishLine string
		for _, l := range lines {
			if strings.HasSuffix(l, " "+staging) && !strings.Contains(l, "bind") {
				stageLine = l
			}
			if strings.HasSuffix(l, " "+target) && strings.Contains(l, "bind") {
				publishLine = l
			}
		}
		for what, l := range map[string]string{"stage": stageLine, "publish": publishLine} {
			if !strings.Contains(l, label) {
				t.Errorf("%s %s: mount(8) ran as %q, without %s", fsType, what, l, label)
			}
		}
		ok(t, e.UnpublishVolume(ctx, v.ID, target))
		ok(t, e.UnstageVolume(ctx, v.ID, staging))
		ok(t, e.DeleteVolume(ctx, v.ID))
	}
}
