package backup

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
)

// Problem is one damaged block reference.
type Problem struct {
	BackupID   string `json:"backupId"`
	VolumeID   string `json:"volumeId"`
	Offset     int64  `json:"volumeOffset"`
	Hash       string `json:"hash"`
	Pack       string `json:"pack"`
	PackOffset int64  `json:"packOffset"`
	Error      string `json:"error"`
}

// VerifyReport is what Verify found.
type VerifyReport struct {
	Backups  int       `json:"backups"`
	Blocks   int       `json:"blocks"` // distinct stored blocks checked
	Bytes    int64     `json:"bytes"`  // raw bytes checked
	Problems []Problem `json:"problems"`
	// DamagedManifests are the invalid manifests: their backups cannot be
	// restored.
	DamagedManifests []Damage `json:"damagedManifests"`
	// NewerManifests are of a newer format than this driver's: not
	// checked, not counted as damage.
	NewerManifests []Damage `json:"newerManifests"`
	// DamagedBackups names every backup with a problem, sorted.
	DamagedBackups []BackupRef `json:"damagedBackups"`
}

// addDamage files a manifest that could not be used: invalid ones are
// damage, newer-format ones are noted, and one the store failed to read
// stops the run (it says nothing about the backup).
func (rep *VerifyReport) addDamage(d Damage) error {
	switch {
	case d.Damaged():
		rep.DamagedManifests = append(rep.DamagedManifests, d)
	case errors.Is(d.Err, ErrUnsupported):
		rep.NewerManifests = append(rep.NewerManifests, d)
	default:
		return fmt.Errorf("read manifest %s: %w", d.Key, d.Err)
	}
	return nil
}

// Damaged reports whether Verify found anything wrong.
func (rep *VerifyReport) Damaged() bool {
	return len(rep.Problems) > 0 || len(rep.DamagedManifests) > 0
}

// Verify reads back every entry of every given backup (all if refs is
// empty), decompresses it and checks its hash. Entries are grouped by
// their whole location and hash, so each distinct one is read once and
// an entry that shares a place with another backup's valid entry but
// names another hash is checked on its own. Damage is reported (and the
// blob quarantined), not returned as an error; the error is for failures
// to run at all.
func (r *Repo) Verify(ctx context.Context, refs []BackupRef, progress func(Progress)) (*VerifyReport, error) {
	rep := &VerifyReport{}
	ms, err := r.verifyManifests(ctx, refs, rep)
	if err != nil {
		return nil, err
	}
	uses, keys, total := groupUses(ms)
	rep.Backups, rep.Blocks, rep.Bytes = len(ms)+len(rep.DamagedManifests)+len(rep.NewerManifests), len(keys), total
	var (
		mu   sync.Mutex
		done atomic.Int64
	)
	bufs := newBufferPool(r.Concurrency, int(r.cfg.BlockSize))
	storedBufs := newBufferPool(r.Concurrency, blobCap(r.cfg.BlockSize))
	err = parallel(ctx, r.Concurrency, len(keys), func(i int) error {
		u := uses[keys[i]]
		buf, storedBuf := bufs.get(), storedBufs.get()
		defer func() { bufs.put(buf); storedBufs.put(storedBuf) }()
		_, err := r.fetchBlock(ctx, u[0].m, u[0].e, storedBuf, buf)
		done.Add(u[0].e.RawLength)
		if progress != nil {
			progress(Progress{BytesDone: done.Load(), BytesTotal: total})
		}
		if err == nil {
			return nil
		}
		if !errors.Is(err, ErrCorrupt) {
			return err
		}
		mu.Lock()
		for _, x := range u {
			rep.Problems = append(rep.Problems, Problem{BackupID: x.m.ID, VolumeID: x.m.VolumeID, Offset: x.e.Offset, Hash: x.e.Hash, Pack: x.e.Pack, PackOffset: x.e.Loc.Offset, Error: err.Error()})
		}
		mu.Unlock()
		return nil
	})
	rep.sortDamage()
	return rep, err
}

// verifyManifests loads the manifests to verify: the given backups', or
// all; those that cannot be used are filed in rep.
func (r *Repo) verifyManifests(ctx context.Context, refs []BackupRef, rep *VerifyReport) ([]*Manifest, error) {
	var ms []*Manifest
	if len(refs) == 0 {
		all, damaged, err := r.Manifests(ctx, "")
		if err != nil {
			return nil, err
		}
		ms = all
		for _, d := range damaged {
			if err := rep.addDamage(d); err != nil {
				return nil, err
			}
		}
		return ms, nil
	}
	for _, ref := range refs {
		m, err := r.Manifest(ctx, ref.VolumeID, ref.BackupID)
		switch {
		case err == nil:
			ms = append(ms, m)
		case errors.Is(err, ErrNotFound):
			return nil, err
		default:
			if err := rep.addDamage(Damage{BackupRef: ref, Key: manifestKey(ref.VolumeID, ref.BackupID), Err: err}); err != nil {
				return nil, err
			}
		}
	}
	return ms, nil
}

// blockUse is one manifest's entry for a stored block.
type blockUse struct {
	m *Manifest
	e Entry
}

// storedBlock is a hash at a whole location: what Verify reads once.
type storedBlock struct {
	hash string
	loc  Loc
}

// groupUses groups the manifests' entries by stored block, and returns
// the distinct blocks in pack order with their total raw length.
func groupUses(ms []*Manifest) (uses map[storedBlock][]blockUse, keys []storedBlock, total int64) {
	uses = map[storedBlock][]blockUse{}
	for _, m := range ms {
		for _, e := range m.Blocks {
			k := storedBlock{e.Hash, e.Loc}
			if _, ok := uses[k]; !ok {
				keys = append(keys, k)
				total += e.RawLength
			}
			uses[k] = append(uses[k], blockUse{m, e})
		}
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		if a.loc.Pack != b.loc.Pack {
			return a.loc.Pack < b.loc.Pack
		}
		if a.loc.Offset != b.loc.Offset {
			return a.loc.Offset < b.loc.Offset
		}
		return a.hash < b.hash
	})
	return uses, keys, total
}

// sortDamage sorts the problems and lists the damaged backups, sorted.
func (rep *VerifyReport) sortDamage() {
	sort.Slice(rep.Problems, func(i, j int) bool {
		a, b := rep.Problems[i], rep.Problems[j]
		if a.VolumeID != b.VolumeID {
			return a.VolumeID < b.VolumeID
		}
		if a.BackupID != b.BackupID {
			return a.BackupID < b.BackupID
		}
		return a.Offset < b.Offset
	})
	seen := map[BackupRef]bool{}
	for _, p := range rep.Problems {
		seen[BackupRef{p.VolumeID, p.BackupID}] = true
	}
	for _, d := range rep.DamagedManifests {
		seen[d.BackupRef] = true
	}
	for ref := range seen {
		rep.DamagedBackups = append(rep.DamagedBackups, ref)
	}
	sort.Slice(rep.DamagedBackups, func(i, j int) bool { return rep.DamagedBackups[i].less(rep.DamagedBackups[j]) })
}
