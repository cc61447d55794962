package integration

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/cairn-csi/cairn/internal/faults"
	"github.com/cairn-csi/cairn/internal/testsupport/harness"
)

// crashAt restarts the driver armed with one fault point, runs op (which
// must reach the point, so the driver dies with SIGKILL), and restarts the
// driver unarmed.
func (e *env) crashAt(point string, op func() error) {
	e.t.Helper()
	e.restart(faults.EnvVar + "=" + point)
	err := op()
	if err == nil {
		e.t.Fatalf("operation succeeded; fault point %s was never reached", point)
	}
	if !e.d.Exited(30 * time.Second) {
		e.t.Fatalf("driver still running after %v; fault point %s was never reached", err, point)
	}
	e.restart()
}

// TestCrashDuringSnapshot kills the driver at each point of a snapshot of a
// mounted volume, including while its file system is frozen; after a
// restart the file system is writable, the repeated call succeeds and the
// snapshot holds the data.
func TestCrashDuringSnapshot(t *testing.T) {
	for _, point := range []string{"freeze:frozen", "snapshot:after-copy", "snapshots:before-commit"} {
		t.Run(point, func(t *testing.T) {
			e := newEnv(t, "xfs")
			v := must[*csipb.Volume](t)(e.d.CreateVolume(e.ctx, harness.VolumeSpec{Name: "vol", Bytes: 512 * mib}))
			m := must[*harness.Mounted](t)(e.d.Mount(e.ctx, v.GetVolumeId(), e.mnt, false, ""))
			data := randomBytes(t, 4<<20)
			writeFile(t, filepath.Join(m.Target, "data"), data)

			e.crashAt(point, func() error { _, err := e.d.Snapshot(e.ctx, "snap", v.GetVolumeId()); return err })

			writable := make(chan error, 1)
			go func() {
				err := os.WriteFile(filepath.Join(m.Target, "after-restart"), []byte("x"), 0o644)
				writable <- err
			}()
			select {
			case err := <-writable:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(20 * time.Second):
				t.Fatal("file system still frozen after the driver restarted")
			}
			snap := must[*csipb.Snapshot](t)(e.d.Snapshot(e.ctx, "snap", v.GetVolumeId()))
			r := must[*csipb.Volume](t)(e.d.CreateVolume(e.ctx, harness.VolumeSpec{Name: "restore", Bytes: 512 * mib, FromSnapshot: snap.GetSnapshotId()}))
			rm := must[*harness.Mounted](t)(e.d.Mount(e.ctx, r.GetVolumeId(), e.mnt, false, ""))
			if !bytes.Equal(readFile(t, filepath.Join(rm.Target, "data")), data) {
				t.Error("snapshot taken after the crash holds different data")
			}
			unmountAll(t, e, rm, m)
			e.noLeaks()
		})
	}
}

// TestCrashDuringClone kills the driver while it clones a volume; the
// repeated CreateVolume produces a complete clone.
func TestCrashDuringClone(t *testing.T) {
	for _, point := range []string{"volume:after-data", "volumes:before-commit"} {
		t.Run(point, func(t *testing.T) {
			e := newEnv(t, "xfs")
			v := must[*csipb.Volume](t)(e.d.CreateVolume(e.ctx, harness.VolumeSpec{Name: "vol", Bytes: 256 * mib}))
			m := must[*harness.Mounted](t)(e.d.Mount(e.ctx, v.GetVolumeId(), e.mnt, false, ""))
			data := randomBytes(t, 4<<20)
			writeFile(t, filepath.Join(m.Target, "data"), data)
			spec := harness.VolumeSpec{Name: "clone", Bytes: 256 * mib, FromVolume: v.GetVolumeId()}

			e.crashAt(point, func() error { _, err := e.d.CreateVolume(e.ctx, spec); return err })

			c := must[*csipb.Volume](t)(e.d.CreateVolume(e.ctx, spec))
			cm := must[*harness.Mounted](t)(e.d.Mount(e.ctx, c.GetVolumeId(), e.mnt, false, ""))
			if !bytes.Equal(readFile(t, filepath.Join(cm.Target, "data")), data) {
				t.Error("clone made after the crash holds different data")
			}
			unmountAll(t, e, cm, m)
			e.noLeaks()
		})
	}
}

