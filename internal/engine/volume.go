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

// CreateVolume creates a volume or, if one with the same name exists and
// is compatible with the request, returns it.
func (e *Engine) CreateVolume(ctx context.Context, req model.CreateVolumeRequest) (*model.Volume, error) {
	if req.Name == "" {
		return nil, model.Errorf(model.ErrInvalidArgument, "name is required")
	}
	if req.SourceSnapshotID != "" && req.SourceVolumeID != "" {
		return nil, model.Errorf(model.ErrInvalidArgument, "volume_content_source: name a snapshot or a volume, not both")
	}
	if err := e.canLimit(req.IOLimits); err != nil {
		return nil, err
	}
	if model.IsBackupHandle(req.SourceSnapshotID) {
		return e.restoreVolume(ctx, req)
	}
	id := model.VolumeIDForName(req.Name)
	keys := []string{id}
	if req.SourceSnapshotID != "" {
		keys = append(keys, req.SourceSnapshotID)
	}
	if req.SourceVolumeID != "" {
		keys = append(keys, req.SourceVolumeID)
	}
	unlock, err := e.locks.lock(ctx, keys...)
	if err != nil {
		return nil, err
	}
	defer unlock()

	if existing, err := e.loadVolume(id); err == nil {
		return e.matchExisting(e.describe(existing), req)
	} else if !isNotFound(err) {
		return nil, err
	}
	src, err := e.resolveSource(req)
	if err != nil {
		return nil, err
	}
	var size int64
	fsType := model.EffectiveFsType(req.Block, req.FsType)
	if src.source != nil {
		size, fsType, err = sourcedSize(req, src.size, src.fsType)
	} else {
		size, err = model.PickSize(req.RequiredBytes, req.LimitBytes, fsType)
	}
	if err != nil {
		return nil, err
	}
	meta := &VolumeMeta{
		FormatVersion: FormatVersion,
		ID:            id,
		Name:          req.Name,
		SizeBytes:     size,
		Block:         req.Block,
		FsType:        fsType,
		Source:        src.source,
		Parameters:    maps.Clone(req.Parameters),
		IOLimits:      req.IOLimits,
		CreatedAt:     time.Now().UTC(),
	}
	start := time.Now()
	if err := e.buildVolume(ctx, meta, src); err != nil {
		return nil, fmt.Errorf("create volume %s (%s): %w", id, req.Name, err)
	}
	klog.InfoS("Volume created", "volumeID", id, "name", req.Name, "size", size, "source", src.source, "duration", time.Since(start))
	return e.describe(meta), nil
}

// sourcedSize is the size and file system of a volume made from a
// snapshot or volume of srcSize bytes and file system srcFs ("" if block
// or unknown): at least the source's size (a smaller limit is OutOfRange),
// and the source's file system, since the data decides it.
func sourcedSize(req model.CreateVolumeRequest, srcSize int64, srcFs string) (int64, string, error) {
	fsType := model.EffectiveFsType(req.Block, req.FsType)
	if !req.Block && srcFs != "" {
		fsType = srcFs
	}
	required := req.RequiredBytes
	if required < srcSize {
		if req.LimitBytes > 0 && req.LimitBytes < srcSize {
			return 0, "", model.Errorf(model.ErrOutOfRange, "capacity_range: limit_bytes %d is smaller than the source's %d bytes; restoring into a smaller volume is not supported", req.LimitBytes, srcSize)
		}
		required = srcSize
	}
	size, err := model.PickSize(required, req.LimitBytes, fsType)
	return size, fsType, err
}

// volumeSource is the local object a new volume's data comes from.
type volumeSource struct {
	source *model.Source // nil: an empty volume
	path   string        // a snapshot's data file
	vol    *VolumeMeta   // a volume to clone (frozen while copied if staged)
	size   int64         // the source's size
	fsType string        // the source's file system, "" if block or unknown
}

