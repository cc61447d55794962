// Package engine is Cairn's node-local storage engine. Volumes are sparse
// files under a data root; snapshots and clones are reflinks of them (or
// sparse copies where the file system cannot reflink); block access goes
// through loop devices; file systems are formatted on first stage. All
// metadata changes are crash-safe (write-temp, fsync, rename, fsync dir)
// and Open reconciles whatever a kill -9 left half done. Calls on one ID are
// serialised; calls on different IDs run in parallel.
package engine

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
	"k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"

	"github.com/cairn-csi/cairn/internal/backup"
	"github.com/cairn-csi/cairn/internal/faults"
	"github.com/cairn-csi/cairn/internal/fsops"
	"github.com/cairn-csi/cairn/internal/model"
	"github.com/cairn-csi/cairn/internal/objstore"
)

// Config configures an Engine.
type Config struct {
	// DataRoot is the directory holding all volumes and snapshots.
	DataRoot string
	// FreezeTimeout bounds how long a mounted file system stays frozen
	// while it is snapshotted or cloned. Zero means 10s.
	FreezeTimeout time.Duration
	// ForceCopy disables reflinks even where the file system has them
	// (tests and benchmarks of the fallback).
	ForceCopy bool
	// BackupTargets are the object stores backups can go to, by name.
	BackupTargets map[string]objstore.Store
	// BackupKeys are the master keys of encrypted targets, by name
	// (docs/FORMAT.md, "Encrypted stores"); a target without one is plain.
	BackupKeys map[string][]byte
	// CgroupRoot is where the host's cgroup file systems are mounted, for
	// volumes' I/O limits (--cgroup-fs; "" = /sys/fs/cgroup; "none": no
	// limits can be set on this node).
	CgroupRoot string
}

// Engine is the storage engine over one data root.
type Engine struct {
	root          string
	reflink       bool
	freezeTimeout time.Duration
	locks         *keyLocks
	capMu         sync.Mutex // serialises capacity check + allocation
	mounter       *mount.SafeFormatAndMount
	exec          utilexec.Interface
	trashSeq      atomic.Int64
	bk            backups
	health        healthCache
	limits        ioLimiter
}

// Open prepares the data root (creating the layout on first use), detects
// reflink support and reconciles state left by a crash.
func Open(ctx context.Context, cfg Config) (*Engine, error) {
	if cfg.DataRoot == "" {
		return nil, errors.New("data root not set")
	}
	root, err := filepath.Abs(cfg.DataRoot)
	if err != nil {
		return nil, err
	}
	if root, err = filepath.EvalSymlinks(root); err != nil {
		return nil, fmt.Errorf("data root %s: %w", cfg.DataRoot, err)
	}
	ex := utilexec.New()
	e := &Engine{
		root:          root,
		freezeTimeout: cfg.FreezeTimeout,
		locks:         newKeyLocks(),
		exec:          ex,
		mounter:       &mount.SafeFormatAndMount{Interface: mount.New(""), Exec: ex},
	}
	for name := range cfg.BackupTargets {
		if !model.ValidTargetName(name) {
			return nil, fmt.Errorf("backup target name %q: use lower-case letters, digits and '-'", name)
		}
	}
	targets := maps.Clone(cfg.BackupTargets)
	if targets == nil {
		targets = map[string]objstore.Store{}
	}
	keys := map[string][]byte{}
	for name, k := range cfg.BackupKeys {
		if _, ok := targets[name]; !ok {
			return nil, fmt.Errorf("a key for backup target %q, which is not configured", name)
		}
		if err := backup.CheckMasterKey(k); err != nil {
			return nil, fmt.Errorf("backup target %q: %w", name, err)
		}
		keys[name] = k
	}
	bg, stop := context.WithCancel(context.Background())
	e.bk = backups{targets: targets, keys: keys, repos: map[string]*backup.Repo{}, runs: map[string]*jobRun{}, restore: map[string]*restoreRun{}, bg: bg, stop: stop}
	if e.freezeTimeout <= 0 {
		e.freezeTimeout = 10 * time.Second
	}
	if err := e.initLayout(); err != nil {
		return nil, err
	}
	if !cfg.ForceCopy {
		if e.reflink, err = fsops.ProbeReflink(filepath.Join(root, tmpDir)); err != nil {
			return nil, fmt.Errorf("probe reflink support on %s: %w", root, err)
		}
	}
	klog.InfoS("Data root opened", "root", root, "cloneMode", e.CloneMode())
	// Before reconcile: the loop devices it detaches lose their limits.
	e.openLimits(cfg.CgroupRoot)
	if err := e.reconcile(ctx); err != nil {
		return nil, fmt.Errorf("reconcile %s: %w", root, err)
	}
	e.resumeBackups()
	e.startLimits(bg)
	return e, nil
}

