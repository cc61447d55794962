package engine

import (
	"context"
	"fmt"
	"maps"
	"math"
	"os"
	"path/filepath"
	"time"

	"k8s.io/klog/v2"

	"github.com/cairn-csi/cairn/internal/faults"
	"github.com/cairn-csi/cairn/internal/fsops"
	"github.com/cairn-csi/cairn/internal/loop"
)

// Size rules.
const (
	// DefaultVolumeSize is used when a request names no size.
	DefaultVolumeSize = 1 << 30
	// MinXFSSize is the smallest file system mkfs.xfs accepts.
	MinXFSSize = 300 << 20
	sizeAlign  = 1 << 20
	minAlign   = 4096
	// MaxVolumeSize is the largest size a volume can have: the largest
	// multiple of 1 MiB an int64 holds, so that no size up to it overflows
	// when it is rounded up.
	MaxVolumeSize = math.MaxInt64 &^ (sizeAlign - 1)
)

// CreateVolumeRequest asks for a new volume.
type CreateVolumeRequest struct {
	Name          string
	RequiredBytes int64
	LimitBytes    int64 // 0: no limit
	Block         bool
	FsType        string // for filesystem volumes; "" means ext4
	Parameters    map[string]string
	// At most one source.
	SourceSnapshotID string
	SourceVolumeID   string
}

// Volume is a volume as callers see it.
type Volume struct {
	VolumeMeta
	// AllocatedBytes is what the volume's file occupies on disk.
	AllocatedBytes int64
	// Abnormal and Condition describe the volume's health.
	Abnormal  bool
	Condition string
}

// PickSize applies Cairn's sizing rules to a request: default 1 GiB, rounded
// up to 1 MiB (or 4 KiB when the limit is tighter), at least 300 MiB for XFS,
// within limit, at most MaxVolumeSize (checked before rounding, so that the
// rounding cannot overflow). It is exported so validation and the engine
// agree; every size the engine rounds goes through it.
func PickSize(required, limit int64, fsType string) (int64, error) {
	if required < 0 || limit < 0 {
		return 0, errorf(ErrOutOfRange, "capacity_range: negative bytes (required %d, limit %d)", required, limit)
	}
	if required > MaxVolumeSize {
		return 0, errorf(ErrOutOfRange, "capacity_range.required_bytes %d exceeds the largest volume size, %d bytes", required, int64(MaxVolumeSize))
	}
	if limit > 0 && required > limit {
		return 0, errorf(ErrOutOfRange, "capacity_range: required_bytes %d exceeds limit_bytes %d", required, limit)
	}
	size := required
	if size == 0 {
		size = DefaultVolumeSize
		if limit > 0 && limit < size {
			// Any size up to the limit will do: round the limit down (to
			// 1 MiB, else 4 KiB) so the rounding up below stays within it.
			size = limit
			for _, align := range []int64{sizeAlign, minAlign} {
				if s := limit / align * align; s > 0 {
					size = s
					break
				}
			}
		}
	}
	if fsType == "xfs" && size < MinXFSSize {
		size = MinXFSSize
	}
	for _, align := range []int64{sizeAlign, minAlign} {
		s := (size + align - 1) / align * align
		if limit == 0 || s <= limit {
			return s, nil
		}
	}
	if fsType == "xfs" && limit < MinXFSSize {
		return 0, errorf(ErrOutOfRange, "capacity_range: limit_bytes %d is below the %d bytes mkfs.xfs needs", limit, MinXFSSize)
	}
	return 0, errorf(ErrOutOfRange, "capacity_range: no size that is a multiple of 4096 fits between %d and %d", required, limit)
}

