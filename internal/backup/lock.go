package backup

import (
	"context"
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
	heartbeatEvery = 30 * time.Second
	lockLive       = 10 * time.Minute
	gcWaitStep     = 5 * time.Second
)

const gcLockID = "gc"

// ErrBusy is returned by GC when backups are running.
var ErrBusy = errors.New("backup store busy")

// backupLock is a running backup's shared lock with heartbeat; it also
// records the packs uploaded so far, for resuming after a crash.
type backupLock struct {
	r     *Repo
	id    string
	mu    sync.Mutex
	packs []string
	saved time.Time // last write of the lock
	stop  chan struct{}
	done  chan struct{}
}

// acquireBackupLock writes the lock (keeping the packs a previous, crashed
// run recorded), then waits while a live GC lock exists.
func (r *Repo) acquireBackupLock(ctx context.Context, id string) (*backupLock, error) {
	var prev lockInfo
	if err := r.getJSON(ctx, lockKey(id), &prev); err != nil && !errors.Is(err, objstore.ErrNotFound) {
		return nil, err
	}
	l := &backupLock{r: r, id: id, packs: prev.Packs, stop: make(chan struct{}), done: make(chan struct{})}
	for {
		if err := l.write(ctx); err != nil {
			return nil, err
		}
		live, err := r.liveLock(ctx, gcLockID)
		if err != nil {
			return nil, err
		}
		if !live {
			break
		}
		klog.InfoS("Backup waits for garbage collection", "backup", id, "store", r.store)
		if err := r.store.Delete(ctx, lockKey(id)); err != nil {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(gcWaitStep):
		}
	}
	go l.heartbeat()
	return l, nil
}

func (l *backupLock) write(ctx context.Context) error {
	l.mu.Lock()
	info := lockInfo{Kind: "backup", ID: l.id, Heartbeat: time.Now().UTC(), Packs: append([]string(nil), l.packs...)}
	l.saved = info.Heartbeat
	l.mu.Unlock()
	if err := l.r.putJSON(ctx, lockKey(l.id), &info); err != nil {
		return fmt.Errorf("write backup lock %s: %w", l.id, err)
	}
	return nil
}

func (l *backupLock) heartbeat() {
	defer close(l.done)
	t := time.NewTicker(heartbeatEvery)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			if err := l.write(ctx); err != nil {
				klog.ErrorS(err, "Backup lock heartbeat failed", "backup", l.id)
			}
			cancel()
		}
	}
}

// packSaveEvery bounds how often the lock is rewritten as packs are
// uploaded: a crash forgets at most this much upload, whose packs GC
// reclaims later.
var packSaveEvery = 5 * time.Second

// addPack records an uploaded pack in the lock (persisted at most every
// packSaveEvery, and when the backup stops) before any manifest refers to
// it.
func (l *backupLock) addPack(ctx context.Context, id string) error {
	l.mu.Lock()
	l.packs = append(l.packs, id)
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

func (l *backupLock) resumedPacks() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.packs...)
}

// release stops the heartbeat and deletes the lock.
func (l *backupLock) release(ctx context.Context) error {
	close(l.stop)
	<-l.done
	return l.r.store.Delete(ctx, lockKey(l.id))
}

// abandon stops the heartbeat but keeps the lock, so a later run resumes
// with the packs it lists.
func (l *backupLock) abandon() {
	close(l.stop)
	<-l.done
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := l.write(ctx); err != nil {
		klog.V(2).InfoS("Could not save the interrupted backup's lock", "backup", l.id, "err", err)
	}
}

// liveLock reports whether lock id exists with a recent heartbeat.
func (r *Repo) liveLock(ctx context.Context, id string) (bool, error) {
	var info lockInfo
	err := r.getJSON(ctx, lockKey(id), &info)
	if errors.Is(err, objstore.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return time.Since(info.Heartbeat) < lockLive, nil
}

// locks lists every lock in the store.
func (r *Repo) locks(ctx context.Context) ([]lockInfo, error) {
	var keys []string
	if err := r.store.List(ctx, "locks/", func(i objstore.Info) error {
		if strings.HasSuffix(i.Key, ".json") {
			keys = append(keys, i.Key)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	var out []lockInfo
	for _, k := range keys {
		var info lockInfo
		if err := r.getJSON(ctx, k, &info); err != nil {
			if errors.Is(err, objstore.ErrNotFound) {
				continue
			}
			return nil, err
		}
		out = append(out, info)
	}
	return out, nil
}
