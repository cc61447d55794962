package fsops

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cairn-csi/cairn/internal/testsupport/scratchfs"
)

const mib = int64(1) << 20

// scratch mounts a fresh 1 GiB scratch file system of fsType and returns its
// mount point; it is thawed, unmounted and destroyed at clean-up.
func scratch(t *testing.T, fsType string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for loop devices and mounts")
	}
	dir := t.TempDir()
	fs, err := scratchfs.Create(filepath.Join(dir, "fs.img"), filepath.Join(dir, "mnt"), fsType, 1<<30)
	if err != nil {
		t.Fatalf("scratch %s: %v", fsType, err)
	}
	t.Cleanup(func() {
		Thaw(fs.Mount)
		if err := fs.Close(); err != nil {
			t.Errorf("close scratch fs: %v", err)
		}
	})
	return fs.Mount
}

func forEachFs(t *testing.T, fn func(t *testing.T, mnt string, fsType string)) {
	for _, fsType := range []string{"xfs", "ext4"} {
		t.Run(fsType, func(t *testing.T) { fn(t, scratch(t, fsType), fsType) })
	}
}

func pattern(seed uint64, n int64) []byte {
	r := rand.New(rand.NewPCG(seed, ^seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

type region struct{ off, n int64 }

// sparseFile makes a file of size bytes with patterned data only in
// regions (4 KiB aligned, so file systems allocate exactly them) and
// returns its full content.
func sparseFile(t *testing.T, path string, size int64, regions []region) []byte {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Set the size first so no write extends the file (XFS preallocates
	// speculatively past EOF on extending writes).
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, size)
	for i, r := range regions {
		p := pattern(uint64(i+1), r.n)
		if _, err := f.WriteAt(p, r.off); err != nil {
			t.Fatal(err)
		}
		copy(want[r.off:], p)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	return want
}

func ranges(t *testing.T, path string, size int64) []region {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []region
	if err := ForEachDataRange(f, size, func(off, n int64) error {
		out = append(out, region{off, n})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// checkRanges asserts that got are ordered, disjoint, inside [0, size),
// cover every region of want and add at most slack bytes beyond them.
func checkRanges(t *testing.T, got, want []region, size, slack int64) {
	t.Helper()
	var total, wantTotal int64
	for i, r := range got {
		if r.n <= 0 || r.off < 0 || r.off+r.n > size || (i > 0 && r.off < got[i-1].off+got[i-1].n) {
			t.Fatalf("bad data ranges %v (size %d)", got, size)
		}
		total += r.n
	}
	for _, w := range want {
		wantTotal += w.n
		covered := false
		for _, r := range got {
			if r.off <= w.off && w.off+w.n <= r.off+r.n {
				covered = true
			}
		}
		if !covered {
			t.Fatalf("data region %v is not inside the reported ranges %v", w, got)
		}
	}
	if total > wantTotal+slack {
		t.Fatalf("reported %d bytes of data ranges %v for %d bytes written", total, got, wantTotal)
	}
}

func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "meta.json")
	if err := WriteFileAtomic(path, []byte("one"), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "one" {
		t.Fatalf("read back %q, %v", b, err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, %v; want 0600", st.Mode(), err)
	}

	// Replacing keeps readers of the old file on the old content and
	// swaps the name to a complete new file.
	old, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	big := bytes.Repeat([]byte("two "), 100_000)
	if err := WriteFileAtomic(path, big, 0o640); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(path); err != nil || !bytes.Equal(b, big) {
		t.Fatalf("read back %d bytes, %v; want %d", len(b), err, len(big))
	}
	b := make([]byte, 10)
	if n, _ := old.Read(b); string(b[:n]) != "one" {
		t.Fatalf("the replaced file was modified in place: %q", b[:n])
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o640 {
		t.Fatalf("mode %v after replace, want 0640", st.Mode())
	}
	if err := WriteFileAtomic(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); len(b) != 0 {
		t.Fatalf("empty write left %d bytes", len(b))
	}

	// No temporary files are left behind.
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 || ents[0].Name() != "meta.json" {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Fatalf("directory holds %v, want only meta.json", names)
	}

	// A missing directory is an error and creates nothing.
	if err := WriteFileAtomic(filepath.Join(dir, "nodir", "x"), []byte("x"), 0o600); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("write into a missing directory: %v", err)
	}
	// Replacing a directory fails and leaves no temporary file.
	sub := filepath.Join(dir, "sub")
	os.Mkdir(sub, 0o700)
	os.WriteFile(filepath.Join(sub, "keep"), []byte("k"), 0o600)
	if err := WriteFileAtomic(sub, []byte("x"), 0o600); err == nil {
		t.Fatal("replacing a non-empty directory succeeded")
	}
	ents, _ = os.ReadDir(dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Fatalf("failed write left %s", e.Name())
		}
	}
}

func TestProbeReflink(t *testing.T) {
	forEachFs(t, func(t *testing.T, mnt, fsType string) {
		got, err := ProbeReflink(mnt)
		if err != nil {
			t.Fatal(err)
		}
		if want := fsType == "xfs"; got != want {
			t.Fatalf("ProbeReflink on %s = %v, want %v", fsType, got, want)
		}
		if ents, _ := os.ReadDir(mnt); len(ents) > 1 || (len(ents) == 1 && ents[0].Name() != "lost+found") {
			t.Fatalf("probe left files: %v", ents)
		}
	})
	if _, err := ProbeReflink(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Fatal("probe of a missing directory succeeded")
	}
}

func TestReflink(t *testing.T) {
	forEachFs(t, func(t *testing.T, mnt, fsType string) {
		src := filepath.Join(mnt, "src")
		dst := filepath.Join(mnt, "dst")
		want := sparseFile(t, src, 64*mib, []region{{0, mib}, {32 * mib, 4 * mib}})
		err := Reflink(src, dst)
		if fsType == "ext4" {
			if !errors.Is(err, ErrReflinkUnsupported) {
				t.Fatalf("reflink on ext4: %v, want ErrReflinkUnsupported", err)
			}
			if _, err := os.Stat(dst); !os.IsNotExist(err) {
				t.Fatalf("failed reflink left %s: %v", dst, err)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		if b, err := os.ReadFile(dst); err != nil || !bytes.Equal(b, want) {
			t.Fatalf("clone differs from the source (%v)", err)
		}
		// Shared extents: the clone takes no new space.
		var before, after int64
		before, _ = AllocatedBytes(src)
		after, _ = AllocatedBytes(dst)
		if after != before {
			t.Errorf("clone allocates %d bytes, source %d", after, before)
		}
		// Copy-on-write: writing to the clone leaves the source alone.
		f, _ := os.OpenFile(dst, os.O_WRONLY, 0)
		f.WriteAt([]byte("changed"), 100)
		f.Close()
		if b, _ := os.ReadFile(src); !bytes.Equal(b, want) {
			t.Fatal("writing to the clone changed the source")
		}
		// dst must not exist.
		if err := Reflink(src, dst); !errors.Is(err, os.ErrExist) {
			t.Fatalf("reflink onto an existing file: %v", err)
		}
		if b, _ := os.ReadFile(dst); !bytes.Equal(b[100:107], []byte("changed")) {
			t.Fatal("failed reflink onto an existing file changed it")
		}
	})
}

func TestSparseCopy(t *testing.T) {
	forEachFs(t, func(t *testing.T, mnt, fsType string) {
		ctx := context.Background()
		const size = 96 * mib
		regions := []region{{0, 64 << 10}, {10 * mib, mib}, {60*mib + 4096, 3 * mib}, {size - 8192, 8192}}
		src := filepath.Join(mnt, "src")
		want := sparseFile(t, src, size, regions)
		dst := filepath.Join(mnt, "dst")
		if err := SparseCopy(ctx, src, dst); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(dst)
		if err != nil || !bytes.Equal(b, want) {
			t.Fatalf("copy differs from the source (%d bytes, %v)", len(b), err)
		}
		var written int64
		for _, r := range regions {
			written += r.n
		}
		alloc, _ := AllocatedBytes(dst)
		if alloc < written || alloc > written+mib {
			t.Fatalf("copy allocates %d bytes for %d bytes of data: holes not kept", alloc, written)
		}
		checkRanges(t, ranges(t, dst, size), regions, size, mib)

		// A file that is all hole copies to an all-hole file.
		empty := filepath.Join(mnt, "empty")
		sparseFile(t, empty, 64*mib, nil)
		if err := SparseCopy(ctx, empty, empty+".copy"); err != nil {
			t.Fatal(err)
		}
		if st, _ := os.Stat(empty + ".copy"); st.Size() != 64*mib {
			t.Fatalf("copy of an empty file has %d bytes", st.Size())
		}
		if alloc, _ := AllocatedBytes(empty + ".copy"); alloc != 0 {
			t.Fatalf("copy of an all-hole file allocates %d bytes", alloc)
		}

		// dst must not exist and is left alone.
		if err := SparseCopy(ctx, src, empty+".copy"); !errors.Is(err, os.ErrExist) {
			t.Fatalf("copy onto an existing file: %v", err)
		}
		if st, err := os.Stat(empty + ".copy"); err != nil || st.Size() != 64*mib {
			t.Fatalf("failed copy touched the existing file: %v", err)
		}

		// A cancelled copy fails and removes its partial output.
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if err := SparseCopy(cctx, src, filepath.Join(mnt, "cancelled")); !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled copy: %v", err)
		}
		if _, err := os.Stat(filepath.Join(mnt, "cancelled")); !os.IsNotExist(err) {
			t.Fatalf("cancelled copy left its output: %v", err)
		}
		if err := SparseCopy(ctx, filepath.Join(mnt, "missing"), filepath.Join(mnt, "m2")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("copy of a missing file: %v", err)
		}
	})
}

func TestForEachDataRange(t *testing.T) {
	forEachFs(t, func(t *testing.T, mnt, fsType string) {
		const size = 64 * mib
		regions := []region{{4096, 8192}, {5 * mib, 2 * mib}, {40 * mib, 4096}}
		path := filepath.Join(mnt, "f")
		sparseFile(t, path, size, regions)
		got := ranges(t, path, size)
		checkRanges(t, got, regions, size, 256<<10)
		if len(got) < len(regions) {
			t.Fatalf("separate data regions merged: %v", got)
		}

		// size bounds the walk: nothing at or past it is reported.
		for _, r := range ranges(t, path, 6*mib) {
			if r.off+r.n > 6*mib {
				t.Fatalf("range %v reaches past the 6MiB bound", r)
			}
		}
		if got := ranges(t, path, 6*mib); len(got) == 0 || got[len(got)-1].off+got[len(got)-1].n != 6*mib {
			t.Fatalf("bounded walk should end at the bound inside the 5-7MiB region: %v", got)
		}
		if got := ranges(t, path, 4096); len(got) != 0 {
			t.Fatalf("the leading hole reported data: %v", got)
		}

		// A hole-only file reports nothing; an error from fn stops the walk.
		sparseFile(t, path+".empty", size, nil)
		if got := ranges(t, path+".empty", size); len(got) != 0 {
			t.Fatalf("hole-only file reports data %v", got)
		}
		f, _ := os.Open(path)
		defer f.Close()
		stop := errors.New("stop")
		calls := 0
		err := ForEachDataRange(f, size, func(off, n int64) error { calls++; return stop })
		if !errors.Is(err, stop) || calls != 1 {
			t.Fatalf("fn error: got %v after %d calls", err, calls)
		}
	})
}

func TestFreezeThaw(t *testing.T) {
	forEachFs(t, func(t *testing.T, mnt, fsType string) {
		// Data written but not synced is on disk once frozen.
		if err := os.WriteFile(filepath.Join(mnt, "before"), []byte("before"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := Freeze(mnt); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() {
			done <- os.WriteFile(filepath.Join(mnt, "during"), []byte("during"), 0o644)
		}()
		select {
		case err := <-done:
			Thaw(mnt)
			t.Fatalf("write to a frozen file system finished (%v)", err)
		case <-time.After(300 * time.Millisecond):
		}
		if err := Freeze(mnt); err == nil {
			t.Error("freezing a frozen file system succeeded")
		}
		if err := Thaw(mnt); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("write still blocked after thaw")
		}
		if b, err := os.ReadFile(filepath.Join(mnt, "during")); err != nil || string(b) != "during" {
			t.Fatalf("write made while frozen: %q, %v", b, err)
		}
		// Thawing a thawed file system is fine.
		if err := Thaw(mnt); err != nil {
			t.Fatalf("second thaw: %v", err)
		}
		if err := Freeze(filepath.Join(mnt, "missing")); err == nil {
			Thaw(mnt)
			t.Fatal("freezing a missing path succeeded")
		}
		if err := Thaw(filepath.Join(mnt, "missing")); err == nil {
			t.Fatal("thawing a missing path succeeded")
		}
	})
}
