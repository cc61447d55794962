package engine

import (
	"context"
	"sort"
	"sync"
)

// keyLocks serialises work per ID: calls on one ID run one at a time,
// calls on different IDs run in parallel. Waiting honours the context.
type keyLocks struct {
	mu    sync.Mutex
	locks map[string]*keyLock
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
		return errorf(ErrAborted, "waiting for another operation on %s: %v", key, ctx.Err())
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
