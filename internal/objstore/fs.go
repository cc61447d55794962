package objstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"
	"syscall"

	"k8s.io/klog/v2"
)

const (
	fsFileMode = 0o640
	fsDirMode  = 0o750
)

// fsStore keeps each object as a file under dir, the key being its relative
// path; what an NFS mount gives. Every operation opens dir afresh through
// os.Root, so a key can never reach outside it (not even through a symlink)
// and a remount is picked up.
//
// A key cannot be both an object and a "directory" of other keys on this
// backend: with "a" stored, Put("a/b") fails, and the reverse.
type fsStore struct {
	dir string
}

func newFSStore(dir string) (*fsStore, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("objstore: file store root: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("objstore: file store root %s is not a directory", dir)
	}
	return &fsStore{dir: dir}, nil
}

func (s *fsStore) String() string { return "file://" + s.dir }

func (s *fsStore) root() (*os.Root, error) {
	r, err := os.OpenRoot(s.dir)
	if err != nil {
		return nil, fmt.Errorf("objstore: open %s: %w", s.dir, err)
	}
	return r, nil
}

// isMissing reports whether err says there is no such file, including a
// path through a regular file.
func isMissing(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}

// notFound maps "no such file" (including a path through a regular file) to
// ErrNotFound.
func (s *fsStore) notFound(op, key string, err error) error {
	if isMissing(err) {
		return fmt.Errorf("objstore: %s %q: %w", op, key, ErrNotFound)
	}
	return fmt.Errorf("objstore: %s %q: %w", op, key, err)
}

func (s *fsStore) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	return s.put(ctx, key, r, size, false)
}

func (s *fsStore) Create(ctx context.Context, key string, r io.Reader, size int64) error {
	return s.put(ctx, key, r, size, true)
}

// put writes a temporary file and renames it over key, or, with create,
// links it to key (which fails if key exists) and removes it.
func (s *fsStore) put(ctx context.Context, key string, r io.Reader, size int64, create bool) error {
	if err := checkPut(key, size); err != nil {
		return err
	}
	root, err := s.root()
	if err != nil {
		return err
	}
	defer root.Close()

	dir := path.Dir(key)
	tmp := path.Join(dir, tmpPrefix+"-"+path.Base(key)+"-"+randomSuffix())
	var f *os.File
	// A concurrent Delete may remove the (empty) directory between mkdir
	// and create; try again a few times.
	for try := 0; ; try++ {
		err = mkdirAllSync(root, dir)
		if err == nil {
			f, err = root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fsFileMode)
			if err == nil {
				break
			}
		}
		if !errors.Is(err, fs.ErrNotExist) || try >= 5 {
			return fmt.Errorf("objstore: put %q: %w", key, err)
		}
	}
	committed := false
	defer func() {
		if !committed {
			f.Close()
			if err := root.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
				klog.ErrorS(err, "Could not remove temporary file", "store", s.String(), "file", tmp)
			}
		}
	}()

	n, err := io.CopyN(f, ctxReader{ctx, r}, size)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("objstore: put %q: %w: got %d of %d bytes", key, ErrShortRead, n, size)
		}
		return fmt.Errorf("objstore: put %q: %w", key, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("objstore: put %q: fsync: %w", key, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("objstore: put %q: %w", key, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("objstore: put %q: %w", key, err)
	}
	if create {
		err := root.Link(tmp, key)
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("objstore: create %q: %w", key, ErrExists)
		}
		if err != nil {
			return fmt.Errorf("objstore: create %q: %w", key, err)
		}
		// The temporary name goes below (not committed); the link stays.
	} else {
		if err := root.Rename(tmp, key); err != nil {
			return fmt.Errorf("objstore: put %q: %w", key, err)
		}
		committed = true
	}
	if err := syncDir(root, dir); err != nil {
		return fmt.Errorf("objstore: put %q: fsync directory: %w", key, err)
	}
	return nil
}

// mkdirAllSync creates dir and its missing parents under root, fsyncing the
// parent of each directory it creates so that the new entries are durable.
func mkdirAllSync(root *os.Root, dir string) error {
	if dir == "." {
		return nil
	}
	if st, err := root.Stat(dir); err == nil {
		if !st.IsDir() {
			return fmt.Errorf("%s exists and is an object, not a directory", dir)
		}
		return nil
	}
	segs := strings.Split(dir, "/")
	for i := range segs {
		d := strings.Join(segs[:i+1], "/")
		err := root.Mkdir(d, fsDirMode)
		if errors.Is(err, fs.ErrExist) {
			if st, err := root.Stat(d); err == nil && !st.IsDir() {
				return fmt.Errorf("%s exists and is an object, not a directory", d)
			}
			continue
		}
		if err != nil {
			return err
		}
		if err := syncDir(root, path.Dir(d)); err != nil {
			return err
		}
	}
	return nil
}

