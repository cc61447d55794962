package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"k8s.io/klog/v2"

	"github.com/cairn-csi/cairn/internal/iolimit"
	"github.com/cairn-csi/cairn/internal/loop"
	"github.com/cairn-csi/cairn/internal/model"
)

// limitsResync is how often the limits of staged volumes are checked
// again (a container's cgroup is also caught at once by a watch).
const limitsResync = 2 * time.Second

// ioLimiter enforces volumes' I/O limits (docs/IOLIMITS.md).
type ioLimiter struct {
	enf   *iolimit.Enforcer // nil: this node cannot limit I/O
	why   error             // why enf is nil
	kick  chan struct{}
	mu    sync.Mutex
	known map[string]bool // volumes whose limits the resync keeps
}

// openLimits finds the block cgroup controller (before reconcile, whose
// detaches must lift limits).
func (e *Engine) openLimits(cgroupRoot string) {
	l := &e.limits
	l.kick = make(chan struct{}, 1)
	l.known = map[string]bool{}
	switch {
	case cgroupRoot == "none":
		l.why = errors.New("I/O limits are turned off on this node (--cgroup-fs none)")
	default:
		if cgroupRoot == "" {
			cgroupRoot = "/sys/fs/cgroup"
		}
		l.enf, l.why = iolimit.New(cgroupRoot)
	}
	if l.enf == nil {
		klog.InfoS("Volume I/O limits unavailable on this node", "reason", l.why)
		return
	}
	klog.InfoS("Volume I/O limits enforced through the block cgroup controller", "cgroupVersion", l.enf.Version(), "root", cgroupRoot)
}

// startLimits starts the resync. Its first pass looks at every volume
// (limits recorded before a restart are put back, stale ones lifted) and
// every pass lifts limits left on loop devices no longer attached.
func (e *Engine) startLimits(ctx context.Context) {
	l := &e.limits
	if l.enf == nil {
		return
	}
	ids, _ := e.listIDs(volumesDir, model.ValidVolumeID)
	for _, id := range ids {
		l.known[id] = true
	}
	e.bk.wg.Add(1)
	go func() {
		defer e.bk.wg.Done()
		e.limitsLoop(ctx)
	}()
}

// canLimit refuses limits a node cannot enforce (an unknown parameter
// value would also be INVALID_ARGUMENT: the request cannot be carried
// out as asked).
func (e *Engine) canLimit(l model.IOLimits) error {
	if l.Zero() || e.limits.enf != nil {
		return nil
	}
	return model.Errorf(model.ErrInvalidArgument, "mutable_parameters: I/O limits (%s) cannot be enforced on this node: %v", l, e.limits.why)
}

