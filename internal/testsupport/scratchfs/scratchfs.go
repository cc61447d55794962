// Package scratchfs makes loop-backed scratch file systems (an XFS or ext4
// image file, attached and mounted) to serve as data roots for tests, the
// demo and benchmarks.
package scratchfs

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/loop"
)

// FS is a mounted scratch file system.
type FS struct {
	Image  string
	Device string
	Mount  string
	FsType string
}

// Create makes a sparse image of size bytes at image, formats it with
// fsType (xfs with reflink, or ext4) and mounts it at mountPoint.
func Create(image, mountPoint, fsType string, size int64) (*FS, error) {
	if err := os.MkdirAll(filepath.Dir(image), 0o755); err != nil {
		return nil, err
	}
	f, err := os.Create(image)
	if err != nil {
		return nil, err
	}
	err = f.Truncate(size)
	f.Close()
	if err != nil {
		return nil, err
	}
	dev, err := loop.Attach(image, false, "cairn-scratch")
	if err != nil {
		return nil, err
	}
	s := &FS{Image: image, Device: dev.Path, Mount: mountPoint, FsType: fsType}
	var mkfs *exec.Cmd
	switch fsType {
	case "xfs":
		mkfs = exec.Command("mkfs.xfs", "-q", "-f", "-m", "reflink=1", dev.Path)
	case "ext4":
		mkfs = exec.Command("mkfs.ext4", "-q", "-F", dev.Path)
	default:
		loop.Detach(dev.Path)
		return nil, fmt.Errorf("unsupported scratch file system %q", fsType)
	}
	if out, err := mkfs.CombinedOutput(); err != nil {
		loop.Detach(dev.Path)
		return nil, fmt.Errorf("%s: %v: %s", mkfs, err, out)
	}
	if err := os.MkdirAll(mountPoint, 0o755); err != nil {
		loop.Detach(dev.Path)
		return nil, err
	}
	if err := unix.Mount(dev.Path, mountPoint, fsType, 0, ""); err != nil {
		loop.Detach(dev.Path)
		return nil, fmt.Errorf("mount %s on %s: %w", dev.Path, mountPoint, err)
	}
	return s, nil
}

// Close unmounts the file system (lazily if busy), detaches its device and
// removes the image.
func (s *FS) Close() error {
	var errs []error
	if err := unix.Unmount(s.Mount, 0); err != nil && !errors.Is(err, unix.EINVAL) {
		if err2 := unix.Unmount(s.Mount, unix.MNT_DETACH); err2 != nil {
			errs = append(errs, fmt.Errorf("unmount %s: %w", s.Mount, err))
		}
	}
	if err := loop.Detach(s.Device); err != nil {
		errs = append(errs, err)
	}
	if err := os.Remove(s.Image); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
