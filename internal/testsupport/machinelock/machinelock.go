// Package machinelock keeps tests that mount file systems apart from tests
// that run a real node, on one machine, across test binaries.
//
// A real node's pods copy the host's mount table into their own mount
// namespaces (a privileged pod that mounts the host's / copies every mount
// of the moment, and on a host whose / is private, as on this CI machine,
// a later unmount on the host does not reach that copy). A mount another
// test made meanwhile then stays alive in the pod, and so does its loop
// device, which the kernel detaches only when the last user lets go: that
// test's leak check sees a loop device it did detach. So a real node holds
// the lock exclusively, and tests that mount and check for leaks hold it
// shared.
//
// The lock is an flock(2) on one file, re-entrant within a process: a
// process that holds it exclusively may ask again (shared or exclusive);
// it is released when the last holder releases it or the process dies.
package machinelock

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"
)

// File is the lock file.
const File = "/run/cairn-test-machine.lock"

var (
	path      = File // tests of this package use their own
	mu        sync.Mutex
	held      *os.File // this process's open lock file, while held
	exclusive bool
	holders   int
)

// Shared waits until no real node runs on the machine and holds the lock
// shared until release is called.
func Shared(ctx context.Context) (release func(), err error) { return acquire(ctx, false) }

// Exclusive waits until no other test on the machine holds the lock and
// holds it exclusively until release is called.
func Exclusive(ctx context.Context) (release func(), err error) { return acquire(ctx, true) }

func acquire(ctx context.Context, excl bool) (func(), error) {
	mu.Lock()
	defer mu.Unlock()
	if held != nil {
		if excl && !exclusive {
			return nil, errors.New("machinelock: this process holds the lock shared and cannot take it exclusively")
		}
		holders++
		return releaser(), nil
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("machinelock: %w", err)
	}
	how := syscall.LOCK_SH
	if excl {
		how = syscall.LOCK_EX
	}
	said := false
	for {
		err := syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("machinelock: lock %s: %w", path, err)
		}
		if !said {
			fmt.Fprintf(os.Stderr, "machinelock: waiting for %s (%s)\n", path, waitingFor(excl))
			said = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("machinelock: %s: still held (%s): %w", path, waitingFor(excl), ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
	held, exclusive, holders = f, excl, 1
	return releaser(), nil
}

func waitingFor(excl bool) string {
	if excl {
		return "another test on this machine mounts file systems or runs a node"
	}
	return "a real node runs on this machine"
}

// releaser returns a release func that may be called more than once.
func releaser() func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			mu.Lock()
			defer mu.Unlock()
			holders--
			if holders == 0 && held != nil {
				held.Close() // drops the flock
				held = nil
			}
		})
	}
}

// Main runs a test binary's tests (m is its *testing.M) holding the lock
// shared, and returns their exit code: the TestMain of a package whose
// tests mount file systems or attach loop devices calls
// os.Exit(machinelock.Main(m)).
func Main(m interface{ Run() int }) int {
	release, err := Shared(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer release()
	return m.Run()
}