// ModifyVolume sets a volume's I/O limits (ControllerModifyVolume) and,
// when it is staged, enforces them at once. The limits are recorded
// first: a failure to write them is retried by the resync.
func (e *Engine) ModifyVolume(ctx context.Context, id string, l model.IOLimits) (*model.Volume, error) {
	if err := e.canLimit(l); err != nil {
		return nil, err
	}
	unlock, err := e.locks.lock(ctx, id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	m, err := e.loadVolume(id)
	if err != nil {
		return nil, err
	}
	if m.IOLimits != l {
		m.IOLimits = l
		if err := e.saveVolume(m); err != nil {
			return nil, err
		}
		klog.InfoS("Volume I/O limits set", "volumeID", id, "limits", l.String())
	}
	if err := e.enforceLimits(m, nil); err != nil {
		return nil, err
	}
	return e.describe(m), nil
}

// enforceLimits writes m's limits (zero: none) for its loop devices into
// the root cgroup and the cgroups of the pods it is published to; loops
// is the list of attached devices (nil: read it). The caller holds m's
// lock. A volume stays in the resync until its limits are written.
func (e *Engine) enforceLimits(m *VolumeMeta, loops []loop.Device) error {
	l := &e.limits
	if l.enf == nil {
		return nil
	}
	err := e.writeLimits(m, loops)
	l.mu.Lock()
	if m.IOLimits.Zero() && err == nil {
		delete(l.known, m.ID)
	} else {
		l.known[m.ID] = true
	}
	l.mu.Unlock()
	return err
}

func (e *Engine) writeLimits(m *VolumeMeta, loops []loop.Device) error {
	if m.Stage == nil {
		return nil
	}
	if loops == nil {
		var err error
		if loops, err = loop.List(); err != nil {
			return err
		}
	}
	var errs []error
	for _, d := range loop.Match(loops, e.volumeData(m.ID)) {
		dev, err := iolimit.DeviceOf(d.Path)
		if err == nil {
			err = e.limits.enf.Apply(dev, m.IOLimits, e.podsOf(m))
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// clearRootLimits lifts m's limits from the root cgroup (unstage: the
// pods are gone). The caller holds m's lock.
func (e *Engine) clearRootLimits(m *VolumeMeta) {
	if e.limits.enf == nil {
		return
	}
	devs, _ := loop.FindByBackingFile(e.volumeData(m.ID))
	for _, d := range devs {
		e.clearDeviceLimits(d)
	}
}

// clearDeviceLimits lifts any limit on d's number in the root cgroup.
func (e *Engine) clearDeviceLimits(d loop.Device) {
	if e.limits.enf == nil {
		return
	}
	dev, err := iolimit.DeviceOf(d.Path)
	if err == nil {
		err = e.limits.enf.ClearRoot(dev)
	}
	if err != nil {
		klog.ErrorS(err, "Lifting I/O limits from a loop device failed; the resync lifts them once it is detached", "device", d.Path)
	}
}

// clearPodLimits lifts m's limits from one pod's cgroups (it stopped
// using the volume). The caller holds m's lock.
func (e *Engine) clearPodLimits(m *VolumeMeta, pod string) {
	if e.limits.enf == nil {
		return
	}
	devs, _ := loop.FindByBackingFile(e.volumeData(m.ID))
	for _, d := range devs {
		dev, err := iolimit.DeviceOf(d.Path)
		if err == nil {
			err = e.limits.enf.ApplyPods(dev, model.IOLimits{}, []string{pod})
		}
		if err != nil {
			klog.ErrorS(err, "Lifting I/O limits from a pod's cgroups failed", "volumeID", m.ID, "pod", pod)
		}
	}
	e.limits.enf.Forget(pod)
}

func (e *Engine) podsOf(m *VolumeMeta) []string {
	var pods []string
	for _, p := range m.Published {
		if p.PodUID != "" {
			pods = append(pods, p.PodUID)
		}
	}
	return pods
}

// limitsChanged asks the resync to look at a volume soon (a publish
// brought a new pod).
func (e *Engine) limitsChanged(id string) {
	l := &e.limits
	if l.enf == nil {
		return
	}
	l.mu.Lock()
	l.known[id] = true
	l.mu.Unlock()
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

// limitsLoop keeps limits in place: every limitsResync, at once when a
// cgroup appears under a watched pod (a container started after the
// publish), and when kicked.
func (e *Engine) limitsLoop(ctx context.Context) {
	var w *fsnotify.Watcher
	if e.limits.enf.Version() == 1 { // v2's io.max holds for a pod's children
		var err error
		if w, err = fsnotify.NewWatcher(); err != nil {
			klog.ErrorS(err, "Watching pods' cgroups failed; limits are checked every resync only")
		}
	}
	var events chan fsnotify.Event
	var werrs chan error
	watched := map[string]bool{}
	if w != nil {
		defer w.Close()
		events, werrs = w.Events, w.Errors
	}
	t := time.NewTicker(limitsResync)
	defer t.Stop()
	for {
		dirs := e.resyncLimits(ctx)
		if w != nil {
			for d := range watched {
				if !slices.Contains(dirs, d) {
					_ = w.Remove(d)
					delete(watched, d)
				}
			}
			for _, d := range dirs {
				if !watched[d] && w.Add(d) == nil {
					watched[d] = true
				}
			}
		}
	wait:
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-e.limits.kick:
		case ev := <-events:
			if !ev.Has(fsnotify.Create) {
				goto wait // only a new cgroup (a container) needs a pass
			}
		case err := <-werrs:
			klog.ErrorS(err, "Watching pods' cgroups") // the ticker still resyncs
		}
	}
}

// resyncLimits enforces the limits of every volume it knows of, lifts
// limits left on loop devices that are no longer attached, and returns
// the pods' cgroup directories to watch.
func (e *Engine) resyncLimits(ctx context.Context) []string {
	l := &e.limits
	loops, err := loop.List()
	if err != nil {
		klog.ErrorS(err, "Listing loop devices for I/O limits failed")
		return nil
	}
	e.liftDetached(loops)
	l.mu.Lock()
	ids := make([]string, 0, len(l.known))
	for id := range l.known {
		ids = append(ids, id)
	}
	l.mu.Unlock()
	var dirs []string
	for _, id := range ids {
		// A long operation on the volume (a clone, a freeze) holds its
		// lock: look again at the next pass rather than stall the others.
		lctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		unlock, err := e.locks.lock(lctx, id)
		cancel()
		if ctx.Err() != nil {
			return dirs
		}
		if err != nil {
			continue
		}
		m, err := e.loadVolume(id)
		switch {
		case err != nil:
			l.mu.Lock()
			delete(l.known, id)
			l.mu.Unlock()
		default:
			if err := e.enforceLimits(m, loops); err != nil {
				klog.ErrorS(err, "Enforcing volume I/O limits failed", "volumeID", id)
			}
			if !m.IOLimits.Zero() && m.Stage != nil {
				dirs = append(dirs, l.enf.Dirs(e.podsOf(m))...)
			}
		}
		unlock()
	}
	return dirs
}

// liftDetached lifts root-cgroup limits from loop device numbers with no
// device attached (a detach whose lift failed, or a crash between them):
// the next device attached under that number is not throttled.
func (e *Engine) liftDetached(loops []loop.Device) {
	rules, err := e.limits.enf.RootDevices(loopMajor)
	if err != nil {
		return
	}
	attached := map[iolimit.Device]bool{}
	for _, d := range loops {
		if dev, err := iolimit.DeviceOf(d.Path); err == nil {
			attached[dev] = true
		}
	}
	for _, dev := range rules {
		if !attached[dev] {
			if err := e.limits.enf.ClearRoot(dev); err != nil {
				klog.ErrorS(err, "Lifting I/O limits from a detached loop device failed", "device", dev.String())
			}
		}
	}
}

// loopMajor is the loop driver's block major number.
const loopMajor = 7

// IOLimitsSupport says how this node enforces I/O limits ("cgroup-v1",
// "cgroup-v2") or, prefixed "unsupported: ", why it cannot.
func (e *Engine) IOLimitsSupport() string {
	if e.limits.enf == nil {
		return "unsupported: " + fmt.Sprint(e.limits.why)
	}
	return fmt.Sprintf("cgroup-v%d", e.limits.enf.Version())
}
