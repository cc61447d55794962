package backup

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"k8s.io/klog/v2"

	"github.com/cairn-csi/cairn/internal/fsops"
	"github.com/cairn-csi/cairn/internal/model"
)

// Source is what to back up.
type Source struct {
	// Path is the file to back up: a snapshot, not a live volume.
	Path string
	// ParentPath is the local snapshot the Parent backup was made from.
	// With both set the backup is incremental: blocks whose extents are
	// the same in both files are taken from Parent without being read.
	ParentPath string
	Parent     *Manifest
}

// Meta describes the backup being made.
type Meta struct {
	BackupID     string
	VolumeID     string
	VolumeName   string
	SnapshotName string
	Block        bool
	FsType       string
	// Claim is the source PVC, recorded for a restore elsewhere; nil if
	// not known.
	Claim *model.Claim
}

// Progress reports a long operation's progress in volume bytes.
type Progress struct {
	BytesDone, BytesTotal int64
}

// blockPlan says what to do with one block.
type blockPlan int8

const (
	planSkip  blockPlan = iota // hole: nothing stored
	planRead                   // read, hash, dedup or upload
	planReuse                  // unchanged since the parent: copy its entry
)

// Backup backs src up as a new backup and commits it by writing its
// manifest last. If the backup already exists it is returned as it is; if
// an earlier run crashed, the packs it uploaded are reused.
func (r *Repo) Backup(ctx context.Context, src Source, meta Meta, progress func(Progress)) (*Manifest, error) {
	if !model.ValidBackupID(meta.BackupID) || !model.ValidStoreVolumeID(meta.VolumeID) {
		return nil, fmt.Errorf("invalid backup %q of volume %q", meta.BackupID, meta.VolumeID)
	}
	if m, err := r.Manifest(ctx, meta.VolumeID, meta.BackupID); err == nil {
		return m, nil
	} else if !errors.Is(err, ErrNotFound) {
		return nil, err
	}
	start := time.Now()
	f, err := os.Open(src.Path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	size, err := sourceSize(f, meta)
	if err != nil {
		return nil, err
	}
	plan, parentEntries, err := r.plan(f, size, src)
	if err != nil {
		return nil, err
	}

	lock, err := r.acquireBackupLock(ctx, meta.BackupID)
	if err != nil {
		return nil, err
	}
	committed := false
	defer func() {
		if committed {
			return
		}
		lock.abandon() // keep the lock: a retry resumes with its packs
	}()

	idx, err := r.loadIndex(ctx, lock.packs())
	if err != nil {
		return nil, err
	}
	r.checkReuse(plan, parentEntries, idx, size)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	run := newBackupRun(ctx, cancel, r, f, src.Path, size, plan, parentEntries, idx, lock)
	if progress != nil {
		stop := run.startProgress(progress)
		defer close(stop)
	}
	if err := run.run(); err != nil {
		return nil, err
	}
	entries, err := run.located()
	if err != nil {
		return nil, err
	}
	stats := run.stats.snapshot(start)
	m := newManifest(meta, src, size, r.cfg.BlockSize, start, entries, stats)
	m.FormatVersion = r.cfg.FormatVersion
	if err := r.commit(ctx, lock, m); err != nil {
		return nil, err
	}
	committed = true
	if err := lock.release(ctx); err != nil {
		klog.ErrorS(err, "Removing backup lock", "backup", meta.BackupID)
	}
	if progress != nil {
		progress(Progress{BytesDone: size, BytesTotal: size})
	}
	klog.InfoS("Backup committed", "backup", meta.BackupID, "volume", meta.VolumeID, "store", r.store, "size", size,
		"read", stats.BytesRead, "uploaded", stats.BytesUploaded, "new", stats.BlocksNew, "reused", stats.BlocksReused,
		"deduped", stats.BlocksDeduped, "packs", stats.PacksUploaded, "duration", time.Since(start))
	return m, nil
}

// sourceSize is the size of the file to back up, if a store holds it.
func sourceSize(f *os.File, meta Meta) (int64, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	size := st.Size()
	if size > MaxVolumeBytes {
		return 0, fmt.Errorf("backup %s: the volume is %d bytes; a backup store holds volumes of up to %d", meta.BackupID, size, int64(MaxVolumeBytes))
	}
	return size, nil
}

// checkReuse turns back into reads the blocks planned for reuse that
// cannot be: a block unchanged since the parent is reused at the
// parent's location only if a validated pack index lists its hash
// there; otherwise it is read, and deduplicated or stored again.
func (r *Repo) checkReuse(plan []blockPlan, parentEntries map[int64]Entry, idx *blockIndex, size int64) {
	bs := r.cfg.BlockSize
	for n, p := range plan {
		off := int64(n) * bs
		if e, ok := parentEntries[off]; ok && p == planReuse && (e.RawLength != blockLen(bs, size, off) || !idx.lists(e.Hash, e.Loc)) {
			plan[n] = planRead
		}
	}
}

// newManifest describes the backup made.
func newManifest(meta Meta, src Source, size, bs int64, start time.Time, entries []Entry, stats Stats) *Manifest {
	m := &Manifest{
		FormatVersion: FormatVersion,
		ID:            meta.BackupID,
		VolumeID:      meta.VolumeID,
		VolumeName:    meta.VolumeName,
		SnapshotName:  meta.SnapshotName,
		SizeBytes:     size,
		BlockSize:     bs,
		Block:         meta.Block,
		FsType:        meta.FsType,
		Claim:         meta.Claim,
		CreatedAt:     start.UTC(),
		CompletedAt:   time.Now().UTC(),
		Blocks:        entries,
		Stats:         stats,
	}
	if src.Parent != nil {
		m.Parent = src.Parent.ID
	}
	return m
}

// commit writes the backup's manifest, after the last look of its lock
// (docs/FORMAT.md, invariant 7). The caller releases the lock once this
// succeeded, and keeps it otherwise.
func (r *Repo) commit(ctx context.Context, lock *lease, m *Manifest) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if len(b) > maxManifestBytes {
		return fmt.Errorf("backup %s: its manifest would be %d bytes, over the %d a reader accepts", m.ID, len(b), maxManifestBytes)
	}
	key := manifestKey(m.VolumeID, m.ID)
	b = r.enc.sealObject(key, b)
	if err := r.checkConfig(ctx); err != nil {
		return fmt.Errorf("commit backup %s: %w", m.ID, err)
	}
	if err := lock.checkCommit(ctx); err != nil {
		return fmt.Errorf("commit backup %s: %w", m.ID, err)
	}
	if err := r.store.Put(ctx, key, bytes.NewReader(b), int64(len(b))); err != nil {
		return fmt.Errorf("commit manifest of backup %s: %w", m.ID, err)
	}
	return nil
}

