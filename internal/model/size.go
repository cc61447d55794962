package model

import (
	"math"
	"slices"
)

// Size rules.
const (
	// DefaultVolumeSize is used when a request names no size.
	DefaultVolumeSize = 1 << 30
	// MinXFSSize is the smallest file system mkfs.xfs accepts.
	MinXFSSize = 300 << 20
	sizeAlign  = 1 << 20
	minAlign   = 4096
	// MaxVolumeSize is the largest size a volume can have: the largest
	// multiple of 1 MiB an int64 holds, so that no size up to it overflows
	// when it is rounded up.
	MaxVolumeSize = math.MaxInt64 &^ (sizeAlign - 1)
)

// File systems.
const (
	// DefaultFsType is the file system of a filesystem volume whose
	// request names none.
	DefaultFsType = "ext4"
	FsXFS         = "xfs"
)

// SupportedFsTypes are the file systems Cairn formats.
var SupportedFsTypes = []string{DefaultFsType, FsXFS}

// SupportedFsType reports whether Cairn formats fs.
func SupportedFsType(fs string) bool { return slices.Contains(SupportedFsTypes, fs) }

// EffectiveFsType is the file system a volume gets when asked for fsType:
// none for block access, the default when the request names none.
func EffectiveFsType(block bool, fsType string) string {
	switch {
	case block:
		return ""
	case fsType == "":
		return DefaultFsType
	}
	return fsType
}

// PickSize applies Cairn's sizing rules to a request: default 1 GiB, rounded
// up to 1 MiB (or 4 KiB when the limit is tighter), at least 300 MiB for XFS,
// within limit, at most MaxVolumeSize (checked before rounding, so that the
// rounding cannot overflow). Every size a volume gets goes through it.
func PickSize(required, limit int64, fsType string) (int64, error) {
	if required < 0 || limit < 0 {
		return 0, Errorf(ErrOutOfRange, "capacity_range: negative bytes (required %d, limit %d)", required, limit)
	}
	if required > MaxVolumeSize {
		return 0, Errorf(ErrOutOfRange, "capacity_range.required_bytes %d exceeds the largest volume size, %d bytes", required, int64(MaxVolumeSize))
	}
	if limit > 0 && required > limit {
		return 0, Errorf(ErrOutOfRange, "capacity_range: required_bytes %d exceeds limit_bytes %d", required, limit)
	}
	size := required
	if size == 0 {
		size = DefaultVolumeSize
		if limit > 0 && limit < size {
			// Any size up to the limit will do: round the limit down (to
			// 1 MiB, else 4 KiB) so the rounding up below stays within it.
			size = limit
			for _, align := range []int64{sizeAlign, minAlign} {
				if s := limit / align * align; s > 0 {
					size = s
					break
				}
			}
		}
	}
	if fsType == FsXFS && size < MinXFSSize {
		size = MinXFSSize
	}
	for _, align := range []int64{sizeAlign, minAlign} {
		s := (size + align - 1) / align * align
		if limit == 0 || s <= limit {
			return s, nil
		}
	}
	if fsType == FsXFS && limit < MinXFSSize {
		return 0, Errorf(ErrOutOfRange, "capacity_range: limit_bytes %d is below the %d bytes mkfs.xfs needs", limit, MinXFSSize)
	}
	return 0, Errorf(ErrOutOfRange, "capacity_range: no size that is a multiple of 4096 fits between %d and %d", required, limit)
}

// ExpandSize is the size a volume of cur bytes has after an expansion
// request (cur itself when it is large enough already), or the error an
// expansion answers for the request.
func ExpandSize(id string, cur, required, limit int64, fsType string) (int64, error) {
	if required < cur {
		if limit > 0 && limit < cur {
			return 0, Errorf(ErrOutOfRange, "capacity_range: volume %s has %d bytes; shrinking to %d is not supported", id, cur, limit)
		}
		if required == 0 {
			return 0, Errorf(ErrInvalidArgument, "capacity_range: required_bytes must be set")
		}
	}
	return PickSize(max(required, cur), limit, fsType)
}

// Answers tells whether an existing volume answers a repeated create for
// req: nil if it is compatible, AlreadyExists saying how it differs
// otherwise.
func (v *Volume) Answers(req CreateVolumeRequest) error {
	want := req.RequestedSource()
	switch {
	case v.SizeBytes < req.RequiredBytes:
		return Errorf(ErrAlreadyExists, "volume %q exists with %d bytes, less than the requested %d", req.Name, v.SizeBytes, req.RequiredBytes)
	case req.LimitBytes > 0 && v.SizeBytes > req.LimitBytes:
		return Errorf(ErrAlreadyExists, "volume %q exists with %d bytes, more than limit_bytes %d", req.Name, v.SizeBytes, req.LimitBytes)
	case v.Block != req.Block:
		return Errorf(ErrAlreadyExists, "volume %q exists with a different access type", req.Name)
	case (want == nil) != (v.Source == nil) || (want != nil && want.CSI() != v.Source.CSI()):
		return Errorf(ErrAlreadyExists, "volume %q exists with a different content source", req.Name)
	case want == nil && !req.Block && v.FsType != EffectiveFsType(false, req.FsType):
		return Errorf(ErrAlreadyExists, "volume %q exists with file system %s, not %s", req.Name, v.FsType, EffectiveFsType(false, req.FsType))
	}
	return nil
}
