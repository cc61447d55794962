// Package loop attaches regular files to Linux loop block devices with ioctls
// (no losetup on the hot path), finds the devices backing a file (by the
// file's device and inode numbers, which LOOP_GET_STATUS64 reports, not by
// its path), grows them after their file grew, and detaches them.
//
// Why not the path: sysfs's backing_file is the file's path as seen from
// the mount the device was attached through. A node plugin in a container
// attaches through its own mount of the data root; once that container is
// gone (the node pod restarted or was upgraded) the path shows relative to
// the gone mount ("/volumes/…/data.img"), and a path match would miss the
// devices of every volume that is still mounted.
package loop

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const (
	controlPath = "/dev/loop-control"
	sysBlock    = "/sys/block"

	// loFlagsDirectIO asks the loop driver to use O_DIRECT on the backing
	// file, which avoids caching every block twice (once for the loop
	// device, once for the file). The kernel silently falls back to
	// buffered I/O if the backing file system cannot do it.
	loFlagsDirectIO = 16

	// BlockSize is the logical block size of every Cairn loop device. It
	// is fixed rather than left to the kernel, which derives it from the
	// backing file's direct-I/O alignment; on XFS that alignment becomes
	// the file system block size once a file shares extents (after a
	// snapshot or clone), so the same volume would otherwise show 512-byte
	// sectors on one attach and 4096 on the next, and a file system made
	// with the smaller sector size would refuse to mount.
	BlockSize = 4096
)

// Device is an attached loop device.
type Device struct {
	// Path is the device node, e.g. /dev/loop3.
	Path string
	// Number is N in /dev/loopN.
	Number int
	// BackingFile is the file the device maps, as the kernel reports it
	// (see the package comment: the path may no longer be reachable).
	BackingFile string
	// Dev and Inode identify the backing file: its file system's device
	// number and its inode number (both 0 when unknown).
	Dev, Inode uint64
}

// ErrNoFreeDevice is returned by Attach when the kernel hands out no free
// loop device (all are in use and no new one can be made).
var ErrNoFreeDevice = errors.New("no free loop device")

// getFree asks the loop control device for a free device number (a
// variable so that tests can make the kernel run out).
var getFree = func(ctl int) (int, error) { return unix.IoctlRetInt(ctl, unix.LOOP_CTL_GET_FREE) }

// Attach maps file to a free loop device and returns it. readOnly attaches
// the device read-only. tag (at most 63 bytes) is stored as the loop
// device's file name to make the device recognisable in `losetup -l`.
func Attach(file string, readOnly bool, tag string) (*Device, error) {
	flags := os.O_RDWR
	if readOnly {
		flags = os.O_RDONLY
	}
	backing, err := os.OpenFile(file, flags|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open backing file: %w", err)
	}
	defer backing.Close()

	ctl, err := os.OpenFile(controlPath, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", controlPath, err)
	}
	defer ctl.Close()

	// LOOP_CTL_GET_FREE hands out the same device to racing callers; the
	// loser of LOOP_CONFIGURE gets EBUSY and asks again.
	for attempt := 0; attempt < 64; attempt++ {
		n, err := getFree(int(ctl.Fd()))
		if err != nil {
			return nil, fmt.Errorf("%w: LOOP_CTL_GET_FREE: %w", ErrNoFreeDevice, err)
		}
		path := fmt.Sprintf("/dev/loop%d", n)
		dev, err := openDevice(path, flags)
		if err != nil {
			return nil, err
		}
		cfg := unix.LoopConfig{Fd: uint32(backing.Fd()), Size: BlockSize}
		cfg.Info.Flags = loFlagsDirectIO
		if readOnly {
			cfg.Info.Flags |= unix.LO_FLAGS_READ_ONLY
		}
		copy(cfg.Info.File_name[:63], tag)
		err = unix.IoctlLoopConfigure(int(dev.Fd()), &cfg)
		if errors.Is(err, unix.EINVAL) {
			// Direct I/O refused (e.g. alignment): fall back to buffered.
			cfg.Info.Flags &^= loFlagsDirectIO
			err = unix.IoctlLoopConfigure(int(dev.Fd()), &cfg)
		}
		dev.Close()
		if errors.Is(err, unix.EBUSY) {
			time.Sleep(time.Duration(attempt) * time.Millisecond)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("LOOP_CONFIGURE %s: %w", path, err)
		}
		d := &Device{Path: path, Number: n, BackingFile: file}
		var st unix.Stat_t
		if unix.Fstat(int(backing.Fd()), &st) == nil {
			d.Dev, d.Inode = uint64(st.Dev), st.Ino
		}
		return d, nil
	}
	return nil, fmt.Errorf("%w: every device offered was taken by another caller (EBUSY, 64 tries)", ErrNoFreeDevice)
}

