// Package iolimit enforces a volume's block I/O limits (IOPS and bytes per
// second, reads and writes each) on its loop device through the kernel's
// block cgroup controller, in the cgroups of the pods that use it
// (docs/IOLIMITS.md).
//
// cgroup v1 (blkio) throttles per cgroup, not down the hierarchy: a limit
// is written into the root cgroup (processes outside any pod, and the
// kernel's writeback of buffered writes, which v1 charges to the root) and
// into every cgroup under each pod's (its containers). cgroup v2 (io.max)
// is hierarchical and charges writeback to the writer: the pod's cgroup
// is enough, and processes outside pods are not limited.
package iolimit

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/model"
)

// Device is a block device's number.
type Device struct{ Major, Minor uint32 }

func (d Device) String() string { return fmt.Sprintf("%d:%d", d.Major, d.Minor) }

// DeviceOf returns the number of the block device at path.
func DeviceOf(path string) (Device, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return Device{}, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return Device{}, fmt.Errorf("%s is not a block device", path)
	}
	return Device{unix.Major(st.Rdev), unix.Minor(st.Rdev)}, nil
}

// v1 throttle files and the limit each takes.
var v1Files = []struct {
	name string
	pick func(model.IOLimits) int64
}{
	{"blkio.throttle.read_iops_device", func(l model.IOLimits) int64 { return l.IOPS }},
	{"blkio.throttle.write_iops_device", func(l model.IOLimits) int64 { return l.IOPS }},
	{"blkio.throttle.read_bps_device", model.IOLimits.ThroughputBytes},
	{"blkio.throttle.write_bps_device", model.IOLimits.ThroughputBytes},
}

// Enforcer writes limits into one cgroup file system.
type Enforcer struct {
	hier string // the blkio hierarchy (v1) or the unified one (v2)
	v2   bool

	mu     sync.Mutex
	pods   map[string]string    // pod UID -> its cgroup directory, once found
	missed map[string]time.Time // pod UID -> when a search last found none
}

// missRetry is how long a pod whose cgroup was not found is not searched
// for again (a search walks the hierarchy).
const missRetry = 10 * time.Second

// ErrUnsupported: the node has no block cgroup controller to enforce
// limits with.
var ErrUnsupported = errors.New("no block I/O cgroup controller (blkio in cgroup v1, io in cgroup v2)")

// New finds the block cgroup controller under root (normally
// /sys/fs/cgroup; the host's, mounted into the node plugin's container).
func New(root string) (*Enforcer, error) {
	if _, err := os.Stat(filepath.Join(root, "blkio", v1Files[0].name)); err == nil {
		return &Enforcer{hier: filepath.Join(root, "blkio"), pods: map[string]string{}, missed: map[string]time.Time{}}, nil
	}
	if b, err := os.ReadFile(filepath.Join(root, "cgroup.controllers")); err == nil && strings.Contains(" "+string(b)+" ", " io ") {
		return &Enforcer{hier: root, v2: true, pods: map[string]string{}, missed: map[string]time.Time{}}, nil
	}
	return nil, fmt.Errorf("%s: %w", root, ErrUnsupported)
}

// Version is 1 or 2, the cgroup version in use.
func (e *Enforcer) Version() int {
	if e.v2 {
		return 2
	}
	return 1
}

// PodDir returns the cgroup directory of the pod with uid, "" when it
// has none (yet, or any more). kubelet names it pod<uid> (cgroupfs
// driver) or kubepods-<qos>-pod<uid with _>.slice (systemd driver),
// under its --cgroup-root.
func (e *Enforcer) PodDir(uid string) string {
	if !model.ValidPodUID(uid) {
		return ""
	}
	e.mu.Lock()
	dir, ok := e.pods[uid]
	missedAt, missed := e.missed[uid]
	e.mu.Unlock()
	if ok {
		if _, err := os.Stat(dir); err == nil {
			return dir
		}
	}
	if missed && time.Since(missedAt) < missRetry {
		return ""
	}
	dir = e.findPod(uid)
	e.mu.Lock()
	delete(e.pods, uid)
	delete(e.missed, uid)
	if dir == "" {
		e.missed[uid] = time.Now()
	} else {
		e.pods[uid] = dir
	}
	e.mu.Unlock()
	return dir
}

// Forget drops what is known of a pod (it stopped using the volume).
func (e *Enforcer) Forget(uid string) {
	e.mu.Lock()
	delete(e.pods, uid)
	delete(e.missed, uid)
	e.mu.Unlock()
}

// kubelet's pod cgroups sit directly under kubepods (Guaranteed) or under
// its QoS class's cgroup (cgroupfs and systemd names).
var (
	kubepodsDirs = map[string]bool{"kubepods": true, "kubepods.slice": true}
	qosDirs      = map[string]bool{"besteffort": true, "burstable": true, "kubepods-besteffort.slice": true, "kubepods-burstable.slice": true}
)

// kubeletPodDir reports whether p sits where kubelet puts a pod's cgroup.
func kubeletPodDir(p string) bool {
	parent := filepath.Dir(p)
	if kubepodsDirs[filepath.Base(parent)] {
		return true
	}
	return qosDirs[filepath.Base(parent)] && kubepodsDirs[filepath.Base(filepath.Dir(parent))]
}