// resolveSource finds the snapshot or volume a request names (locked by
// the caller).
func (e *Engine) resolveSource(req model.CreateVolumeRequest) (volumeSource, error) {
	switch {
	case req.SourceSnapshotID != "":
		snap, err := e.loadSnapshot(req.SourceSnapshotID)
		if err != nil {
			return volumeSource{}, model.Errorf(model.ErrNotFound, "volume_content_source: snapshot %q not found", req.SourceSnapshotID)
		}
		return volumeSource{
			source: &model.Source{Kind: model.SourceSnapshot, ID: snap.ID},
			path:   filepath.Join(e.snapshotDir(snap.ID), dataFile),
			size:   snap.SizeBytes, fsType: snap.FsType,
		}, nil
	case req.SourceVolumeID != "":
		v, err := e.loadVolume(req.SourceVolumeID)
		if err != nil {
			return volumeSource{}, model.Errorf(model.ErrNotFound, "volume_content_source: volume %q not found", req.SourceVolumeID)
		}
		return volumeSource{source: &model.Source{Kind: model.SourceVolume, ID: v.ID}, vol: v, size: v.SizeBytes, fsType: v.FsType}, nil
	}
	return volumeSource{}, nil
}

// buildVolume makes the volume's directory with its data (copied from
// src, or empty) and metadata, and commits it by renaming it into place.
func (e *Engine) buildVolume(ctx context.Context, meta *VolumeMeta, src volumeSource) error {
	// A reflinked copy shares what its source has allocated, so only the
	// rest of its size must fit.
	need := meta.SizeBytes
	if e.reflink && (src.vol != nil || src.path != "") {
		from := src.path
		if src.vol != nil {
			from = e.volumeData(src.vol.ID)
		}
		if alloc, err := fsops.AllocatedBytes(from); err == nil {
			need = max(0, meta.SizeBytes-alloc)
		}
	}
	return e.commitNew(ctx, volumesDir, meta.ID, func(dir string) error {
		data := filepath.Join(dir, dataFile)
		err := e.allocate(need, func() error {
			switch {
			case src.vol != nil:
				return e.copyConsistent(ctx, src.vol, data)
			case src.path != "":
				return e.copyData(ctx, src.path, data)
			default:
				return createEmpty(data)
			}
		})
		if err != nil {
			return err
		}
		faults.Point("volume:after-data")
		if err := os.Truncate(data, meta.SizeBytes); err != nil {
			return fmt.Errorf("size volume file: %w", err)
		}
		if err := syncFile(data); err != nil {
			return err
		}
		return writeJSON(filepath.Join(dir, volumeMeta), meta)
	})
}

// matchExisting answers a repeated CreateVolume: the same volume if the
// request is compatible, AlreadyExists otherwise.
func (e *Engine) matchExisting(v *model.Volume, req model.CreateVolumeRequest) (*model.Volume, error) {
	if err := v.Answers(req); err != nil {
		return nil, err
	}
	answer := *v // each caller its own (callers of one restore share v)
	return &answer, nil
}

// describe is a volume as callers see it (AllocatedBytes 0 when its file
// cannot be read).
func (e *Engine) describe(m *VolumeMeta) *model.Volume {
	alloc, _ := fsops.AllocatedBytes(e.volumeData(m.ID))
	return &model.Volume{
		ID: m.ID, Name: m.Name, SizeBytes: m.SizeBytes, Block: m.Block, FsType: m.FsType,
		Source: m.Source, Parameters: m.Parameters, IOLimits: m.IOLimits, CreatedAt: m.CreatedAt, AllocatedBytes: alloc,
	}
}

// GetVolume returns a volume.
func (e *Engine) GetVolume(ctx context.Context, id string) (*model.Volume, error) {
	m, err := e.loadVolume(id)
	if err != nil {
		return nil, err
	}
	return e.describe(m), nil
}

// ListVolumes returns all volumes sorted by ID.
func (e *Engine) ListVolumes(ctx context.Context) ([]*model.Volume, error) {
	ids, err := e.listIDs(volumesDir, model.ValidVolumeID)
	if err != nil {
		return nil, err
	}
	out := make([]*model.Volume, 0, len(ids))
	for _, id := range ids {
		m, err := e.loadVolume(id)
		if isNotFound(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, e.describe(m))
	}
	return out, nil
}

// DeleteVolume deletes a volume; deleting a missing volume succeeds.
// Snapshots of the volume are independent and stay; the local bases of its
// backups go (their backups stay in the targets). If a base cannot be
// removed in time the call fails after the volume is gone, and its retry
// removes the base.
func (e *Engine) DeleteVolume(ctx context.Context, id string) error {
	if !model.ValidVolumeID(id) {
		return nil // can never have existed
	}
	if err := e.deleteVolume(ctx, id); err != nil {
		return err
	}
	// After the volume's lock is released (lock order, locks.go), and
	// after the volume is gone: an upload finishing meanwhile sees it gone
	// and drops its own base.
	return e.dropBases(ctx, id)
}

