package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	mountutils "k8s.io/mount-utils"

	"github.com/cairn-csi/cairn/internal/fsops"
	"github.com/cairn-csi/cairn/internal/loop"
	"github.com/cairn-csi/cairn/internal/model"
)

// NearlyFullPercent is the free share of the data root below which the
// data root is reported degraded (docs/HEALTH.md).
const NearlyFullPercent = 5

// VolumeHealth checks one volume on this node and returns its problems,
// none when healthy (docs/HEALTH.md lists the checks). A volume whose
// metadata is gone is ErrNotFound: the caller decides whether it should
// exist (in Kubernetes mode its Volume object says so).
func (e *Engine) VolumeHealth(ctx context.Context, id string) ([]model.HealthProblem, error) {
	m, err := e.loadVolume(id)
	if err != nil {
		return nil, err
	}
	return boundedCheck(ctx, func() ([]model.HealthProblem, error) {
		in, err := e.healthInputs()
		if err != nil {
			return nil, err
		}
		return e.volumeHealth(m, in), nil
	})
}

// HealthCheckTimeout bounds one pass of the health checks: a disk that
// hangs makes the pass fail with a timeout rather than block its caller.
const HealthCheckTimeout = 30 * time.Second

// AllVolumeHealth checks every volume (one read of the mount table, the
// loop devices and the capacity for all), keyed by volume ID; unhealthy
// ones only. One pass runs at a time: a caller arriving during a pass
// shares its result, and a result younger than maxAge is answered from
// memory (the metrics scrape passes the heartbeat's age, the heartbeat 0).
func (e *Engine) AllVolumeHealth(ctx context.Context, maxAge time.Duration) (map[string][]model.HealthProblem, error) {
	h := &e.health
	h.mu.Lock()
	if h.done != nil && time.Since(h.at) <= maxAge {
		all, err := h.all, h.err
		h.mu.Unlock()
		return all, err
	}
	pass := h.running
	if pass == nil {
		pass = make(chan struct{})
		h.running = pass
		go func() {
			all, err := e.allVolumeHealth()
			h.mu.Lock()
			h.all, h.err, h.at, h.done, h.running = all, err, time.Now(), pass, nil
			h.mu.Unlock()
			close(pass)
		}()
	}
	h.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, HealthCheckTimeout)
	defer cancel()
	select {
	case <-pass:
	case <-ctx.Done():
		return nil, fmt.Errorf("health checks of data root %s did not finish (a hung disk?): %w", e.root, ctx.Err())
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.all, h.err
}

// healthCache is the last pass of AllVolumeHealth and the one running.
type healthCache struct {
	mu      sync.Mutex
	running chan struct{} // closed when the running pass ends; nil: none
	done    chan struct{} // the pass that produced all/err; nil: none yet
	at      time.Time
	all     map[string][]model.HealthProblem
	err     error
}

func (e *Engine) allVolumeHealth() (map[string][]model.HealthProblem, error) {
	ids, err := e.listIDs(volumesDir, model.ValidVolumeID)
	if err != nil {
		return nil, err
	}
	in, err := e.healthInputs()
	if err != nil {
		return nil, err
	}
	out := map[string][]model.HealthProblem{}
	for _, id := range ids {
		m, err := e.loadVolume(id)
		if err != nil {
			continue // deleted meanwhile
		}
		if p := e.volumeHealth(m, in); len(p) > 0 {
			out[id] = p
		}
	}
	return out, nil
}

// boundedCheck runs one check, giving up on it (it may stay blocked in
// the kernel) after HealthCheckTimeout or when ctx ends.
func boundedCheck[T any](ctx context.Context, check func() (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	go func() {
		v, err := check()
		ch <- result{v, err}
	}()
	ctx, cancel := context.WithTimeout(ctx, HealthCheckTimeout)
	defer cancel()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-ctx.Done():
		var zero T
		return zero, fmt.Errorf("health check did not finish (a hung disk?): %w", ctx.Err())
	}
}

