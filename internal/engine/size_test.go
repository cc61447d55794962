package engine

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"
)

func TestPickSize(t *testing.T) {
	tests := []struct {
		name            string
		required, limit int64
		fsType          string
		want            int64 // 0: want ErrOutOfRange
	}{
		{"default", 0, 0, "ext4", DefaultVolumeSize},
		{"default block", 0, 0, "", DefaultVolumeSize},
		{"default xfs", 0, 0, "xfs", DefaultVolumeSize},
		{"default capped by limit", 0, 512 * mib, "ext4", 512 * mib},
		{"default capped by unaligned limit", 0, 512*mib + 1, "ext4", 512 * mib},
		{"default capped by 4k-aligned limit", 0, 3*mib + 8192, "ext4", 3 * mib},
		{"default capped by small limit", 0, 12288 + 5, "", 12288},
		{"limit below one block", 0, 1000, "ext4", 0},
		{"one byte rounds to MiB", 1, 0, "ext4", mib},
		{"MiB exact", 5 * mib, 0, "ext4", 5 * mib},
		{"MiB plus one", 5*mib + 1, 0, "ext4", 6 * mib},
		{"block rounds to MiB", 5000, 0, "", mib},
		{"tight limit falls back to 4KiB", mib + 1, mib + 4096, "ext4", mib + 4096},
		{"tight limit exact", mib + 4096, mib + 4096, "ext4", mib + 4096},
		{"no 4KiB multiple fits", mib + 1, mib + 100, "ext4", 0},
		{"required above limit", 10 * mib, 5 * mib, "ext4", 0},
		{"negative required", -1, 0, "ext4", 0},
		{"negative limit", 0, -1, "ext4", 0},
		{"xfs minimum", 1, 0, "xfs", MinXFSSize},
		{"xfs 100MiB", 100 * mib, 0, "xfs", MinXFSSize},
		{"xfs minimum exact limit", 100 * mib, MinXFSSize, "xfs", MinXFSSize},
		{"xfs above minimum", MinXFSSize + 1, 0, "xfs", MinXFSSize + mib},
		{"xfs limit below minimum", 100 * mib, 200 * mib, "xfs", 0},
		{"xfs default limit below minimum", 0, 200 * mib, "xfs", 0},
		{"ext4 has no 300MiB minimum", 100 * mib, 200 * mib, "ext4", 100 * mib},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := PickSize(tc.required, tc.limit, tc.fsType)
			if tc.want == 0 {
				if !errors.Is(err, ErrOutOfRange) {
					t.Fatalf("PickSize(%d, %d, %q) = %d, %v; want ErrOutOfRange", tc.required, tc.limit, tc.fsType, got, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("PickSize(%d, %d, %q) = %d, %v; want %d", tc.required, tc.limit, tc.fsType, got, err, tc.want)
			}
			if got%4096 != 0 || got < tc.required || (tc.limit > 0 && got > tc.limit) {
				t.Fatalf("PickSize(%d, %d, %q) = %d breaks its own rules", tc.required, tc.limit, tc.fsType, got)
			}
		})
	}
}

// The engine applies the same rules when it creates volumes, and the data
// file gets exactly the picked size.
func TestCreateVolumeSizes(t *testing.T) {
	forEachRoot(t, func(t *testing.T, e *Engine) {
		ctx := context.Background()
		tests := []struct {
			req  CreateVolumeRequest
			want int64
		}{
			{CreateVolumeRequest{Name: "default"}, DefaultVolumeSize},
			{CreateVolumeRequest{Name: "tiny", RequiredBytes: 1}, mib},
			{CreateVolumeRequest{Name: "block", RequiredBytes: 5000, Block: true}, mib},
			{CreateVolumeRequest{Name: "xfs-small", RequiredBytes: 1, FsType: "xfs"}, MinXFSSize},
			{CreateVolumeRequest{Name: "limited", RequiredBytes: mib + 1, LimitBytes: mib + 4096}, mib + 4096},
		}
		for _, tc := range tests {
			v, err := e.CreateVolume(ctx, tc.req)
			if err != nil {
				t.Fatalf("create %s: %v", tc.req.Name, err)
			}
			if v.SizeBytes != tc.want {
				t.Errorf("create %s: size %d, want %d", tc.req.Name, v.SizeBytes, tc.want)
			}
			if got := fileSize(t, e.volumeData(v.ID)); got != tc.want {
				t.Errorf("create %s: data file has %d bytes, want %d", tc.req.Name, got, tc.want)
			}
		}
		_, err := e.CreateVolume(ctx, CreateVolumeRequest{Name: "xfs-limited", RequiredBytes: 100 * mib, LimitBytes: 200 * mib, FsType: "xfs"})
		wantErr(t, err, ErrOutOfRange, "xfs volume with a limit below 300MiB")
		_, err = e.CreateVolume(ctx, CreateVolumeRequest{Name: "inverted", RequiredBytes: 10 * mib, LimitBytes: 5 * mib})
		wantErr(t, err, ErrOutOfRange, "required above limit")
		for _, name := range []string{"xfs-limited", "inverted"} {
			if _, err := e.GetVolume(ctx, VolumeIDForName(name)); !errors.Is(err, ErrNotFound) {
				t.Errorf("refused volume %s exists: %v", name, err)
			}
		}
		assertNoLeftovers(t, e)
	})
}

