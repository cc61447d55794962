package engine

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"k8s.io/klog/v2"

	"github.com/cairn-csi/cairn/internal/backup"
	"github.com/cairn-csi/cairn/internal/model"
)

// GetBackup describes a backup from this node's jobs or from its target.
func (e *Engine) GetBackup(ctx context.Context, handle string) (*model.BackupInfo, error) {
	h, err := model.ParseBackupHandle(handle)
	if err != nil {
		return nil, err
	}
	if j, err := e.loadJob(h.BackupID); err == nil && j.handle() == h {
		return e.jobInfo(j), nil
	}
	repo, err := e.repo(ctx, h.Target)
	if err != nil {
		if errors.Is(err, model.ErrInvalidArgument) {
			return nil, model.Errorf(model.ErrNotFound, "snapshot %s not found: %v", handle, err)
		}
		return nil, err
	}
	m, err := repo.Manifest(ctx, h.VolumeID, h.BackupID)
	if err != nil {
		return nil, manifestError("", h, err)
	}
	return manifestInfo(h.Target, m), nil
}

// manifestError maps what a backup store answered about a backup's
// manifest to an error kind: missing is NotFound, damaged (invalid, or of
// a newer format) is FailedPrecondition naming the object, anything else
// is the target being unavailable. field prefixes the message.
func manifestError(field string, h model.BackupHandle, err error) error {
	switch {
	case errors.Is(err, backup.ErrNotFound):
		return model.Errorf(model.ErrNotFound, "%ssnapshot %s not found in backup target %q", field, h, h.Target)
	case errors.Is(err, backup.ErrCorrupt), errors.Is(err, backup.ErrUnsupported):
		return model.Errorf(model.ErrFailedPrecondition, "%sbackup %s cannot be used: %v", field, h, err)
	default:
		return model.Errorf(model.ErrUnavailable, "backup target %q: %v", h.Target, err)
	}
}

// ListBackups lists in-progress backups of this node and every committed
// backup in every configured target.
func (e *Engine) ListBackups(ctx context.Context) ([]*model.BackupInfo, error) {
	seen := map[model.BackupHandle]bool{}
	var out []*model.BackupInfo
	jobs, err := e.listJobs()
	if err != nil {
		return nil, err
	}
	for _, j := range jobs {
		if j.State != jobDone {
			out = append(out, e.jobInfo(j))
			seen[j.handle()] = true
		}
	}
	for _, t := range e.BackupTargets() {
		repo, err := e.repo(ctx, t)
		if err != nil {
			return nil, err
		}
		// Damaged manifests are skipped with a warning naming each: one
		// bad object must not hide every other backup.
		ms, err := repo.ReadableManifests(ctx, "", "list snapshots")
		if err != nil {
			return nil, model.Errorf(model.ErrUnavailable, "backup target %q: %v", t, err)
		}
		for _, m := range ms {
			info := manifestInfo(t, m)
			if !seen[info.Handle] {
				out = append(out, info)
			}
		}
	}
	sort.Slice(out, func(i, k int) bool { return out[i].Handle.String() < out[k].Handle.String() })
	return out, nil
}

// DeleteBackup stops an upload in progress, removes the local base and
// deletes the backup's manifest from the target; garbage collection
// reclaims its data. Deleting a missing backup succeeds.
func (e *Engine) DeleteBackup(ctx context.Context, handle string) error {
	h, err := model.ParseBackupHandle(handle)
	if err != nil {
		return nil // can never have existed
	}
	e.bk.mu.Lock()
	run := e.bk.runs[h.BackupID]
	e.bk.mu.Unlock()
	if run != nil {
		run.cancel()
		<-run.done
	}
	unlock, err := e.locks.lock(ctx, h.BackupID)
	if err != nil {
		return err
	}
	defer unlock()
	if j, err := e.loadJob(h.BackupID); err == nil && j.handle() == h {
		if err := e.removeObject(backupsDir, h.BackupID); err != nil {
			return err
		}
	}
	repo, err := e.repo(ctx, h.Target)
	if err != nil {
		if errors.Is(err, model.ErrInvalidArgument) {
			return model.Errorf(model.ErrFailedPrecondition, "cannot delete %s: %v", handle, err)
		}
		return err
	}
	if err := repo.Delete(ctx, h.VolumeID, h.BackupID); err != nil {
		return model.Errorf(model.ErrUnavailable, "delete %s: %v", handle, err)
	}
	klog.InfoS("Backup deleted", "backup", handle)
	return nil
}

// VerifyBackup reads back every block of one backup and checks it
// (docs/FORMAT.md, Verification); damaged blobs are quarantined. Damage is
// in the result; the error says the check could not run (NotFound: no
// such backup; Unavailable: the target failed). progress, if set, gets
// the raw bytes checked and the total.
func (e *Engine) VerifyBackup(ctx context.Context, handle string, progress func(done, total int64)) (*model.VerifyResult, error) {
	h, err := model.ParseBackupHandle(handle)
	if err != nil {
		return nil, err
	}
	repo, err := e.repo(ctx, h.Target)
	if err != nil {
		return nil, err
	}
	rep, err := repo.Verify(ctx, []backup.BackupRef{{VolumeID: h.VolumeID, BackupID: h.BackupID}}, func(p backup.Progress) {
		if progress != nil {
			progress(p.BytesDone, p.BytesTotal)
		}
	})
	if errors.Is(err, backup.ErrNotFound) {
		return nil, manifestError("", h, err)
	}
	if err != nil {
		return nil, model.Errorf(model.ErrUnavailable, "verify %s in backup target %q: %v", h, h.Target, err)
	}
	if len(rep.NewerManifests) > 0 {
		return nil, model.Errorf(model.ErrFailedPrecondition, "backup %s cannot be verified by this driver: %s", h, rep.NewerManifests[0])
	}
	res := &model.VerifyResult{Blocks: rep.Blocks, Bytes: rep.Bytes}
	for _, d := range rep.DamagedManifests {
		res.Problems = append(res.Problems, "manifest "+d.String())
	}
	for _, p := range rep.Problems {
		res.Problems = append(res.Problems, fmt.Sprintf("block at volume offset %d (hash %s, pack %s at %d): %s", p.Offset, p.Hash, p.Pack, p.PackOffset, p.Error))
	}
	return res, nil
}
