package backup

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cairn-csi/cairn/internal/faults"
)

// statCounters accumulates a running backup's Stats (and its progress);
// its methods are safe for concurrent use.
type statCounters struct {
	done          atomic.Int64 // volume bytes dealt with, for progress
	bytesRead     atomic.Int64
	bytesUploaded atomic.Int64
	blocksNew     atomic.Int64
	blocksReused  atomic.Int64
	blocksDeduped atomic.Int64
	blocksSkipped atomic.Int64
	packsUploaded atomic.Int64
}

// read counts n bytes read from the source (and done).
func (c *statCounters) read(n int64) {
	c.bytesRead.Add(n)
	c.done.Add(n)
}

// passed counts n volume bytes dealt with without reading them.
func (c *statCounters) passed(n int64) { c.done.Add(n) }

func (c *statCounters) newBlock() { c.blocksNew.Add(1) }
func (c *statCounters) reused()   { c.blocksReused.Add(1) }
func (c *statCounters) deduped()  { c.blocksDeduped.Add(1) }
func (c *statCounters) skipped()  { c.blocksSkipped.Add(1) }

// uploadedPack counts one uploaded pack of n bytes.
func (c *statCounters) uploadedPack(n int64) {
	c.bytesUploaded.Add(n)
	c.packsUploaded.Add(1)
}

// bytesDone is the progress so far.
func (c *statCounters) bytesDone() int64 { return c.done.Load() }

// snapshot returns the counters as the manifest's Stats, for a backup
// that started at start.
func (c *statCounters) snapshot(start time.Time) Stats {
	return Stats{
		BytesRead:      c.bytesRead.Load(),
		BlocksNew:      int(c.blocksNew.Load()),
		BlocksDeduped:  int(c.blocksDeduped.Load()),
		BlocksSkipped:  int(c.blocksSkipped.Load()),
		BlocksReused:   int(c.blocksReused.Load()),
		BytesUploaded:  c.bytesUploaded.Load(),
		PacksUploaded:  int(c.packsUploaded.Load()),
		DurationSecond: time.Since(start).Seconds(),
	}
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

// Pipeline sizes: the blocks queued between the readers and the packer,
// and the uploaders running at once.
const blobQueue, uploaders = 8, 2

// backupRun is the data path of one Repo.Backup, once its lock is held
// and its index loaded: the plan feeds block numbers to the readers
// (read, hash, dedup, compress), which hand new blobs to the packer,
// which hands finished packs to the uploaders. The first error (or panic)
// of any stage cancels ctx; every stage then drains its input so that
// the others can finish.
type backupRun struct {
	r             *Repo
	ctx           context.Context
	cancel        context.CancelFunc
	f             *os.File
	path          string
	size, bs      int64
	plan          []blockPlan
	parentEntries map[int64]Entry
	idx           *blockIndex
	lock          *lease
	workers       int

	stats statCounters

	entriesMu sync.Mutex
	entries   []Entry // Loc filled in at the end
	pendingMu sync.Mutex
	pending   map[string]bool // hashes queued for upload by this backup

	errOnce  sync.Once
	firstErr error

	zero     []byte
	blobBufs bufferPool // buffers circulate instead of being allocated per block and pack
	packBufs chan *bytes.Buffer
	work     chan int64
	blobs    chan blob
	uploads  chan upload
}

func newBackupRun(ctx context.Context, cancel context.CancelFunc, r *Repo, f *os.File, path string, size int64,
	plan []blockPlan, parentEntries map[int64]Entry, idx *blockIndex, lock *lease) *backupRun {
	bs := r.cfg.BlockSize
	workers := runtime.GOMAXPROCS(0)
	b := &backupRun{
		r: r, ctx: ctx, cancel: cancel, f: f, path: path, size: size, bs: bs,
		plan: plan, parentEntries: parentEntries, idx: idx, lock: lock, workers: workers,
		pending:  map[string]bool{},
		zero:     make([]byte, bs),
		blobBufs: newBufferPool(workers+blobQueue+1, blobCap(bs)),
		packBufs: make(chan *bytes.Buffer, uploaders+1),
		work:     make(chan int64, 16),
		blobs:    make(chan blob, blobQueue),
		uploads:  make(chan upload, 1),
	}
	for i := 0; i < cap(b.packBufs); i++ {
		b.packBufs <- bytes.NewBuffer(make([]byte, 0, packTarget+2*blobCap(bs)+1<<20))
	}
	return b
}

// fail records the backup's first error and stops every stage.
func (b *backupRun) fail(err error) {
	b.errOnce.Do(func() { b.firstErr = err; b.cancel() })
}

// guarded runs a stage's body, failing the backup if it panics.
func (b *backupRun) guarded(body func()) {
	if err := safeCall(func() error { body(); return nil }); err != nil {
		b.fail(err)
	}
}

// startProgress reports progress every second until stop is closed.
func (b *backupRun) startProgress(progress func(Progress)) (stop chan struct{}) {
	stop = make(chan struct{})
	go b.guarded(func() {
		everySecond(stop, func() { progress(Progress{BytesDone: b.stats.bytesDone(), BytesTotal: b.size}) })
	})
	return stop
}

// everySecond calls tick once a second until stop is closed: the progress
// reports of backups and restores.
func everySecond(stop <-chan struct{}, tick func()) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			tick()
		}
	}
}

