package backup

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/cairn-csi/cairn/internal/objstore"
)

// Lock timing (docs/FORMAT.md, "Locks and garbage collection").
var (
	// heartbeatEvery is how often a holder rewrites its lock.
	heartbeatEvery = 30 * time.Second
	// lockLive is how long after its last write (by the store's clock) a
	// lock counts as held.
	lockLive = 10 * time.Minute
	// maxSkew is how far in the store's future a lock's modification
	// time may lie and still count: beyond it the lock is stale.
	maxSkew = time.Minute
	// gcWaitStep is how long a backup waits between looks at a GC lock.
	gcWaitStep = 5 * time.Second
	// packSaveEvery bounds how often a backup's lock is rewritten as packs
	// are uploaded: a crash forgets at most this much upload, whose packs
	// GC reclaims later.
	packSaveEvery = 5 * time.Second
)

const gcLockID = "gc"

// ErrBusy is returned by GC when backups or another GC are running, and by
// a backup whose lock lapsed or that met a GC before committing.
var ErrBusy = errors.New("backup store busy")

// lease is a lock object this process holds: written before the holder
// looks at anyone else's, refreshed by a heartbeat while held. Its holder
// may act on it only while check passes, that is while less than half of
// lockLive has passed since the start of its last successful write — by
// its own monotonic clock, so no two clocks are ever compared. Others
// judge it by the object's modification time against the store's clock.
type lease struct {
	r   *Repo
	key string
	// legacy, for a GC, is locks/gc.json, written and refreshed along
	// with the lock for clients that only know that name.
	legacy string
	mu     sync.Mutex
	info   lockInfo
	okAt   time.Time // start of the last successful write
	saved  time.Time // last write attempt (for packSaveEvery)
	beat   time.Time // the heartbeat field of the last write (this clock)
	// lapsed is set for good once two successful writes were half a
	// lifetime or more apart: others may have judged the lock stale in
	// between and acted (deleted it, collected packs), so a later
	// successful heartbeat does not make the lease whole again.
	lapsed bool
	stop   chan struct{}
	done   chan struct{}
}

func newLease(r *Repo, id, kind string, packs []string) *lease {
	return &lease{r: r, key: lockKey(id), info: lockInfo{Kind: kind, ID: id, State: stateRunning, Packs: packs}}
}

func (l *lease) write(ctx context.Context) error {
	l.mu.Lock()
	info := l.info
	info.Packs = append([]string(nil), l.info.Packs...)
	start := time.Now()
	info.Heartbeat = start.UTC()
	l.saved = start
	l.mu.Unlock()
	if err := l.r.putJSON(ctx, l.key, &info); err != nil {
		return fmt.Errorf("write lock %s: %w", l.key, err)
	}
	if l.legacy != "" {
		old := lockInfo{Kind: lockGC, ID: gcLockID, Heartbeat: info.Heartbeat, Owner: info.ID}
		if err := l.r.putJSON(ctx, l.legacy, &old); err != nil {
			return fmt.Errorf("write lock %s: %w", l.legacy, err)
		}
	}
	l.mu.Lock()
	l.beat = info.Heartbeat
	if !l.okAt.IsZero() && lapses(start.Sub(l.okAt)) {
		l.lapsed = true
	}
	if start.After(l.okAt) {
		l.okAt = start
	}
	l.mu.Unlock()
	return nil
}

func (l *lease) setState(s string) {
	l.mu.Lock()
	l.info.State = s
	l.mu.Unlock()
}

// lapses reports whether a lease unrefreshed for d (by its holder's
// monotonic clock) may have been judged stale by others: half of
// lockLive or more.
func lapses(d time.Duration) bool { return d >= lockLive/2 }

// check fails once others may have judged the lock stale.
func (l *lease) check() error {
	l.mu.Lock()
	age, lapsed := time.Since(l.okAt), l.lapsed
	l.mu.Unlock()
	if lapsed {
		return fmt.Errorf("%w: lock %s went unrefreshed for half its lifetime and may have been judged stale", ErrBusy, l.key)
	}
	if lapses(age) {
		return fmt.Errorf("%w: lock %s was last refreshed %s ago and may have lapsed", ErrBusy, l.key, age.Round(time.Second))
	}
	return nil
}

func (l *lease) startHeartbeat() {
	l.stop, l.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(l.done)
		t := time.NewTicker(heartbeatEvery)
		defer t.Stop()
		for {
			select {
			case <-l.stop:
				return
			case <-t.C:
				ctx, cancel := context.WithTimeout(context.Background(), min(lockLive/4, time.Minute))
				if err := l.write(ctx); err != nil {
					klog.ErrorS(err, "Lock heartbeat failed", "lock", l.key, "store", l.r.store)
				}
				cancel()
			}
		}
	}()
}