// healthView is what every volume's check reads once per pass: the mount
// table, the attached loop devices and the data root's capacity.
type healthView struct {
	mounts []mountutils.MountInfo
	loops  []loop.Device
	cap    Capacity
}

func (e *Engine) healthInputs() (healthView, error) {
	var in healthView
	var err error
	if in.mounts, err = mountutils.ParseMountInfo("/proc/self/mountinfo"); err != nil {
		return in, fmt.Errorf("read mounts: %w", err)
	}
	if in.loops, err = loop.List(); err != nil {
		return in, err
	}
	if c, err := e.Capacity(); err == nil {
		in.cap = c
	}
	return in, nil
}

// volumeHealth checks m against the view of the node read for this pass.
func (e *Engine) volumeHealth(m *VolumeMeta, in healthView) []model.HealthProblem {
	mounts, loops, c := in.mounts, in.loops, in.cap
	var out []model.HealthProblem
	add := func(kind model.HealthKind, reason, format string, args ...any) {
		out = append(out, model.HealthProblem{Kind: kind, Reason: reason, Message: fmt.Sprintf(format, args...)})
	}
	data := e.volumeData(m.ID)
	staged := m.Stage != nil && m.Stage.State == stateStaged
	devs := loop.Match(loops, data)
	fi, err := os.Stat(data)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if len(devs) > 0 {
			add(model.HealthDataLoss, "DataFileMissing", "the volume's data file %s was deleted; loop device %s still holds it until the volume is unstaged: copy the data off now (from the running pod), it is lost once the pod stops", data, devs[0].Path)
		} else {
			add(model.HealthDataLoss, "DataFileMissing", "the volume's data file %s is missing from the data root: its data is lost; restore it from a snapshot or backup into a new volume", data)
		}
		return out
	case err != nil:
		add(model.HealthInaccessible, "DataFileUnreadable", "the volume's data file %s cannot be read: %v; check the data root's disk", data, err)
		return out
	case fi.Size() < m.SizeBytes:
		add(model.HealthDataLoss, "DataFileTruncated", "the volume's data file %s is %d bytes, the volume %d: the data past byte %d is lost; restore from a snapshot or backup", data, fi.Size(), m.SizeBytes, fi.Size())
	}
	if err := readProbe(data, fi.Size()); err != nil {
		add(model.HealthInaccessible, "DataFileUnreadable", "reading the volume's data file %s failed: %v; check the data root's disk (dmesg)", data, err)
	}
	if staged && len(devs) == 0 {
		add(model.HealthInaccessible, "LoopDeviceDetached", "the volume is staged at %s but no loop device is attached to its data file (detached by hand?); stop the pods using it and start them again to re-stage it", m.Stage.Path)
	}
	if staged && !m.Stage.Block && len(devs) > 0 {
		out = append(out, fsHealth(m, mounts, devs[0])...)
	}
	if alloc, err := fsops.AllocatedBytes(data); err == nil && c.TotalBytes > 0 {
		if need := m.SizeBytes - alloc; need > 0 && c.ReservedBytes > c.FreeBytes {
			add(model.HealthDegraded, "ReservationNotMet", "the volume may still write %d bytes it has not allocated, but the data root has %d bytes free for %d bytes its volumes were promised: writes may fail with no space left; free space on the data root", need, c.FreeBytes, c.ReservedBytes)
		}
	}
	return out
}