func (e *Engine) initLayout() error {
	metaPath := filepath.Join(e.root, rootMetaFile)
	var rm rootMeta
	err := readJSON(metaPath, &rm)
	switch {
	case errors.Is(err, os.ErrNotExist):
		rm = rootMeta{FormatVersion: FormatVersion, CreatedAt: time.Now().UTC()}
	case err != nil:
		return err
	case rm.FormatVersion > FormatVersion:
		return fmt.Errorf("data root %s has format version %d; this driver knows up to %d", e.root, rm.FormatVersion, FormatVersion)
	}
	for _, d := range layoutDirs {
		if err := os.MkdirAll(filepath.Join(e.root, d), 0o700); err != nil {
			return err
		}
	}
	if errors.Is(err, os.ErrNotExist) {
		// Written last: a root with cairn.json has its full layout.
		return writeJSON(metaPath, &rm)
	}
	return nil
}

// Root returns the absolute data root.
func (e *Engine) Root() string { return e.root }

// layoutDirs are the directories the engine keeps under the data root.
var layoutDirs = []string{volumesDir, snapshotsDir, groupsDir, backupsDir, standbyDir, tmpDir, trashDir}

// OwnsPath reports whether the absolute, clean path p is the data root or
// inside what the engine keeps there (its metadata file and layoutDirs):
// no staging or target path may be there.
func (e *Engine) OwnsPath(p string) bool {
	if p == e.root {
		return true
	}
	rel, ok := strings.CutPrefix(p, strings.TrimSuffix(e.root, "/")+"/")
	if !ok {
		return false
	}
	first, _, _ := strings.Cut(rel, "/")
	return first == rootMetaFile || slices.Contains(layoutDirs, first)
}

// CloneMode reports whether snapshots and clones are reflinks or copies.
func (e *Engine) CloneMode() model.CloneMode {
	if e.reflink {
		return model.CloneReflink
	}
	return model.CloneCopy
}

// Health checks that the data root is present and writable.
func (e *Engine) Health() error {
	if _, err := os.Stat(filepath.Join(e.root, rootMetaFile)); err != nil {
		return fmt.Errorf("data root %s is not initialised or not mounted (%s missing): %w", e.root, rootMetaFile, err)
	}
	probe := filepath.Join(e.root, tmpDir, ".health-"+strconv.Itoa(os.Getpid()))
	f, err := os.OpenFile(probe, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("data root %s not writable: %w", e.root, err)
	}
	_, werr := f.WriteString("ok\n")
	serr := f.Sync()
	f.Close()
	os.Remove(probe)
	if werr != nil || serr != nil {
		return fmt.Errorf("data root %s not writable: %v", e.root, errors.Join(werr, serr))
	}
	return nil
}

// Capacity is the data root's space as the engine accounts for it.
type Capacity struct {
	// TotalBytes is the size of the data root's file system.
	TotalBytes int64
	// FreeBytes is what the file system reports free.
	FreeBytes int64
	// ReservedBytes is what existing volumes (and standby copies) may
	// still allocate: the sum of their sizes minus what they already
	// occupy (thin provisioning made honest: a new volume never eats space
	// promised to an old one).
	ReservedBytes int64
	// AvailableBytes is FreeBytes - ReservedBytes, never negative: the
	// largest volume that can be created now.
	AvailableBytes int64
}

// Capacity reports the data root's capacity.
func (e *Engine) Capacity() (Capacity, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(e.root, &st); err != nil {
		return Capacity{}, fmt.Errorf("statfs %s: %w", e.root, err)
	}
	c := Capacity{
		TotalBytes: int64(st.Blocks) * st.Bsize,
		FreeBytes:  int64(st.Bavail) * st.Bsize,
	}
	ids, err := e.listIDs(volumesDir, model.ValidVolumeID)
	if err != nil {
		return c, err
	}
	for _, id := range ids {
		m, err := e.loadVolume(id)
		if err != nil {
			continue // deleted meanwhile
		}
		alloc, err := fsops.AllocatedBytes(e.volumeData(id))
		if err != nil {
			continue
		}
		size := max(m.SizeBytes, m.PendingSizeBytes)
		if size > alloc {
			c.ReservedBytes += size - alloc
		}
	}
	c.ReservedBytes += e.standbyReserved()
	c.AvailableBytes = max(0, c.FreeBytes-c.ReservedBytes)
	return c, nil
}

// commitNew builds a new object directory in tmp/ with build and renames it
// into place, so the object appears whole or not at all. Leftovers in tmp/
// are removed at start-up.
func (e *Engine) commitNew(ctx context.Context, kindDir, id string, build func(dir string) error) error {
	tmp := filepath.Join(e.root, tmpDir, kindDir+"-"+id)
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return err
	}
	if err := build(tmp); err != nil {
		os.RemoveAll(tmp)
		return err
	}
	if err := fsops.SyncDir(tmp); err != nil {
		os.RemoveAll(tmp)
		return err
	}
	faults.Point(kindDir + ":before-commit")
	if err := fsops.RenameDurable(tmp, filepath.Join(e.root, kindDir, id)); err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("commit %s %s: %w", kindDir, id, err)
	}
	return nil
}