// run starts the stages, feeds them the plan and waits for all of them;
// it returns the first error, or the context's.
func (b *backupRun) run() error {
	var uploaderWG sync.WaitGroup
	for i := 0; i < uploaders; i++ {
		uploaderWG.Add(1)
		go func() {
			defer uploaderWG.Done()
			b.uploader()
		}()
	}
	packerDone := make(chan struct{})
	go func() {
		defer close(packerDone)
		b.packer()
	}()
	var wg sync.WaitGroup
	for w := 0; w < b.workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b.reader()
		}()
	}
	b.feed()
	close(b.work)
	wg.Wait()
	close(b.blobs)
	<-packerDone
	uploaderWG.Wait()
	if b.firstErr != nil {
		return b.firstErr
	}
	return b.ctx.Err()
}

// feed hands the blocks to read to the readers and takes the others
// (holes, blocks unchanged since the parent) as they are.
func (b *backupRun) feed() {
	for n, p := range b.plan {
		length := blockLen(b.bs, b.size, int64(n)*b.bs)
		switch p {
		case planRead:
			select {
			case b.work <- int64(n):
			case <-b.ctx.Done():
			}
		case planReuse:
			if e, ok := b.parentEntries[int64(n)*b.bs]; ok {
				b.addEntry(e)
				b.stats.reused()
			} else {
				b.stats.skipped() // a hole or zero block in the parent too
			}
			b.stats.passed(length)
		default:
			b.stats.skipped()
			b.stats.passed(length)
		}
		if b.ctx.Err() != nil {
			break
		}
	}
}

func (b *backupRun) addEntry(e Entry) {
	b.entriesMu.Lock()
	b.entries = append(b.entries, e)
	b.entriesMu.Unlock()
}

// reader is one reading stage goroutine: it reads, hashes and dedups
// blocks, and compresses the new ones for the packer.
func (b *backupRun) reader() {
	defer func() {
		for range b.work { // after a panic: drain
		}
	}()
	b.guarded(func() {
		buf := make([]byte, b.bs)
		var chk dedupChecker
		for n := range b.work {
			if b.ctx.Err() != nil {
				continue
			}
			b.readBlock(n, buf, &chk)
		}
	})
}