// fsHealth checks the mounted file system of a staged volume: mounted,
// writable as staged, no errors recorded, answering statfs.
func fsHealth(m *VolumeMeta, mounts []mountutils.MountInfo, dev loop.Device) []model.HealthProblem {
	var out []model.HealthProblem
	path := m.Stage.Path
	var mi *mountutils.MountInfo
	for i := range mounts {
		if mounts[i].MountPoint == path {
			mi = &mounts[i]
		}
	}
	if mi == nil {
		return append(out, model.HealthProblem{Kind: model.HealthInaccessible, Reason: "NotMounted",
			Message: fmt.Sprintf("the volume is staged at %s but nothing is mounted there (unmounted by hand?); stop the pods using it and start them again to re-stage it", path)})
	}
	if !m.Stage.ReadOnly && (slices.Contains(mi.MountOptions, "ro") || slices.Contains(mi.SuperOptions, "ro")) {
		out = append(out, model.HealthProblem{Kind: model.HealthDegraded, Reason: "FileSystemReadOnly",
			Message: fmt.Sprintf("the %s file system on %s (mounted at %s) went read-only, most likely after an error: writes fail; stop the pods, then check it with fsck or xfs_repair on the volume's data file", mi.FsType, dev.Path, path)})
	}
	if mi.FsType == "ext4" {
		if b, err := os.ReadFile(filepath.Join("/sys/fs/ext4", filepath.Base(dev.Path), "errors_count")); err == nil {
			if n, _ := strconv.Atoi(strings.TrimSpace(string(b))); n > 0 {
				out = append(out, model.HealthProblem{Kind: model.HealthDegraded, Reason: "FileSystemErrors",
					Message: fmt.Sprintf("the ext4 file system on %s (mounted at %s) recorded %d errors: stop the pods and run e2fsck on it", dev.Path, path, n)})
			}
		}
	}
	if err := answers(path); err != nil {
		out = append(out, model.HealthProblem{Kind: model.HealthInaccessible, Reason: "FileSystemShutDown",
			Message: fmt.Sprintf("the %s file system mounted at %s does not answer (%v): it has shut down after an error; stop the pods, then repair it", mi.FsType, path, err)})
	}
	return out
}

// answers is whether a mounted file system still serves: statfs and
// reading the first entry of its root (a shut-down XFS fails the latter
// with EIO).
func answers(path string) error {
	var sf unix.Statfs_t
	if err := unix.Statfs(path, &sf); err != nil {
		return err
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Readdirnames(1); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	return nil
}

// readProbe reads the first and the last 4 KiB of a file.
func readProbe(path string, size int64) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for _, off := range []int64{0, max(0, size-int64(len(buf)))} {
		if _, err := f.ReadAt(buf, off); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
	}
	return nil
}

// StorageHealth checks the data root: present and writable, not nearly
// full, and able to hold what its volumes were promised.
func (e *Engine) StorageHealth(ctx context.Context) []model.HealthProblem {
	out, err := boundedCheck(ctx, func() ([]model.HealthProblem, error) { return e.storageHealth(), nil })
	if err != nil {
		return []model.HealthProblem{{Kind: model.HealthInaccessible, Reason: "DataRootNotAnswering",
			Message: fmt.Sprintf("data root %s: %v; check its disk (dmesg)", e.root, err)}}
	}
	return out
}

func (e *Engine) storageHealth() []model.HealthProblem {
	if err := e.Health(); err != nil {
		return []model.HealthProblem{{Kind: model.HealthInaccessible, Reason: "DataRootUnavailable",
			Message: err.Error() + "; volumes on this node cannot be created, staged or written"}}
	}
	c, err := e.Capacity()
	if err != nil {
		return []model.HealthProblem{{Kind: model.HealthInaccessible, Reason: "DataRootUnavailable", Message: err.Error()}}
	}
	var out []model.HealthProblem
	if c.TotalBytes > 0 && c.FreeBytes*100 < c.TotalBytes*NearlyFullPercent {
		out = append(out, model.HealthProblem{Kind: model.HealthDegraded, Reason: "DataRootNearlyFull",
			Message: fmt.Sprintf("data root %s has %d of %d bytes free (under %d%%): new volumes and snapshots of copy-mode roots will fail; delete volumes or snapshots, or grow the data root", e.root, c.FreeBytes, c.TotalBytes, NearlyFullPercent)})
	}
	if c.ReservedBytes > c.FreeBytes {
		out = append(out, model.HealthProblem{Kind: model.HealthDegraded, Reason: "ReservationNotMet",
			Message: fmt.Sprintf("data root %s has %d bytes free, but its volumes may still write %d bytes they were promised (something else filled it?): volume writes may fail with no space left; free space on the data root", e.root, c.FreeBytes, c.ReservedBytes)})
	}
	return out
}
