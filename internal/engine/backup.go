package engine

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/klog/v2"

	"github.com/cairn-csi/cairn/internal/backup"
	"github.com/cairn-csi/cairn/internal/model"
	"github.com/cairn-csi/cairn/internal/objstore"
)

// Backups: a backup snapshot is a local reflink snapshot kept under
// backups/<backup-id>/ and uploaded in the background to a backup target;
// after the upload it stays as the base for the volume's next incremental
// backup, until a newer backup of the volume to the same target replaces
// it. Its handle, bs://<target>/<volume-id>/<backup-id>, finds the backup
// from any node.

const (
	backupsDir    = "backups"
	jobMeta       = "job.json"
	jobUploading  = "uploading"
	jobDone       = "done"
	maxRetryDelay = time.Minute
)

// backupJob is backups/<id>/job.json.
type backupJob struct {
	FormatVersion int    `json:"formatVersion"`
	BackupID      string `json:"backupId"`
	Target        string `json:"target"`
	VolumeID      string `json:"volumeId"`
	VolumeName    string `json:"volumeName"`
	SnapshotName  string `json:"snapshotName"`
	SizeBytes     int64  `json:"sizeBytes"`
	Block         bool   `json:"block"`
	FsType        string `json:"fsType,omitempty"`
	// Claim is the source PVC, for the manifest (optional).
	Claim     *model.Claim `json:"claim,omitempty"`
	State     string       `json:"state"`
	CreatedAt time.Time    `json:"createdAt"`
	// BlocksDigest is the committed manifest's (backup.BlocksDigest),
	// checked when this backup is the parent of an incremental one.
	BlocksDigest string `json:"blocksDigest,omitempty"`
}

func (j *backupJob) handle() model.BackupHandle {
	return model.BackupHandle{Target: j.Target, VolumeID: j.VolumeID, BackupID: j.BackupID}
}

// jobRun is the in-memory side of a running upload.
type jobRun struct {
	cancel    context.CancelFunc
	done      chan struct{}
	start     time.Time
	bytesDone atomic.Int64
	lastErr   atomic.Value // string
}

// backups holds the engine's backup state.
type backups struct {
	targets map[string]objstore.Store
	keys    map[string][]byte // master keys of encrypted targets
	mu      sync.Mutex
	repos   map[string]*backup.Repo
	runs    map[string]*jobRun // by backup ID
	restore map[string]*restoreRun
	bg      context.Context
	stop    context.CancelFunc
	wg      sync.WaitGroup
}