// CreateVolume creates a volume or, if one with the same name exists and
// is compatible with the request, returns it.
func (e *Engine) CreateVolume(ctx context.Context, req CreateVolumeRequest) (*Volume, error) {
	if req.Name == "" {
		return nil, errorf(ErrInvalidArgument, "name is required")
	}
	if req.SourceSnapshotID != "" && req.SourceVolumeID != "" {
		return nil, errorf(ErrInvalidArgument, "volume_content_source: name a snapshot or a volume, not both")
	}
	fsType := req.FsType
	if req.Block {
		fsType = ""
	} else if fsType == "" {
		fsType = "ext4"
	}
	if IsBackupHandle(req.SourceSnapshotID) {
		return e.restoreVolume(ctx, req)
	}
	id := VolumeIDForName(req.Name)
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
		return e.matchExisting(existing, req, fsType)
	} else if !isNotFound(err) {
		return nil, err
	}

	var (
		source     *Source
		srcPath    string
		srcSize    int64
		srcVol     *VolumeMeta
		srcFsType  = fsType
		paramsCopy = maps.Clone(req.Parameters)
	)
	switch {
	case req.SourceSnapshotID != "":
		snap, err := e.loadSnapshot(req.SourceSnapshotID)
		if err != nil {
			return nil, errorf(ErrNotFound, "volume_content_source: snapshot %q not found", req.SourceSnapshotID)
		}
		source = &Source{Kind: "snapshot", ID: snap.ID}
		srcPath = filepath.Join(e.snapshotDir(snap.ID), dataFile)
		srcSize = snap.SizeBytes
		if snap.FsType != "" {
			srcFsType = snap.FsType
		}
	case req.SourceVolumeID != "":
		v, err := e.loadVolume(req.SourceVolumeID)
		if err != nil {
			return nil, errorf(ErrNotFound, "volume_content_source: volume %q not found", req.SourceVolumeID)
		}
		source = &Source{Kind: "volume", ID: v.ID}
		srcVol = v
		srcSize = v.SizeBytes
		if v.FsType != "" {
			srcFsType = v.FsType
		}
	}
	if source != nil && !req.Block {
		fsType = srcFsType // the data decides the file system
	}

	required := req.RequiredBytes
	if source != nil && required < srcSize {
		if req.LimitBytes > 0 && req.LimitBytes < srcSize {
			return nil, errorf(ErrOutOfRange, "capacity_range: limit_bytes %d is smaller than the source's %d bytes; restoring into a smaller volume is not supported", req.LimitBytes, srcSize)
		}
		required = srcSize
	}
	size, err := PickSize(required, req.LimitBytes, fsType)
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
		Source:        source,
		Parameters:    paramsCopy,
		CreatedAt:     time.Now().UTC(),
	}
	// A reflinked copy shares what its source has allocated, so only the
	// rest of its size must fit.
	need := size
	if e.reflink && (srcVol != nil || srcPath != "") {
		from := srcPath
		if srcVol != nil {
			from = e.volumeData(srcVol.ID)
		}
		if alloc, err := fsops.AllocatedBytes(from); err == nil {
			need = max(0, size-alloc)
		}
	}
	start := time.Now()
	err = e.commitNew(ctx, volumesDir, id, func(dir string) error {
		data := filepath.Join(dir, dataFile)
		err := e.allocate(need, func() error {
			switch {
			case srcVol != nil:
				return e.copyConsistent(ctx, srcVol, data)
			case srcPath != "":
				return e.copyData(ctx, srcPath, data)
			default:
				return createEmpty(data)
			}
		})
		if err != nil {
			return err
		}
		faults.Point("volume:after-data")
		if err := os.Truncate(data, size); err != nil {
			return fmt.Errorf("size volume file: %w", err)
		}
		if err := syncFile(data); err != nil {
			return err
		}
		return writeJSON(filepath.Join(dir, volumeMeta), meta)
	})
	if err != nil {
		return nil, fmt.Errorf("create volume %s (%s): %w", id, req.Name, err)
	}
	klog.InfoS("Volume created", "volumeID", id, "name", req.Name, "size", size, "source", source, "duration", time.Since(start))
	return e.describe(meta), nil
}

// matchExisting answers a repeated CreateVolume: the same volume if the
// request is compatible, AlreadyExists otherwise.
func (e *Engine) matchExisting(m *VolumeMeta, req CreateVolumeRequest, fsType string) (*Volume, error) {
	if err := CheckExisting(m, req, fsType); err != nil {
		return nil, err
	}
	return e.describe(m), nil
}

