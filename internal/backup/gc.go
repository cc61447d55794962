package backup

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"k8s.io/klog/v2"

	"github.com/cairn-csi/cairn/internal/objstore"
)

// DefaultGCMinAge protects packs of crashed backups that may still resume.
const DefaultGCMinAge = time.Hour

// GCReport is what GC did.
type GCReport struct {
	Packs        int   `json:"packs"`
	Referenced   int   `json:"referenced"`
	Deleted      int   `json:"deleted"`
	BytesDeleted int64 `json:"bytesDeleted"`
	TooYoung     int   `json:"tooYoung"`
	StaleLocks   int   `json:"staleLocksRemoved"`
}

// GC deletes packs no manifest refers to and that are older than minAge
// (docs/FORMAT.md, "Locks and garbage collection"). It holds its own GC
// lock, refreshed while it runs, and refuses (ErrBusy) while a backup or
// another GC is running; it refuses too while any manifest is unreadable,
// since it cannot know which packs such a backup needs. It never deletes
// a pack after its own lock may have lapsed.
func (r *Repo) GC(ctx context.Context, minAge time.Duration) (*GCReport, error) {
	l := newLease(r, newGCLockID(), lockGC, nil)
	if err := l.write(ctx); err != nil {
		return nil, err
	}
	defer func() {
		if err := l.release(ctx); err != nil {
			klog.ErrorS(err, "Removing the GC lock", "store", r.store, "lock", l.key)
		}
	}()
	now, err := l.storeNow(ctx)
	if err != nil {
		return nil, err
	}
	// Clients older than gc-… locks look only at locks/gc.json: write it
	// too (before looking at any lock), unless another GC's is live.
	if info, err := r.store.Stat(ctx, lockKey(gcLockID)); err == nil && live(lockAge(info, now)) {
		return nil, fmt.Errorf("%w: another garbage collection holds %s", ErrBusy, info.Key)
	} else if err != nil && !errors.Is(err, objstore.ErrNotFound) {
		return nil, err
	}
	l.legacy = lockKey(gcLockID)
	if err := l.write(ctx); err != nil {
		return nil, err
	}
	l.startHeartbeat()
	// The store's clock again, right before the look: the writes above
	// may have been retried for a while, and a lock written meanwhile
	// must not look as if it came from the future.
	if now, err = l.storeNow(ctx); err != nil {
		return nil, err
	}
	rep := &GCReport{}
	protected, err := r.gcLocks(ctx, l.key, now, minAge, rep)
	if err != nil {
		return nil, err
	}
	ms, damaged, err := r.Manifests(ctx, "")
	if err != nil {
		return nil, err
	}
	if len(damaged) > 0 {
		names := make([]string, len(damaged))
		for i, d := range damaged {
			names[i] = d.String()
		}
		return nil, fmt.Errorf("%w: garbage collection refused: %d backup manifests are unreadable, and the packs they need are unknown (repair or delete them): %s",
			ErrCorrupt, len(damaged), strings.Join(names, "; "))
	}
	ref := protected
	for _, m := range ms {
		for _, e := range m.Blocks {
			ref[e.Pack] = true
		}
	}
	victims, err := r.gcVictims(ctx, ref, now, minAge, rep)
	if err != nil {
		return nil, err
	}
	if err := r.gcDelete(ctx, l, victims, rep); err != nil {
		return rep, err
	}
	klog.InfoS("Backup store garbage collected", "store", r.store, "packs", rep.Packs, "deleted", rep.Deleted, "bytes", rep.BytesDeleted, "tooYoung", rep.TooYoung)
	return rep, nil
}