// removeObject moves a committed object directory to trash/ (atomic: the
// object is gone at once) and then deletes it. Leftovers in trash/ are
// removed at start-up.
func (e *Engine) removeObject(kindDir, id string) error {
	dst := filepath.Join(e.root, trashDir, fmt.Sprintf("%s-%s-%d-%d", kindDir, id, time.Now().UnixNano(), e.trashSeq.Add(1)))
	if err := fsops.RenameDurable(filepath.Join(e.root, kindDir, id), dst); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	faults.Point(kindDir + ":after-trash")
	return os.RemoveAll(dst)
}

// copyData makes dst an independent copy of src: a reflink when the data
// root supports it, otherwise a sparse copy.
func (e *Engine) copyData(ctx context.Context, src, dst string) error {
	if e.reflink {
		return fsops.Reflink(src, dst)
	}
	return fsops.SparseCopy(ctx, src, dst)
}

// copyConsistent copies a volume's data to dst so that the copy is
// crash-consistent even while the volume is mounted: a staged file system
// is frozen for the copy (bounded by FreezeTimeout, thawed on every path),
// a staged block device is flushed first.
func (e *Engine) copyConsistent(ctx context.Context, vol *VolumeMeta, dst string) error {
	_, err := e.copyConsistentSet(ctx, []*VolumeMeta{vol}, []string{dst})
	return err
}

// copyConsistentSet copies each of vols to the dst of the same index at
// one point in time: staged block devices are flushed, then every staged
// and mounted file system is frozen, all are copied, and all are thawed —
// one freeze window for the set, bounded by FreezeTimeout as a whole (at
// the bound everything is thawed and the copies are discarded) and thawed
// on every path. It returns how long the file systems were frozen.
func (e *Engine) copyConsistentSet(ctx context.Context, vols []*VolumeMeta, dsts []string) (time.Duration, error) {
	var freeze []*VolumeMeta
	for _, vol := range vols {
		st := vol.Stage
		if st == nil || st.State != stateStaged {
			continue
		}
		// A staging path that is no longer a mount point must not be
		// frozen: FIFREEZE would freeze whatever file system holds the
		// directory (the host's, or the data root, deadlocking the copy
		// until the timeout).
		if st.Block || st.ReadOnly || !e.isMounted(st.Path) {
			if err := e.flushLoop(vol.ID); err != nil {
				return 0, err
			}
			continue
		}
		freeze = append(freeze, vol)
	}
	copyAll := func(ctx context.Context) error {
		for i, vol := range vols {
			if err := e.copyData(ctx, e.volumeData(vol.ID), dsts[i]); err != nil {
				return err
			}
		}
		return nil
	}
	if len(freeze) == 0 {
		return 0, copyAll(ctx)
	}

	start := time.Now()
	var (
		mu       sync.Mutex // orders freezes against the thaw
		thawed   bool
		frozen   []string
		thawErr  error
		timedOut atomic.Bool
	)
	thaw := func() {
		mu.Lock()
		defer mu.Unlock()
		if thawed {
			return
		}
		thawed = true
		for _, p := range frozen {
			if err := fsops.Thaw(p); err != nil && thawErr == nil {
				thawErr = fmt.Errorf("thaw %s: %w", p, err)
			}
		}
	}
	defer thaw()
	fctx, cancel := context.WithTimeout(ctx, e.freezeTimeout)
	defer cancel()
	go func() {
		<-fctx.Done()
		if errors.Is(fctx.Err(), context.DeadlineExceeded) {
			timedOut.Store(true)
		}
		thaw() // bounded freeze: thaw at the deadline even if a copy hangs
	}()
	for _, vol := range freeze {
		mu.Lock()
		var err error
		if !thawed {
			if err = fsops.Freeze(vol.Stage.Path); err == nil {
				frozen = append(frozen, vol.Stage.Path)
			}
		}
		mu.Unlock()
		if err != nil {
			return 0, fmt.Errorf("freeze %s before copying volume %s: %w", vol.Stage.Path, vol.ID, err)
		}
	}
	faults.Point("freeze:frozen")
	err := copyAll(fctx)
	thaw()
	window := time.Since(start)
	klog.V(4).InfoS("Copied frozen volumes", "volumes", len(vols), "frozen", len(frozen), "frozenFor", window)
	if timedOut.Load() {
		for _, d := range dsts {
			os.Remove(d)
		}
		ids := make([]string, len(vols))
		for i, v := range vols {
			ids[i] = v.ID
		}
		return window, model.Errorf(model.ErrUnavailable, "copy of mounted volume(s) %s took longer than the freeze bound %s; file systems thawed, copies discarded", strings.Join(ids, ", "), e.freezeTimeout)
	}
	if err != nil {
		return window, err
	}
	return window, thawErr
}

// allocate checks that size bytes fit into the data root's available
// capacity and then runs fill, which must create the data file, while no
// other allocation runs.
func (e *Engine) allocate(size int64, fill func() error) error {
	e.capMu.Lock()
	defer e.capMu.Unlock()
	c, err := e.Capacity()
	if err != nil {
		return err
	}
	if size > c.AvailableBytes {
		return model.Errorf(model.ErrResourceExhausted, "not enough space on data root: %d bytes requested, %d available (%d free, %d reserved by existing volumes)", size, c.AvailableBytes, c.FreeBytes, c.ReservedBytes)
	}
	return fill()
}