// repo opens (once) the backup store of a configured target.
func (e *Engine) repo(ctx context.Context, target string) (*backup.Repo, error) {
	b := &e.bk
	b.mu.Lock()
	st, ok := b.targets[target]
	key := b.keys[target]
	r := b.repos[target]
	b.mu.Unlock()
	if !ok {
		return nil, model.Errorf(model.ErrInvalidArgument, "backup target %q is not configured on this node (configured: %s)", target, strings.Join(e.BackupTargets(), ", "))
	}
	if r != nil {
		return r, nil
	}
	r, err := backup.OpenKeyed(ctx, st, key)
	if errors.Is(err, backup.ErrKey) {
		return nil, model.Errorf(model.ErrFailedPrecondition, "backup target %q: %v", target, err)
	}
	if err != nil {
		return nil, model.Errorf(model.ErrUnavailable, "backup target %q: %v", target, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.targets[target] != st {
		return nil, model.Errorf(model.ErrUnavailable, "backup target %q was reconfigured; retry", target)
	}
	b.repos[target] = r
	return r, nil
}

// forgetRepo drops a target's open store if it is still r.
func (e *Engine) forgetRepo(target string, r *backup.Repo) {
	e.bk.mu.Lock()
	defer e.bk.mu.Unlock()
	if e.bk.repos[target] == r {
		delete(e.bk.repos, target)
	}
}

// BackupTargets lists the configured target names.
func (e *Engine) BackupTargets() []string {
	e.bk.mu.Lock()
	defer e.bk.mu.Unlock()
	out := slices.Collect(maps.Keys(e.bk.targets))
	sort.Strings(out)
	return out
}

// SetBackupTarget adds or replaces a backup target while the engine runs
// (Kubernetes mode configures targets from BackupTarget objects), with
// its master key (nil: a plain target). Uploads waiting for the target
// resume.
func (e *Engine) SetBackupTarget(name string, st objstore.Store, key []byte) error {
	if !model.ValidTargetName(name) {
		return model.Errorf(model.ErrInvalidArgument, "backup target name %q: use lower-case letters, digits and '-'", name)
	}
	if key != nil {
		if err := backup.CheckMasterKey(key); err != nil {
			return model.Errorf(model.ErrInvalidArgument, "backup target %q: %v", name, err)
		}
	}
	b := &e.bk
	b.mu.Lock()
	b.targets[name] = st
	b.keys[name] = key
	delete(b.repos, name)
	b.mu.Unlock()
	klog.InfoS("Backup target configured", "target", name, "store", st.String(), "encrypted", key != nil)
	e.resumeBackups()
	return nil
}

// RemoveBackupTarget forgets a target; backups to it wait until it is set
// again.
func (e *Engine) RemoveBackupTarget(name string) {
	b := &e.bk
	b.mu.Lock()
	delete(b.targets, name)
	delete(b.repos, name)
	b.mu.Unlock()
	klog.InfoS("Backup target removed", "target", name)
}

func (e *Engine) jobDir(id string) string { return filepath.Join(e.root, backupsDir, id) }

func (e *Engine) loadJob(id string) (*backupJob, error) {
	var j backupJob
	err := readJSON(filepath.Join(e.jobDir(id), jobMeta), &j)
	if errors.Is(err, os.ErrNotExist) {
		return nil, model.Errorf(model.ErrNotFound, "backup %s not found on this node", id)
	}
	return &j, err
}

// CreateBackup starts (or reports on) a backup of a volume to a target
// under the given snapshot name. The returned info is Ready once the
// backup is committed in the target; until then the caller polls.
//
// claim describes the source PVC for the manifest; nil takes what the
// volume's CreateVolume parameters tell (its name and namespace).
func (e *Engine) CreateBackup(ctx context.Context, name, volumeID, target string, claim *model.Claim) (*model.BackupInfo, error) {
	if name == "" {
		return nil, model.Errorf(model.ErrInvalidArgument, "name is required")
	}
	if !model.ValidTargetName(target) {
		return nil, model.Errorf(model.ErrInvalidArgument, "parameters.backupTarget %q is not a valid target name", target)
	}
	id := model.BackupIDForName(name)
	keys := []string{id}
	if model.ValidVolumeID(volumeID) {
		keys = append(keys, volumeID)
	}
	unlock, err := e.locks.lock(ctx, keys...)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if j, err := e.loadJob(id); err == nil {
		if j.VolumeID != volumeID || j.Target != target {
			return nil, model.Errorf(model.ErrAlreadyExists, "snapshot name %q is already used for a backup of volume %s to %s", name, j.VolumeID, j.Target)
		}
		if j.State != jobDone {
			e.startJob(j) // no-op if running
		}
		return e.jobInfo(j), nil
	} else if !isNotFound(err) {
		return nil, err
	}
	repo, err := e.repo(ctx, target)
	if err != nil {
		return nil, err
	}
	if model.ValidVolumeID(volumeID) {
		if m, err := repo.Manifest(ctx, volumeID, id); err == nil {
			return manifestInfo(target, m), nil // committed earlier; local base gone
		} else if !errors.Is(err, backup.ErrNotFound) {
			return nil, manifestError("", model.BackupHandle{Target: target, VolumeID: volumeID, BackupID: id}, err)
		}
	}
	vol, err := e.loadVolume(volumeID)
	if err != nil {
		return nil, model.Errorf(model.ErrNotFound, "source_volume_id: volume %q not found", volumeID)
	}
	j := &backupJob{
		FormatVersion: FormatVersion, BackupID: id, Target: target, VolumeID: vol.ID, VolumeName: vol.Name,
		SnapshotName: name, SizeBytes: vol.SizeBytes, Block: vol.Block, FsType: vol.FsType,
		State: jobUploading, CreatedAt: time.Now().UTC(), Claim: claim,
	}
	if j.Claim == nil {
		j.Claim = model.ClaimFromParameters(vol.Parameters, vol.Block)
	}
	err = e.commitNew(ctx, backupsDir, id, func(dir string) error {
		if err := e.copyConsistent(ctx, vol, filepath.Join(dir, dataFile)); err != nil {
			return err
		}
		return writeJSON(filepath.Join(dir, jobMeta), j)
	})
	if err != nil {
		return nil, fmt.Errorf("snapshot volume %s for backup %s: %w", vol.ID, id, err)
	}
	klog.InfoS("Backup snapshot taken; uploading in the background", "backup", j.handle().String(), "volumeID", vol.ID, "name", name)
	e.startJob(j)
	return e.jobInfo(j), nil
}

func manifestInfo(target string, m *backup.Manifest) *model.BackupInfo {
	return &model.BackupInfo{
		Handle:       model.BackupHandle{Target: target, VolumeID: m.VolumeID, BackupID: m.ID},
		SnapshotName: m.SnapshotName, SizeBytes: m.SizeBytes, CreatedAt: m.CreatedAt, Ready: true,
	}
}

// jobInfo reports a job; LastError is set while a failed upload is being
// retried.
func (e *Engine) jobInfo(j *backupJob) *model.BackupInfo {
	info := &model.BackupInfo{Handle: j.handle(), SnapshotName: j.SnapshotName, SizeBytes: j.SizeBytes, CreatedAt: j.CreatedAt, Ready: j.State == jobDone}
	e.bk.mu.Lock()
	run := e.bk.runs[j.BackupID]
	e.bk.mu.Unlock()
	if run != nil && !info.Ready {
		info.BytesDone, info.Elapsed = run.bytesDone.Load(), time.Since(run.start)
		if s, ok := run.lastErr.Load().(string); ok {
			info.LastError = s
		}
	}
	return info
}

// startJob runs a job's upload in the background unless it already runs.
func (e *Engine) startJob(j *backupJob) {
	b := &e.bk
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.runs[j.BackupID] != nil || b.bg.Err() != nil {
		return
	}
	ctx, cancel := context.WithCancel(b.bg)
	run := &jobRun{cancel: cancel, done: make(chan struct{}), start: time.Now()}
	b.runs[j.BackupID] = run
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		defer close(run.done)
		defer func() {
			b.mu.Lock()
			if b.runs[j.BackupID] == run {
				delete(b.runs, j.BackupID)
			}
			b.mu.Unlock()
		}()
		delay := time.Second
		for {
			err := e.uploadJob(ctx, j, run)
			if err == nil || ctx.Err() != nil {
				return
			}
			run.lastErr.Store(err.Error())
			klog.ErrorS(err, "Backup upload failed; retrying", "backup", j.handle().String(), "retryIn", delay)
			select {
			case <-ctx.Done():
				return
			case <-time.After(delay):
			}
			delay = min(2*delay, maxRetryDelay)
		}
	}()
}

// uploadJob uploads one backup (incrementally against the volume's latest
// backed-up base, if there is one) and marks it done.
func (e *Engine) uploadJob(ctx context.Context, j *backupJob, run *jobRun) error {
	repo, err := e.repo(ctx, j.Target)
	if err != nil {
		return err
	}
	src := backup.Source{Path: filepath.Join(e.jobDir(j.BackupID), dataFile)}
	if parent := e.latestBase(ctx, j, repo); parent != nil {
		src.ParentPath = filepath.Join(e.jobDir(parent.ID), dataFile)
		src.Parent = parent
	}
	meta := backup.Meta{BackupID: j.BackupID, VolumeID: j.VolumeID, VolumeName: j.VolumeName, SnapshotName: j.SnapshotName, Block: j.Block, FsType: j.FsType}
	if j.Claim != nil && j.Claim.Check() == nil {
		meta.Claim = j.Claim
	}
	m, err := repo.Backup(ctx, src, meta, func(p backup.Progress) { run.bytesDone.Store(p.BytesDone) })
	if errors.Is(err, backup.ErrConfigChanged) {
		e.forgetRepo(j.Target, repo) // the retry opens the store again
	}
	if err != nil {
		return err
	}
	unlock, err := e.locks.lock(ctx, j.BackupID)
	if err != nil {
		return err
	}
	cur, err := e.loadJob(j.BackupID)
	if err == nil {
		cur.State, cur.BlocksDigest = jobDone, m.BlocksDigest()
		err = writeJSON(filepath.Join(e.jobDir(j.BackupID), jobMeta), cur)
		j.State = jobDone
	}
	unlock()
	if err != nil && !isNotFound(err) {
		return err
	}
	klog.InfoS("Backup ready", "backup", j.handle().String(), "parent", m.Parent, "read", m.Stats.BytesRead, "uploaded", m.Stats.BytesUploaded)
	e.pruneBases(ctx, j)
	if _, err := e.loadVolume(j.VolumeID); isNotFound(err) {
		e.dropBases(ctx, j.VolumeID) // no next backup of a deleted volume
	}
	return nil
}

// dropBases removes the local bases of a volume's completed backups, once
// the volume is gone and no incremental backup can follow.
func (e *Engine) dropBases(ctx context.Context, volumeID string) error {
	return e.removeBases(ctx, "backup base of a deleted volume", func(o *backupJob) bool { return o.VolumeID == volumeID })
}

// latestBase returns the manifest of the newest completed backup of the
// same volume to the same target whose local snapshot is still here.
func (e *Engine) latestBase(ctx context.Context, j *backupJob, repo *backup.Repo) *backup.Manifest {
	jobs, _ := e.listJobs()
	var best *backupJob
	for _, o := range jobs {
		if o.BackupID == j.BackupID || o.State != jobDone || o.VolumeID != j.VolumeID || o.Target != j.Target {
			continue
		}
		if best == nil || o.CreatedAt.After(best.CreatedAt) {
			best = o
		}
	}
	if best == nil {
		return nil
	}
	m, err := repo.Manifest(ctx, best.VolumeID, best.BackupID)
	if err != nil {
		return nil // deleted from the target (or damaged): make a full backup
	}
	if best.BlocksDigest != "" && m.BlocksDigest() != best.BlocksDigest {
		// Unchanged blocks would be taken from the parent's entries
		// without being read: never from entries someone rewrote.
		klog.InfoS("Warning: the parent backup's manifest changed in the target since it was committed; making a full backup", "parent", best.handle().String())
		return nil
	}
	return m
}

// pruneBases removes the local snapshots of older completed backups of the
// volume: only the newest is needed as the next incremental's base.
func (e *Engine) pruneBases(ctx context.Context, j *backupJob) {
	e.removeBases(ctx, "old backup base", func(o *backupJob) bool {
		return o.BackupID != j.BackupID && o.VolumeID == j.VolumeID && o.Target == j.Target && o.CreatedAt.Before(j.CreatedAt)
	})
}

// removeBases removes the local snapshots of the completed backups that
// match, each under its backup's lock (the caller holds no lock: lock
// order, locks.go). The backups in the targets stay. It returns the first
// failure, after trying every base.
func (e *Engine) removeBases(ctx context.Context, what string, match func(*backupJob) bool) error {
	jobs, err := e.listJobs()
	for _, o := range jobs {
		if o.State != jobDone || !match(o) {
			continue
		}
		unlock, lerr := e.locks.lock(ctx, o.BackupID)
		if lerr == nil {
			lerr = e.removeObject(backupsDir, o.BackupID)
			unlock()
		}
		if lerr != nil {
			klog.ErrorS(lerr, "Removing "+what, "backup", o.BackupID)
			err = cmp.Or(err, fmt.Errorf("remove %s %s: %w", what, o.BackupID, lerr))
		}
	}
	return err
}

func (e *Engine) listJobs() ([]*backupJob, error) {
	ids, err := e.listIDs(backupsDir, model.ValidBackupID)
	if err != nil {
		return nil, err
	}
	var out []*backupJob
	for _, id := range ids {
		if j, err := e.loadJob(id); err == nil {
			out = append(out, j)
		}
	}
	return out, nil
}

// resumeBackups restarts uploads that a restart interrupted.
func (e *Engine) resumeBackups() {
	jobs, err := e.listJobs()
	if err != nil {
		klog.ErrorS(err, "Listing backup jobs")
		return
	}
	for _, j := range jobs {
		if j.State != jobDone {
			klog.InfoS("Resuming interrupted backup upload", "backup", j.handle().String())
			e.startJob(j)
		}
	}
}

// Close stops background uploads and restores (they resume at the next
// Open) and waits for them.
func (e *Engine) Close() {
	e.bk.stop()
	e.bk.wg.Wait()
}