// gcVictims lists the packs GC may delete: named by no manifest and no
// kept lock (ref), and older than minAge by the store's clock now.
func (r *Repo) gcVictims(ctx context.Context, ref map[string]bool, now time.Time, minAge time.Duration, rep *GCReport) ([]objstore.Info, error) {
	var victims []objstore.Info
	err := r.store.List(ctx, "packs/", func(i objstore.Info) error {
		id := packIDOf(i.Key)
		if !ValidHash(id) || i.Key != packKey(id) {
			return nil
		}
		rep.Packs++
		switch {
		case ref[id]:
			rep.Referenced++
		case lockAge(i, now) < minAge:
			rep.TooYoung++
		default:
			victims = append(victims, i)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return victims, nil
}

// gcDelete deletes the victims, each only while GC's own lease holds.
func (r *Repo) gcDelete(ctx context.Context, l *lease, victims []objstore.Info, rep *GCReport) error {
	for _, v := range victims {
		if err := l.check(); err != nil {
			return fmt.Errorf("garbage collection stopped: %w", err)
		}
		if err := r.store.Delete(ctx, v.Key); err != nil {
			return err
		}
		rep.Deleted++
		rep.BytesDeleted += v.Size
		r.forgetPack(ctx, packIDOf(v.Key))
	}
	return nil
}

// gcLocks looks at every other lock with GC's own written: a live backup
// or GC lock makes GC refuse; a backup lock younger than minAge keeps the
// packs it lists (an interrupted backup resumes with them); older locks
// are stale and removed. A lock that cannot be read counts as running
// while it is live.
func (r *Repo) gcLocks(ctx context.Context, own string, now time.Time, minAge time.Duration, rep *GCReport) (map[string]bool, error) {
	objs, err := r.lockObjects(ctx)
	if err != nil {
		return nil, err
	}
	protected := map[string]bool{}
	for _, o := range objs {
		if o.Key == own || o.Key == lockKey(gcLockID) {
			continue // ours (gc.json was checked before it was written)
		}
		age := lockAge(o, now)
		if lockKind(o.Key) == lockGC {
			if live(age) {
				_, err := r.readLock(ctx, o)
				switch {
				case errors.Is(err, objstore.ErrNotFound):
					continue
				case err != nil && !errors.Is(err, ErrCorrupt):
					return nil, err
				case err == nil:
					return nil, fmt.Errorf("%w: another garbage collection is running (%s)", ErrBusy, o.Key)
				}
				// Malformed: no GC writes that (the backups ignore it
				// too); removed below.
			}
		} else {
			info, err := r.readLock(ctx, o)
			switch {
			case errors.Is(err, objstore.ErrNotFound):
				continue // released meanwhile
			case err != nil && !errors.Is(err, ErrCorrupt):
				return nil, err
			case err == nil && staleByClock(info, o):
				// Claims a heartbeat in the future: stale (its writer
				// would have refused to hold it), removed below.
			case live(age) && (err != nil || info.State != stateInterrupted):
				return nil, fmt.Errorf("%w: backup %s is running (lock written %s ago)", ErrBusy, o.Key, age.Round(time.Second))
			case err == nil && age < minAge && age > -maxSkew:
				for _, p := range info.Packs {
					protected[p] = true
				}
				continue
			}
		}
		// Only the object judged above: one rewritten since (a backup
		// that resumed, a GC that started) is not stale.
		if cur, err := r.store.Stat(ctx, o.Key); err != nil || !cur.ModTime.Equal(o.ModTime) || cur.Size != o.Size {
			if err != nil && !errors.Is(err, objstore.ErrNotFound) {
				return nil, err
			}
			if err == nil {
				return nil, fmt.Errorf("%w: lock %s changed while garbage collection looked at it", ErrBusy, o.Key)
			}
			continue
		}
		if err := r.store.Delete(ctx, o.Key); err != nil {
			return nil, err
		}
		rep.StaleLocks++
	}
	return protected, nil
}

// forgetPackIndex drops a pack's cached index.
func (r *Repo) forgetPackIndex(id string) {
	r.mu.Lock()
	delete(r.packs, id)
	r.mu.Unlock()
}

// forgetPack drops a deleted pack's cached index and its quarantine
// records.
func (r *Repo) forgetPack(ctx context.Context, id string) {
	r.forgetPackIndex(id)
	var keys []string
	_ = r.store.List(ctx, quarantinePrefix+id+"/", func(i objstore.Info) error {
		keys = append(keys, i.Key)
		return nil
	})
	for _, k := range keys {
		_ = r.store.Delete(ctx, k)
	}
}
