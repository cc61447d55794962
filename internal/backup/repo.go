package backup

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cairn-csi/cairn/internal/objstore"
)

// Errors callers test with errors.Is.
var (
	ErrNotFound = errors.New("backup not found")
	ErrCorrupt  = errors.New("backup data corrupt")
)

// Repo is a backup store on an object store.
type Repo struct {
	store objstore.Store
	cfg   StoreConfig
	// Concurrency bounds parallel object requests.
	Concurrency int
}

// Open opens the backup store on st, initialising it on first use.
func Open(ctx context.Context, st objstore.Store) (*Repo, error) {
	r := &Repo{store: st, Concurrency: 8}
	err := r.getJSON(ctx, configKey, &r.cfg)
	switch {
	case errors.Is(err, objstore.ErrNotFound):
		r.cfg = StoreConfig{FormatVersion: FormatVersion, BlockSize: DefaultBlockSize, Hash: hashName, Compression: compressionName, CreatedAt: time.Now().UTC()}
		if err := r.putJSON(ctx, configKey, &r.cfg); err != nil {
			return nil, fmt.Errorf("initialise backup store %s: %w", st, err)
		}
	case err != nil:
		return nil, fmt.Errorf("open backup store %s: %w", st, err)
	case r.cfg.FormatVersion > FormatVersion:
		return nil, fmt.Errorf("backup store %s has format %d; this driver knows up to %d", st, r.cfg.FormatVersion, FormatVersion)
	case r.cfg.BlockSize <= 0 || r.cfg.Hash != hashName:
		return nil, fmt.Errorf("backup store %s: unsupported configuration (block size %d, hash %q)", st, r.cfg.BlockSize, r.cfg.Hash)
	}
	return r, nil
}

// Store returns the underlying object store.
func (r *Repo) Store() objstore.Store { return r.store }

// BlockSize is the store's block size.
func (r *Repo) BlockSize() int64 { return r.cfg.BlockSize }

func (r *Repo) getJSON(ctx context.Context, key string, v any) error {
	rc, err := r.store.Get(ctx, key)
	if err != nil {
		return err
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return fmt.Errorf("read %s: %w", key, err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("parse %s: %w", key, err)
	}
	return nil
}

func (r *Repo) putJSON(ctx context.Context, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return r.store.Put(ctx, key, bytes.NewReader(b), int64(len(b)))
}

// Manifest loads a committed backup.
func (r *Repo) Manifest(ctx context.Context, volumeID, backupID string) (*Manifest, error) {
	if !ValidVolumeID(volumeID) || !ValidBackupID(backupID) {
		return nil, fmt.Errorf("%w: %s/%s is not a valid backup name", ErrNotFound, volumeID, backupID)
	}
	var m Manifest
	err := r.getJSON(ctx, manifestKey(volumeID, backupID), &m)
	if errors.Is(err, objstore.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s/%s in %s", ErrNotFound, volumeID, backupID, r.store)
	}
	if err != nil {
		return nil, err
	}
	if m.FormatVersion > FormatVersion {
		return nil, fmt.Errorf("backup %s has format %d; this driver knows up to %d", backupID, m.FormatVersion, FormatVersion)
	}
	return &m, nil
}

// BackupRef names a committed backup.
type BackupRef struct {
	VolumeID, BackupID string
}

// List returns the committed backups, optionally of one volume, sorted.
func (r *Repo) List(ctx context.Context, volumeID string) ([]BackupRef, error) {
	prefix := "backups/"
	if volumeID != "" {
		prefix += volumeID + "/"
	}
	var out []BackupRef
	err := r.store.List(ctx, prefix, func(info objstore.Info) error {
		rest := strings.TrimPrefix(info.Key, "backups/")
		vol, file, ok := strings.Cut(rest, "/")
		id := strings.TrimSuffix(file, ".json")
		if ok && path.Ext(file) == ".json" && ValidBackupID(id) && ValidVolumeID(vol) {
			out = append(out, BackupRef{VolumeID: vol, BackupID: id})
		}
		return nil
	})
	sort.Slice(out, func(i, j int) bool {
		if out[i].VolumeID != out[j].VolumeID {
			return out[i].VolumeID < out[j].VolumeID
		}
		return out[i].BackupID < out[j].BackupID
	})
	return out, err
}

// Manifests loads every committed backup's manifest in parallel.
func (r *Repo) Manifests(ctx context.Context) ([]*Manifest, error) {
	refs, err := r.List(ctx, "")
	if err != nil {
		return nil, err
	}
	out := make([]*Manifest, len(refs))
	err = parallel(ctx, r.Concurrency, len(refs), func(i int) error {
		m, err := r.Manifest(ctx, refs[i].VolumeID, refs[i].BackupID)
		if errors.Is(err, ErrNotFound) {
			return nil // deleted meanwhile
		}
		out[i] = m
		return err
	})
	kept := out[:0]
	for _, m := range out {
		if m != nil {
			kept = append(kept, m)
		}
	}
	return kept, err
}

// Delete deletes a backup's manifest; garbage collection reclaims its data.
// Deleting a missing backup succeeds.
func (r *Repo) Delete(ctx context.Context, volumeID, backupID string) error {
	if !ValidVolumeID(volumeID) || !ValidBackupID(backupID) {
		return nil
	}
	return r.store.Delete(ctx, manifestKey(volumeID, backupID))
}

// parallel runs fn(0..n-1) on up to workers goroutines and returns the
// first error; it stops handing out work after an error.
func parallel(ctx context.Context, workers, n int, fn func(i int) error) error {
	if workers < 1 {
		workers = 1
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu       sync.Mutex
		next     int
		firstErr error
		wg       sync.WaitGroup
	)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				if firstErr != nil || next >= n || ctx.Err() != nil {
					mu.Unlock()
					return
				}
				i := next
				next++
				mu.Unlock()
				if err := fn(i); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
						cancel()
					}
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	return firstErr
}
