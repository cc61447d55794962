package integration

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cairn-csi/cairn/internal/backup"
	"github.com/cairn-csi/cairn/internal/faults"
	"github.com/cairn-csi/cairn/internal/model"
	"github.com/cairn-csi/cairn/internal/objstore"
	"github.com/cairn-csi/cairn/internal/testsupport/harness"
)

// backupParams asks for a backup snapshot to target t1.
var backupParams = map[string]string{"type": "backup", "backupTarget": "t1"}

// waitBackup calls CreateSnapshot (as csi-snapshotter does) until the
// backup is ready, tolerating the driver being down or retrying.
func (e *env) waitBackup(name, volumeID string, timeout time.Duration) *csipb.Snapshot {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
		resp, err := e.d.Controller().CreateSnapshot(ctx, &csipb.CreateSnapshotRequest{Name: name, SourceVolumeId: volumeID, Parameters: backupParams})
		cancel()
		if err == nil && resp.GetSnapshot().GetReadyToUse() {
			return resp.GetSnapshot()
		}
		if err != nil {
			last = err
			if c := status.Code(err); c != codes.Unavailable && c != codes.Aborted && c != codes.DeadlineExceeded {
				e.t.Fatalf("CreateSnapshot %s: %v", name, err)
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	e.t.Fatalf("backup %s not ready after %s (last error: %v)", name, timeout, last)
	return nil
}

// createVolumeRetrying repeats CreateVolume while it answers Aborted or
// the driver is unreachable, as external-provisioner does.
func (e *env) createVolumeRetrying(spec harness.VolumeSpec, timeout time.Duration) *csipb.Volume {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
		v, err := e.d.CreateVolume(ctx, spec)
		cancel()
		if err == nil {
			return v
		}
		c := status.Code(errorsUnwrap(err))
		if (c != codes.Aborted && c != codes.Unavailable && c != codes.DeadlineExceeded) || time.Now().After(deadline) {
			e.t.Fatalf("CreateVolume %s: %v", spec.Name, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func errorsUnwrap(err error) error {
	for {
		if _, ok := status.FromError(err); ok {
			return err
		}
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		err = u.Unwrap()
	}
}

func fileTarget(t *testing.T) (string, []string) {
	dir := t.TempDir()
	return "file://" + dir, []string{"--backup-target", "t1=file://" + dir}
}

// s3Target starts a MinIO server for the test and returns a target URL,
// the driver flags and the driver environment (credentials).
func s3Target(t *testing.T, params ...string) (*harness.MinIO, string, []string, []string) {
	m, err := harness.StartMinIO(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)
	url := m.URL("cairn", params...)
	return m, url, []string{"--backup-target", "t1=" + url}, m.Env()
}

func openRepo(t *testing.T, url string) *backup.Repo {
	st, err := objstore.Open(context.Background(), url, objstore.Credentials{AccessKey: harness.MinIOAccessKey, SecretKey: harness.MinIOSecretKey})
	if err != nil {
		t.Fatal(err)
	}
	r, err := backup.Open(context.Background(), st)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestBackupRoundTrip backs a filesystem and a block volume up through
// CSI to a filesystem and to an S3 target, restores each into a new volume
// and compares byte for byte; then deletes the backup.
func TestBackupRoundTrip(t *testing.T) {
	t.Run("file", func(t *testing.T) {
		url, args := fileTarget(t)
		backupRoundTrip(t, url, newEnvArgs(t, "xfs", args))
	})
	t.Run("s3", func(t *testing.T) {
		_, url, args, env := s3Target(t)
		backupRoundTrip(t, url, newEnvArgs(t, "xfs", args, env...))
	})
}

func backupRoundTrip(t *testing.T, url string, e *env) {
	for _, block := range []bool{false, true} {
		name := map[bool]string{false: "fs", true: "block"}[block]
		t.Run(name, func(t *testing.T) {
			v := must[*csipb.Volume](t)(e.d.CreateVolume(e.ctx, harness.VolumeSpec{Name: "src-" + name, Bytes: 256 * mib, Block: block}))
			m := must[*harness.Mounted](t)(e.d.Mount(e.ctx, v.GetVolumeId(), e.mnt, block, ""))
			data := randomBytes(t, 48<<20)
			if block {
				writeDevice(t, m.Target, 3*mib, data)
			} else {
				writeFile(t, filepath.Join(m.Target, "data"), data)
			}
			snap := e.waitBackup("backup-"+name, v.GetVolumeId(), 2*time.Minute)
			if !strings.HasPrefix(snap.GetSnapshotId(), "bs://t1/"+v.GetVolumeId()+"/") || snap.GetSizeBytes() != 256*mib {
				t.Fatalf("backup snapshot %+v", snap)
			}
			r := e.createVolumeRetrying(harness.VolumeSpec{Name: "restore-" + name, Bytes: 256 * mib, Block: block, FromSnapshot: snap.GetSnapshotId()}, 2*time.Minute)
			rm := must[*harness.Mounted](t)(e.d.Mount(e.ctx, r.GetVolumeId(), e.mnt, block, ""))
			if block {
				if !bytes.Equal(readDevice(t, rm.Target, 256*mib), readDevice(t, m.Target, 256*mib)) {
					t.Error("block volume restored from backup differs from its source")
				}
			} else if !bytes.Equal(readFile(t, filepath.Join(rm.Target, "data")), data) {
				t.Error("file restored from backup differs from the original")
			}
			got := must[*csipb.ListSnapshotsResponse](t)(e.d.Controller().ListSnapshots(e.ctx, &csipb.ListSnapshotsRequest{SnapshotId: snap.GetSnapshotId()}))
			if len(got.GetEntries()) != 1 || !got.GetEntries()[0].GetSnapshot().GetReadyToUse() {
				t.Fatalf("ListSnapshots by backup handle: %v", got.GetEntries())
			}
			unmountAll(t, e, rm, m)
			if _, err := e.d.Controller().DeleteSnapshot(e.ctx, &csipb.DeleteSnapshotRequest{SnapshotId: snap.GetSnapshotId()}); err != nil {
				t.Fatal(err)
			}
			h, _ := model.ParseBackupHandle(snap.GetSnapshotId())
			if _, err := openRepo(t, url).Manifest(e.ctx, h.VolumeID, h.BackupID); err == nil {
				t.Error("manifest still in the target after DeleteSnapshot")
			}
		})
	}
	e.noLeaks()
}

// TestBackupIncrementalAndDR makes a second backup after a small change
// (only changed blocks read), then restores it with a second driver on
// another data root, as another cluster would from a pre-provisioned
// VolumeSnapshotContent.
func TestBackupIncrementalAndDR(t *testing.T) {
	url, args := fileTarget(t)
	e := newEnvArgs(t, "xfs", args)
	v := must[*csipb.Volume](t)(e.d.CreateVolume(e.ctx, harness.VolumeSpec{Name: "src", Bytes: 512 * mib, Block: true}))
	m := must[*harness.Mounted](t)(e.d.Mount(e.ctx, v.GetVolumeId(), e.mnt, true, ""))
	writeDevice(t, m.Target, 0, randomBytes(t, 200<<20))
	s1 := e.waitBackup("b1", v.GetVolumeId(), 2*time.Minute)
	writeDevice(t, m.Target, 50*mib, randomBytes(t, 1<<20))
	writeDevice(t, m.Target, 300*mib, randomBytes(t, 1<<20))
	s2 := e.waitBackup("b2", v.GetVolumeId(), 2*time.Minute)
	h1, _ := model.ParseBackupHandle(s1.GetSnapshotId())
	h2, _ := model.ParseBackupHandle(s2.GetSnapshotId())
	m2, err := openRepo(t, url).Manifest(e.ctx, h2.VolumeID, h2.BackupID)
	if err != nil {
		t.Fatal(err)
	}
	if m2.Parent != h1.BackupID || m2.Stats.BytesRead != 2*backup.DefaultBlockSize {
		t.Errorf("second backup: parent %q, read %d bytes; want parent %s and only the 2 changed blocks", m2.Parent, m2.Stats.BytesRead, h1.BackupID)
	}
	want := readDevice(t, m.Target, 512*mib)

	dr := newEnvArgs(t, "xfs", args)
	r := dr.createVolumeRetrying(harness.VolumeSpec{Name: "dr-restore", Bytes: 512 * mib, Block: true, FromSnapshot: s2.GetSnapshotId()}, 2*time.Minute)
	rm := must[*harness.Mounted](t)(dr.d.Mount(dr.ctx, r.GetVolumeId(), dr.mnt, true, ""))
	if !bytes.Equal(readDevice(t, rm.Target, 512*mib), want) {
		t.Error("restore on another node differs from the source")
	}
	unmountAll(t, dr, rm)
	unmountAll(t, e, m)
	// The local base of the latest backup goes with its volume; the
	// backups stay in the target.
	if _, err := e.d.Controller().DeleteVolume(e.ctx, &csipb.DeleteVolumeRequest{VolumeId: v.GetVolumeId()}); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(filepath.Join(e.fs.Mount, "backups")); len(ents) != 0 {
		t.Errorf("%d backup bases left on the data root after the volume was deleted", len(ents))
	}
	if refs, err := openRepo(t, url).List(e.ctx, ""); err != nil || len(refs) != 2 {
		t.Errorf("backups in the target after the volume was deleted: %v, %v", refs, err)
	}
	dr.noLeaks()
	e.noLeaks()
}

// TestBackupSurvivesKill kills the driver during the upload and during a
// restore; after each restart the operation completes.
func TestBackupSurvivesKill(t *testing.T) {
	_, args := fileTarget(t)
	e := newEnvArgs(t, "xfs", args)
	v := must[*csipb.Volume](t)(e.d.CreateVolume(e.ctx, harness.VolumeSpec{Name: "src", Bytes: 512 * mib, Block: true}))
	m := must[*harness.Mounted](t)(e.d.Mount(e.ctx, v.GetVolumeId(), e.mnt, true, ""))
	writeDevice(t, m.Target, 0, randomBytes(t, 200<<20)) // several packs
	want := readDevice(t, m.Target, 512*mib)

	e.restart(faults.EnvVar + "=backup:after-pack")
	if _, err := e.d.Controller().CreateSnapshot(e.ctx, &csipb.CreateSnapshotRequest{Name: "b", SourceVolumeId: v.GetVolumeId(), Parameters: backupParams}); err != nil && status.Code(err) != codes.Unavailable {
		t.Fatal(err)
	}
	if !e.d.Exited(time.Minute) {
		t.Fatal("driver did not die at backup:after-pack")
	}
	e.restart()
	snap := e.waitBackup("b", v.GetVolumeId(), 2*time.Minute)

	e.restart(faults.EnvVar + "=restore:after-block")
	spec := harness.VolumeSpec{Name: "restore", Bytes: 512 * mib, Block: true, FromSnapshot: snap.GetSnapshotId()}
	if _, err := e.d.CreateVolume(e.ctx, spec); err == nil {
		t.Fatal("restore completed although the driver should have died")
	}
	if !e.d.Exited(time.Minute) {
		t.Fatal("driver did not die at restore:after-block")
	}
	e.restart()
	r := e.createVolumeRetrying(spec, 2*time.Minute)
	rm := must[*harness.Mounted](t)(e.d.Mount(e.ctx, r.GetVolumeId(), e.mnt, true, ""))
	if !bytes.Equal(readDevice(t, rm.Target, 512*mib), want) {
		t.Error("restore after a crash differs from the source")
	}
	unmountAll(t, e, rm, m)
	e.noLeaks()
}

// TestBackupS3Outage stops MinIO in the middle of a backup: the backup
// reports the error while it retries, and completes once MinIO is back.
func TestBackupS3Outage(t *testing.T) {
	minio, _, args, env := s3Target(t, "maxRetryTime=2s")
	e := newEnvArgs(t, "xfs", args, env...)
	v := must[*csipb.Volume](t)(e.d.CreateVolume(e.ctx, harness.VolumeSpec{Name: "src", Bytes: 1024 * mib, Block: true}))
	m := must[*harness.Mounted](t)(e.d.Mount(e.ctx, v.GetVolumeId(), e.mnt, true, ""))
	writeDevice(t, m.Target, 0, randomBytes(t, 600<<20))
	want := readDevice(t, m.Target, 1024*mib)

	req := &csipb.CreateSnapshotRequest{Name: "b", SourceVolumeId: v.GetVolumeId(), Parameters: backupParams}
	first := must[*csipb.CreateSnapshotResponse](t)(e.d.Controller().CreateSnapshot(e.ctx, req))
	if first.GetSnapshot().GetReadyToUse() {
		t.Fatal("a 600 MiB backup was ready at once; the outage would not hit it")
	}
	minio.Kill()
	deadline := time.Now().Add(time.Minute)
	var reported error
	for reported == nil && time.Now().Before(deadline) {
		_, err := e.d.Controller().CreateSnapshot(e.ctx, req)
		if status.Code(err) == codes.Unavailable && strings.Contains(err.Error(), "retrying") {
			reported = err
		}
		time.Sleep(200 * time.Millisecond)
	}
	if reported == nil {
		t.Fatal("the outage was never reported by CreateSnapshot")
	}
	t.Logf("reported during the outage: %v", reported)
	if err := minio.Start(); err != nil {
		t.Fatal(err)
	}
	snap := e.waitBackup("b", v.GetVolumeId(), 3*time.Minute)
	r := e.createVolumeRetrying(harness.VolumeSpec{Name: "restore", Bytes: 1024 * mib, Block: true, FromSnapshot: snap.GetSnapshotId()}, 2*time.Minute)
	rm := must[*harness.Mounted](t)(e.d.Mount(e.ctx, r.GetVolumeId(), e.mnt, true, ""))
	if !bytes.Equal(readDevice(t, rm.Target, 1024*mib), want) {
		t.Error("restore after the outage differs from the source")
	}
	unmountAll(t, e, rm, m)
	e.noLeaks()
}
