package model

import (
	"fmt"
	"time"
)

// TransferProgress describes an upload or download under way, the way
// status messages show it: "12582912 of 67108864 bytes, 18%, 31.5 MiB/s"
// (the rate is the average since the transfer began; it is left out
// before there is one).
func TransferProgress(done, total int64, elapsed time.Duration) string {
	s := fmt.Sprintf("%d of %d bytes", done, total)
	if total > 0 && done >= 0 && done <= total {
		s += fmt.Sprintf(", %d%%", done*100/total)
	}
	if done > 0 && elapsed >= 100*time.Millisecond {
		s += fmt.Sprintf(", %.1f MiB/s", float64(done)/elapsed.Seconds()/(1<<20))
	}
	return s
}