// TestCrashDuringExpand kills the driver in the middle of growing a
// detached volume; restart finishes the growth, the repeated call reports
// the new size and staging shows the larger file system.
func TestCrashDuringExpand(t *testing.T) {
	for _, point := range []string{"expand:after-intent", "expand:after-truncate"} {
		t.Run(point, func(t *testing.T) {
			e := newEnv(t, "xfs")
			v := must[*csipb.Volume](t)(e.d.CreateVolume(e.ctx, harness.VolumeSpec{Name: "vol", Bytes: 256 * mib}))
			m := must[*harness.Mounted](t)(e.d.Mount(e.ctx, v.GetVolumeId(), e.mnt, false, ""))
			data := randomBytes(t, 4<<20)
			writeFile(t, filepath.Join(m.Target, "data"), data)
			before := fsSize(t, m.Target)
			unmountAll(t, e, m)

			e.crashAt(point, func() error { _, err := e.d.Expand(e.ctx, v.GetVolumeId(), 512*mib, ""); return err })

			got := must[*csipb.ControllerGetVolumeResponse](t)(e.d.Controller().ControllerGetVolume(e.ctx, &csipb.ControllerGetVolumeRequest{VolumeId: v.GetVolumeId()}))
			if got.GetVolume().GetCapacityBytes() != 512*mib {
				t.Errorf("after restart the volume has %d bytes; reconciliation should have finished the growth to %d", got.GetVolume().GetCapacityBytes(), 512*mib)
			}
			if size := must[int64](t)(e.d.Expand(e.ctx, v.GetVolumeId(), 512*mib, "")); size != 512*mib {
				t.Fatalf("repeated expansion reports %d bytes", size)
			}
			m = must[*harness.Mounted](t)(e.d.Mount(e.ctx, v.GetVolumeId(), e.mnt, false, ""))
			if after := fsSize(t, m.Target); after < before*18/10 {
				t.Errorf("file system %d bytes after growth from %d", after, before)
			}
			if !bytes.Equal(readFile(t, filepath.Join(m.Target, "data")), data) {
				t.Error("data changed")
			}
			unmountAll(t, e, m)
			e.noLeaks()
		})
	}
}

// TestCrashDuringStageUnstageDelete kills the driver half-way through
// stage, unstage and delete; after a restart nothing leaks and the
// repeated call succeeds.
func TestCrashDuringStageUnstageDelete(t *testing.T) {
	for _, point := range []string{"stage:after-attach", "stage:after-mount"} {
		t.Run(point, func(t *testing.T) {
			e := newEnv(t, "xfs")
			v := must[*csipb.Volume](t)(e.d.CreateVolume(e.ctx, harness.VolumeSpec{Name: "vol", Bytes: 256 * mib}))
			e.crashAt(point, func() error { _, err := e.d.Mount(e.ctx, v.GetVolumeId(), e.mnt, false, ""); return err })
			e.noLeaks() // reconciliation rolled the half-done stage back
			m := must[*harness.Mounted](t)(e.d.Mount(e.ctx, v.GetVolumeId(), e.mnt, false, ""))
			writeFile(t, filepath.Join(m.Target, "data"), []byte("hello"))
			unmountAll(t, e, m)
			e.noLeaks()
		})
	}
	t.Run("unstage:after-unmount", func(t *testing.T) {
		e := newEnv(t, "xfs")
		v := must[*csipb.Volume](t)(e.d.CreateVolume(e.ctx, harness.VolumeSpec{Name: "vol", Bytes: 256 * mib}))
		m := must[*harness.Mounted](t)(e.d.Mount(e.ctx, v.GetVolumeId(), e.mnt, false, ""))
		e.crashAt("unstage:after-unmount", func() error { return e.d.Unmount(e.ctx, m) })
		if err := e.d.Unmount(e.ctx, m); err != nil {
			t.Fatal(err)
		}
		e.noLeaks()
	})
	t.Run("volumes:after-trash", func(t *testing.T) {
		e := newEnv(t, "xfs")
		v := must[*csipb.Volume](t)(e.d.CreateVolume(e.ctx, harness.VolumeSpec{Name: "vol", Bytes: 256 * mib}))
		del := func() error {
			_, err := e.d.Controller().DeleteVolume(e.ctx, &csipb.DeleteVolumeRequest{VolumeId: v.GetVolumeId()})
			return err
		}
		e.crashAt("volumes:after-trash", del)
		if err := del(); err != nil {
			t.Fatal(err)
		}
		list := must[*csipb.ListVolumesResponse](t)(e.d.Controller().ListVolumes(e.ctx, &csipb.ListVolumesRequest{}))
		if len(list.GetEntries()) != 0 {
			t.Errorf("%d volumes listed after delete", len(list.GetEntries()))
		}
		e.noLeaks()
	})
}

func unmountAll(t *testing.T, e *env, ms ...*harness.Mounted) {
	t.Helper()
	ctx, cancel := context.WithTimeout(e.ctx, time.Minute)
	defer cancel()
	for _, m := range ms {
		if err := e.d.Unmount(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
}
