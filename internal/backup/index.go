package backup

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"

	"k8s.io/klog/v2"

	"github.com/cairn-csi/cairn/internal/objstore"
)

// blockIndex maps block hashes to a stored location a new backup may
// dedup into. It is built only from pack indexes that passed
// parsePackIndex, never from manifests: a manifest entry naming a hash at
// a wrong place cannot make later backups point there.
type blockIndex struct {
	mu sync.RWMutex
	m  map[string]Loc
	at map[badLoc]string // every validated location and the hash there
}

func newBlockIndex() *blockIndex { return &blockIndex{m: map[string]Loc{}, at: map[badLoc]string{}} }

// lists reports whether a validated pack index has hash h at loc.
func (x *blockIndex) lists(h string, loc Loc) bool {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.at[badLoc{loc.Pack, loc.Offset}] == h
}

// drop forgets loc as hash h's location (it failed its check), so that
// the backup's own copy takes its place.
func (x *blockIndex) drop(h string, loc Loc) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.m[h] == loc {
		delete(x.m, h)
	}
	delete(x.at, badLoc{loc.Pack, loc.Offset})
}

func (x *blockIndex) has(h string) bool {
	x.mu.RLock()
	defer x.mu.RUnlock()
	_, ok := x.m[h]
	return ok
}

func (x *blockIndex) get(h string) (Loc, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	l, ok := x.m[h]
	return l, ok
}

// addPack adds a pack's blobs, except those at a location in bad.
func (x *blockIndex) addPack(id string, index []packIndexEntry, bad map[badLoc]bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, e := range index {
		if bad[badLoc{id, e.Offset}] {
			continue
		}
		x.at[badLoc{id, e.Offset}] = e.Hash
		if _, ok := x.m[e.Hash]; !ok {
			x.m[e.Hash] = Loc{Pack: id, Offset: e.Offset, Length: e.Length, RawLength: e.RawLength, Comp: e.Comp}
		}
	}
}

// loadIndex builds the dedup index of a backup: the pack indexes of every
// pack a readable manifest refers to, plus the packs a crashed run of this
// backup uploaded (resumed), minus the quarantined locations. Damaged
// manifests and unreadable packs are skipped with a warning: they only
// cost dedup, the backup uploads its own copy of those blocks.
func (r *Repo) loadIndex(ctx context.Context, resumed []string) (*blockIndex, error) {
	ms, err := r.ReadableManifests(ctx, "", "backup")
	if err != nil {
		return nil, err
	}
	set := map[string]bool{}
	for _, m := range ms {
		for _, e := range m.Blocks {
			set[e.Pack] = true
		}
	}
	for _, id := range resumed {
		set[id] = true
	}
	bad, err := r.quarantined(ctx)
	if err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(set))
	for id := range set {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	idxs := make([][]packIndexEntry, len(ids))
	err = parallel(ctx, r.Concurrency, len(ids), func(i int) error {
		idx, err := r.packIndex(ctx, ids[i])
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, objstore.ErrNotFound):
			klog.InfoS("Warning: a pack named by the store is missing; not deduplicating into it", "store", r.store, "pack", ids[i])
		case err != nil:
			klog.InfoS("Warning: skipping an unreadable pack for dedup", "store", r.store, "pack", ids[i], "err", err)
		}
		idxs[i] = idx
		return nil
	})
	if err != nil {
		return nil, err
	}
	x := newBlockIndex()
	for i, id := range ids {
		x.addPack(id, idxs[i], bad)
	}
	return x, nil
}

// packIndex returns a pack's validated index, from the cache or the store.
func (r *Repo) packIndex(ctx context.Context, id string) ([]packIndexEntry, error) {
	r.mu.Lock()
	idx, ok := r.packs[id]
	r.mu.Unlock()
	if ok {
		return idx, nil
	}
	idx, err := r.readPackIndex(ctx, id)
	if err != nil {
		return nil, err
	}
	r.cachePackIndex(id, idx)
	return idx, nil
}

// cachePackIndex keeps a validated (or just written) pack index.
func (r *Repo) cachePackIndex(id string, idx []packIndexEntry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.packs == nil {
		r.packs = map[string][]packIndexEntry{}
	}
	r.packs[id] = idx
}

// readPackIndex reads a pack's trailing index with two range reads and
// validates it (parsePackIndex).
func (r *Repo) readPackIndex(ctx context.Context, id string) ([]packIndexEntry, error) {
	if !ValidHash(id) {
		return nil, corruptf("pack ID %q is not 64 hex digits", id)
	}
	info, err := r.store.Stat(ctx, packKey(id))
	if err != nil {
		return nil, err
	}
	tl := int64(4 + len(packMagic))
	if info.Size < tl {
		return nil, corruptf("pack %s is %d bytes, too short for a trailer", id, info.Size)
	}
	tail, err := r.readRange(ctx, packKey(id), info.Size-tl, tl)
	if err != nil {
		return nil, err
	}
	if string(tail[4:]) != packMagic {
		return nil, corruptf("pack %s has no %s trailer", id, packMagic)
	}
	n := int64(binary.LittleEndian.Uint32(tail[:4]))
	if n > info.Size-tl || n > maxPackIndexBytes {
		return nil, corruptf("pack %s: index length %d exceeds the pack or %d bytes", id, n, maxPackIndexBytes)
	}
	b, err := r.readRange(ctx, packKey(id), info.Size-tl-n, n)
	if err != nil {
		return nil, err
	}
	return parsePackIndex(id, b, info.Size-tl-n, r.cfg.BlockSize, r.enc.overhead())
}

