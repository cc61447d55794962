package fsops

import (
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Extent is one mapping of a file range to its physical location, as
// FIEMAP reports it.
type Extent struct {
	Logical  int64
	Physical int64
	Length   int64
	Flags    uint32
}

// FIEMAP flags (linux/fiemap.h).
const (
	fiemapFlagSync       = 0x1
	FiemapExtentLast     = 0x1
	FiemapExtentUnknown  = 0x2
	FiemapExtentDelalloc = 0x4
	FiemapExtentShared   = 0x2000
	fsIocFiemap          = 0xC020660B
	fiemapBatch          = 512
)

type fiemapHeader struct {
	Start         uint64
	Length        uint64
	Flags         uint32
	MappedExtents uint32
	ExtentCount   uint32
	Reserved      uint32
}

type fiemapExtent struct {
	Logical    uint64
	Physical   uint64
	Length     uint64
	Reserved64 [2]uint64
	Flags      uint32
	Reserved   [3]uint32
}

// Extents returns the extent map of f (after syncing its dirty data, so
// every extent has a physical location), in logical order.
func Extents(f *os.File) ([]Extent, error) {
	var out []Extent
	buf := make([]byte, int(unsafe.Sizeof(fiemapHeader{}))+fiemapBatch*int(unsafe.Sizeof(fiemapExtent{})))
	hdr := (*fiemapHeader)(unsafe.Pointer(&buf[0]))
	exts := unsafe.Slice((*fiemapExtent)(unsafe.Pointer(&buf[unsafe.Sizeof(fiemapHeader{})])), fiemapBatch)
	var start uint64
	for {
		*hdr = fiemapHeader{Start: start, Length: ^uint64(0) - start, Flags: fiemapFlagSync, ExtentCount: fiemapBatch}
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), fsIocFiemap, uintptr(unsafe.Pointer(&buf[0])))
		if errno != 0 {
			return nil, fmt.Errorf("FIEMAP %s: %w", f.Name(), errno)
		}
		n := int(hdr.MappedExtents)
		if n == 0 {
			return out, nil
		}
		last := false
		for _, e := range exts[:n] {
			out = append(out, Extent{Logical: int64(e.Logical), Physical: int64(e.Physical), Length: int64(e.Length), Flags: e.Flags})
			if e.Flags&FiemapExtentLast != 0 {
				last = true
			}
		}
		if last || n < fiemapBatch {
			return out, nil
		}
		e := exts[n-1]
		start = e.Logical + e.Length
	}
}
