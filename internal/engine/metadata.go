package engine

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cairn-csi/cairn/internal/fsops"
	"github.com/cairn-csi/cairn/internal/model"
)

// SnapshotMetadata streams a local snapshot's changed-block metadata
// (docs/CBT.md): its allocated ranges, or with q.BaseSnapshotID the
// ranges where it differs from that older snapshot of the same volume,
// both from the FIEMAP maps of the snapshot files (the same comparison
// incremental backups plan with). The snapshots are locked only while
// their files are opened: an open file stays readable if one is deleted
// meanwhile. A base that no longer exists is ErrFailedPrecondition (the
// caller falls back to the allocated ranges, a full backup).
func (e *Engine) SnapshotMetadata(ctx context.Context, q model.MetadataQuery, emit func(model.MetadataChunk) error) error {
	target, base, meta, err := e.openMetadataFiles(ctx, q)
	if err != nil {
		return err
	}
	defer target.Close()
	if base != nil {
		defer base.Close()
	}
	exts, err := fsops.Extents(target)
	if err != nil {
		return err
	}
	var rs []fsops.Range
	if base == nil {
		rs = fsops.Allocated(exts, meta.SizeBytes)
	} else {
		bexts, err := fsops.Extents(base.File)
		if err != nil {
			return err
		}
		// Past the base's end (the volume grew since) the base reads as
		// a hole: only what was written there since counts.
		rs = fsops.Changed(clipExtents(bexts, base.size), exts, meta.SizeBytes)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	out := make([]model.BlockRange, len(rs))
	for i, r := range rs {
		out[i] = model.BlockRange{Offset: r.Offset, Length: r.Length}
	}
	return model.SendRanges(out, meta.SizeBytes, q, emit)
}

type baseFile struct {
	*os.File
	size int64
}

// openMetadataFiles checks the query's snapshots and opens their data
// files under their locks.
func (e *Engine) openMetadataFiles(ctx context.Context, q model.MetadataQuery) (*os.File, *baseFile, *SnapshotMeta, error) {
	ids := []string{q.SnapshotID}
	if q.BaseSnapshotID != "" {
		if q.BaseSnapshotID == q.SnapshotID {
			return nil, nil, nil, model.Errorf(model.ErrInvalidArgument, "base_snapshot_id: %q is the target snapshot itself", q.BaseSnapshotID)
		}
		ids = append(ids, q.BaseSnapshotID)
	}
	unlock, err := e.locks.lock(ctx, ids...)
	if err != nil {
		return nil, nil, nil, err
	}
	defer unlock()
	meta, err := e.loadSnapshot(q.SnapshotID)
	if err != nil {
		return nil, nil, nil, err
	}
	var bmeta *SnapshotMeta
	if q.BaseSnapshotID != "" {
		if bmeta, err = e.loadBaseSnapshot(q.BaseSnapshotID, meta); err != nil {
			return nil, nil, nil, err
		}
	}
	target, err := os.Open(filepath.Join(e.snapshotDir(meta.ID), dataFile))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("open snapshot %s: %w", meta.ID, err)
	}
	if bmeta == nil {
		return target, nil, meta, nil
	}
	bf, err := os.Open(filepath.Join(e.snapshotDir(bmeta.ID), dataFile))
	if err != nil {
		target.Close()
		return nil, nil, nil, fmt.Errorf("open snapshot %s: %w", bmeta.ID, err)
	}
	return target, &baseFile{File: bf, size: bmeta.SizeBytes}, meta, nil
}

// loadBaseSnapshot loads a delta's base: it must still exist and be an
// snapshot of the target's volume (the order does not matter: the
// ranges where two files differ are the same either way).
func (e *Engine) loadBaseSnapshot(id string, target *SnapshotMeta) (*SnapshotMeta, error) {
	if !model.ValidSnapshotID(id) {
		return nil, model.Errorf(model.ErrNotFound, "base_snapshot_id %q is not a snapshot ID of this driver", id)
	}
	b, err := e.loadSnapshot(id)
	if isNotFound(err) {
		return nil, model.Errorf(model.ErrFailedPrecondition, "base_snapshot_id %s: the snapshot no longer exists, so no delta can be computed; read GetMetadataAllocated of %s instead (a full backup)", id, target.ID)
	}
	if err != nil {
		return nil, err
	}
	if b.SourceVolumeID != target.SourceVolumeID {
		return nil, model.Errorf(model.ErrInvalidArgument, "base_snapshot_id %s is a snapshot of volume %s, the target %s one of volume %s", id, b.SourceVolumeID, target.ID, target.SourceVolumeID)
	}
	return b, nil
}

// clipExtents cuts an extent map at size.
func clipExtents(exts []fsops.Extent, size int64) []fsops.Extent {
	out := exts[:0:0]
	for _, x := range exts {
		if x.Logical >= size {
			break
		}
		if x.Logical+x.Length > size {
			x.Length = size - x.Logical
		}
		out = append(out, x)
	}
	return out
}
