// Package fsops holds the file-system primitives the engine is built on:
// crash-safe file replacement, reflink clones with a sparse-aware copy
// fallback, and freezing a mounted file system.
package fsops

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// WriteFileAtomic replaces path with data so that after a crash at any
// point the file holds either the old or the new content, never a mix:
// write a temporary file, fsync it, rename it over path, fsync the directory.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmpName := tmp.Name()
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmpName)
		}
	}()
	if _, err := tmp.Write(data); err != nil {
		return err
	}
	if err := tmp.Chmod(perm); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmpName, path); err != nil {
		return err
	}
	ok = true
	return SyncDir(dir)
}

// SyncDir fsyncs a directory so that renames and creations in it are durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}

// RenameDurable renames oldPath to newPath and fsyncs both parent
// directories.
func RenameDurable(oldPath, newPath string) error {
	if err := os.Rename(oldPath, newPath); err != nil {
		return err
	}
	if err := SyncDir(filepath.Dir(newPath)); err != nil {
		return err
	}
	if filepath.Dir(oldPath) != filepath.Dir(newPath) {
		return SyncDir(filepath.Dir(oldPath))
	}
	return nil
}

// ErrReflinkUnsupported is returned by Reflink when the file system cannot
// share extents between files.
var ErrReflinkUnsupported = errors.New("reflink not supported by the file system")

// Reflink makes dst (created, must not exist) share all extents of src
// with the FICLONE ioctl: O(1) in the amount of data, copy-on-write after.
// dst is fsynced.
func Reflink(src, dst string) error {
	s, err := os.Open(src)
	if err != nil {
		return err
	}
	defer s.Close()
	d, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := unix.IoctlFileClone(int(d.Fd()), int(s.Fd())); err != nil {
		os.Remove(dst)
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOTTY) {
			return fmt.Errorf("FICLONE %s: %w (%v)", src, ErrReflinkUnsupported, err)
		}
		return fmt.Errorf("FICLONE %s -> %s: %w", src, dst, err)
	}
	return d.Sync()
}

// SparseCopy copies src to dst (created, must not exist) reading only the
// data regions (SEEK_DATA/SEEK_HOLE) and writing them with
// copy_file_range, so holes stay holes. dst gets src's size and is fsynced.
// Cancelling ctx stops the copy between chunks and removes dst.
func SparseCopy(ctx context.Context, src, dst string) error {
	s, err := os.Open(src)
	if err != nil {
		return err
	}
	defer s.Close()
	st, err := s.Stat()
	if err != nil {
		return err
	}
	d, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		d.Close()
		if !ok {
			os.Remove(dst)
		}
	}()
	size := st.Size()
	if err := d.Truncate(size); err != nil {
		return err
	}
	err = ForEachDataRange(s, size, func(off, length int64) error {
		for length > 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
			n := min(length, copyChunk)
			if err := copyRange(s, d, off, n); err != nil {
				return err
			}
			off += n
			length -= n
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("sparse copy %s: %w", src, err)
	}
	if err := d.Sync(); err != nil {
		return err
	}
	ok = true
	return nil
}

// ForEachDataRange calls fn for every allocated (non-hole) range of f below
// size, in order.
func ForEachDataRange(f *os.File, size int64, fn func(off, length int64) error) error {
	fd := int(f.Fd())
	var off int64
	for off < size {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // only a hole up to EOF
		}
		if err != nil {
			return fmt.Errorf("SEEK_DATA at %d: %w", off, err)
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("SEEK_HOLE at %d: %w", data, err)
		}
		if hole > size {
			hole = size
		}
		if hole > data {
			if err := fn(data, hole-data); err != nil {
				return err
			}
		}
		off = hole
	}
	return nil
}

// copyChunk bounds how long a copy runs between cancellation checks.
const copyChunk = 64 << 20

func copyRange(s, d *os.File, off, length int64) error {
	for length > 0 {
		inOff, outOff := off, off
		n, err := unix.CopyFileRange(int(s.Fd()), &inOff, int(d.Fd()), &outOff, int(min(length, 1<<30)), 0)
		if err != nil {
			if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP) {
				return copyRangeRW(s, d, off, length)
			}
			return fmt.Errorf("copy_file_range at %d: %w", off, err)
		}
		if n == 0 {
			return fmt.Errorf("copy_file_range at %d: %w", off, io.ErrUnexpectedEOF)
		}
		off += int64(n)
		length -= int64(n)
	}
	return nil
}

func copyRangeRW(s, d *os.File, off, length int64) error {
	_, err := io.Copy(io.NewOffsetWriter(d, off), io.NewSectionReader(s, off, length))
	return err
}

// AllocatedBytes returns the bytes a file occupies on disk.
func AllocatedBytes(path string) (int64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Blocks * 512, nil
}

// ProbeReflink reports whether dir's file system supports FICLONE by cloning
// a scratch file.
func ProbeReflink(dir string) (bool, error) {
	src := filepath.Join(dir, ".reflink-probe-src")
	dst := filepath.Join(dir, ".reflink-probe-dst")
	os.Remove(src)
	os.Remove(dst)
	defer os.Remove(src)
	defer os.Remove(dst)
	if err := os.WriteFile(src, []byte("cairn reflink probe\n"), 0o600); err != nil {
		return false, err
	}
	err := Reflink(src, dst)
	if errors.Is(err, ErrReflinkUnsupported) {
		return false, nil
	}
	return err == nil, err
}