// findPod walks the hierarchy (kubelet's pods are at most five levels
// down) for uid's directory.
func (e *Enforcer) findPod(uid string) string {
	names := map[string]bool{"pod" + uid: true}
	systemdSuffix := "pod" + strings.ReplaceAll(uid, "-", "_") + ".slice"
	// The shallowest match in kubelet's layout: a directory of the same
	// name that a pod with a writable cgroupfs makes in its own subtree is
	// deeper than the real one.
	var found string
	_ = filepath.WalkDir(e.hier, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		if rel, _ := filepath.Rel(e.hier, p); strings.Count(rel, string(filepath.Separator)) >= 5 {
			return filepath.SkipDir
		}
		if (names[d.Name()] || strings.HasSuffix(d.Name(), "-"+systemdSuffix)) && kubeletPodDir(p) {
			if found == "" || strings.Count(p, string(filepath.Separator)) < strings.Count(found, string(filepath.Separator)) {
				found = p
			}
			return filepath.SkipDir
		}
		return nil
	})
	return found
}

// Apply sets dev's limits (zero fields remove them) in the root cgroup
// (v1) and in the cgroups of the pods given by UID; a pod without a
// cgroup is skipped. It writes only what differs, so calling it again is
// cheap and does not reset the kernel's accounting.
func (e *Enforcer) Apply(dev Device, l model.IOLimits, podUIDs []string) error {
	return e.apply(dev, l, podUIDs, !e.v2)
}

// ClearRoot removes dev's limits from the root cgroup (v1; v2 has none
// there): done before a loop device is detached, since the kernel gives
// its number to the next loop device attached.
func (e *Enforcer) ClearRoot(dev Device) error {
	if e.v2 {
		return nil
	}
	return e.applyDir(e.hier, dev, model.IOLimits{})
}

// RootDevices lists the devices of major number major that have a limit
// in the root cgroup (v1; none for v2).
func (e *Enforcer) RootDevices(major uint32) ([]Device, error) {
	if e.v2 {
		return nil, nil
	}
	seen := map[Device]bool{}
	var out []Device
	for _, f := range v1Files {
		b, err := os.ReadFile(filepath.Join(e.hier, f.name))
		if err != nil {
			return nil, err
		}
		for _, line := range strings.Split(string(b), "\n") {
			var d Device
			if _, err := fmt.Sscanf(line, "%d:%d", &d.Major, &d.Minor); err == nil && d.Major == major && !seen[d] {
				seen[d] = true
				out = append(out, d)
			}
		}
	}
	return out, nil
}

// ApplyPods is Apply on the pods' cgroups only (a pod stops using the
// device while others go on).
func (e *Enforcer) ApplyPods(dev Device, l model.IOLimits, podUIDs []string) error {
	return e.apply(dev, l, podUIDs, false)
}

func (e *Enforcer) apply(dev Device, l model.IOLimits, podUIDs []string, root bool) error {
	var dirs []string
	if root {
		dirs = append(dirs, e.hier)
	}
	for _, uid := range podUIDs {
		pod := e.PodDir(uid)
		if pod == "" {
			continue
		}
		if e.v2 {
			dirs = append(dirs, pod)
			continue
		}
		_ = filepath.WalkDir(pod, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
	}
	var errs []error
	for _, d := range dirs {
		if err := e.applyDir(d, dev, l); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err) // a cgroup removed meanwhile is not an error
		}
	}
	return errors.Join(errs...)
}

// Dirs lists the directories to watch for new cgroups of the pods: a
// container's cgroup made after Apply must get the limits too (v1).
func (e *Enforcer) Dirs(podUIDs []string) []string {
	var out []string
	for _, uid := range podUIDs {
		if d := e.PodDir(uid); d != "" {
			out = append(out, d)
		}
	}
	return out
}

func (e *Enforcer) applyDir(dir string, dev Device, l model.IOLimits) error {
	if e.v2 {
		return applyV2(dir, dev, l)
	}
	for _, f := range v1Files {
		path := filepath.Join(dir, f.name)
		want := f.pick(l)
		have, err := readV1(path, dev)
		if err != nil {
			return err
		}
		if have == want {
			continue
		}
		// "0" removes the rule.
		if err := os.WriteFile(path, []byte(fmt.Sprintf("%s %d\n", dev, want)), 0); err != nil {
			return fmt.Errorf("set %s of %s in %s: %w", f.name, dev, dir, err)
		}
	}
	return nil
}

// readV1 returns dev's value in a v1 throttle file, 0 when it has none.
func readV1(path string, dev Device) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 2 && fields[0] == dev.String() {
			return strconv.ParseInt(fields[1], 10, 64)
		}
	}
	return 0, sc.Err()
}

// applyV2 writes dev's line of io.max ("max" for no limit).
func applyV2(dir string, dev Device, l model.IOLimits) error {
	path := filepath.Join(dir, "io.max")
	val := func(n int64) string {
		if n == 0 {
			return "max"
		}
		return strconv.FormatInt(n, 10)
	}
	want := map[string]string{"riops": val(l.IOPS), "wiops": val(l.IOPS), "rbps": val(l.ThroughputBytes()), "wbps": val(l.ThroughputBytes())}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		if _, derr := os.Stat(dir); derr == nil {
			return fmt.Errorf("cgroup %s has no io.max: the io controller is not enabled for it", dir)
		}
	}
	if err != nil {
		return err
	}
	have := map[string]string{"riops": "max", "wiops": "max", "rbps": "max", "wbps": "max"}
	for _, line := range strings.Split(string(b), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 || fields[0] != dev.String() {
			continue
		}
		for _, kv := range fields[1:] {
			if k, v, ok := strings.Cut(kv, "="); ok {
				have[k] = v
			}
		}
	}
	if fmt.Sprint(have) == fmt.Sprint(want) {
		return nil
	}
	line := fmt.Sprintf("%s riops=%s wiops=%s rbps=%s wbps=%s\n", dev, want["riops"], want["wiops"], want["rbps"], want["wbps"])
	if err := os.WriteFile(path, []byte(line), 0); err != nil {
		return fmt.Errorf("set io.max of %s in %s: %w", dev, dir, err)
	}
	return nil
}
