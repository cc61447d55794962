package backup

import (
	"context"
	"errors"
	"sort"
	"sync"
	"sync/atomic"
)

// Problem is one damaged block.
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
}

// Verify reads back every block of the given backups (all if refs is
// empty), decompresses it and checks its hash. Each distinct stored block
// is read once. Damaged blocks are reported, not returned as errors; the
// error is for failures to run at all.
func (r *Repo) Verify(ctx context.Context, refs []BackupRef, progress func(Progress)) (*VerifyReport, error) {
	var ms []*Manifest
	if len(refs) == 0 {
		all, err := r.Manifests(ctx)
		if err != nil {
			return nil, err
		}
		ms = all
	} else {
		for _, ref := range refs {
			m, err := r.Manifest(ctx, ref.VolumeID, ref.BackupID)
			if err != nil {
				return nil, err
			}
			ms = append(ms, m)
		}
	}
	type use struct {
		m *Manifest
		e Entry
	}
	type key struct {
		pack string
		off  int64
	}
	uses := map[key][]use{}
	var keys []key
	var total int64
	for _, m := range ms {
		for _, e := range m.Blocks {
			k := key{e.Pack, e.Loc.Offset}
			if _, ok := uses[k]; !ok {
				keys = append(keys, k)
				total += e.RawLength
			}
			uses[k] = append(uses[k], use{m, e})
		}
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].pack != keys[j].pack {
			return keys[i].pack < keys[j].pack
		}
		return keys[i].off < keys[j].off
	})
	rep := &VerifyReport{Backups: len(ms), Blocks: len(keys), Bytes: total}
	var (
		mu   sync.Mutex
		done atomic.Int64
	)
	err := parallel(ctx, r.Concurrency, len(keys), func(i int) error {
		u := uses[keys[i]]
		_, err := r.fetchBlock(ctx, u[0].m, u[0].e, nil, make([]byte, 0, u[0].e.RawLength))
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
	sort.Slice(rep.Problems, func(i, j int) bool {
		a, b := rep.Problems[i], rep.Problems[j]
		if a.BackupID != b.BackupID {
			return a.BackupID < b.BackupID
		}
		return a.Offset < b.Offset
	})
	return rep, err
}
