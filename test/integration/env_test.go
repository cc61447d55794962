// Package integration tests `cairn standalone` as a user's data sees it:
// byte-for-byte integrity through snapshots, restores, clones and
// expansion; kill -9 at injected points; concurrent calls.
package integration

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cairn-csi/cairn/internal/testsupport/harness"
	"github.com/cairn-csi/cairn/internal/testsupport/machinelock"
	"github.com/cairn-csi/cairn/internal/testsupport/scratchfs"
)

var binary string

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "integration tests need root (loop devices and mounts)")
		os.Exit(1)
	}
	dir, err := os.MkdirTemp("", "cairn-integration-bin")
	if err != nil {
		panic(err)
	}
	binary, err = harness.Build(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := machinelock.Main(m) // apart from a real node's run (see machinelock)
	os.RemoveAll(dir)
	os.Exit(code)
}

type env struct {
	t    *testing.T
	ctx  context.Context
	fs   *scratchfs.FS
	d    *harness.Driver
	mnt  string // where volumes are staged and published
	work string
}

// newEnv makes a data root of the given file system (xfs: reflink, ext4:
// copy fallback) and starts the driver on it with extra environment.
func newEnv(t *testing.T, rootFs string, driverEnv ...string) *env {
	t.Helper()
	return newEnvArgs(t, rootFs, nil, driverEnv...)
}

// newEnvArgs is newEnv with extra driver flags.
func newEnvArgs(t *testing.T, rootFs string, args []string, driverEnv ...string) *env {
	t.Helper()
	work := t.TempDir()
	fs, err := scratchfs.Create(filepath.Join(work, "root.img"), filepath.Join(work, "root"), rootFs, 16<<30)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	e := &env{t: t, ctx: ctx, fs: fs, work: work, mnt: filepath.Join(work, "mnt")}
	e.d = &harness.Driver{Bin: binary, Socket: filepath.Join(work, "csi.sock"), DataRoot: fs.Mount, NodeID: "it-node", Log: filepath.Join(work, "cairn.log"), Env: driverEnv, Args: args}
	t.Cleanup(func() {
		e.d.Close()
		if t.Failed() {
			if b, err := os.ReadFile(e.d.Log); err == nil {
				if len(b) > 20000 {
					b = b[len(b)-20000:]
				}
				t.Logf("driver log (tail):\n%s", b)
			}
		}
		harness.UnmountAll(e.mnt)
		harness.DetachLoops(fs.Mount)
		fs.Close()
		cancel()
	})
	if err := e.d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return e
}

// restart kills the driver with SIGKILL (if still running) and starts it
// again with the given environment.
func (e *env) restart(driverEnv ...string) {
	e.t.Helper()
	e.d.Kill()
	e.d.Env = driverEnv
	if err := e.d.Start(e.ctx); err != nil {
		e.t.Fatal(err)
	}
}

// noLeaks fails the test if loop devices or mounts of the data root remain.
func (e *env) noLeaks() {
	e.t.Helper()
	leaks, err := harness.Leaks(e.fs.Mount, e.mnt)
	if err != nil {
		e.t.Fatal(err)
	}
	for _, l := range leaks {
		e.t.Errorf("left behind: %s", l)
	}
	for _, d := range []string{"tmp", "trash"} {
		ents, _ := os.ReadDir(filepath.Join(e.fs.Mount, d))
		for _, ent := range ents {
			e.t.Errorf("left behind in %s/: %s", d, ent.Name())
		}
	}
}

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}