func syncDir(root *os.Root, dir string) error {
	d, err := root.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func randomSuffix() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// openFile opens key for reading, returning ErrNotFound if it is missing or
// not a regular file.
func (s *fsStore) openFile(op, key string) (*os.File, os.FileInfo, error) {
	if err := ValidateKey(key); err != nil {
		return nil, nil, err
	}
	root, err := s.root()
	if err != nil {
		return nil, nil, err
	}
	defer root.Close()
	// O_NONBLOCK: opening a FIFO planted at a key must not block (it is
	// refused below as not a regular file); regular files ignore it.
	f, err := root.OpenFile(key, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, s.notFound(op, key, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("objstore: %s %q: %w", op, key, err)
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, nil, fmt.Errorf("objstore: %s %q: %w", op, key, ErrNotFound)
	}
	return f, st, nil
}

func (s *fsStore) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	f, _, err := s.openFile("get", key)
	if err != nil {
		return nil, err
	}
	return f, nil
}

func (s *fsStore) GetRange(ctx context.Context, key string, off, length int64) (io.ReadCloser, error) {
	if err := checkRange(key, off, length); err != nil {
		return nil, err
	}
	f, st, err := s.openFile("get", key)
	if err != nil {
		return nil, err
	}
	if off > st.Size() {
		f.Close()
		return nil, rangeError(key, off, st.Size())
	}
	return sectionReadCloser{io.NewSectionReader(f, off, min(length, st.Size()-off)), f}, nil
}

type sectionReadCloser struct {
	*io.SectionReader
	io.Closer
}

func (s *fsStore) Stat(ctx context.Context, key string) (Info, error) {
	if err := ValidateKey(key); err != nil {
		return Info{}, err
	}
	root, err := s.root()
	if err != nil {
		return Info{}, err
	}
	defer root.Close()
	st, err := root.Stat(key)
	if err != nil {
		return Info{}, s.notFound("stat", key, err)
	}
	if !st.Mode().IsRegular() {
		return Info{}, fmt.Errorf("objstore: stat %q: %w", key, ErrNotFound)
	}
	return Info{Key: key, Size: st.Size(), ModTime: st.ModTime()}, nil
}

// List walks the tree below the prefix's directory in sorted order, so keys
// come in ascending byte order, like S3's.
func (s *fsStore) List(ctx context.Context, prefix string, fn func(Info) error) error {
	if err := validatePrefix(prefix); err != nil {
		return err
	}
	root, err := s.root()
	if err != nil {
		return err
	}
	defer root.Close()
	dir, name := "", prefix
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		dir, name = prefix[:i+1], prefix[i+1:]
	}
	err = s.walk(ctx, root, dir, name, fn)
	if errors.Is(err, errStopWalk) {
		return nil
	}
	return err
}

var errStopWalk = errors.New("stop")

// walk calls fn for every regular file below dir (a "" or "x/y/" form) whose
// name starts with namePrefix (only checked at this level), in key order.
func (s *fsStore) walk(ctx context.Context, root *os.Root, dir, namePrefix string, fn func(Info) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	open := strings.TrimSuffix(dir, "/")
	if open == "" {
		open = "."
	}
	d, err := root.Open(open)
	if isMissing(err) {
		return nil // nothing under this prefix
	}
	if err != nil {
		return fmt.Errorf("objstore: list %q: %w", dir, err)
	}
	entries, err := d.ReadDir(-1)
	d.Close()
	if isMissing(err) {
		// The prefix names an object, not a directory, or the directory
		// was removed since it was opened (a Delete removes those it
		// leaves empty): nothing under it.
		return nil
	}
	if err != nil {
		return fmt.Errorf("objstore: list %q: %w", dir, err)
	}
	// Sort as S3 would sort the keys: a directory "a" holds keys "a/...",
	// so it sorts as "a/".
	sortName := func(e fs.DirEntry) string {
		if e.IsDir() {
			return e.Name() + "/"
		}
		return e.Name()
	}
	slices.SortFunc(entries, func(a, b fs.DirEntry) int { return strings.Compare(sortName(a), sortName(b)) })
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, namePrefix) || strings.HasPrefix(name, tmpPrefix) {
			continue
		}
		key := dir + name
		switch {
		case e.IsDir():
			if err := s.walk(ctx, root, key+"/", "", fn); err != nil {
				return err
			}
		case e.Type().IsRegular():
			if ValidateKey(key) != nil {
				klog.V(2).InfoS("Skipping file whose name is not a valid key", "store", s.String(), "file", key)
				continue
			}
			st, err := e.Info()
			if errors.Is(err, fs.ErrNotExist) {
				continue // deleted meanwhile
			}
			if err != nil {
				return fmt.Errorf("objstore: list %q: %w", key, err)
			}
			if err := fn(Info{Key: key, Size: st.Size(), ModTime: st.ModTime()}); err != nil {
				return err
			}
		}
	}
	return nil
}

func (s *fsStore) Delete(ctx context.Context, key string) error {
	if err := ValidateKey(key); err != nil {
		return err
	}
	root, err := s.root()
	if err != nil {
		return err
	}
	defer root.Close()
	st, err := root.Lstat(key)
	if isMissing(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("objstore: delete %q: %w", key, err)
	}
	if st.IsDir() {
		return nil // not an object
	}
	if err := root.Remove(key); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("objstore: delete %q: %w", key, err)
	}
	dir := path.Dir(key)
	if err := syncDir(root, dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("objstore: delete %q: fsync directory: %w", key, err)
	}
	// Remove directories left empty, so that the tree does not fill with
	// them as objects come and go; stop at the first one still in use.
	for ; dir != "."; dir = path.Dir(dir) {
		if root.Remove(dir) != nil {
			break
		}
	}
	return nil
}

// ctxReader stops a long copy when its context ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