func (e *Engine) deleteVolume(ctx context.Context, id string) error {
	unlock, err := e.locks.lock(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	m, err := e.loadVolume(id)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if len(m.Published) > 0 {
		return model.Errorf(model.ErrFailedPrecondition, "volume %s is still published at %s", id, m.Published[0].Target)
	}
	if m.Stage != nil {
		return model.Errorf(model.ErrFailedPrecondition, "volume %s is still staged at %s", id, m.Stage.Path)
	}
	// A loop device left by an interrupted unstage must not outlive the file.
	if devs, err := loop.FindByBackingFile(e.volumeData(id)); err == nil {
		for _, d := range devs {
			if err := e.detachDevice(d); err != nil {
				return err
			}
		}
	}
	if err := e.removeObject(volumesDir, id); err != nil {
		return fmt.Errorf("delete volume %s: %w", id, err)
	}
	klog.InfoS("Volume deleted", "volumeID", id, "name", m.Name)
	return nil
}

// ExpandVolume grows a volume's file (and its loop device, when attached).
// Shrinking is refused with ErrOutOfRange; asking for the current size or
// less than it but not below is a no-op.
func (e *Engine) ExpandVolume(ctx context.Context, id string, required, limit int64) (*model.ExpandResult, error) {
	unlock, err := e.locks.lock(ctx, id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	m, err := e.loadVolume(id)
	if err != nil {
		return nil, err
	}
	size, err := model.ExpandSize(id, m.SizeBytes, required, limit, m.FsType)
	if err != nil {
		return nil, err
	}
	if size > m.SizeBytes {
		if err := e.growVolume(m, size); err != nil {
			return nil, err
		}
	}
	// A detached file system is grown when it is next staged, so only a
	// staged one needs NodeExpandVolume.
	return &model.ExpandResult{SizeBytes: m.SizeBytes, NodeExpansionRequired: !m.Block && m.Stage != nil}, nil
}

// growVolume records the intent, grows the file and the loop device, then
// records the new size. Reconciliation finishes an interrupted growth.
func (e *Engine) growVolume(m *VolumeMeta, size int64) error {
	grow := size - m.SizeBytes
	err := e.allocate(grow, func() error {
		m.PendingSizeBytes = size
		return e.saveVolume(m)
	})
	if err != nil {
		m.PendingSizeBytes = 0
		if errors.Is(err, model.ErrResourceExhausted) {
			// OutOfRange, which Kubernetes records as
			// ControllerResizeInfeasible: the user may then ask for less
			// (recovery from expansion failure).
			return model.Errorf(model.ErrOutOfRange, "capacity_range: volume %s cannot grow to %d bytes on this node: %v; ask for less (not below %d bytes)", m.ID, size, err, m.SizeBytes)
		}
		return err
	}
	faults.Point("expand:after-intent")
	if err := e.finishGrow(m); err != nil {
		return err
	}
	klog.InfoS("Volume expanded", "volumeID", m.ID, "size", size)
	return nil
}

// finishGrow completes a recorded expansion intent; it is idempotent.
func (e *Engine) finishGrow(m *VolumeMeta) error {
	size := m.PendingSizeBytes
	data := e.volumeData(m.ID)
	st, err := os.Stat(data)
	if err != nil {
		return err
	}
	if st.Size() < size {
		if err := os.Truncate(data, size); err != nil {
			return fmt.Errorf("grow %s to %d: %w", m.ID, size, err)
		}
		if err := syncFile(data); err != nil {
			return err
		}
	}
	faults.Point("expand:after-truncate")
	devs, err := loop.FindByBackingFile(data)
	if err != nil {
		return err
	}
	for _, d := range devs {
		if err := loop.SetCapacity(d.Path); err != nil {
			return err
		}
	}
	m.SizeBytes = size
	m.PendingSizeBytes = 0
	return e.saveVolume(m)
}

// createEmpty creates path as a new, empty file; it must not exist.
func createEmpty(path string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	return f.Close()
}

func syncFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
