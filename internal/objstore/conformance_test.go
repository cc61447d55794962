package objstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"
)

// runConformance runs the behaviour every Store must share. newStore returns
// an empty store for one subtest.
func runConformance(t *testing.T, newStore func(t *testing.T) Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s Store)
	}{
		{"PutGetStat", testPutGetStat},
		{"EmptyObject", testEmptyObject},
		{"GetRange", testGetRange},
		{"Missing", testMissing},
		{"Overwrite", testOverwrite},
		{"List", testList},
		{"Delete", testDelete},
		{"ShortReader", testShortReader},
		{"ReaderOffset", testReaderOffset},
		{"Large", testLarge},
		{"Concurrent", testConcurrent},
		{"InvalidKeys", testInvalidKeys},
		{"Canceled", testCanceled},
		{"CreateOnce", testCreateOnce},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.fn(t, newStore(t))
		})
	}
}

func randBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), 1})
	_, _ = r.Read(b)
	return b
}

func put(t testing.TB, s Store, key string, data []byte) {
	t.Helper()
	if err := s.Put(context.Background(), key, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatalf("Put(%q): %v", key, err)
	}
}

func readAll(t testing.TB, rc io.ReadCloser, err error) []byte {
	t.Helper()
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return b
}

func get(t testing.TB, s Store, key string) []byte {
	t.Helper()
	rc, err := s.Get(context.Background(), key)
	return readAll(t, rc, err)
}

func testPutGetStat(t *testing.T, s Store) {
	ctx := context.Background()
	data := randBytes(1, 100_000)
	before := time.Now()
	put(t, s, "packs/ab/cdef.pack", data)
	if got := get(t, s, "packs/ab/cdef.pack"); !bytes.Equal(got, data) {
		t.Fatalf("Get returned %d bytes, want the %d put", len(got), len(data))
	}
	info, err := s.Stat(ctx, "packs/ab/cdef.pack")
	if err != nil {
		t.Fatal(err)
	}
	if info.Key != "packs/ab/cdef.pack" || info.Size != int64(len(data)) {
		t.Errorf("Stat = %+v", info)
	}
	// S3 has second resolution; allow clock granularity either way.
	if info.ModTime.Before(before.Add(-2*time.Second)) || info.ModTime.After(time.Now().Add(2*time.Second)) {
		t.Errorf("ModTime %v not around %v", info.ModTime, before)
	}
	if s.String() == "" {
		t.Error("empty String()")
	}
}

func testEmptyObject(t *testing.T, s Store) {
	ctx := context.Background()
	put(t, s, "empty", nil)
	if got := get(t, s, "empty"); len(got) != 0 {
		t.Fatalf("got %d bytes", len(got))
	}
	info, err := s.Stat(ctx, "empty")
	if err != nil || info.Size != 0 {
		t.Fatalf("Stat = %+v, %v", info, err)
	}
	rc, err := s.GetRange(ctx, "empty", 0, 10)
	if got := readAll(t, rc, err); len(got) != 0 {
		t.Fatalf("range got %d bytes", len(got))
	}
	if _, err := s.GetRange(ctx, "empty", 1, 1); !errors.Is(err, ErrInvalidRange) {
		t.Fatalf("GetRange past end: %v, want ErrInvalidRange", err)
	}
}

