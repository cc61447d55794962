package engine

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/fsops"
	"github.com/cairn-csi/cairn/internal/loop"
	"github.com/cairn-csi/cairn/internal/testsupport/scratchfs"
)

const (
	mib = int64(1) << 20
	gib = int64(1) << 30

	// rootImageSize is the (sparse) size of every test data root.
	rootImageSize = 8 * gib
)

// rootKinds are the data roots every engine test runs on: XFS with reflink
// and ext4, which has none and makes the engine fall back to sparse copies.
var rootKinds = []struct {
	fsType  string
	reflink bool
}{
	{"xfs", true},
	{"ext4", false},
}

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for loop devices and mounts")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skipf("no loop devices: %v", err)
	}
}

// forEachRoot runs fn once on a fresh XFS data root and once on a fresh
// ext4 data root, as subtests named after the file system.
//
// They do not run in parallel on purpose: a child process forked by one
// (mkfs, mount) inherits, until it execs, every file the other has open,
// and a file open on a mounted volume makes its unmount fail with EBUSY.
func forEachRoot(t *testing.T, fn func(t *testing.T, e *Engine)) {
	t.Helper()
	requireRoot(t)
	for _, k := range rootKinds {
		t.Run(k.fsType, func(t *testing.T) {
			e := newTestEngine(t, k.fsType)
			if got, want := e.reflink, k.reflink; got != want {
				t.Fatalf("reflink detected on %s root = %v, want %v", k.fsType, got, want)
			}
			fn(t, e)
		})
	}
}

// newTestEngine makes a sparse image in t.TempDir(), formats and mounts it,
// and opens an engine on it. At clean-up it reports mounts and loop devices
// the test left behind, removes them anyway, and destroys the scratch fs.
func newTestEngine(t *testing.T, fsType string) *Engine {
	t.Helper()
	dir := t.TempDir()
	fs, err := scratchfs.Create(filepath.Join(dir, "root.img"), filepath.Join(dir, "root"), fsType, rootImageSize)
	if err != nil {
		t.Fatalf("create %s scratch data root: %v", fsType, err)
	}
	t.Cleanup(func() {
		if err := fs.Close(); err != nil {
			t.Errorf("close scratch data root: %v", err)
		}
	})
	e, err := Open(context.Background(), Config{DataRoot: fs.Mount})
	if err != nil {
		t.Fatalf("open engine on %s: %v", fs.Mount, err)
	}
	t.Cleanup(func() {
		if !t.Failed() {
			if leaks := leaksUnder(e.Root()); len(leaks) > 0 {
				t.Errorf("test left behind:\n  %s", strings.Join(leaks, "\n  "))
			}
		}
		forceCleanup(e.Root())
	})
	return e
}

// reopen opens a second engine on the same data root, as a restarted
// driver would.
func reopen(t *testing.T, e *Engine) *Engine {
	t.Helper()
	e2, err := Open(context.Background(), Config{DataRoot: e.Root(), FreezeTimeout: e.freezeTimeout})
	if err != nil {
		t.Fatalf("reopen %s: %v", e.Root(), err)
	}
	return e2
}

// kubePath returns a path for staging and target directories. They live on
// the data root's scratch fs, never on the host's file systems, so that
// nothing a test does (a freeze in particular) can reach the host.
func kubePath(e *Engine, parts ...string) string {
	return filepath.Join(append([]string{e.Root(), "kubelet"}, parts...)...)
}

type mountEntry struct {
	mountPoint, fsType, source string
}

func mounts() []mountEntry {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		panic(err)
	}
	defer f.Close()
	var out []mountEntry
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 {
			continue
		}
		m := mountEntry{mountPoint: fields[4]}
		for i, fl := range fields {
			if fl == "-" && i+2 < len(fields) {
				m.fsType, m.source = fields[i+1], fields[i+2]
			}
		}
		out = append(out, m)
	}
	return out
}

// mountAt returns the mount at path (the last one if stacked).
func mountAt(path string) (mountEntry, bool) {
	var found mountEntry
	ok := false
	for _, m := range mounts() {
		if m.mountPoint == path {
			found, ok = m, true
		}
	}
	return found, ok
}

func isMountPoint(path string) bool {
	_, ok := mountAt(path)
	return ok
}

// leaksUnder lists mounts below root and loop devices backed by files
// below root.
func leaksUnder(root string) []string {
	var out []string
	devs, _ := loop.List()
	for _, d := range devs {
		if strings.HasPrefix(d.BackingFile, root+"/") {
			out = append(out, fmt.Sprintf("loop device %s -> %s", d.Path, d.BackingFile))
		}
	}
	for _, m := range mounts() {
		if strings.HasPrefix(m.mountPoint, root+"/") {
			out = append(out, fmt.Sprintf("mount %s (%s from %s)", m.mountPoint, m.fsType, m.source))
		}
	}
	return out
}

