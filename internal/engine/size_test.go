package engine

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/cairn-csi/cairn/internal/model"
)

// The engine applies the same rules when it creates volumes, and the data
// file gets exactly the picked size.
func TestCreateVolumeSizes(t *testing.T) {
	forEachRoot(t, func(t *testing.T, e *Engine) {
		ctx := context.Background()
		tests := []struct {
			req  model.CreateVolumeRequest
			want int64
		}{
			{model.CreateVolumeRequest{Name: "default"}, model.DefaultVolumeSize},
			{model.CreateVolumeRequest{Name: "tiny", RequiredBytes: 1}, mib},
			{model.CreateVolumeRequest{Name: "block", RequiredBytes: 5000, Block: true}, mib},
			{model.CreateVolumeRequest{Name: "xfs-small", RequiredBytes: 1, FsType: "xfs"}, model.MinXFSSize},
			{model.CreateVolumeRequest{Name: "limited", RequiredBytes: mib + 1, LimitBytes: mib + 4096}, mib + 4096},
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
		_, err := e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "xfs-limited", RequiredBytes: 100 * mib, LimitBytes: 200 * mib, FsType: "xfs"})
		wantErr(t, err, model.ErrOutOfRange, "xfs volume with a limit below 300MiB")
		_, err = e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "inverted", RequiredBytes: 10 * mib, LimitBytes: 5 * mib})
		wantErr(t, err, model.ErrOutOfRange, "required above limit")
		for _, name := range []string{"xfs-limited", "inverted"} {
			if _, err := e.GetVolume(ctx, model.VolumeIDForName(name)); !errors.Is(err, model.ErrNotFound) {
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
		{model.MaxVolumeSize + 1, 0, "capacity_range.required_bytes"},
		{maxInt, maxInt, "capacity_range.required_bytes"},
		{model.MaxVolumeSize, 0, ""},
		{model.MaxVolumeSize - mib + 1, 0, ""},
		{0, maxInt, ""},                   // a huge limit is only an upper bound
		{5 * mib, maxInt, ""},             // likewise
		{model.MaxVolumeSize, maxInt, ""}, // likewise
	} {
		for _, fs := range []string{"ext4", "xfs", ""} {
			got, err := model.PickSize(tc.required, tc.limit, fs)
			if tc.field != "" {
				if !errors.Is(err, model.ErrOutOfRange) || !strings.Contains(err.Error(), tc.field) {
					t.Errorf("PickSize(%d, %d, %q) = %d, %v; want OutOfRange naming %s", tc.required, tc.limit, fs, got, err, tc.field)
				}
				continue
			}
			if err != nil || got < tc.required || got%4096 != 0 || got > model.MaxVolumeSize {
				t.Errorf("PickSize(%d, %d, %q) = %d, %v; want a multiple of 4096 in [%d, %d]", tc.required, tc.limit, fs, got, err, tc.required, model.MaxVolumeSize)
			}
		}
	}
	// Expansion goes through the same rule.
	for _, required := range []int64{maxInt, maxInt - 1, model.MaxVolumeSize + 1} {
		got, err := model.ExpandSize("v-x", gib, required, 0, "ext4")
		if !errors.Is(err, model.ErrOutOfRange) || !strings.Contains(err.Error(), "capacity_range.required_bytes") {
			t.Errorf("ExpandSize(1GiB → %d) = %d, %v; want OutOfRange naming capacity_range.required_bytes", required, got, err)
		}
	}
	if got, err := model.ExpandSize("v-x", gib, model.MaxVolumeSize, 0, "ext4"); err != nil || got != model.MaxVolumeSize {
		t.Errorf("ExpandSize(1GiB → MaxVolumeSize) = %d, %v", got, err)
	}
}

// A CreateVolume or ExpandVolume for MaxInt64 bytes is OutOfRange (it was
// Internal, and a "successful" expansion below the required size), and
// leaves nothing behind.
func TestHugeSizesOutOfRange(t *testing.T) {
	forEachRoot(t, func(t *testing.T, e *Engine) {
		ctx := context.Background()
		_, err := e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "huge", RequiredBytes: math.MaxInt64})
		wantErr(t, err, model.ErrOutOfRange, "create a MaxInt64-byte volume")
		if !strings.Contains(err.Error(), "capacity_range.required_bytes") {
			t.Errorf("error %q does not name capacity_range.required_bytes", err)
		}
		v := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "small", RequiredBytes: mib}))(t)
		res, err := e.ExpandVolume(ctx, v.ID, math.MaxInt64, 0)
		if !errors.Is(err, model.ErrOutOfRange) {
			t.Fatalf("expand to MaxInt64 bytes: %+v, %v; want ErrOutOfRange", res, err)
		}
		if got := fileSize(t, e.volumeData(v.ID)); got != mib {
			t.Errorf("refused expansion changed the data file to %d bytes", got)
		}
		ok(t, e.DeleteVolume(ctx, v.ID))
		assertNoLeftovers(t, e)
	})
}