func testGetRange(t *testing.T, s Store) {
	ctx := context.Background()
	data := randBytes(2, 1000)
	put(t, s, "r", data)
	for _, c := range []struct{ off, n, wantOff, wantN int64 }{
		{0, 10, 0, 10},
		{0, 1000, 0, 1000},
		{990, 10, 990, 10},
		{995, 100, 995, 5}, // cut at the end
		{500, 0, 500, 0},
		{1000, 10, 1000, 0}, // at the very end: empty
		{1000, 0, 1000, 0},
		{123, 456, 123, 456},
	} {
		rc, err := s.GetRange(ctx, "r", c.off, c.n)
		got := readAll(t, rc, err)
		if want := data[c.wantOff : c.wantOff+c.wantN]; !bytes.Equal(got, want) {
			t.Errorf("GetRange(%d, %d) = %d bytes, want %d", c.off, c.n, len(got), len(want))
		}
	}
	// Small reads through the reader.
	rc, err := s.GetRange(ctx, "r", 7, 300)
	got := readAll(t, io.NopCloser(iotest.OneByteReader(rc)), err)
	rc.Close()
	if !bytes.Equal(got, data[7:307]) {
		t.Errorf("one-byte reads differ")
	}
	if _, err := s.GetRange(ctx, "r", 1001, 1); !errors.Is(err, ErrInvalidRange) {
		t.Errorf("GetRange past end: %v, want ErrInvalidRange", err)
	}
	if _, err := s.GetRange(ctx, "r", 1001, 0); !errors.Is(err, ErrInvalidRange) {
		t.Errorf("GetRange past end, length 0: %v, want ErrInvalidRange", err)
	}
	for _, c := range [][2]int64{{-1, 1}, {0, -1}} {
		if _, err := s.GetRange(ctx, "r", c[0], c[1]); err == nil {
			t.Errorf("GetRange(%d, %d) succeeded", c[0], c[1])
		}
	}
}

func testMissing(t *testing.T, s Store) {
	ctx := context.Background()
	put(t, s, "dir/present", []byte("x"))
	for _, key := range []string{"absent", "dir/absent", "absent/deeper", "dir", "dir/present/below"} {
		if _, err := s.Get(ctx, key); !errors.Is(err, ErrNotFound) {
			t.Errorf("Get(%q) = %v, want ErrNotFound", key, err)
		}
		if _, err := s.GetRange(ctx, key, 0, 1); !errors.Is(err, ErrNotFound) {
			t.Errorf("GetRange(%q) = %v, want ErrNotFound", key, err)
		}
		if _, err := s.GetRange(ctx, key, 0, 0); !errors.Is(err, ErrNotFound) {
			t.Errorf("GetRange(%q, 0, 0) = %v, want ErrNotFound", key, err)
		}
		if _, err := s.Stat(ctx, key); !errors.Is(err, ErrNotFound) {
			t.Errorf("Stat(%q) = %v, want ErrNotFound", key, err)
		} else if !strings.Contains(err.Error(), key) {
			t.Errorf("Stat(%q) error %q does not name the key", key, err)
		}
		if err := s.Delete(ctx, key); err != nil {
			t.Errorf("Delete(%q) = %v, want nil", key, err)
		}
	}
	if got := get(t, s, "dir/present"); string(got) != "x" {
		t.Errorf("dir/present = %q after deleting missing keys", got)
	}
}

func testOverwrite(t *testing.T, s Store) {
	ctx := context.Background()
	put(t, s, "k", randBytes(3, 5000))
	second := randBytes(4, 1234)
	put(t, s, "k", second)
	if got := get(t, s, "k"); !bytes.Equal(got, second) {
		t.Fatal("Get after overwrite did not return the second object")
	}
	if info, err := s.Stat(ctx, "k"); err != nil || info.Size != 1234 {
		t.Fatalf("Stat after overwrite = %+v, %v", info, err)
	}
	var keys []string
	if err := s.List(ctx, "", func(i Info) error { keys = append(keys, i.Key); return nil }); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(keys, []string{"k"}) {
		t.Fatalf("List after overwrite = %q (temporary files leaked?)", keys)
	}
}

func listKeys(t *testing.T, s Store, prefix string) []string {
	t.Helper()
	keys := []string{}
	err := s.List(context.Background(), prefix, func(i Info) error {
		keys = append(keys, i.Key)
		return nil
	})
	if err != nil {
		t.Fatalf("List(%q): %v", prefix, err)
	}
	return keys
}