// openDevice opens a loop device node, creating it if udev is absent (as in
// containers) and the kernel already knows the minor number.
func openDevice(path string, flags int) (*os.File, error) {
	f, err := os.OpenFile(path, flags|unix.O_CLOEXEC, 0)
	if errors.Is(err, os.ErrNotExist) {
		var n int
		fmt.Sscanf(path, "/dev/loop%d", &n)
		if mkErr := unix.Mknod(path, unix.S_IFBLK|0o660, int(unix.Mkdev(7, uint32(n)))); mkErr != nil && !errors.Is(mkErr, os.ErrExist) {
			return nil, fmt.Errorf("mknod %s: %w", path, mkErr)
		}
		f, err = os.OpenFile(path, flags|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return f, nil
}

// Detach releases the loop device. Detaching a device that is no longer
// attached succeeds. If the device is still mounted the kernel defers the
// release until the last user closes it.
func Detach(path string) error {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	for attempt := 0; ; attempt++ {
		err = unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0)
		if err == nil || errors.Is(err, unix.ENXIO) {
			return nil
		}
		// EBUSY: a just-closed opener (udev, blkid) still holds it.
		if errors.Is(err, unix.EBUSY) && attempt < 50 {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		return fmt.Errorf("LOOP_CLR_FD %s: %w", path, err)
	}
}

// SetCapacity makes the device re-read the size of its backing file, after
// the file grew.
func SetCapacity(path string) error {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), unix.LOOP_SET_CAPACITY, 0); err != nil {
		return fmt.Errorf("LOOP_SET_CAPACITY %s: %w", path, err)
	}
	return nil
}

// List returns every attached loop device.
func List() ([]Device, error) {
	entries, err := os.ReadDir(sysBlock)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", sysBlock, err)
	}
	var out []Device
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, "loop") {
			continue
		}
		n, err := strconv.Atoi(strings.TrimPrefix(name, "loop"))
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(sysBlock, name, "loop", "backing_file"))
		if err != nil {
			continue // not attached
		}
		backing := strings.TrimSuffix(strings.TrimSpace(string(b)), " (deleted)")
		d := Device{Path: "/dev/" + name, Number: n, BackingFile: backing}
		d.Dev, d.Inode = backingIdentity(d.Path)
		out = append(out, d)
	}
	return out, nil
}

// backingIdentity asks the device for its backing file's device and
// inode numbers (0, 0 if it cannot be opened or is detached meanwhile).
func backingIdentity(path string) (dev, ino uint64) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	info, err := unix.IoctlLoopGetStatus64(int(f.Fd()))
	if err != nil {
		return 0, 0
	}
	return info.Device, info.Inode
}

// fileID is a file's device and inode numbers.
type fileID struct{ dev, ino uint64 }

func (d Device) id() fileID { return fileID{d.Dev, d.Inode} }

// FindByBackingFile returns the devices attached to file (normally zero or
// one): those whose backing file is file's inode on file's file system,
// or, when file cannot be stat'ed (deleted), whose reported path is file.
func FindByBackingFile(file string) ([]Device, error) {
	all, err := List()
	if err != nil {
		return nil, err
	}
	return Match(all, file), nil
}

// Match returns the devices of all (a List) attached to file, as
// FindByBackingFile does; for callers that look up many files at once.
func Match(all []Device, file string) []Device {
	var st unix.Stat_t
	known := unix.Stat(file, &st) == nil
	var out []Device
	for _, d := range all {
		if (known && d.Inode != 0 && d.id() == (fileID{uint64(st.Dev), st.Ino})) || (!known && d.BackingFile == file) {
			out = append(out, d)
		}
	}
	return out
}

// FindUnder returns the devices whose backing file is a regular file
// below dir (found by walking dir and matching inodes), or, for devices
// whose file is gone, whose reported path is below dir.
func FindUnder(dir string) ([]Device, error) {
	all, err := List()
	if err != nil {
		return nil, err
	}
	ids := map[fileID]bool{}
	walkErr := filepath.WalkDir(dir, func(p string, de os.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			return err
		}
		if de.Type().IsRegular() {
			var st unix.Stat_t
			if unix.Lstat(p, &st) == nil {
				ids[fileID{uint64(st.Dev), st.Ino}] = true
			}
		}
		return nil
	})
	if walkErr != nil {
		return nil, walkErr
	}
	var out []Device
	for _, d := range all {
		if (d.Inode != 0 && ids[d.id()]) || strings.HasPrefix(d.BackingFile, strings.TrimSuffix(dir, "/")+"/") {
			out = append(out, d)
		}
	}
	return out, nil
}

// Size returns the size in bytes of a block device.
func Size(path string) (int64, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	var size uint64
	if err := ioctlPtr(int(f.Fd()), unix.BLKGETSIZE64, &size); err != nil {
		return 0, fmt.Errorf("BLKGETSIZE64 %s: %w", path, err)
	}
	return int64(size), nil
}
