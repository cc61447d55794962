package backup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"time"

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
	bufs := newBufferPool(r.Concurrency, int(m.BlockSize))
	storedBufs := newBufferPool(r.Concurrency, blobCap(m.BlockSize))
	err = parallel(ctx, r.Concurrency, len(m.Blocks), func(i int) error {
		e := m.Blocks[i]
		buf, storedBuf := bufs.get(), storedBufs.get()
		defer func() { bufs.put(buf); storedBufs.put(storedBuf) }()
		raw, err := r.fetchBlock(ctx, m, e, storedBuf, buf)
		if err != nil {
			return err
		}
		if _, err := f.WriteAt(raw, e.Offset); err != nil {
			return fmt.Errorf("write %s at %d: %w", dst, e.Offset, err)
		}
		done.Add(e.RawLength)
		faults.Point("restore:after-block")
		return nil
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
