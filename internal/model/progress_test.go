package model

import (
	"testing"
	"time"
)

func TestTransferProgress(t *testing.T) {
	for _, c := range []struct {
		done, total int64
		elapsed     time.Duration
		want        string
	}{
		{0, 0, 0, "0 of 0 bytes"},
		{0, 64 << 20, time.Second, "0 of 67108864 bytes, 0%"},
		{16 << 20, 64 << 20, 2 * time.Second, "16777216 of 67108864 bytes, 25%, 8.0 MiB/s"},
		{1 << 20, 64 << 20, time.Millisecond, "1048576 of 67108864 bytes, 1%"}, // too soon for a rate
		{80 << 20, 64 << 20, 0, "83886080 of 67108864 bytes"},                  // a size not known right yet
	} {
		if got := TransferProgress(c.done, c.total, c.elapsed); got != c.want {
			t.Errorf("TransferProgress(%d, %d, %v) = %q, want %q", c.done, c.total, c.elapsed, got, c.want)
		}
	}
}