// CheckExisting tells whether an existing volume answers a repeated
// CreateVolume for req (fsType: the request's, defaulted): nil if it is
// compatible, ErrAlreadyExists saying how it differs otherwise.
func CheckExisting(m *VolumeMeta, req CreateVolumeRequest, fsType string) error {
	var want *Source
	if req.SourceSnapshotID != "" {
		want = &Source{Kind: "snapshot", ID: req.SourceSnapshotID}
	} else if req.SourceVolumeID != "" {
		want = &Source{Kind: "volume", ID: req.SourceVolumeID}
	}
	switch {
	case m.SizeBytes < req.RequiredBytes:
		return errorf(ErrAlreadyExists, "volume %q exists with %d bytes, less than the requested %d", req.Name, m.SizeBytes, req.RequiredBytes)
	case req.LimitBytes > 0 && m.SizeBytes > req.LimitBytes:
		return errorf(ErrAlreadyExists, "volume %q exists with %d bytes, more than limit_bytes %d", req.Name, m.SizeBytes, req.LimitBytes)
	case m.Block != req.Block:
		return errorf(ErrAlreadyExists, "volume %q exists with a different access type", req.Name)
	case (want == nil) != (m.Source == nil) || (want != nil && *want != m.Source.CSI()):
		return errorf(ErrAlreadyExists, "volume %q exists with a different content source", req.Name)
	case want == nil && !req.Block && m.FsType != fsType:
		return errorf(ErrAlreadyExists, "volume %q exists with file system %s, not %s", req.Name, m.FsType, fsType)
	}
	return nil
}

func (e *Engine) describe(m *VolumeMeta) *Volume {
	v := &Volume{VolumeMeta: *m}
	alloc, err := fsops.AllocatedBytes(e.volumeData(m.ID))
	if err != nil {
		v.Abnormal = true
		v.Condition = fmt.Sprintf("volume data file unreadable: %v", err)
	} else {
		v.AllocatedBytes = alloc
		v.Condition = "volume data file present"
	}
	return v
}

// GetVolume returns a volume.
func (e *Engine) GetVolume(ctx context.Context, id string) (*Volume, error) {
	m, err := e.loadVolume(id)
	if err != nil {
		return nil, err
	}
	return e.describe(m), nil
}

// ListVolumes returns all volumes sorted by ID.
func (e *Engine) ListVolumes(ctx context.Context) ([]*Volume, error) {
	ids, err := e.listIDs(volumesDir, ValidVolumeID)
	if err != nil {
		return nil, err
	}
	out := make([]*Volume, 0, len(ids))
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
	if !ValidVolumeID(id) {
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
		return errorf(ErrFailedPrecondition, "volume %s is still published at %s", id, m.Published[0].Target)
	}
	if m.Stage != nil {
		return errorf(ErrFailedPrecondition, "volume %s is still staged at %s", id, m.Stage.Path)
	}
	// A loop device left by an interrupted unstage must not outlive the file.
	if devs, err := loop.FindByBackingFile(e.volumeData(id)); err == nil {
		for _, d := range devs {
			if err := loop.Detach(d.Path); err != nil {
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

// ExpandResult tells the caller the new size and whether the node must
// still grow a file system.
type ExpandResult struct {
	SizeBytes             int64
	NodeExpansionRequired bool
}

// ExpandVolume grows a volume's file (and its loop device, when attached).
// Shrinking is refused with ErrOutOfRange; asking for the current size or
// less than it but not below is a no-op.
func (e *Engine) ExpandVolume(ctx context.Context, id string, required, limit int64) (*ExpandResult, error) {
	unlock, err := e.locks.lock(ctx, id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	m, err := e.loadVolume(id)
	if err != nil {
		return nil, err
	}
	size, err := ExpandSize(id, m.SizeBytes, required, limit, m.FsType)
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
	return &ExpandResult{SizeBytes: m.SizeBytes, NodeExpansionRequired: !m.Block && m.Stage != nil}, nil
}

// ExpandSize is the size a volume of cur bytes has after an expansion
// request (cur itself when it is large enough already), or the error
// ExpandVolume answers for the request.
func ExpandSize(id string, cur, required, limit int64, fsType string) (int64, error) {
	if required < cur {
		if limit > 0 && limit < cur {
			return 0, errorf(ErrOutOfRange, "capacity_range: volume %s has %d bytes; shrinking to %d is not supported", id, cur, limit)
		}
		if required == 0 {
			return 0, errorf(ErrInvalidArgument, "capacity_range: required_bytes must be set")
		}
	}
	return PickSize(max(required, cur), limit, fsType)
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
