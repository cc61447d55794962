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

// FiemapExtentUnwritten marks preallocated space that reads as zeros.
const FiemapExtentUnwritten = 0x800

// Range is a byte range of a file.
type Range struct {
	Offset int64
	Length int64
}

// End is the first byte past r.
func (r Range) End() int64 { return r.Offset + r.Length }

// unstableFlags mark extents whose physical location is not final, so two
// of them cannot be compared.
const unstableFlags = FiemapExtentUnknown | FiemapExtentDelalloc

// Allocated returns the ranges of [0,size) that exts map to data, in
// order, adjacent ones merged. Unwritten (preallocated) extents read as
// zeros and are left out like holes.
func Allocated(exts []Extent, size int64) []Range {
	var out []Range
	for _, e := range exts {
		if e.Flags&FiemapExtentUnwritten != 0 && e.Flags&unstableFlags == 0 {
			continue
		}
		out = appendRange(out, max(e.Logical, 0), min(e.Logical+e.Length, size))
	}
	return out
}

// Changed returns the ranges of [0,size) where the files that a and b map
// may hold different bytes: where one maps data and the other a hole,
// where both map data at different physical locations, and wherever
// either side's location is not final (delalloc, unknown). Two files that
// share an extent (a reflink) read the same bytes from it; holes and
// unwritten extents both read as zeros. The result is ordered and merged.
// Both maps come from Extents of files on the same file system.
func Changed(a, b []Extent, size int64) []Range {
	var out []Range
	i, j := 0, 0
	for pos := int64(0); pos < size; {
		for i < len(a) && a[i].Logical+a[i].Length <= pos {
			i++
		}
		for j < len(b) && b[j].Logical+b[j].Length <= pos {
			j++
		}
		// The segment [pos,next) lies within one extent or hole on each side.
		next := size
		ea, inA := at(a, i, pos, &next)
		eb, inB := at(b, j, pos, &next)
		if differs(ea, inA, eb, inB, pos) {
			out = appendRange(out, pos, next)
		}
		pos = next
	}
	return out
}

// at reports the extent of exts[i:] that covers pos, if any, and lowers
// next to where that extent or the hole before the following one ends.
func at(exts []Extent, i int, pos int64, next *int64) (Extent, bool) {
	if i >= len(exts) {
		return Extent{}, false
	}
	e := exts[i]
	if e.Logical > pos {
		*next = min(*next, e.Logical)
		return Extent{}, false
	}
	*next = min(*next, e.Logical+e.Length)
	return e, true
}

// differs compares what two sides hold at pos.
func differs(a Extent, inA bool, b Extent, inB bool, pos int64) bool {
	zeroA := !inA || (a.Flags&FiemapExtentUnwritten != 0 && a.Flags&unstableFlags == 0)
	zeroB := !inB || (b.Flags&FiemapExtentUnwritten != 0 && b.Flags&unstableFlags == 0)
	switch {
	case zeroA && zeroB:
		return false
	case zeroA != zeroB:
		return true
	case a.Flags&unstableFlags != 0 || b.Flags&unstableFlags != 0:
		return true
	}
	return a.Physical+(pos-a.Logical) != b.Physical+(pos-b.Logical)
}

// appendRange adds [lo,hi) to ordered ranges, merging it into the last
// one when they touch.
func appendRange(out []Range, lo, hi int64) []Range {
	if hi <= lo {
		return out
	}
	if n := len(out); n > 0 && out[n-1].End() >= lo {
		out[n-1].Length = max(out[n-1].End(), hi) - out[n-1].Offset
		return out
	}
	return append(out, Range{Offset: lo, Length: hi - lo})
}