// plan decides, block by block, whether to skip, read or reuse.
func (r *Repo) plan(f *os.File, size int64, src Source) ([]blockPlan, map[int64]Entry, error) {
	bs := r.cfg.BlockSize
	nblocks := blockCount(bs, size)
	plan := make([]blockPlan, nblocks)
	err := fsops.ForEachDataRange(f, size, func(off, length int64) error {
		for n := off / bs; n*bs < off+length; n++ {
			plan[n] = planRead
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	if src.ParentPath == "" || src.Parent == nil {
		return plan, nil, nil
	}
	if src.Parent.BlockSize != bs {
		klog.InfoS("Parent backup has another block size; making a full backup", "parent", src.Parent.ID)
		return plan, nil, nil
	}
	pf, err := os.Open(src.ParentPath)
	if err != nil {
		return nil, nil, fmt.Errorf("open parent snapshot: %w", err)
	}
	defer pf.Close()
	pst, err := pf.Stat()
	if err != nil {
		return nil, nil, err
	}
	cur, err := fsops.Extents(f)
	if err != nil {
		return nil, nil, err
	}
	par, err := fsops.Extents(pf)
	if err != nil {
		return nil, nil, err
	}
	parentEntries := make(map[int64]Entry, len(src.Parent.Blocks))
	for _, e := range src.Parent.Blocks {
		parentEntries[e.Offset] = e
	}
	// A block is reused when no changed range touches it; everything past
	// the parent's end is read.
	changed := fsops.Changed(par, cur, min(size, pst.Size()))
	c := 0
	for n := range plan {
		lo := int64(n) * bs
		hi := lo + blockLen(bs, size, lo)
		if hi > pst.Size() {
			continue // beyond the parent: read it
		}
		for c < len(changed) && changed[c].End() <= lo {
			c++
		}
		if c == len(changed) || changed[c].Offset >= hi {
			plan[n] = planReuse
		}
	}
	return plan, parentEntries, nil
}
