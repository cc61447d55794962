package backup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/cairn-csi/cairn/internal/faults"
	"github.com/cairn-csi/cairn/internal/objstore"
)

// blockError names exactly which block failed and where it is stored.
func blockError(m *Manifest, e Entry, err error) error {
	return fmt.Errorf("%w: backup %s of volume %s, block at volume offset %d (hash %s…) in pack %s at offset %d: %v",
		ErrCorrupt, m.ID, m.VolumeID, e.Offset, short(e.Hash), e.Pack, e.Loc.Offset, err)
}

// fetchBlock reads one stored block into storedBuf and verifies it,
// decompressing into buf; both buffers are reused when large enough. A
// blob that is missing, short or fails its check is damage (ErrCorrupt)
// and is quarantined; a failure to reach the store is returned as it is.
func (r *Repo) fetchBlock(ctx context.Context, m *Manifest, e Entry, storedBuf, buf []byte) ([]byte, error) {
	stored, err := r.readRangeInto(ctx, packKey(e.Pack), e.Loc.Offset, e.Length, storedBuf)
	switch {
	case err == nil:
	case ctx.Err() != nil:
		return nil, ctx.Err()
	case errors.Is(err, objstore.ErrNotFound), errors.Is(err, objstore.ErrInvalidRange):
		return nil, blockError(m, e, err)
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		// Short: damage only if the pack really is too short (a flaky
		// connection that gave up resuming is not).
		if info, serr := r.store.Stat(ctx, packKey(e.Pack)); serr == nil && info.Size < e.Loc.Offset+e.Length {
			return nil, blockError(m, e, fmt.Errorf("pack is %d bytes: %w", info.Size, err))
		}
		return nil, fmt.Errorf("backup %s of volume %s, block at volume offset %d: %w", m.ID, m.VolumeID, e.Offset, err)
	default:
		return nil, fmt.Errorf("backup %s of volume %s, block at volume offset %d: %w", m.ID, m.VolumeID, e.Offset, err)
	}
	raw, err := r.enc.decodeBlock(stored, e.Comp, e.RawLength, e.Hash, buf)
	if err != nil {
		r.quarantine(ctx, e, err)
		return nil, blockError(m, e, err)
	}
	return raw, nil
}

// Restore writes backup m into dst, which must be a new, empty (sparse)
// file: blocks the backup does not store stay holes. Blocks are fetched in
// parallel and each is verified against its hash before it is written; a
// damaged block fails the restore with an error naming it.
func (r *Repo) Restore(ctx context.Context, m *Manifest, dst string, progress func(Progress)) error {
	if err := m.validate(m.VolumeID, m.ID, r.cfg.BlockSize, r.enc.overhead()); err != nil {
		return err
	}
	start := time.Now()
	f, err := os.OpenFile(dst, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if st.Size() < m.SizeBytes {
		if err := f.Truncate(m.SizeBytes); err != nil {
			return err
		}
	}
	var done atomic.Int64
	stop := make(chan struct{})
	defer close(stop)
	if progress != nil {
		go everySecond(stop, func() { progress(Progress{BytesDone: done.Load(), BytesTotal: m.SizeBytes}) })
	}
	err = r.writeBlocks(ctx, m, m.Blocks, f, func(e Entry) {
		done.Add(e.RawLength)
		faults.Point("restore:after-block")
	})
	if err != nil {
		return fmt.Errorf("restore backup %s: %w", m.ID, err)
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if progress != nil {
		progress(Progress{BytesDone: m.SizeBytes, BytesTotal: m.SizeBytes})
	}
	klog.InfoS("Backup restored", "backup", m.ID, "volume", m.VolumeID, "blocks", len(m.Blocks), "file", dst, "duration", time.Since(start))
	return nil
}

// DeltaStats is what RestoreDelta did.
type DeltaStats struct {
	// BlocksFetched blocks were downloaded (BytesDownloaded stored bytes,
	// verified); BlocksKept already held the right content; BlocksZeroed
	// were data in the old backup and are holes in the new one.
	BlocksFetched, BlocksKept, BlocksZeroed int
	BytesDownloaded                         int64
}

// RestoreDelta turns dst, which holds exactly the backup whose blocks
// are have (offset and hash of each stored block, as its manifest
// lists them), into backup m, downloading only the blocks whose content
// differs: a standby volume following a volume's backups. It is
// idempotent: after an interruption dst mixes both backups, and running
// it again with the same have and m finishes the job. Every block
// fetched is verified like a restore's.
func (r *Repo) RestoreDelta(ctx context.Context, have []Entry, m *Manifest, dst string) (DeltaStats, error) {
	var st DeltaStats
	if err := m.validate(m.VolumeID, m.ID, r.cfg.BlockSize, r.enc.overhead()); err != nil {
		return st, err
	}
	f, err := os.OpenFile(dst, os.O_RDWR, 0)
	if err != nil {
		return st, err
	}
	defer f.Close()
	if err := f.Truncate(m.SizeBytes); err != nil {
		return st, err
	}
	old := make(map[int64]string, len(have))
	for _, e := range have {
		old[e.Offset] = e.Hash
	}
	var todo []Entry
	for _, e := range m.Blocks {
		if old[e.Offset] == e.Hash {
			st.BlocksKept++
		} else {
			todo = append(todo, e)
		}
		delete(old, e.Offset)
	}
	for off := range old { // data before, a hole now
		if off >= m.SizeBytes {
			continue
		}
		n := blockLen(m.BlockSize, m.SizeBytes, off)
		if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n); err != nil {
			return st, fmt.Errorf("punch a hole in %s at %d: %w", dst, off, err)
		}
		st.BlocksZeroed++
	}
	var downloaded atomic.Int64
	err = r.writeBlocks(ctx, m, todo, f, func(e Entry) { downloaded.Add(e.Length) })
	st.BlocksFetched, st.BytesDownloaded = len(todo), downloaded.Load()
	if err != nil {
		return st, fmt.Errorf("apply backup %s: %w", m.ID, err)
	}
	return st, f.Sync()
}

// writeBlocks fetches and verifies entries of backup m in parallel and
// writes each at its offset in f, calling done after each.
func (r *Repo) writeBlocks(ctx context.Context, m *Manifest, entries []Entry, f *os.File, done func(Entry)) error {
	bufs := newBufferPool(r.Concurrency, int(m.BlockSize))
	storedBufs := newBufferPool(r.Concurrency, blobCap(m.BlockSize))
	return parallel(ctx, r.Concurrency, len(entries), func(i int) error {
		e := entries[i]
		buf, storedBuf := bufs.get(), storedBufs.get()
		defer func() { bufs.put(buf); storedBufs.put(storedBuf) }()
		raw, err := r.fetchBlock(ctx, m, e, storedBuf, buf)
		if err != nil {
			return err
		}
		if _, err := f.WriteAt(raw, e.Offset); err != nil {
			return fmt.Errorf("write %s at %d: %w", f.Name(), e.Offset, err)
		}
		done(e)
		return nil
	})
}