func testList(t *testing.T, s Store) {
	ctx := context.Background()
	objs := map[string]int{"a/1": 1, "a/2": 22, "a/b/3": 333, "ab": 4, "b/1": 5, "a.txt": 6, "a/b-c": 7, "z/y/x/w": 8}
	for k, n := range objs {
		put(t, s, k, randBytes(uint64(n), n))
	}
	for _, c := range []struct {
		prefix string
		want   []string
	}{
		{"", []string{"a.txt", "a/1", "a/2", "a/b-c", "a/b/3", "ab", "b/1", "z/y/x/w"}},
		{"a", []string{"a.txt", "a/1", "a/2", "a/b-c", "a/b/3", "ab"}},
		{"a/", []string{"a/1", "a/2", "a/b-c", "a/b/3"}},
		{"a/b", []string{"a/b-c", "a/b/3"}},
		{"a/b/", []string{"a/b/3"}},
		{"z/y/", []string{"z/y/x/w"}},
		{"b/1", []string{"b/1"}},
		{"zz", []string{}},
		{"nothing/here/", []string{}},
		{"a/1/", []string{}},
	} {
		if got := listKeys(t, s, c.prefix); !slices.Equal(got, c.want) {
			t.Errorf("List(%q) = %q, want %q", c.prefix, got, c.want)
		}
	}
	// Sizes and times.
	err := s.List(ctx, "", func(i Info) error {
		if i.Size != int64(objs[i.Key]) {
			t.Errorf("List: %s size %d, want %d", i.Key, i.Size, objs[i.Key])
		}
		if i.ModTime.IsZero() {
			t.Errorf("List: %s has no ModTime", i.Key)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// An error from fn stops the listing and comes back as it is.
	stop := errors.New("stop here")
	n := 0
	err = s.List(ctx, "", func(Info) error {
		n++
		if n == 3 {
			return stop
		}
		return nil
	})
	if err != stop || n != 3 {
		t.Errorf("List with failing fn = %v after %d calls, want %v after 3", err, n, stop)
	}
}

func testDelete(t *testing.T, s Store) {
	ctx := context.Background()
	put(t, s, "d/e/f", []byte("1"))
	put(t, s, "d/g", []byte("2"))
	if err := s.Delete(ctx, "d/e/f"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Stat(ctx, "d/e/f"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Stat after Delete = %v", err)
	}
	if err := s.Delete(ctx, "d/e/f"); err != nil {
		t.Fatalf("second Delete = %v", err)
	}
	if got := listKeys(t, s, ""); !slices.Equal(got, []string{"d/g"}) {
		t.Fatalf("List after Delete = %q", got)
	}
	// The key can be used again, also as a "directory".
	put(t, s, "d/e/f", []byte("3"))
	if got := get(t, s, "d/e/f"); string(got) != "3" {
		t.Fatalf("re-put = %q", got)
	}
}

// noReaderAt hides every interface but io.Reader.
type noReaderAt struct{ io.Reader }

func testShortReader(t *testing.T, s Store) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		size int
		r    func(b []byte) io.Reader
	}{
		{"ReaderAt", 10, func(b []byte) io.Reader { return bytes.NewReader(b) }},
		{"Stream", 10, func(b []byte) io.Reader { return noReaderAt{bytes.NewReader(b)} }},
		{"StreamMultipart", 20 << 20, func(b []byte) io.Reader { return noReaderAt{bytes.NewReader(b)} }},
		{"ReaderAtMultipart", 20 << 20, func(b []byte) io.Reader { return bytes.NewReader(b) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			data := randBytes(5, tc.size/2)
			err := s.Put(ctx, "short", tc.r(data), int64(tc.size))
			if !errors.Is(err, ErrShortRead) {
				t.Fatalf("Put with a short reader = %v, want ErrShortRead", err)
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("short Put took %v: retried?", d)
			}
			if _, err := s.Stat(ctx, "short"); !errors.Is(err, ErrNotFound) {
				t.Fatalf("Stat after failed Put = %v, want ErrNotFound", err)
			}
		})
	}
	// Extra bytes are not read.
	r := bytes.NewReader([]byte("0123456789"))
	if err := s.Put(ctx, "long", noReaderAt{r}, 4); err != nil {
		t.Fatal(err)
	}
	if got := get(t, s, "long"); string(got) != "0123" {
		t.Fatalf("Put of 4 of 10 bytes stored %q", got)
	}
}

func testReaderOffset(t *testing.T, s Store) {
	// A Seeker's current offset is where the object starts.
	r := bytes.NewReader([]byte("0123456789"))
	if _, err := r.Seek(3, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(context.Background(), "off", r, 5); err != nil {
		t.Fatal(err)
	}
	if got := get(t, s, "off"); string(got) != "34567" {
		t.Fatalf("stored %q, want 34567", got)
	}
}

func testLarge(t *testing.T, s Store) {
	ctx := context.Background()
	const size = 40 << 20
	data := randBytes(6, size)
	sum := sha256.Sum256(data)
	for _, tc := range []struct {
		name string
		r    io.Reader
	}{
		{"ReaderAt", bytes.NewReader(data)},
		{"Stream", noReaderAt{bytes.NewReader(data)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := "large/" + tc.name
			if err := s.Put(ctx, key, tc.r, size); err != nil {
				t.Fatal(err)
			}
			rc, err := s.Get(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			h := sha256.New()
			n, err := io.Copy(h, rc)
			rc.Close()
			if err != nil || n != size || !bytes.Equal(h.Sum(nil), sum[:]) {
				t.Fatalf("Get: %d bytes, err %v, hash match %v", n, err, bytes.Equal(h.Sum(nil), sum[:]))
			}
			// A range across the first part boundary of the S3 backend.
			off := int64(defaultPartSize - 100)
			rc, err = s.GetRange(ctx, key, off, 300)
			if got := readAll(t, rc, err); !bytes.Equal(got, data[off:off+300]) {
				t.Fatal("range across a part boundary differs")
			}
		})
	}
}

func testConcurrent(t *testing.T, s Store) {
	ctx := context.Background()
	const workers = 32
	common := randBytes(7, 1<<20)
	put(t, s, "common", common)
	var wg sync.WaitGroup
	errs := make(chan error, workers*4)
	for w := range workers {
		wg.Go(func() {
			key := fmt.Sprintf("conc/%02d", w)
			for i := range 3 {
				data := randBytes(uint64(100+w*10+i), 64<<10+w*1000+i)
				if err := s.Put(ctx, key, bytes.NewReader(data), int64(len(data))); err != nil {
					errs <- err
					return
				}
				rc, err := s.Get(ctx, key)
				if err != nil {
					errs <- err
					return
				}
				got, err := io.ReadAll(rc)
				rc.Close()
				if err != nil || !bytes.Equal(got, data) {
					errs <- fmt.Errorf("%s: read back %d bytes, err %v", key, len(got), err)
					return
				}
			}
			off := int64(w * 1000)
			rc, err := s.GetRange(ctx, "common", off, 4096)
			if err != nil {
				errs <- err
				return
			}
			got, err := io.ReadAll(rc)
			rc.Close()
			if err != nil || !bytes.Equal(got, common[off:off+4096]) {
				errs <- fmt.Errorf("common range %d: err %v", off, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := listKeys(t, s, "conc/"); len(got) != workers {
		t.Errorf("List(conc/) has %d keys, want %d", len(got), workers)
	}
}

var invalidKeys = []string{
	"", "/a", "a/", "a//b", "..", "../a", "a/../b", "a/..", ".", "./a", "a/./b",
	"a\x00b", "a\nb", "a\x7fb", "\xff\xfe", ".objstore-tmp", "x/.objstore-tmp-y",
	strings.Repeat("k", MaxKeyLen+1),
}

func testInvalidKeys(t *testing.T, s Store) {
	ctx := context.Background()
	for _, key := range invalidKeys {
		check := func(op string, err error) {
			t.Helper()
			if !errors.Is(err, ErrInvalidKey) {
				t.Errorf("%s(%q) = %v, want ErrInvalidKey", op, key, err)
			}
		}
		check("Put", s.Put(ctx, key, strings.NewReader("x"), 1))
		_, err := s.Get(ctx, key)
		check("Get", err)
		_, err = s.GetRange(ctx, key, 0, 1)
		check("GetRange", err)
		_, err = s.Stat(ctx, key)
		check("Stat", err)
		check("Delete", s.Delete(ctx, key))
	}
	for _, prefix := range []string{"/", "/a", "a//", "../", "a/../", "a\x00"} {
		err := s.List(ctx, prefix, func(Info) error { return nil })
		if !errors.Is(err, ErrInvalidKey) {
			t.Errorf("List(%q) = %v, want ErrInvalidKey", prefix, err)
		}
	}
	if got := listKeys(t, s, ""); len(got) != 0 {
		t.Errorf("invalid keys created objects: %q", got)
	}
	// Unusual but valid keys work.
	for _, key := range []string{"with space", "ünïcödé/ключ", "a.b/c-d_e~f", "...", "x/.hidden", "%2F", "a+b=c&d"} {
		put(t, s, key, []byte(key))
		if got := get(t, s, key); string(got) != key {
			t.Errorf("key %q read back %q", key, got)
		}
	}
}

func testCanceled(t *testing.T, s Store) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	data := randBytes(8, 1000)
	if err := s.Put(ctx, "canceled", bytes.NewReader(data), int64(len(data))); err == nil {
		t.Error("Put with a canceled context succeeded")
	}
	if _, err := s.Stat(context.Background(), "canceled"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Stat after canceled Put = %v, want ErrNotFound", err)
	}
	// A Put whose context ends while it reads its data stores nothing.
	ctx, cancel = context.WithCancel(context.Background())
	r := &cancelAfter{r: bytes.NewReader(randBytes(9, 1<<20)), n: 100 << 10, cancel: cancel}
	if err := s.Put(ctx, "canceled", noReaderAt{r}, 1<<20); err == nil {
		t.Error("Put canceled mid-way succeeded")
	}
	if _, err := s.Stat(context.Background(), "canceled"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Stat after Put canceled mid-way = %v, want ErrNotFound", err)
	}
	if got := listKeys(t, s, ""); len(got) != 0 {
		t.Errorf("canceled Puts left %q", got)
	}
}

// cancelAfter calls cancel once n bytes have been read.
type cancelAfter struct {
	r      io.Reader
	n      int
	cancel func()
}

func (c *cancelAfter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n -= n
	if c.n <= 0 {
		c.cancel()
	}
	return n, err
}

// testCreateOnce races clients creating one key: exactly one wins, the
// others get ErrExists, and the object is the winner's.
func testCreateOnce(t *testing.T, s Store) {
	ctx := context.Background()
	const n = 8
	errs := make(chan error, n)
	for i := range n {
		go func() {
			b := randBytes(uint64(i+1), 1000)
			errs <- s.Create(ctx, "race/config.json", bytes.NewReader(b), int64(len(b)))
		}()
	}
	won := -1
	for range n {
		err := <-errs
		switch {
		case err == nil:
			won++
		case !errors.Is(err, ErrExists):
			t.Errorf("Create: %v, want nil or ErrExists", err)
		}
	}
	if won != 0 {
		t.Fatalf("%d creates succeeded, want exactly one", won+1)
	}
	got := get(t, s, "race/config.json")
	ok := false
	for i := range n {
		ok = ok || bytes.Equal(got, randBytes(uint64(i+1), 1000))
	}
	if !ok {
		t.Error("the object is none of the created ones")
	}
	b := []byte("again")
	if err := s.Create(ctx, "race/config.json", bytes.NewReader(b), int64(len(b))); !errors.Is(err, ErrExists) {
		t.Errorf("Create over an existing object: %v, want ErrExists", err)
	}
	if err := s.Create(ctx, "race/other.json", bytes.NewReader(b), int64(len(b))); err != nil {
		t.Errorf("Create of a new key: %v", err)
	}
}
