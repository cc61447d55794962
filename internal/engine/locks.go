package engine

import (
	"context"
	"sort"
	"sync"

	"github.com/cairn-csi/cairn/internal/model"
)

// keyLocks serialises work per ID: calls on one ID run one at a time,
// calls on different IDs run in parallel. Waiting honours the context.
//
// Lock order. The engine's locks are the per-ID locks here (volume,
// snapshot and backup IDs) and two mutexes, Engine.capMu (capacity check
// and allocation) and backups.mu (the backup state maps). The rules:
//
//  1. A call takes every ID lock it needs in one lock call, which sorts
//     them (CreateSnapshot: snapshot + volume; CreateVolume from a source:
//     volume + source; CreateBackup: backup + volume). It never calls lock
//     again while it holds them: work on other IDs that follows (dropping
//     a deleted volume's backup bases, pruning older bases after an
//     upload) runs after the first locks are released.
//  2. capMu and backups.mu are leaves: they may be taken while ID locks
//     are held, never the other way round (nothing waits for an ID lock
//     while holding them), and never one inside the other.
//
// So no two calls can each hold a lock the other waits for.
type keyLocks struct {
	mu    sync.Mutex
	locks map[string]*keyLock
	// onLocked, if set (tests only), is called after each key is taken.
	onLocked func(key string)
}

type keyLock struct {
	ch   chan struct{} // holds one token when free
	refs int
}

func newKeyLocks() *keyLocks { return &keyLocks{locks: map[string]*keyLock{}} }

// lock takes the locks for all keys (sorted, so two callers taking
// overlapping sets cannot deadlock) and returns the function that releases
// them.
func (k *keyLocks) lock(ctx context.Context, keys ...string) (func(), error) {
	keys = append([]string(nil), keys...)
	sort.Strings(keys)
	var held []string
	release := func() {
		for i := len(held) - 1; i >= 0; i-- {
			k.unlock(held[i])
		}
	}
	for i, key := range keys {
		if i > 0 && keys[i-1] == key {
			continue
		}
		if err := k.lockOne(ctx, key); err != nil {
			release()
			return nil, err
		}
		held = append(held, key)
		if k.onLocked != nil {
			k.onLocked(key)
		}
	}
	return release, nil
}

func (k *keyLocks) lockOne(ctx context.Context, key string) error {
	k.mu.Lock()
	l := k.locks[key]
	if l == nil {
		l = &keyLock{ch: make(chan struct{}, 1)}
		l.ch <- struct{}{}
		k.locks[key] = l
	}
	l.refs++
	k.mu.Unlock()
	select {
	case <-l.ch:
		return nil
	case <-ctx.Done():
		k.drop(key, l)
		return model.Errorf(model.ErrAborted, "waiting for another operation on %s: %v", key, ctx.Err())
	}
}

func (k *keyLocks) unlock(key string) {
	k.mu.Lock()
	l := k.locks[key]
	k.mu.Unlock()
	l.ch <- struct{}{}
	k.drop(key, l)
}

func (k *keyLocks) drop(key string, l *keyLock) {
	k.mu.Lock()
	l.refs--
	if l.refs == 0 {
		delete(k.locks, key)
	}
	k.mu.Unlock()
}