// readBlock handles block n: a zero block is skipped, one whose hash is
// stored at a usable location (or already queued by this backup) is
// deduplicated, any other is compressed and sent to the packer.
func (b *backupRun) readBlock(n int64, buf []byte, chk *dedupChecker) {
	off := n * b.bs
	length := blockLen(b.bs, b.size, off)
	data := buf[:length]
	if _, err := b.f.ReadAt(data, off); err != nil && !errors.Is(err, io.EOF) {
		b.fail(fmt.Errorf("read %s at %d: %w", b.path, off, err))
		return
	}
	b.stats.read(length)
	if bytes.Equal(data, b.zero[:length]) {
		b.stats.skipped()
		return
	}
	h := b.r.enc.hash(data)
	if loc, ok := b.idx.get(h); ok {
		if loc.RawLength == length && chk.usable(b.ctx, b.r, h, loc) {
			b.addEntry(Entry{Offset: off, Hash: h, Loc: loc})
			b.stats.deduped()
			return
		}
		b.idx.drop(h, loc) // store our own copy instead
	}
	b.addEntry(Entry{Offset: off, Hash: h})
	b.pendingMu.Lock()
	dup := b.pending[h]
	b.pending[h] = true
	b.pendingMu.Unlock()
	if dup {
		b.stats.deduped()
		return
	}
	enc, comp := encodeBlock(data, b.blobBufs.get())
	enc = b.r.enc.sealBlob(h, enc)
	b.stats.newBlock()
	select {
	case b.blobs <- blob{hash: h, data: enc, rawLen: length, comp: comp}:
	case <-b.ctx.Done():
		b.blobBufs.put(enc)
	}
}

// packer is the packing stage: it groups blobs into packs for the
// uploaders, and closes uploads when done.
func (b *backupRun) packer() {
	defer close(b.uploads)
	defer func() {
		for bl := range b.blobs { // after a panic: drain
			b.blobBufs.put(bl.data)
		}
	}()
	b.guarded(func() {
		var pb *packBuilder
		for bl := range b.blobs {
			if pb == nil {
				select {
				case buf := <-b.packBufs:
					pb = newPackBuilder(buf)
				case <-b.ctx.Done():
					b.blobBufs.put(bl.data)
					continue
				}
			}
			pb.add(bl.hash, bl.data, bl.rawLen, bl.comp)
			b.blobBufs.put(bl.data)
			if pb.full() {
				pb = b.flush(pb)
			}
		}
		if b.ctx.Err() == nil {
			b.flush(pb)
		}
	})
}

// flush hands a non-empty pack to the uploaders and returns nil; an
// empty (or no) pack is returned as it is.
func (b *backupRun) flush(pb *packBuilder) *packBuilder {
	if pb == nil || len(pb.index) == 0 {
		return pb
	}
	id, data, index := pb.finish()
	select {
	case b.uploads <- upload{id: id, data: data, index: index, buf: pb.buf}:
	case <-b.ctx.Done():
		b.packBufs <- pb.buf
	}
	return nil
}

// uploader is one upload stage goroutine.
func (b *backupRun) uploader() {
	defer func() {
		for u := range b.uploads { // after a panic: drain
			b.packBufs <- u.buf
		}
	}()
	b.guarded(func() {
		for u := range b.uploads {
			if b.ctx.Err() != nil {
				b.packBufs <- u.buf
				continue
			}
			b.uploadPack(u)
		}
	})
}

// uploadPack stores a pack, then adds it to the index and records it in
// the lock (before any manifest can refer to it).
func (b *backupRun) uploadPack(u upload) {
	err := b.r.store.Put(b.ctx, packKey(u.id), bytes.NewReader(u.data), int64(len(u.data)))
	b.packBufs <- u.buf
	if err != nil {
		b.fail(fmt.Errorf("upload pack %s: %w", u.id, err))
		return
	}
	b.idx.addPack(u.id, u.index, nil)
	b.r.markVerified(u.id, u.index)
	b.r.cachePackIndex(u.id, u.index)
	if err := b.lock.addPack(b.ctx, u.id); err != nil {
		b.fail(err)
		return
	}
	faults.Point("backup:after-pack")
	b.stats.uploadedPack(int64(len(u.data)))
}

// located returns the entries sorted by offset, each with its stored
// location (the new blocks' from the index, now that their packs are
// uploaded).
func (b *backupRun) located() ([]Entry, error) {
	entries := b.entries
	sort.Slice(entries, func(i, j int) bool { return entries[i].Offset < entries[j].Offset })
	for i := range entries {
		if entries[i].Pack != "" {
			continue // deduplicated or reused at a checked location
		}
		loc, ok := b.idx.get(entries[i].Hash)
		if !ok {
			return nil, fmt.Errorf("internal error: block %s at %d has no stored location", entries[i].Hash, entries[i].Offset)
		}
		entries[i].Loc = loc
	}
	return entries, nil
}