// Sizes near MaxInt64 used to overflow in the rounding: PickSize(MaxInt64,
// 0) was negative, so CreateVolume failed with Internal (a negative
// truncate) and ExpandVolume "succeeded" without growing. Every size above
// MaxVolumeSize is OutOfRange, naming the field; everything up to it
// rounds without overflow.
func TestSizesNearMaxInt64(t *testing.T) {
	const maxInt = int64(math.MaxInt64)
	for _, tc := range []struct {
		required, limit int64
		field           string // "": accepted
	}{
		{maxInt, 0, "capacity_range.required_bytes"},
		{maxInt - 1, 0, "capacity_range.required_bytes"},
		{maxInt - mib + 2, 0, "capacity_range.required_bytes"},
		{MaxVolumeSize + 1, 0, "capacity_range.required_bytes"},
		{maxInt, maxInt, "capacity_range.required_bytes"},
		{MaxVolumeSize, 0, ""},
		{MaxVolumeSize - mib + 1, 0, ""},
		{0, maxInt, ""},             // a huge limit is only an upper bound
		{5 * mib, maxInt, ""},       // likewise
		{MaxVolumeSize, maxInt, ""}, // likewise
	} {
		for _, fs := range []string{"ext4", "xfs", ""} {
			got, err := PickSize(tc.required, tc.limit, fs)
			if tc.field != "" {
				if !errors.Is(err, ErrOutOfRange) || !strings.Contains(err.Error(), tc.field) {
					t.Errorf("PickSize(%d, %d, %q) = %d, %v; want OutOfRange naming %s", tc.required, tc.limit, fs, got, err, tc.field)
				}
				continue
			}
			if err != nil || got < tc.required || got%4096 != 0 || got > MaxVolumeSize {
				t.Errorf("PickSize(%d, %d, %q) = %d, %v; want a multiple of 4096 in [%d, %d]", tc.required, tc.limit, fs, got, err, tc.required, MaxVolumeSize)
			}
		}
	}
	// Expansion goes through the same rule.
	for _, required := range []int64{maxInt, maxInt - 1, MaxVolumeSize + 1} {
		got, err := ExpandSize("v-x", gib, required, 0, "ext4")
		if !errors.Is(err, ErrOutOfRange) || !strings.Contains(err.Error(), "capacity_range.required_bytes") {
			t.Errorf("ExpandSize(1GiB → %d) = %d, %v; want OutOfRange naming capacity_range.required_bytes", required, got, err)
		}
	}
	if got, err := ExpandSize("v-x", gib, MaxVolumeSize, 0, "ext4"); err != nil || got != MaxVolumeSize {
		t.Errorf("ExpandSize(1GiB → MaxVolumeSize) = %d, %v", got, err)
	}
}

// A CreateVolume or ExpandVolume for MaxInt64 bytes is OutOfRange (it was
// Internal, and a "successful" expansion below the required size), and
// leaves nothing behind.
func TestHugeSizesOutOfRange(t *testing.T) {
	forEachRoot(t, func(t *testing.T, e *Engine) {
		ctx := context.Background()
		_, err := e.CreateVolume(ctx, CreateVolumeRequest{Name: "huge", RequiredBytes: math.MaxInt64})
		wantErr(t, err, ErrOutOfRange, "create a MaxInt64-byte volume")
		if !strings.Contains(err.Error(), "capacity_range.required_bytes") {
			t.Errorf("error %q does not name capacity_range.required_bytes", err)
		}
		v := must(e.CreateVolume(ctx, CreateVolumeRequest{Name: "small", RequiredBytes: mib}))(t)
		res, err := e.ExpandVolume(ctx, v.ID, math.MaxInt64, 0)
		if !errors.Is(err, ErrOutOfRange) {
			t.Fatalf("expand to MaxInt64 bytes: %+v, %v; want ErrOutOfRange", res, err)
		}
		if got := fileSize(t, e.volumeData(v.ID)); got != mib {
			t.Errorf("refused expansion changed the data file to %d bytes", got)
		}
		ok(t, e.DeleteVolume(ctx, v.ID))
		assertNoLeftovers(t, e)
	})
}
