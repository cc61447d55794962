package objstore

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func openFS(t *testing.T) (Store, string) {
	t.Helper()
	dir := t.TempDir()
	s, err := Open(context.Background(), "file://"+dir, Credentials{})
	if err != nil {
		t.Fatal(err)
	}
	return s, dir
}

func TestFSConformance(t *testing.T) {
	runConformance(t, func(t *testing.T) Store {
		s, _ := openFS(t)
		return s
	})
}

// files lists every file and directory under dir, relative.
func files(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != dir {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestFSPutIsAtomic checks that a Put in progress is invisible, and that
// nothing but the object remains afterwards.
func TestFSPutIsAtomic(t *testing.T) {
	s, dir := openFS(t)
	ctx := context.Background()
	put(t, s, "obj", []byte("old"))
	pr, pw := io.Pipe()
	data := randBytes(1, 1<<20)
	done := make(chan error, 1)
	go func() { done <- s.Put(ctx, "obj", pr, int64(len(data))) }()
	if _, err := pw.Write(data[:len(data)/2]); err != nil {
		t.Fatal(err)
	}
	// Half written: the old object is still what readers see.
	if got := get(t, s, "obj"); string(got) != "old" {
		t.Fatalf("mid-Put Get = %d bytes, want the old object", len(got))
	}
	if info, err := s.Stat(ctx, "obj"); err != nil || info.Size != 3 {
		t.Fatalf("mid-Put Stat = %+v, %v", info, err)
	}
	if got := listKeys(t, s, ""); len(got) != 1 || got[0] != "obj" {
		t.Fatalf("mid-Put List = %q", got)
	}
	if n := len(files(t, dir)); n != 2 {
		t.Fatalf("expected the object and one temporary file, found %q", files(t, dir))
	}
	if _, err := pw.Write(data[len(data)/2:]); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := get(t, s, "obj"); !bytes.Equal(got, data) {
		t.Fatal("new object differs")
	}
	if got := files(t, dir); len(got) != 1 || got[0] != "obj" {
		t.Fatalf("after Put the directory holds %q", got)
	}
}

func TestFSFailedPutLeavesNothing(t *testing.T) {
	s, dir := openFS(t)
	ctx := context.Background()
	pr, pw := io.Pipe()
	go func() {
		pw.Write(make([]byte, 1000))
		pw.CloseWithError(errors.New("source broke"))
	}()
	err := s.Put(ctx, "x/y/z", pr, 5000)
	if err == nil || !strings.Contains(err.Error(), "source broke") {
		t.Fatalf("Put = %v, want the reader's error", err)
	}
	for _, f := range files(t, dir) {
		if strings.Contains(f, tmpPrefix) {
			t.Errorf("temporary file left: %s", f)
		}
	}
}

func TestFSDeleteRemovesEmptyDirs(t *testing.T) {
	s, dir := openFS(t)
	ctx := context.Background()
	put(t, s, "a/b/c/d", []byte("1"))
	put(t, s, "a/x", []byte("2"))
	if err := s.Delete(ctx, "a/b/c/d"); err != nil {
		t.Fatal(err)
	}
	if got := files(t, dir); strings.Join(got, ",") != "a,a/x" {
		t.Fatalf("after Delete: %q", got)
	}
	if err := s.Delete(ctx, "a/x"); err != nil {
		t.Fatal(err)
	}
	if got := files(t, dir); len(got) != 0 {
		t.Fatalf("after deleting everything: %q", got)
	}
	// Deleting a "directory" is a no-op.
	put(t, s, "p/q", []byte("3"))
	if err := s.Delete(ctx, "p"); err != nil {
		t.Fatal(err)
	}
	if got := get(t, s, "p/q"); string(got) != "3" {
		t.Fatal("Delete of a directory name touched its contents")
	}
}

func TestFSKeyConflicts(t *testing.T) {
	s, _ := openFS(t)
	ctx := context.Background()
	put(t, s, "a", []byte("1"))
	if err := s.Put(ctx, "a/b", strings.NewReader("2"), 1); err == nil {
		t.Error("Put under an object succeeded")
	}
	put(t, s, "d/e", []byte("1"))
	if err := s.Put(ctx, "d", strings.NewReader("2"), 1); err == nil {
		t.Error("Put over a directory succeeded")
	}
	if got := get(t, s, "d/e"); string(got) != "1" {
		t.Error("failed Put damaged d/e")
	}
}

// TestFSNoEscape checks that a symlink in the tree cannot lead outside it.
func TestFSNoEscape(t *testing.T) {
	s, dir := openFS(t)
	outside := t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "secret"), []byte("s"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := s.Get(ctx, "link/secret"); err == nil {
		t.Error("Get through a symlink out of the root succeeded")
	}
	if err := s.Put(ctx, "link/new", strings.NewReader("x"), 1); err == nil {
		t.Error("Put through a symlink out of the root succeeded")
	}
	if _, err := os.Stat(filepath.Join(outside, "new")); err == nil {
		t.Error("file created outside the root")
	}
}

func TestFSOpen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{
		"file://" + filepath.Join(dir, "missing"), // not mounted?
		"file://" + file,       // not a directory
		"file://relative/path", // host "relative"
		"file:relative",
		"file://" + dir + "?x=1",
	} {
		if _, err := Open(ctx, u, Credentials{}); err == nil {
			t.Errorf("Open(%q) succeeded", u)
		}
	}
	for _, u := range []string{"file://" + dir, "file://localhost" + dir, "file://" + dir + "/"} {
		s, err := Open(ctx, u, Credentials{})
		if err != nil {
			t.Errorf("Open(%q): %v", u, err)
			continue
		}
		if s.String() != "file://"+dir {
			t.Errorf("Open(%q).String() = %q", u, s.String())
		}
	}
}

func TestFSModTime(t *testing.T) {
	s, _ := openFS(t)
	put(t, s, "t", []byte("x"))
	info, err := s.Stat(context.Background(), "t")
	if err != nil {
		t.Fatal(err)
	}
	if time.Since(info.ModTime) > time.Minute {
		t.Errorf("ModTime %v", info.ModTime)
	}
}

// TestFSFIFOIsNotAnObject: a FIFO planted at a key is not an object, and
// reading it does not block (opening a FIFO for reading normally waits for
// a writer, forever).
func TestFSFIFOIsNotAnObject(t *testing.T) {
	s, dir := openFS(t)
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 2)
	go func() { _, err := s.Get(context.Background(), "fifo"); done <- err }()
	go func() { _, err := s.GetRange(context.Background(), "fifo", 0, 10); done <- err }()
	for i := 0; i < 2; i++ {
		select {
		case err := <-done:
			if !errors.Is(err, ErrNotFound) {
				t.Fatalf("reading a FIFO: %v, want ErrNotFound", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("reading a FIFO blocked")
		}
	}
}

// TestFSListWhileDirsVanish: a Delete removes the directories it leaves
// empty; a List that opened such a directory just before must see nothing
// under it, not fail (found by the backup package's interleaving test: GC
// listing backups/ while the last backup was deleted).
func TestFSListWhileDirsVanish(t *testing.T) {
	s, _ := openFS(t)
	ctx := context.Background()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := s.Put(ctx, "a/b/c", strings.NewReader("x"), 1); err != nil {
				t.Error(err)
				return
			}
			if err := s.Delete(ctx, "a/b/c"); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	deadline := time.Now().Add(time.Second)
	for n := 0; time.Now().Before(deadline); n++ {
		if err := s.List(ctx, "a/", func(Info) error { return nil }); err != nil {
			t.Errorf("list %d while directories come and go: %v", n, err)
			break
		}
	}
	close(stop)
	<-done
}
