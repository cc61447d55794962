// Package benchutil holds what both benchmark programs (bench and
// bench/backup) need: the work directory, machine facts for the report,
// free space, and report formatting.
package benchutil

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/testsupport/harness"
)

// WorkDir returns out, or _out/<name> under the module root when out is
// empty, created, after checking that no crashed earlier run left a mount
// or loop device under it (never delete through a mount).
func WorkDir(out, name string) (string, error) {
	if out == "" {
		root, err := harness.ModuleRoot()
		if err != nil {
			return "", err
		}
		out = filepath.Join(root, "_out", name)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return "", err
	}
	if leaks, err := harness.Leaks(out, out); err != nil {
		return "", err
	} else if len(leaks) > 0 {
		return "", fmt.Errorf("leftovers of an earlier run under %s, clean them up first:\n  %s", out, strings.Join(leaks, "\n  "))
	}
	return out, nil
}

// FreeBytes returns the space available to unprivileged writers at path.
func FreeBytes(path string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", path, err)
	}
	return int64(st.Bavail) * st.Bsize, nil
}

// LeakText renders a leak list for the report.
func LeakText(l []string) string {
	if len(l) == 0 {
		return "none"
	}
	return strings.Join(l, "; ")
}

// LoadAvg returns the 1, 5 and 15 minute load averages.
func LoadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// ProcField returns the value of "key: value" in a /proc file.
func ProcField(path, key string) string {
	f, err := os.Open(path)
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// YesNo renders whether a target was met.
func YesNo(ok bool) string {
	if ok {
		return "yes"
	}
	return "**no**"
}

// Logf logs a progress line with the time on stderr.
func Logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%s] %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}
