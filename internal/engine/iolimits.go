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

func (e *Engine) startLimits(ctx context.Context, cgroupRoot string) {
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
	// The first pass looks at every volume: limits recorded before a
	// restart, and devices to clear.
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
	if err := e.enforceLimits(m); err != nil {
		return nil, err
	}
	return e.describe(m), nil
}

// enforceLimits writes m's limits (zero: none) for its loop devices into
// the root cgroup and the cgroups of the pods it is published to. The
// caller holds m's lock.
func (e *Engine) enforceLimits(m *VolumeMeta) error {
	l := &e.limits
	if l.enf == nil {
		return nil
	}
	l.mu.Lock()
	if m.IOLimits.Zero() {
		delete(l.known, m.ID) // written once below; nothing to keep
	} else {
		l.known[m.ID] = true
	}
	l.mu.Unlock()
	if m.Stage == nil {
		return nil
	}
	devs, err := loop.FindByBackingFile(e.volumeData(m.ID))
	if err != nil {
		return err
	}
	var errs []error
	for _, d := range devs {
		dev, err := iolimit.DeviceOf(d.Path)
		if err == nil {
			err = l.enf.Apply(dev, m.IOLimits, e.podsOf(m))
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// clearLimits removes m's limits from its devices before they are
// detached (a loop device is reused by the next volume attached) or from
// one pod's cgroups when the pod stops using it. The caller holds m's lock.
func (e *Engine) clearLimits(m *VolumeMeta, pods ...string) {
	if e.limits.enf == nil || m.IOLimits.Zero() {
		return
	}
	devs, _ := loop.FindByBackingFile(e.volumeData(m.ID))
	for _, d := range devs {
		dev, err := iolimit.DeviceOf(d.Path)
		if err == nil {
			if len(pods) > 0 {
				err = e.limits.enf.ApplyPods(dev, model.IOLimits{}, pods)
			} else {
				err = e.limits.enf.Apply(dev, model.IOLimits{}, e.podsOf(m))
			}
		}
		if err != nil {
			klog.ErrorS(err, "Clearing volume I/O limits failed", "volumeID", m.ID, "device", d.Path)
		}
	}
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
	w, err := fsnotify.NewWatcher()
	if err != nil {
		klog.ErrorS(err, "Watching pods' cgroups failed; limits are checked every resync only")
	}
	var events chan fsnotify.Event
	watched := map[string]bool{}
	if w != nil {
		defer w.Close()
		events = w.Events
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
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-e.limits.kick:
		case <-events:
		}
	}
}

// resyncLimits enforces the limits of every volume it knows of and
// returns the pods' cgroup directories to watch.
func (e *Engine) resyncLimits(ctx context.Context) []string {
	l := &e.limits
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
			if err := e.enforceLimits(m); err != nil {
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

// IOLimitsSupport says how this node enforces I/O limits ("cgroup-v1",
// "cgroup-v2") or, prefixed "unsupported: ", why it cannot.
func (e *Engine) IOLimitsSupport() string {
	if e.limits.enf == nil {
		return "unsupported: " + fmt.Sprint(e.limits.why)
	}
	return fmt.Sprintf("cgroup-v%d", e.limits.enf.Version())
}
