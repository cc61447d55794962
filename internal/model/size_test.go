package model

import (
	"errors"
	"testing"
)

const mib = 1 << 20

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