func (l *lease) stopHeartbeat() {
	if l.stop != nil {
		close(l.stop)
		<-l.done
		l.stop = nil
	}
}

// release stops the heartbeat and deletes the lock (and the legacy one
// if it is still this holder's).
func (l *lease) release(ctx context.Context) error {
	l.stopHeartbeat()
	ctx = context.WithoutCancel(ctx)
	if l.legacy != "" {
		if old, err := l.r.readLock(ctx, objstore.Info{Key: l.legacy, Size: -1}); err == nil && old.Owner == l.info.ID {
			if err := l.r.store.Delete(ctx, l.legacy); err != nil {
				return err
			}
		}
	}
	return l.r.store.Delete(ctx, l.key)
}

// abandon stops the heartbeat. A backup lock that lists packs is kept in
// state interrupted, so a later run resumes with them; it no longer
// blocks GC, which keeps its packs while it is younger than GC's minimum
// age. A lock without packs is deleted.
func (l *lease) abandon() {
	l.stopHeartbeat()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l.mu.Lock()
	empty := len(l.info.Packs) == 0
	l.info.State = stateInterrupted
	l.mu.Unlock()
	var err error
	if empty {
		err = l.r.store.Delete(ctx, l.key)
	} else {
		err = l.write(ctx)
	}
	if err != nil {
		klog.V(2).InfoS("Could not save the interrupted backup's lock", "lock", l.key, "err", err)
	}
}

// addPack records an uploaded pack in the lock (persisted at most every
// packSaveEvery, and when the backup stops) before any manifest refers to
// it.
func (l *lease) addPack(ctx context.Context, id string) error {
	l.mu.Lock()
	l.info.Packs = append(l.info.Packs, id)
	due := time.Since(l.saved) >= packSaveEvery
	l.mu.Unlock()
	if !due {
		return nil
	}
	// The pack is stored: record it even if the backup is being cancelled.
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	return l.write(wctx)
}

func (l *lease) packs() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.info.Packs...)
}

// acquireBackupLock writes the backup's lock (keeping the packs a
// previous, crashed run recorded), then looks for a live GC lock; while
// there is one it marks its own lock interrupted and waits.
func (r *Repo) acquireBackupLock(ctx context.Context, id string) (*lease, error) {
	var prev lockInfo
	err := r.readJSON(ctx, lockKey(id), maxLockBytes, -1, &prev)
	if err == nil {
		err = prev.validate(lockKey(id))
	}
	switch {
	case err == nil, errors.Is(err, objstore.ErrNotFound):
	case errors.Is(err, ErrCorrupt):
		klog.InfoS("Warning: ignoring a damaged lock; its packs are not resumed", "store", r.store, "object", lockKey(id), "err", err)
		prev = lockInfo{}
	default:
		return nil, err
	}
	l := newLease(r, id, lockBackup, prev.Packs)
	for {
		l.setState(stateRunning)
		if err := l.write(ctx); err != nil {
			return nil, err
		}
		gc, err := l.liveGC(ctx)
		if errors.Is(err, objstore.ErrNotFound) {
			continue // a GC removed our lock as stale between write and look: write it again
		}
		if err != nil {
			l.abandon() // a lock left "running" would block GC for its lifetime
			return nil, err
		}
		if gc == "" {
			break
		}
		klog.InfoS("Backup waits for garbage collection", "backup", id, "store", r.store, "lock", gc)
		l.setState(stateInterrupted)
		if err := l.write(ctx); err != nil {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(gcWaitStep):
		}
	}
	// The lease begins with the last write above: gaps while the lock
	// was interrupted and waiting do not count against it (the resumed
	// packs are re-checked below, the index is loaded after).
	l.mu.Lock()
	l.lapsed = false
	l.mu.Unlock()
	l.startHeartbeat()
	// A GC that ran while this backup waited (or before it started) may
	// have removed the lock read above and the packs it listed: keep
	// only the resumed packs that still exist, asking the store itself
	// (not the pack-index cache). From here on no GC can delete them.
	l.mu.Lock()
	resumed := l.info.Packs
	l.mu.Unlock()
	var kept []string
	for _, p := range resumed {
		_, err := r.store.Stat(ctx, packKey(p))
		switch {
		case err == nil:
			kept = append(kept, p)
		case errors.Is(err, objstore.ErrNotFound):
			r.forgetPackIndex(p)
		default:
			l.abandon()
			return nil, err
		}
	}
	l.mu.Lock()
	l.info.Packs = kept
	l.mu.Unlock()
	return l, nil
}

