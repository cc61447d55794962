package harness

import (
	"bufio"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/loop"
)

// Leaks lists loop devices backed by files under dataRoot and mounts whose
// mount point lies under one of dirs or whose source is such a loop device.
// An empty result means nothing is left behind.
func Leaks(dataRoot string, dirs ...string) ([]string, error) {
	devs, err := loop.FindUnder(dataRoot)
	if err != nil {
		return nil, err
	}
	var out []string
	ours := map[string]bool{}
	for _, d := range devs {
		ours[d.Path] = true
		out = append(out, fmt.Sprintf("loop device %s -> %s", d.Path, d.BackingFile))
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 {
			continue
		}
		mp := fields[4]
		var src string
		for i, fl := range fields {
			if fl == "-" && i+2 < len(fields) {
				src = fields[i+2]
			}
		}
		leak := ours[src]
		for _, d := range dirs {
			if d != "" && (mp == d || strings.HasPrefix(mp, d+"/")) {
				leak = true
			}
		}
		if leak {
			out = append(out, fmt.Sprintf("mount %s (source %s)", mp, src))
		}
	}
	return out, sc.Err()
}

// UnmountAll lazily unmounts every mount point under dir (deepest first),
// for test clean-up after a failure.
func UnmountAll(dir string) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var mps []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && (fields[4] == dir || strings.HasPrefix(fields[4], dir+"/")) {
			mps = append(mps, fields[4])
		}
	}
	f.Close()
	for i := len(mps) - 1; i >= 0; i-- {
		unix.Unmount(mps[i], unix.MNT_DETACH)
	}
}

// DetachLoops detaches every loop device backed by a file under dataRoot,
// for test clean-up after a failure left volumes staged.
func DetachLoops(dataRoot string) {
	devs, err := loop.FindUnder(dataRoot)
	if err != nil {
		return
	}
	for _, d := range devs {
		loop.Detach(d.Path)
	}
}