// forceCleanup thaws and unmounts everything below root (deepest first) and
// detaches loop devices backed by files below root.
func forceCleanup(root string) {
	var mps []string
	for _, m := range mounts() {
		if strings.HasPrefix(m.mountPoint, root+"/") {
			mps = append(mps, m.mountPoint)
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(mps)))
	for _, mp := range mps {
		fsops.Thaw(mp)
		if err := unix.Unmount(mp, 0); err != nil {
			unix.Unmount(mp, unix.MNT_DETACH)
		}
	}
	fsops.Thaw(root)
	devs, _ := loop.List()
	for _, d := range devs {
		if strings.HasPrefix(d.BackingFile, root+"/") {
			loop.Detach(d.Path)
		}
	}
}

// pattern returns n pseudo-random bytes determined by seed.
func pattern(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	for i := n &^ 7; i < n; i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

// writeAt writes data at off into path and fsyncs it.
func writeAt(t *testing.T, path string, off int64, data []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(data, off); err != nil {
		t.Fatalf("write %d bytes at %d into %s: %v", len(data), off, path, err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

func readAt(t *testing.T, path string, off int64, n int) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatalf("read %d bytes at %d from %s: %v", n, off, path, err)
	}
	return b
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// assertPrefix checks that path starts with want, byte for byte.
func assertPrefix(t *testing.T, path string, want []byte) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const chunk = 4 << 20
	buf := make([]byte, chunk)
	for off := 0; off < len(want); off += chunk {
		n := min(chunk, len(want)-off)
		if _, err := io.ReadFull(f, buf[:n]); err != nil {
			t.Fatalf("read %s at %d: %v", path, off, err)
		}
		if !bytes.Equal(buf[:n], want[off:off+n]) {
			for i := range n {
				if buf[i] != want[off+i] {
					t.Fatalf("%s differs at byte %d: got %#02x, want %#02x", path, off+i, buf[i], want[off+i])
				}
			}
		}
	}
}

// assertContent checks that path holds exactly want.
func assertContent(t *testing.T, path string, want []byte) {
	t.Helper()
	if got := fileSize(t, path); got != int64(len(want)) {
		t.Fatalf("%s has %d bytes, want %d", path, got, len(want))
	}
	assertPrefix(t, path, want)
}

// assertZeros checks that path holds only zero bytes in [off, off+n).
func assertZeros(t *testing.T, path string, off, n int64) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4<<20)
	zero := make([]byte, len(buf))
	for done := int64(0); done < n; {
		k := min(int64(len(buf)), n-done)
		if _, err := f.ReadAt(buf[:k], off+done); err != nil {
			t.Fatalf("read %s at %d: %v", path, off+done, err)
		}
		if !bytes.Equal(buf[:k], zero[:k]) {
			t.Fatalf("%s: non-zero bytes in [%d, %d)", path, off+done, off+done+k)
		}
		done += k
	}
}

// fillVolume writes a few patterned regions into a volume's data file
// (start, unaligned middle, end) and returns the file's whole expected
// content.
func fillVolume(t *testing.T, e *Engine, id string, seed uint64) []byte {
	t.Helper()
	path := e.volumeData(id)
	size := fileSize(t, path)
	want := readFile(t, path)
	regions := []struct{ off, n int64 }{
		{0, 64 << 10},
		{size/3 + 123, mib + 77},
		{size - 4096, 4096},
	}
	for i, r := range regions {
		p := pattern(seed+uint64(i), int(r.n))
		writeAt(t, path, r.off, p)
		copy(want[r.off:], p)
	}
	return want
}

func wantErr(t *testing.T, err, kind error, what string) {
	t.Helper()
	if !errors.Is(err, kind) {
		t.Fatalf("%s: got error %v, want %v", what, err, kind)
	}
}

// must(f())(t) returns f's value or fails the test with f's error.
func must[T any](v T, err error) func(t *testing.T) T {
	return func(t *testing.T) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func ok(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func statfs(t *testing.T, path string) (total, avail int64) {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Blocks) * st.Bsize, int64(st.Bavail) * st.Bsize
}

// writeWithin writes a file and fsyncs it, failing the test if that does
// not finish in time (as when the file system stayed frozen). On timeout the
// file system is thawed so the blocked writer can finish.
func writeWithin(t *testing.T, mountPoint, name string, data []byte, d time.Duration) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		f, err := os.Create(filepath.Join(mountPoint, name))
		if err == nil {
			_, err = f.Write(data)
			if err == nil {
				err = f.Sync()
			}
			f.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("write %s on %s: %v", name, mountPoint, err)
		}
	case <-time.After(d):
		fsops.Thaw(mountPoint)
		<-done
		t.Fatalf("write to %s blocked for %s: the file system was left frozen", mountPoint, d)
	}
}

func loopsOf(t *testing.T, e *Engine, id string) []loop.Device {
	t.Helper()
	devs, err := loop.FindByBackingFile(e.volumeData(id))
	if err != nil {
		t.Fatal(err)
	}
	return devs
}

func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// assertNoLeftovers checks that tmp/ and trash/ of the data root are empty.
func assertNoLeftovers(t *testing.T, e *Engine) {
	t.Helper()
	for _, d := range []string{tmpDir, trashDir} {
		if names := dirEntries(t, filepath.Join(e.root, d)); len(names) > 0 {
			t.Errorf("%s/ holds leftovers: %v", d, names)
		}
	}
}
