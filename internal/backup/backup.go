package backup

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/klog/v2"

	"github.com/cairn-csi/cairn/internal/faults"
	"github.com/cairn-csi/cairn/internal/fsops"
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
	if !ValidBackupID(meta.BackupID) || !ValidVolumeID(meta.VolumeID) {
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
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := st.Size()
	bs := r.cfg.BlockSize
	if size > MaxVolumeBytes {
		return nil, fmt.Errorf("backup %s: the volume is %d bytes; a backup store holds volumes of up to %d", meta.BackupID, size, int64(MaxVolumeBytes))
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
	// A block unchanged since the parent is reused at the parent's
	// location only if a validated pack index lists its hash there;
	// otherwise it is read, and deduplicated or stored again.
	for n, p := range plan {
		off := int64(n) * bs
		if e, ok := parentEntries[off]; ok && p == planReuse && (e.RawLength != min(bs, size-off) || !idx.lists(e.Hash, e.Loc)) {
			plan[n] = planRead
		}
	}

	var (
		stats         Stats
		done          atomic.Int64
		bytesRead     atomic.Int64
		nNew          atomic.Int64
		nDedup        atomic.Int64
		nSkip         atomic.Int64
		bytesUploaded atomic.Int64
		packsUploaded atomic.Int64
		entriesMu     sync.Mutex
		entries       []Entry // Loc filled in at the end
		pendingMu     sync.Mutex
		pending       = map[string]bool{} // hashes queued for upload by this backup
	)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		errOnce  sync.Once
		firstErr error
	)
	fail := func(err error) {
		errOnce.Do(func() { firstErr = err; cancel() })
	}
	// guarded runs a stage's body, failing the backup if it panics.
	guarded := func(body func()) {
		if err := safeCall(func() error { body(); return nil }); err != nil {
			fail(err)
		}
	}

	if progress != nil {
		stopProgress := make(chan struct{})
		defer close(stopProgress)
		go guarded(func() {
			t := time.NewTicker(time.Second)
			defer t.Stop()
			for {
				select {
				case <-stopProgress:
					return
				case <-t.C:
					progress(Progress{BytesDone: done.Load(), BytesTotal: size})
				}
			}
		})
	}

	workers := runtime.GOMAXPROCS(0)
	const blobQueue, uploaders = 8, 2
	// Buffers circulate instead of being allocated per block and pack.
	blobBufs := newBufferPool(workers+blobQueue+1, blobCap(bs))
	packBufs := make(chan *bytes.Buffer, uploaders+1)
	for i := 0; i < cap(packBufs); i++ {
		packBufs <- bytes.NewBuffer(make([]byte, 0, packTarget+2*blobCap(bs)+1<<20))
	}
	blobs := make(chan blob, blobQueue)
	uploads := make(chan upload, 1)
	var uploaderWG sync.WaitGroup
	for i := 0; i < uploaders; i++ {
		uploaderWG.Add(1)
		go func() {
			defer uploaderWG.Done()
			defer func() {
				for u := range uploads { // after a panic: drain
					packBufs <- u.buf
				}
			}()
			guarded(func() {
				for u := range uploads {
					if ctx.Err() != nil {
						packBufs <- u.buf
						continue
					}
					err := r.store.Put(ctx, packKey(u.id), bytes.NewReader(u.data), int64(len(u.data)))
					packBufs <- u.buf
					if err != nil {
						fail(fmt.Errorf("upload pack %s: %w", u.id, err))
						continue
					}
					idx.addPack(u.id, u.index, nil)
					r.markVerified(u.id, u.index)
					r.cachePackIndex(u.id, u.index)
					if err := lock.addPack(ctx, u.id); err != nil {
						fail(err)
						continue
					}
					faults.Point("backup:after-pack")
					bytesUploaded.Add(int64(len(u.data)))
					packsUploaded.Add(1)
				}
			})
		}()
	}
	packerDone := make(chan struct{})
	go func() {
		defer close(packerDone)
		defer close(uploads)
		defer func() {
			for b := range blobs { // after a panic: drain
				blobBufs.put(b.data)
			}
		}()
		guarded(func() {
			var pb *packBuilder
			flush := func() {
				if pb == nil || len(pb.index) == 0 {
					return
				}
				id, data, index := pb.finish()
				select {
				case uploads <- upload{id: id, data: data, index: index, buf: pb.buf}:
				case <-ctx.Done():
					packBufs <- pb.buf
				}
				pb = nil
			}
			for b := range blobs {
				if pb == nil {
					select {
					case buf := <-packBufs:
						pb = newPackBuilder(buf)
					case <-ctx.Done():
						blobBufs.put(b.data)
						continue
					}
				}
				pb.add(b.hash, b.data, b.rawLen, b.comp)
				blobBufs.put(b.data)
				if pb.full() {
					flush()
				}
			}
			if ctx.Err() == nil {
				flush()
			}
		})
	}()

	work := make(chan int64, 16)
	var wg sync.WaitGroup
	zero := make([]byte, bs)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				for range work { // after a panic: drain
				}
			}()
			guarded(func() {
				buf := make([]byte, bs)
				var chk dedupChecker
				for n := range work {
					if ctx.Err() != nil {
						continue
					}
					off := n * bs
					length := min(bs, size-off)
					b := buf[:length]
					if _, err := f.ReadAt(b, off); err != nil && !errors.Is(err, io.EOF) {
						fail(fmt.Errorf("read %s at %d: %w", src.Path, off, err))
						continue
					}
					bytesRead.Add(length)
					done.Add(length)
					if bytes.Equal(b, zero[:length]) {
						nSkip.Add(1)
						continue
					}
					h := hashBlock(b)
					if loc, ok := idx.get(h); ok {
						if loc.RawLength == length && chk.usable(ctx, r, h, loc) {
							entriesMu.Lock()
							entries = append(entries, Entry{Offset: off, Hash: h, Loc: loc})
							entriesMu.Unlock()
							nDedup.Add(1)
							continue
						}
						idx.drop(h, loc) // store our own copy instead
					}
					entriesMu.Lock()
					entries = append(entries, Entry{Offset: off, Hash: h})
					entriesMu.Unlock()
					pendingMu.Lock()
					dup := pending[h]
					pending[h] = true
					pendingMu.Unlock()
					if dup {
						nDedup.Add(1)
						continue
					}
					data, comp := encodeBlock(b, blobBufs.get())
					nNew.Add(1)
					select {
					case blobs <- blob{hash: h, data: data, rawLen: length, comp: comp}:
					case <-ctx.Done():
						blobBufs.put(data)
					}
				}
			})
		}()
	}
	reused := 0
	for n, p := range plan {
		switch p {
		case planRead:
			select {
			case work <- int64(n):
			case <-ctx.Done():
			}
		case planReuse:
			if e, ok := parentEntries[int64(n)*bs]; ok {
				entriesMu.Lock()
				entries = append(entries, e)
				entriesMu.Unlock()
				reused++
			} else {
				nSkip.Add(1) // a hole or zero block in the parent too
			}
			done.Add(min(bs, size-int64(n)*bs))
		default:
			nSkip.Add(1)
			done.Add(min(bs, size-int64(n)*bs))
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(work)
	wg.Wait()
	close(blobs)
	<-packerDone
	uploaderWG.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	sort.Slice(entries, func(i, j int) bool { return entries[i].Offset < entries[j].Offset })
	for i := range entries {
		if entries[i].Pack != "" {
			continue // deduplicated or reused at a checked location
		}
		loc, ok := idx.get(entries[i].Hash)
		if !ok {
			return nil, fmt.Errorf("internal error: block %s at %d has no stored location", entries[i].Hash, entries[i].Offset)
		}
		entries[i].Loc = loc
	}
	stats.BytesRead = bytesRead.Load()
	stats.BlocksNew = int(nNew.Load())
	stats.BlocksDeduped = int(nDedup.Load())
	stats.BlocksSkipped = int(nSkip.Load())
	stats.BlocksReused = reused
	stats.BytesUploaded = bytesUploaded.Load()
	stats.PacksUploaded = int(packsUploaded.Load())
	stats.DurationSecond = time.Since(start).Seconds()
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
		CreatedAt:     start.UTC(),
		CompletedAt:   time.Now().UTC(),
		Blocks:        entries,
		Stats:         stats,
	}
	if src.Parent != nil {
		m.Parent = src.Parent.ID
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	if len(b) > maxManifestBytes {
		return nil, fmt.Errorf("backup %s: its manifest would be %d bytes, over the %d a reader accepts", meta.BackupID, len(b), maxManifestBytes)
	}
	if err := lock.checkCommit(ctx); err != nil {
		return nil, fmt.Errorf("commit backup %s: %w", meta.BackupID, err)
	}
	if err := r.store.Put(ctx, manifestKey(meta.VolumeID, meta.BackupID), bytes.NewReader(b), int64(len(b))); err != nil {
		return nil, fmt.Errorf("commit manifest of backup %s: %w", meta.BackupID, err)
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

type blob struct {
	hash   string
	data   []byte
	rawLen int64
	comp   string
}

type upload struct {
	id    string
	data  []byte
	index []packIndexEntry
	buf   *bytes.Buffer // returned to the pool once uploaded
}

// plan decides, block by block, whether to skip, read or reuse.
func (r *Repo) plan(f *os.File, size int64, src Source) ([]blockPlan, map[int64]Entry, error) {
	bs := r.cfg.BlockSize
	nblocks := (size + bs - 1) / bs
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
	for n := range plan {
		lo, hi := int64(n)*bs, min(int64(n+1)*bs, size)
		if hi > pst.Size() {
			continue // beyond the parent: read it
		}
		if sameExtents(clip(cur, lo, hi), clip(par, lo, hi)) {
			plan[n] = planReuse
		}
	}
	return plan, parentEntries, nil
}

// clip returns the extents overlapping [lo,hi), cut to that range, with
// physical offsets adjusted.
func clip(exts []fsops.Extent, lo, hi int64) []fsops.Extent {
	i := sort.Search(len(exts), func(i int) bool { return exts[i].Logical+exts[i].Length > lo })
	var out []fsops.Extent
	for ; i < len(exts) && exts[i].Logical < hi; i++ {
		e := exts[i]
		s, t := max(e.Logical, lo), min(e.Logical+e.Length, hi)
		out = append(out, fsops.Extent{Logical: s, Physical: e.Physical + (s - e.Logical), Length: t - s, Flags: e.Flags})
	}
	return out
}

// sameExtents reports whether two clipped extent lists map the same bytes
// to the same physical blocks, so the data cannot differ.
func sameExtents(a, b []fsops.Extent) bool {
	if len(a) != len(b) {
		return false
	}
	const unstable = fsops.FiemapExtentUnknown | fsops.FiemapExtentDelalloc
	for i := range a {
		if a[i].Flags&unstable != 0 || b[i].Flags&unstable != 0 {
			return false
		}
		if a[i].Logical != b[i].Logical || a[i].Physical != b[i].Physical || a[i].Length != b[i].Length {
			return false
		}
	}
	return true
}
