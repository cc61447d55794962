package fsops

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// ioctl numbers from linux/fs.h: _IOWR('X', 119, int) and _IOWR('X', 120, int).
const (
	fiFreeze = 0xC0045877
	fiThaw   = 0xC0045878
)

// Freeze flushes and freezes the file system mounted at mountPoint: writes
// block until Thaw. Every successful Freeze must be followed by Thaw.
func Freeze(mountPoint string) error {
	f, err := os.Open(mountPoint)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), fiFreeze, 0); err != nil {
		return fmt.Errorf("FIFREEZE %s: %w", mountPoint, err)
	}
	return nil
}

// Thaw unfreezes the file system at mountPoint. Thawing a file system that
// is not frozen succeeds, so Thaw is safe to call on every path.
func Thaw(mountPoint string) error {
	f, err := os.Open(mountPoint)
	if err != nil {
		return err
	}
	defer f.Close()
	err = unix.IoctlSetInt(int(f.Fd()), fiThaw, 0)
	if err == nil || errors.Is(err, unix.EINVAL) {
		return nil
	}
	return fmt.Errorf("FITHAW %s: %w", mountPoint, err)
}
