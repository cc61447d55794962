package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"k8s.io/klog/v2"

	"github.com/cairn-csi/cairn/internal/backup"
	"github.com/cairn-csi/cairn/internal/model"
)

// restoreRun is a restore from a backup or a copy from another node
// running in the background (inBackground); callers wait for it.
type restoreRun struct {
	done  chan struct{}
	err   error
	vol   *model.Volume
	prog  atomic.Int64
	size  atomic.Int64 // the backup's size, once its manifest is read
	start time.Time
}

// restoreVolume creates a volume from a backup. The download runs in the
// background (inBackground).
func (e *Engine) restoreVolume(ctx context.Context, req model.CreateVolumeRequest) (*model.Volume, error) {
	h, err := model.ParseBackupHandle(req.SourceSnapshotID)
	if err != nil {
		return nil, model.Errorf(model.ErrNotFound, "volume_content_source: %v", err)
	}
	what := fmt.Sprintf("restore of volume %q from %s", req.Name, h)
	return e.inBackground(ctx, req, what, func(ctx context.Context, id string, run *restoreRun) (*model.Volume, error) {
		return e.runRestore(ctx, req, h, id, run)
	})
}

// inBackground runs work, which fills a new volume from elsewhere (a
// backup, another node), in the background so that it survives the CO's
// call deadlines: a call that times out gets Aborted with the progress
// (what ... in progress), and a retried call waits for the same work.
func (e *Engine) inBackground(ctx context.Context, req model.CreateVolumeRequest, what string, work func(ctx context.Context, id string, run *restoreRun) (*model.Volume, error)) (*model.Volume, error) {
	id := model.VolumeIDForName(req.Name)
	b := &e.bk
	b.mu.Lock()
	run := b.restore[id]
	if run == nil {
		run = &restoreRun{done: make(chan struct{}), start: time.Now()}
		b.restore[id] = run
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			run.vol, run.err = work(b.bg, id, run)
			close(run.done)
			b.mu.Lock()
			delete(b.restore, id)
			b.mu.Unlock()
		}()
	}
	b.mu.Unlock()
	select {
	case <-run.done:
		if run.err != nil {
			return nil, run.err
		}
		// Every caller's request is compared with the volume: the one
		// that started the work, a repeated one, or a different one
		// for the same name that joined it.
		return e.matchExisting(run.vol, req)
	case <-ctx.Done():
		return nil, model.Errorf(model.ErrAborted, "%s in progress (%s)", what, model.TransferProgress(run.prog.Load(), run.size.Load(), time.Since(run.start)))
	}
}

func (e *Engine) runRestore(ctx context.Context, req model.CreateVolumeRequest, h model.BackupHandle, id string, run *restoreRun) (*model.Volume, error) {
	unlock, err := e.locks.lock(ctx, id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	src := &model.Source{Kind: model.SourceBackup, ID: h.String()}
	if existing, err := e.loadVolume(id); err == nil {
		return e.describe(existing), nil // restoreVolume compares it with the request
	}
	repo, err := e.repo(ctx, h.Target)
	if err != nil {
		return nil, err
	}
	m, err := repo.Manifest(ctx, h.VolumeID, h.BackupID)
	if err != nil {
		return nil, manifestError("volume_content_source: ", h, err)
	}
	run.size.Store(m.SizeBytes)
	if req.LimitBytes > 0 && req.LimitBytes < m.SizeBytes {
		return nil, model.Errorf(model.ErrOutOfRange, "capacity_range: limit_bytes %d is smaller than the backup's %d bytes", req.LimitBytes, m.SizeBytes)
	}
	fsType := m.FsType
	if req.Block {
		fsType = ""
	}
	size, err := model.PickSize(max(req.RequiredBytes, m.SizeBytes), req.LimitBytes, fsType)
	if err != nil {
		return nil, err
	}
	meta := &VolumeMeta{
		FormatVersion: FormatVersion, ID: id, Name: req.Name, SizeBytes: size, Block: req.Block, FsType: fsType,
		Source: src, Parameters: req.Parameters, IOLimits: req.IOLimits, CreatedAt: time.Now().UTC(),
	}
	start := time.Now()
	err = e.commitNew(ctx, volumesDir, id, func(dir string) error {
		data := filepath.Join(dir, dataFile)
		err := e.allocate(size, func() error { return createEmpty(data) })
		if err != nil {
			return err
		}
		if err := repo.Restore(ctx, m, data, func(p backup.Progress) { run.prog.Store(p.BytesDone) }); err != nil {
			return err
		}
		if err := os.Truncate(data, size); err != nil {
			return err
		}
		return writeJSON(filepath.Join(dir, volumeMeta), meta)
	})
	if err != nil {
		if errors.Is(err, backup.ErrCorrupt) {
			return nil, model.Errorf(model.ErrFailedPrecondition, "restore %s: %v", h, err)
		}
		return nil, fmt.Errorf("restore volume %s from %s: %w", id, h, err)
	}
	klog.InfoS("Volume restored from backup", "volumeID", id, "backup", h.String(), "size", size, "duration", time.Since(start))
	return e.describe(meta), nil
}