// badLoc is a blob location found damaged.
type badLoc struct {
	pack string
	off  int64
}

const quarantinePrefix = "quarantine/"

func quarantineKey(l badLoc) string {
	return quarantinePrefix + l.pack + "/" + strconv.FormatInt(l.off, 10) + ".json"
}

// quarantineRecord is quarantine/<pack-id>/<offset>.json: for people;
// the key alone excludes the location from dedup.
type quarantineRecord struct {
	Pack   string `json:"pack"`
	Offset int64  `json:"offset"`
	Hash   string `json:"hash"`
	Reason string `json:"reason"`
}

// quarantine records that the blob at e's location failed its check, in
// this process and in the store, so that no backup dedups into it again
// (a backup that needs the block uploads its own copy).
func (r *Repo) quarantine(ctx context.Context, e Entry, reason error) {
	l := badLoc{e.Pack, e.Loc.Offset}
	r.mu.Lock()
	if r.bad == nil {
		r.bad = map[badLoc]bool{}
	}
	known := r.bad[l]
	r.bad[l] = true
	r.mu.Unlock()
	if known || !ValidHash(l.pack) {
		return
	}
	rec := quarantineRecord{Pack: l.pack, Offset: l.off, Hash: e.Hash, Reason: reason.Error()}
	if len(rec.Reason) > 1024 {
		rec.Reason = rec.Reason[:1024]
	}
	if err := r.putJSON(context.WithoutCancel(ctx), quarantineKey(l), &rec); err != nil {
		klog.ErrorS(err, "Could not record a damaged blob in the store", "store", r.store, "pack", l.pack, "offset", l.off)
		return
	}
	klog.InfoS("Damaged blob quarantined: no backup will dedup into it", "store", r.store, "pack", l.pack, "offset", l.off, "hash", e.Hash)
}

// quarantined returns the damaged locations known to this process and
// recorded in the store. Only keys are read: a record can only ever cost
// dedup, never make a backup point at wrong data.
func (r *Repo) quarantined(ctx context.Context) (map[badLoc]bool, error) {
	out := map[badLoc]bool{}
	err := r.store.List(ctx, quarantinePrefix, func(i objstore.Info) error {
		if l, ok := parseQuarantineKey(i.Key); ok {
			out[l] = true
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list quarantined blobs: %w", err)
	}
	r.mu.Lock()
	for l := range r.bad {
		out[l] = true
	}
	r.mu.Unlock()
	return out, nil
}

func parseQuarantineKey(key string) (badLoc, bool) {
	rest, under := strings.CutPrefix(key, quarantinePrefix)
	pack, file, ok := strings.Cut(rest, "/")
	off, err := strconv.ParseInt(strings.TrimSuffix(file, ".json"), 10, 64)
	if !under || !ok || err != nil || !ValidHash(pack) || off < 0 || !strings.HasSuffix(file, ".json") {
		return badLoc{}, false
	}
	return badLoc{pack, off}, true
}

// blobAt is a blob location with the hash found there.
type blobAt struct {
	pack string
	off  int64
	hash string
}

// maxVerified bounds the verified set (about 100 MiB); past it the set
// starts again, which only costs reading some blobs back once more.
const maxVerified = 1 << 20

// markVerified records blobs this process wrote or read back and checked.
func (r *Repo) markVerified(pack string, index []packIndexEntry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.verified == nil || len(r.verified)+len(index) > maxVerified {
		r.verified = map[blobAt]bool{}
	}
	for _, e := range index {
		r.verified[blobAt{pack, e.Offset, e.Hash}] = true
	}
}

func (r *Repo) isVerified(h string, loc Loc) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.verified[blobAt{loc.Pack, loc.Offset, h}]
}

// dedupChecker reads a location back before a backup first dedups into
// it, unless this process wrote or checked it already: a pack index is
// bound to its pack's ID, but the blobs it lists are not, so a hostile or
// damaged pack could name a hash it does not hold. Its buffers are one
// worker's, allocated on first use.
type dedupChecker struct {
	stored, raw []byte
}

// usable reports whether the blob at loc holds block h. A blob that does
// not is quarantined; a store failure only makes the backup upload its own
// copy.
func (c *dedupChecker) usable(ctx context.Context, r *Repo, h string, loc Loc) bool {
	if r.isVerified(h, loc) {
		return true
	}
	if c.raw == nil {
		c.stored, c.raw = make([]byte, 0, blobCap(r.cfg.BlockSize)), make([]byte, 0, r.cfg.BlockSize)
	}
	stored, err := r.readRangeInto(ctx, packKey(loc.Pack), loc.Offset, loc.Length, c.stored)
	if err == nil {
		if _, err = r.enc.decodeBlock(stored, loc.Comp, loc.RawLength, h, c.raw); err != nil {
			r.quarantine(ctx, Entry{Hash: h, Loc: loc}, err)
			return false
		}
	}
	if err != nil {
		klog.V(2).InfoS("Not deduplicating into a blob that could not be read back", "store", r.store, "pack", loc.Pack, "offset", loc.Offset, "err", err)
		return false
	}
	r.markVerified(loc.Pack, []packIndexEntry{{Hash: h, Offset: loc.Offset}})
	return true
}