// checkCommit is a backup's last look before it writes its manifest: its
// own lock has not lapsed, and no GC is running.
func (l *lease) checkCommit(ctx context.Context) error {
	gc, err := l.liveGC(ctx)
	if err != nil {
		return err
	}
	if gc != "" {
		return fmt.Errorf("%w: garbage collection (%s) runs; the backup commits after it", ErrBusy, gc)
	}
	return l.check() // last, so that a slow look above counts against the lease
}

// storeNow is the store's clock: the modification time of the lock l has
// just written. It fails if this machine's clock runs ahead of the
// store's by more than half the skew readers allow (the heartbeat field
// of a lock is this clock): readers would call the lock stale.
func (l *lease) storeNow(ctx context.Context) (time.Time, error) {
	info, err := l.r.store.Stat(ctx, l.key)
	if err != nil {
		return time.Time{}, fmt.Errorf("stat own lock %s: %w", l.key, err)
	}
	l.mu.Lock()
	ahead := l.beat.Sub(info.ModTime)
	l.mu.Unlock()
	// (Half the readers' allowance, plus a second for stores that keep
	// modification times in whole seconds.)
	if ahead > min(maxSkew, maxSkew/2+time.Second) {
		return time.Time{}, fmt.Errorf("this machine's clock is %s ahead of the backup store's (lock %s): fix its time (NTP) first", ahead.Round(time.Second), l.key)
	}
	return info.ModTime, nil
}

// staleByClock reports whether a lock's heartbeat field (its writer's
// clock) lies further ahead of its modification time (the store's clock
// at the same write) than the allowed skew: such a lock is stale however
// fresh its object is, so a planted "heartbeat in the future" blocks
// nobody. Writers refuse to hold a lock that would look like that.
func staleByClock(info *lockInfo, o objstore.Info) bool {
	return info.Heartbeat.Sub(o.ModTime) > maxSkew
}

// lockAge is how long ago, by the store's clock, a lock was written.
func lockAge(o objstore.Info, now time.Time) time.Duration { return now.Sub(o.ModTime) }

// live reports whether a lock written age ago still counts as held.
func live(age time.Duration) bool { return age < lockLive && age > -maxSkew }

// lockObjects lists the lock objects, with their modification times.
func (r *Repo) lockObjects(ctx context.Context) ([]objstore.Info, error) {
	var out []objstore.Info
	err := r.store.List(ctx, "locks/", func(i objstore.Info) error {
		if strings.HasSuffix(i.Key, ".json") && lockKind(i.Key) != "" {
			out = append(out, i)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list locks: %w", err)
	}
	return out, nil
}

// liveGC returns the key of a live GC lock, or "", judged against the
// store's clock read from the caller's own lock ownKey.
func (l *lease) liveGC(ctx context.Context) (string, error) {
	r := l.r
	now, err := l.storeNow(ctx)
	if err != nil {
		return "", err
	}
	objs, err := r.lockObjects(ctx)
	if err != nil {
		return "", err
	}
	for _, o := range objs {
		if lockKind(o.Key) != lockGC || o.Key == l.key || !live(lockAge(o, now)) {
			continue
		}
		_, err := r.readLock(ctx, o)
		switch {
		case errors.Is(err, objstore.ErrNotFound):
			continue // released meanwhile
		case err != nil && !errors.Is(err, ErrCorrupt):
			return "", err
		case err != nil:
			// A GC's own lock is always well-formed: this one is damage
			// or planted. (A GC lock is judged by its modification time
			// only: its heartbeat field may be an older client's clock,
			// or newer than the listed version.)
			klog.InfoS("Warning: ignoring a malformed GC lock", "store", r.store, "object", o.Key, "err", err)
			continue
		}
		return o.Key, nil
	}
	return "", nil
}

// readLock reads and validates a lock object.
func (r *Repo) readLock(ctx context.Context, o objstore.Info) (*lockInfo, error) {
	key := o.Key
	var info lockInfo
	if err := r.readJSON(ctx, key, maxLockBytes, o.Size, &info); err != nil {
		return nil, err
	}
	if err := info.validate(key); err != nil {
		return nil, err
	}
	return &info, nil
}

func newGCLockID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return gcLockID + "-" + hex.EncodeToString(b[:])
}
