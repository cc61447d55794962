package engine

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"time"

	"k8s.io/klog/v2"

	"github.com/cairn-csi/cairn/internal/faults"
	"github.com/cairn-csi/cairn/internal/fsops"
	"github.com/cairn-csi/cairn/internal/loop"
	"github.com/cairn-csi/cairn/internal/model"
)

// CreateSnapshot takes a crash-consistent snapshot of a volume (frozen if
// mounted) or, if a snapshot with the same name exists for the same source,
// returns it. A name already used for another source is AlreadyExists.
func (e *Engine) CreateSnapshot(ctx context.Context, name, sourceVolumeID string, params map[string]string) (*model.Snapshot, error) {
	if name == "" {
		return nil, model.Errorf(model.ErrInvalidArgument, "name is required")
	}
	if sourceVolumeID == "" {
		return nil, model.Errorf(model.ErrInvalidArgument, "source_volume_id is required")
	}
	id := model.SnapshotIDForName(name)
	keys := []string{id}
	if model.ValidVolumeID(sourceVolumeID) {
		keys = append(keys, sourceVolumeID)
	}
	unlock, err := e.locks.lock(ctx, keys...)
	if err != nil {
		return nil, err
	}
	defer unlock()

	if existing, err := e.loadSnapshot(id); err == nil {
		if existing.SourceVolumeID != sourceVolumeID {
			return nil, model.Errorf(model.ErrAlreadyExists, "snapshot name %q is already used for volume %s", name, existing.SourceVolumeID)
		}
		return e.describeSnapshot(existing), nil
	} else if !isNotFound(err) {
		return nil, err
	}
	vol, err := e.loadVolume(sourceVolumeID)
	if err != nil {
		return nil, model.Errorf(model.ErrNotFound, "source_volume_id: volume %q not found", sourceVolumeID)
	}
	meta := &SnapshotMeta{
		FormatVersion:  FormatVersion,
		ID:             id,
		Name:           name,
		SourceVolumeID: vol.ID,
		SizeBytes:      vol.SizeBytes,
		Block:          vol.Block,
		FsType:         vol.FsType,
		Parameters:     maps.Clone(params),
		CreatedAt:      time.Now().UTC(),
	}
	start := time.Now()
	err = e.commitNew(ctx, snapshotsDir, id, func(dir string) error {
		data := filepath.Join(dir, dataFile)
		copyFn := func() error { return e.copyConsistent(ctx, vol, data) }
		var err error
		if e.reflink {
			err = copyFn() // shares extents: costs no space now
		} else {
			alloc, aerr := fsops.AllocatedBytes(e.volumeData(vol.ID))
			if aerr != nil {
				return aerr
			}
			err = e.allocate(alloc, copyFn)
		}
		if err != nil {
			return err
		}
		faults.Point("snapshot:after-copy")
		return writeJSON(filepath.Join(dir, snapshotMeta), meta)
	})
	if err != nil {
		return nil, fmt.Errorf("snapshot volume %s as %s: %w", vol.ID, id, err)
	}
	klog.InfoS("Snapshot created", "snapshotID", id, "name", name, "volumeID", vol.ID, "mode", e.CloneMode(), "duration", time.Since(start))
	return e.describeSnapshot(meta), nil
}

func (e *Engine) describeSnapshot(m *SnapshotMeta) *model.Snapshot {
	alloc, _ := fsops.AllocatedBytes(filepath.Join(e.snapshotDir(m.ID), dataFile))
	return &model.Snapshot{
		ID: m.ID, Name: m.Name, SourceVolumeID: m.SourceVolumeID, SizeBytes: m.SizeBytes, Block: m.Block,
		FsType: m.FsType, Parameters: m.Parameters, CreatedAt: m.CreatedAt, AllocatedBytes: alloc,
		GroupSnapshotID: m.GroupSnapshotID,
	}
}

// GetSnapshot returns a snapshot.
func (e *Engine) GetSnapshot(ctx context.Context, id string) (*model.Snapshot, error) {
	m, err := e.loadSnapshot(id)
	if err != nil {
		return nil, err
	}
	return e.describeSnapshot(m), nil
}

// ListSnapshots returns all snapshots sorted by ID.
func (e *Engine) ListSnapshots(ctx context.Context) ([]*model.Snapshot, error) {
	ids, err := e.listIDs(snapshotsDir, model.ValidSnapshotID)
	if err != nil {
		return nil, err
	}
	out := make([]*model.Snapshot, 0, len(ids))
	for _, id := range ids {
		m, err := e.loadSnapshot(id)
		if isNotFound(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, e.describeSnapshot(m))
	}
	return out, nil
}

// DeleteSnapshot deletes a snapshot; deleting a missing one succeeds.
// Volumes restored from it are independent and stay.
func (e *Engine) DeleteSnapshot(ctx context.Context, id string) error {
	if !model.ValidSnapshotID(id) {
		return nil
	}
	unlock, err := e.locks.lock(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	if err := e.removeObject(snapshotsDir, id); err != nil {
		return fmt.Errorf("delete snapshot %s: %w", id, err)
	}
	klog.InfoS("Snapshot deleted", "snapshotID", id)
	return nil
}

// SnapshotDataPath returns the data file of a snapshot, for readers such as
// the backup engine. The file must not be modified.
func (e *Engine) SnapshotDataPath(id string) (string, error) {
	if _, err := e.loadSnapshot(id); err != nil {
		return "", err
	}
	return filepath.Join(e.snapshotDir(id), dataFile), nil
}

// flushLoop fsyncs the loop device of a volume so writes buffered in the
// block device's page cache reach the file before it is copied.
func (e *Engine) flushLoop(id string) error {
	devs, err := loop.FindByBackingFile(e.volumeData(id))
	if err != nil {
		return err
	}
	for _, d := range devs {
		f, err := os.OpenFile(d.Path, os.O_RDONLY, 0)
		if err != nil {
			return err
		}
		err = f.Sync()
		f.Close()
		if err != nil {
			return fmt.Errorf("flush %s: %w", d.Path, err)
		}
	}
	return nil
}

func isNotFound(err error) bool { return errors.Is(err, model.ErrNotFound) }
