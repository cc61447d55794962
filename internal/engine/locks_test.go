package engine

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cairn-csi/cairn/internal/model"
)

func lockOrFail(t *testing.T, k *keyLocks, keys ...string) func() {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	release, err := k.lock(ctx, keys...)
	if err != nil {
		t.Fatalf("lock %v: %v", keys, err)
	}
	return release
}

func TestKeyLocksSameKeySerialises(t *testing.T) {
	k := newKeyLocks()
	release := lockOrFail(t, k, "a")

	got := make(chan func(), 1)
	go func() {
		r, err := k.lock(context.Background(), "a")
		if err != nil {
			panic(err)
		}
		got <- r
	}()
	select {
	case <-got:
		t.Fatal("second lock of the same key succeeded while the first was held")
	case <-time.After(100 * time.Millisecond):
	}
	release()
	select {
	case r := <-got:
		r()
	case <-time.After(5 * time.Second):
		t.Fatal("second lock not granted after the first was released")
	}
	if n := len(k.locks); n != 0 {
		t.Errorf("%d lock entries left after all were released", n)
	}
}

func TestKeyLocksDifferentKeysParallel(t *testing.T) {
	k := newKeyLocks()
	ra := lockOrFail(t, k, "a")
	defer ra()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	rb, err := k.lock(ctx, "b")
	if err != nil {
		t.Fatalf("lock b while a is held: %v", err)
	}
	rb()
}

func TestKeyLocksContextCancelAborts(t *testing.T) {
	k := newKeyLocks()
	ra := lockOrFail(t, k, "a")

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := k.lock(ctx, "a")
	wantErr(t, err, model.ErrAborted, "lock a held elsewhere, deadline 50ms")
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("aborted lock returned after %s", d)
	}

	// An explicitly cancelled context aborts too.
	ctx2, cancel2 := context.WithCancel(context.Background())
	go func() { time.Sleep(20 * time.Millisecond); cancel2() }()
	_, err = k.lock(ctx2, "a")
	wantErr(t, err, model.ErrAborted, "lock a with cancelled context")

	// The aborted waiters did not consume the token: a is still held by the
	// first owner and free once it is released.
	ra()
	lockOrFail(t, k, "a")()
	if n := len(k.locks); n != 0 {
		t.Errorf("%d lock entries left after all were released", n)
	}
}

func TestKeyLocksAbortReleasesPartialSet(t *testing.T) {
	k := newKeyLocks()
	rb := lockOrFail(t, k, "b")
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	// "a" sorts first and is taken, then waiting for "b" aborts: "a" must be
	// given back.
	_, err := k.lock(ctx, "b", "a")
	wantErr(t, err, model.ErrAborted, "lock {b, a} while b is held")
	ctx2, cancel2 := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel2()
	ra, err := k.lock(ctx2, "a")
	if err != nil {
		t.Fatalf("a still held after an aborted multi-key lock: %v", err)
	}
	ra()
	rb()
}

func TestKeyLocksDuplicateKeys(t *testing.T) {
	k := newKeyLocks()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	r, err := k.lock(ctx, "a", "a", "b", "a")
	if err != nil {
		t.Fatalf("lock with duplicate keys: %v", err)
	}
	r()
	lockOrFail(t, k, "a", "b")()
}

// Many goroutines take overlapping key sets in different orders: no two
// holders of a key overlap and nobody deadlocks.
func TestKeyLocksStress(t *testing.T) {
	k := newKeyLocks()
	keys := []string{"v1", "v2", "v3", "v4"}
	var inside [4]atomic.Int32
	var violations atomic.Int32
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				a, b := (g+i)%4, (g*3+i*7+1)%4
				release, err := k.lock(ctx, keys[a], keys[b])
				if err != nil {
					t.Error(fmt.Errorf("goroutine %d: %w", g, err))
					return
				}
				for _, x := range []int{a, b} {
					if inside[x].Add(1) > 1 {
						violations.Add(1)
					}
					if a == b {
						break
					}
				}
				time.Sleep(time.Microsecond)
				for _, x := range []int{a, b} {
					inside[x].Add(-1)
					if a == b {
						break
					}
				}
				release()
			}
		})
	}
	wg.Wait()
	if n := violations.Load(); n > 0 {
		t.Errorf("%d times two holders were inside the same key", n)
	}
	if n := len(k.locks); n != 0 {
		t.Errorf("%d lock entries left after all were released", n)
	}
}
