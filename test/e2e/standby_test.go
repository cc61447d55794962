package e2e

import (
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
	"github.com/cairn-csi/cairn/internal/testsupport/harness"
	"github.com/cairn-csi/cairn/internal/testsupport/scratchfs"
)

// standbyVolume is disaster recovery across clusters: a standalone driver
// on its own data root (the primary cluster) backs a volume up to the
// shared target; this cluster keeps a StandbyVolume of it, which restores
// the first backup in full and each of three newer ones by its changed
// blocks; a PVC naming the StandbyVolume in dataSourceRef then activates
// it and is Bound to a volume holding the newest data.
func (e *env) standbyVolume() error {
	fs, err := scratchfs.Create(filepath.Join(e.work, "primary.img"), filepath.Join(e.work, "primary"), "xfs", 2<<30)
	if err != nil {
		return err
	}
	mnt := filepath.Join(e.work, "primary-mnt")
	d := &harness.Driver{Bin: e.cairn, Socket: filepath.Join(e.work, "primary.sock"), DataRoot: fs.Mount, NodeID: "primary",
		Log: filepath.Join(e.logs, "primary-standalone.log"), Args: []string{"--backup-target", "default=file://" + e.backups}}
	defer func() {
		d.Close()
		harness.UnmountAll(mnt)
		harness.DetachLoops(fs.Mount)
		fs.Close()
	}()
	if err := d.Start(e.ctx); err != nil {
		return err
	}
	vol, err := d.CreateVolume(e.ctx, harness.VolumeSpec{Name: "primary-db", Bytes: 512 << 20, FsType: "ext4"})
	if err != nil {
		return err
	}
	m, err := d.Mount(e.ctx, vol.GetVolumeId(), mnt, false, "ext4")
	if err != nil {
		return err
	}
	data := make([]byte, 64<<20)
	rand.Read(data)
	file := filepath.Join(m.Target, "mysql.db")
	if err := os.WriteFile(file, data, 0o644); err != nil {
		return err
	}
	backup := func(n int) (string, error) {
		req := &csipb.CreateSnapshotRequest{Name: fmt.Sprintf("primary-backup-%d", n), SourceVolumeId: vol.GetVolumeId(), Parameters: map[string]string{"type": "backup"}}
		var id string
		err := e.eventually(2*time.Minute, func() error {
			resp, err := d.Controller().CreateSnapshot(e.ctx, req)
			if err != nil {
				return err
			}
			if !resp.GetSnapshot().GetReadyToUse() {
				return errors.New("backup not ready yet")
			}
			id = resp.GetSnapshot().GetSnapshotId()
			return nil
		})
		return id[len(id)-34:], err // the backup ID, the handle's last part
	}
	b, err := backup(0)
	if err != nil {
		return err
	}

	sv := &cairnv1.StandbyVolume{ObjectMeta: metav1.ObjectMeta{Name: "primary-db-dr", Namespace: appNS}, Spec: cairnv1.StandbyVolumeSpec{
		BackupTargetName: "default", SourceVolumeID: vol.GetVolumeId(), PollInterval: &metav1.Duration{Duration: 10 * time.Second}}}
	if err := e.cc.Create(e.ctx, sv); err != nil {
		return err
	}
	holds := func(backupID string) (*cairnv1.StandbyVolume, error) {
		var got cairnv1.StandbyVolume
		err := e.eventually(2*time.Minute, func() error {
			if err := e.cc.Get(e.ctx, client.ObjectKeyFromObject(sv), &got); err != nil {
				return err
			}
			if got.Status.Phase != cairnv1.StandbyFollowing || got.Status.BackupID != backupID || got.Status.BehindBackups != 0 {
				return fmt.Errorf("StandbyVolume %s on node %q: %s, holds %q (behind %d), want %s: %s", sv.Name, got.Spec.NodeName,
					got.Status.Phase, got.Status.BackupID, got.Status.BehindBackups, backupID, got.Status.Message)
			}
			return nil
		})
		return &got, err
	}
	got, err := holds(b)
	if err != nil {
		return err
	}
	if got.Spec.NodeName != e.nodeName || !got.Status.LastSyncFull {
		return fmt.Errorf("first sync: node %q, full %t", got.Spec.NodeName, got.Status.LastSyncFull)
	}
	full := got.Status.LastSyncBytes
	e.t.Logf("standby: full restore downloaded %d blocks, %d bytes", got.Status.LastSyncBlocks, full)

	// Three incrementals, each rewriting 1 MiB of the file: each sync
	// downloads a few blocks (the changed data, one or two 4 MiB blocks,
	// and ext4's journal, inode and superblock blocks), not the volume.
	for i := 1; i <= 3; i++ {
		patch := make([]byte, 1<<20)
		rand.Read(patch)
		off := int64(i) * 5 << 20
		copy(data[off:], patch)
		f, err := os.OpenFile(file, os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		if _, err := f.WriteAt(patch, off); err != nil {
			f.Close()
			return err
		}
		if err := errors.Join(f.Sync(), f.Close()); err != nil {
			return err
		}
		if b, err = backup(i); err != nil {
			return err
		}
		if got, err = holds(b); err != nil {
			return err
		}
		s := got.Status
		e.t.Logf("standby: incremental %d downloaded %d blocks, %d bytes (full: %d bytes)", i, s.LastSyncBlocks, s.LastSyncBytes, full)
		if s.LastSyncFull || s.LastSyncBlocks < 1 || s.LastSyncBlocks > 8 || s.LastSyncBytes*4 > full {
			return fmt.Errorf("incremental %d: downloaded %d blocks, %d bytes (full %t): want the changed blocks only", i, s.LastSyncBlocks, s.LastSyncBytes, s.LastSyncFull)
		}
	}

	// Activate: a PVC naming the StandbyVolume is Bound, in seconds, to a
	// volume that holds the newest backup.
	start := time.Now()
	err = e.createPVC("primary-db-restored", "1Gi", nil, func(p *corev1.PersistentVolumeClaim) {
		p.Spec.DataSourceRef = &corev1.TypedObjectReference{APIGroup: ptr("cairn.csi.dev"), Kind: cairnv1.StandbyVolumeKind, Name: sv.Name}
	})
	if err != nil {
		return err
	}
	bound := time.Since(start)
	if err := e.cc.Get(e.ctx, client.ObjectKeyFromObject(sv), got); err != nil {
		return err
	}
	s := got.Status
	e.t.Logf("standby: PVC Bound %s after it was created; activation on the node took %s", bound.Round(time.Millisecond), s.ActivationDuration.Duration)
	if s.Phase != cairnv1.StandbyActivated || s.BackupID != b || s.ActivationDuration.Duration > 10*time.Second || bound > 30*time.Second {
		return fmt.Errorf("activation: phase %s, backup %s (want %s), node %s, Bound after %s", s.Phase, s.BackupID, b, s.ActivationDuration.Duration, bound)
	}
	if err := e.checkMounted("primary-db-restored", data, 0); err != nil {
		return err
	}
	// The StandbyVolume goes; the volume stays with its PVC.
	if err := e.cc.Delete(e.ctx, got); err != nil {
		return err
	}
	if err := e.eventually(time.Minute, func() error {
		err := e.cc.Get(e.ctx, client.ObjectKeyFromObject(sv), &cairnv1.StandbyVolume{})
		if err == nil {
			return errors.New("StandbyVolume not gone")
		}
		return client.IgnoreNotFound(err)
	}); err != nil {
		return err
	}
	return e.checkMounted("primary-db-restored", data, 0)
}
