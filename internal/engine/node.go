package engine

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
	mountutils "k8s.io/mount-utils"

	"github.com/cairn-csi/cairn/internal/faults"
	"github.com/cairn-csi/cairn/internal/loop"
	"github.com/cairn-csi/cairn/internal/model"
)

// StageVolume attaches the volume to a loop device and, for filesystem
// access, formats it on first use and mounts it at the staging path. A file
// system smaller than its (expanded) device is grown. Repeating a completed
// stage is a no-op.
func (e *Engine) StageVolume(ctx context.Context, req model.StageRequest) (err error) {
	unlock, err := e.locks.lock(ctx, req.VolumeID)
	if err != nil {
		return err
	}
	defer unlock()
	m, err := e.loadVolume(req.VolumeID)
	if err != nil {
		return err
	}
	if st := m.Stage; st != nil {
		if st.Path != req.StagingPath {
			return model.Errorf(model.ErrFailedPrecondition, "volume %s is already staged at %s", m.ID, st.Path)
		}
		if st.Block != req.Block {
			return model.Errorf(model.ErrAlreadyExists, "volume %s is already staged with a different access type", m.ID)
		}
		if st.State == stateStaged && (st.Block || e.isMounted(st.Path)) {
			if !slices.Equal(st.MountFlags, req.MountFlags) || st.ReadOnly != req.ReadOnly {
				return model.Errorf(model.ErrAlreadyExists, "volume %s is already staged at %s with different mount flags or read-only mode", m.ID, st.Path)
			}
			return nil
		}
	}
	if m.Block && !req.Block {
		// A raw block volume's data has no file system of ours: a mount
		// would make one over it.
		return model.Errorf(model.ErrFailedPrecondition, "volume %s is a raw block volume: it is staged only for block access (a file system would be made over its data)", m.ID)
	}
	fsType := req.FsType
	if fsType == "" {
		fsType = model.EffectiveFsType(false, m.FsType)
	}
	m.Stage = &StageInfo{Path: req.StagingPath, Block: req.Block, FsType: fsType, MountFlags: req.MountFlags, ReadOnly: req.ReadOnly, State: stateStaging}
	if err := e.saveVolume(m); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			if rbErr := e.rollbackStage(m); rbErr != nil {
				klog.ErrorS(rbErr, "Rolling back failed stage", "volumeID", m.ID)
			}
		}
	}()
	dev, err := e.attach(m.ID)
	if err != nil {
		return err
	}
	faults.Point("stage:after-attach")
	if !req.Block {
		if err := e.formatAndMount(m, dev, req, fsType); err != nil {
			return err
		}
	}
	m.Stage.State = stateStaged
	if err := e.saveVolume(m); err != nil {
		return err
	}
	// Also clears what a crash left on a reused loop device.
	if err := e.enforceLimits(m, nil); err != nil {
		klog.ErrorS(err, "Enforcing volume I/O limits failed; retried every few seconds", "volumeID", m.ID)
	}
	klog.InfoS("Volume staged", "volumeID", m.ID, "path", req.StagingPath, "device", dev, "block", req.Block)
	return nil
}

func (e *Engine) formatAndMount(m *VolumeMeta, dev string, req model.StageRequest, fsType string) error {
	if err := os.MkdirAll(req.StagingPath, 0o750); err != nil {
		return err
	}
	existing, err := e.mounter.GetDiskFormat(dev)
	if err != nil {
		return fmt.Errorf("detect file system on %s: %w", dev, err)
	}
	if existing != "" && existing != fsType {
		klog.InfoS("Volume already holds another file system; mounting it as it is", "volumeID", m.ID, "requested", fsType, "found", existing)
		fsType = existing
		m.Stage.FsType = existing
	}
	if existing != "" && strings.HasPrefix(existing, "ext") && !req.ReadOnly {
		if err := e.growExtOffline(dev); err != nil {
			return err
		}
	}
	opts := append([]string(nil), req.MountFlags...)
	if fsType == model.FsXFS && !slices.Contains(opts, "nouuid") {
		// Snapshots and clones carry their source's XFS UUID; without
		// nouuid the kernel refuses to mount them beside the source.
		opts = append(opts, "nouuid")
	}
	if req.ReadOnly {
		opts = append(opts, "ro")
	}
	if !e.isMounted(req.StagingPath) {
		if err := e.mounter.FormatAndMount(dev, req.StagingPath, fsType, opts); err != nil {
			return fmt.Errorf("format and mount %s on %s as %s: %w", dev, req.StagingPath, fsType, err)
		}
	}
	faults.Point("stage:after-mount")
	if fsType == model.FsXFS && !req.ReadOnly {
		if _, err := mountutils.NewResizeFs(e.exec).Resize(dev, req.StagingPath); err != nil {
			return fmt.Errorf("grow xfs on %s: %w", req.StagingPath, err)
		}
	}
	return nil
}

// growExtOffline grows an unmounted ext2/3/4 file system to its device's
// size if the device grew (offline expansion, restore into a larger
// volume): e2fsck -f, then resize2fs.
func (e *Engine) growExtOffline(dev string) error {
	fsBytes, err := e.extSize(dev)
	if err != nil {
		return err
	}
	devBytes, err := loop.Size(dev)
	if err != nil {
		return err
	}
	if devBytes <= fsBytes {
		return nil
	}
	out, err := e.exec.Command("e2fsck", "-f", "-p", dev).CombinedOutput()
	if err != nil {
		// Exit code 1 means "errors corrected", which is fine.
		var ee interface{ ExitStatus() int }
		if !errors.As(err, &ee) || ee.ExitStatus() > 1 {
			return fmt.Errorf("e2fsck %s before growing: %v: %s", dev, err, bytes.TrimSpace(out))
		}
	}
	if out, err := e.exec.Command("resize2fs", dev).CombinedOutput(); err != nil {
		return fmt.Errorf("resize2fs %s: %v: %s", dev, err, bytes.TrimSpace(out))
	}
	klog.InfoS("Grew ext file system offline", "device", dev, "from", fsBytes, "to", devBytes)
	return nil
}

// extSize reads an ext file system's size from its superblock.
func (e *Engine) extSize(dev string) (int64, error) {
	out, err := e.exec.Command("dumpe2fs", "-h", dev).Output()
	if err != nil {
		return 0, fmt.Errorf("dumpe2fs -h %s: %w", dev, err)
	}
	var count, bsize int64
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "Block count":
			count, _ = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		case "Block size":
			bsize, _ = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	if count == 0 || bsize == 0 {
		return 0, fmt.Errorf("dumpe2fs -h %s: no block count or size", dev)
	}
	return count * bsize, nil
}

// rollbackStage undoes a partial stage: unmount, detach, forget.
func (e *Engine) rollbackStage(m *VolumeMeta) error {
	e.clearRootLimits(m)
	if st := m.Stage; st != nil && !st.Block && e.isMounted(st.Path) {
		if err := e.mounter.Unmount(st.Path); err != nil {
			return err
		}
	}
	if err := e.detach(m.ID); err != nil {
		return err
	}
	m.Stage = nil
	return e.saveVolume(m)
}

// UnstageVolume unmounts the staging path and detaches the loop device.
// Unstaging a volume that is not staged (or does not exist) succeeds.
func (e *Engine) UnstageVolume(ctx context.Context, id, stagingPath string) error {
	unlock, err := e.locks.lock(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	m, err := e.loadVolume(id)
	if isNotFound(err) {
		return nil // nothing of an unknown volume is mounted anywhere
	}
	if err != nil {
		return err
	}
	if m.Stage == nil || m.Stage.Path != stagingPath {
		return nil
	}
	if len(m.Published) > 0 {
		return model.Errorf(model.ErrFailedPrecondition, "volume %s is still published at %s", id, m.Published[0].Target)
	}
	// The pods are gone; lift the root cgroup's limit first so that the
	// unmount's writeback is not throttled (cgroup v1 charges it there).
	// A failed unstage gets it back from the resync.
	e.clearRootLimits(m)
	if !m.Stage.Block {
		if err := e.unmountIfMounted(stagingPath); err != nil {
			return err
		}
	}
	faults.Point("unstage:after-unmount")
	if err := e.detach(id); err != nil {
		return err
	}
	m.Stage = nil
	if err := e.saveVolume(m); err != nil {
		return err
	}
	klog.InfoS("Volume unstaged", "volumeID", id, "path", stagingPath)
	return nil
}

// PublishVolume bind-mounts the staged file system (or the loop device, for
// block access) at the target path.
func (e *Engine) PublishVolume(ctx context.Context, req model.PublishRequest) error {
	unlock, err := e.locks.lock(ctx, req.VolumeID)
	if err != nil {
		return err
	}
	defer unlock()
	m, err := e.loadVolume(req.VolumeID)
	if err != nil {
		return err
	}
	st := m.Stage
	if st == nil || st.State != stateStaged {
		return model.Errorf(model.ErrFailedPrecondition, "volume %s is not staged", m.ID)
	}
	if st.Path != req.StagingPath {
		return model.Errorf(model.ErrFailedPrecondition, "volume %s is staged at %s, not %s", m.ID, st.Path, req.StagingPath)
	}
	if st.Block != req.Block {
		return model.Errorf(model.ErrFailedPrecondition, "volume %s is staged for %s access", m.ID, accessName(st.Block))
	}
	for i, p := range m.Published {
		if p.Target == req.TargetPath {
			if p.ReadOnly != req.ReadOnly || p.SingleWriter != req.SingleWriter {
				return model.Errorf(model.ErrAlreadyExists, "volume %s is already published at %s with different options", m.ID, p.Target)
			}
			if e.isMounted(p.Target) {
				return nil
			}
			m.Published = slices.Delete(m.Published, i, i+1)
			break
		}
		if p.SingleWriter || req.SingleWriter {
			return model.Errorf(model.ErrFailedPrecondition, "volume %s is published at %s with single-writer access; it cannot be published at a second target", m.ID, p.Target)
		}
	}
	// Record first: reconciliation drops records whose mount never happened.
	m.Published = append(m.Published, PublishInfo{Target: req.TargetPath, ReadOnly: req.ReadOnly, SingleWriter: req.SingleWriter, PodUID: req.PodUID})
	if err := e.saveVolume(m); err != nil {
		return err
	}
	opts := append([]string{"bind"}, req.MountFlags...)
	if req.ReadOnly {
		opts = append(opts, "ro")
	}
	var source string
	if req.Block {
		dev, err := e.attach(m.ID)
		if err != nil {
			return err
		}
		source = dev
		if err := os.MkdirAll(filepath.Dir(req.TargetPath), 0o750); err != nil {
			return err
		}
		f, err := os.OpenFile(req.TargetPath, os.O_CREATE|os.O_RDONLY, 0o640)
		if err != nil {
			return fmt.Errorf("create block target %s: %w", req.TargetPath, err)
		}
		f.Close()
	} else {
		source = st.Path
		if err := os.MkdirAll(req.TargetPath, 0o750); err != nil {
			return err
		}
	}
	if !e.isMounted(req.TargetPath) {
		if err := e.mounter.Mount(source, req.TargetPath, "", opts); err != nil {
			return fmt.Errorf("bind mount %s at %s: %w", source, req.TargetPath, err)
		}
	}
	if !m.IOLimits.Zero() {
		if err := e.enforceLimits(m, nil); err != nil {
			klog.ErrorS(err, "Enforcing volume I/O limits failed; retried every few seconds", "volumeID", m.ID)
		}
		e.limitsChanged(m.ID) // watch the pod's cgroup for its containers
	}
	klog.InfoS("Volume published", "volumeID", m.ID, "target", req.TargetPath, "readOnly", req.ReadOnly)
	return nil
}

// UnpublishVolume unmounts and removes the target path. Unpublishing a
// target that is not published succeeds and leaves the path alone.
func (e *Engine) UnpublishVolume(ctx context.Context, id, target string) error {
	unlock, err := e.locks.lock(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	m, err := e.loadVolume(id)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	// Only a recorded target is ours to unmount and remove (a publish
	// records its target before it creates or mounts anything).
	if !slices.ContainsFunc(m.Published, func(p PublishInfo) bool { return p.Target == target }) {
		return nil
	}
	if err := e.cleanupTarget(target); err != nil {
		return err
	}
	for _, p := range m.Published {
		if p.Target == target && p.PodUID != "" && !slices.ContainsFunc(m.Published, func(o PublishInfo) bool { return o.Target != target && o.PodUID == p.PodUID }) {
			e.clearPodLimits(m, p.PodUID)
		}
	}
	m.Published = slices.DeleteFunc(m.Published, func(p PublishInfo) bool { return p.Target == target })
	if err := e.saveVolume(m); err != nil {
		return err
	}
	klog.InfoS("Volume unpublished", "volumeID", id, "target", target)
	return nil
}

func (e *Engine) cleanupTarget(target string) error {
	if _, err := os.Lstat(target); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := e.unmountIfMounted(target); err != nil {
		return err
	}
	if err := os.Remove(target); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove target %s: %w", target, err)
	}
	return nil
}

// NodeExpandVolume makes a staged volume's device and file system use the
// size its file has grown to (online growth). It returns the new size.
func (e *Engine) NodeExpandVolume(ctx context.Context, id, volumePath string, required int64) (int64, error) {
	unlock, err := e.locks.lock(ctx, id)
	if err != nil {
		return 0, err
	}
	defer unlock()
	m, err := e.loadVolume(id)
	if err != nil {
		return 0, err
	}
	if required > m.SizeBytes {
		return 0, model.Errorf(model.ErrOutOfRange, "capacity_range: volume %s has %d bytes; expand it with ControllerExpandVolume before asking the node for %d", id, m.SizeBytes, required)
	}
	st := m.Stage
	if st == nil || st.State != stateStaged {
		return 0, model.Errorf(model.ErrFailedPrecondition, "volume %s is not staged on this node", id)
	}
	if !e.servesPath(m, volumePath) {
		return 0, model.Errorf(model.ErrNotFound, "volume %s is not available at %s", id, volumePath)
	}
	devs, err := loop.FindByBackingFile(e.volumeData(id))
	if err != nil {
		return 0, err
	}
	if len(devs) == 0 {
		return 0, model.Errorf(model.ErrFailedPrecondition, "volume %s has no loop device", id)
	}
	dev := devs[0].Path
	if err := loop.SetCapacity(dev); err != nil {
		return 0, err
	}
	if !st.Block && !st.ReadOnly {
		if _, err := mountutils.NewResizeFs(e.exec).Resize(dev, st.Path); err != nil {
			msg := err.Error()
			if st.FsType != model.FsXFS && strings.Contains(msg, "Permission denied") {
				msg += " (the kernel refused online ext4 growth; it needs CAP_SYS_RESOURCE. Unstage the volume and stage it again to grow offline)"
			}
			return 0, fmt.Errorf("grow %s file system of volume %s at %s: %s", st.FsType, id, st.Path, msg)
		}
	}
	size, err := loop.Size(dev)
	if err != nil {
		return 0, err
	}
	klog.InfoS("Volume expanded on node", "volumeID", id, "size", size)
	return size, nil
}

// servesPath reports whether path is where the volume is staged or
// published.
func (e *Engine) servesPath(m *VolumeMeta, path string) bool {
	clean := filepath.Clean(path)
	if m.Stage != nil && filepath.Clean(m.Stage.Path) == clean {
		return true
	}
	for _, p := range m.Published {
		if filepath.Clean(p.Target) == clean {
			return true
		}
	}
	return false
}

// VolumeStats reports usage of a volume at a staging or target path.
func (e *Engine) VolumeStats(ctx context.Context, id, path string) (*model.VolumeStats, error) {
	m, err := e.loadVolume(id)
	if err != nil {
		return nil, err
	}
	if !e.servesPath(m, path) {
		return nil, model.Errorf(model.ErrNotFound, "volume %s is not staged or published at %s", id, path)
	}
	if _, err := os.Stat(path); err != nil {
		return nil, model.Errorf(model.ErrNotFound, "volume path %s: %v", path, err)
	}
	s := &model.VolumeStats{Block: m.Stage != nil && m.Stage.Block}
	if s.Block {
		size, err := loop.Size(path)
		if err != nil {
			return nil, err
		}
		s.TotalBytes = size
		return s, nil
	}
	if !e.isMounted(path) {
		return s, nil // no usage to report (volume health is not reported yet)
	}
	var sf unix.Statfs_t
	if err := unix.Statfs(path, &sf); err != nil {
		return nil, fmt.Errorf("statfs %s: %w", path, err)
	}
	s.TotalBytes = int64(sf.Blocks) * sf.Bsize
	s.AvailableBytes = int64(sf.Bavail) * sf.Bsize
	s.UsedBytes = (int64(sf.Blocks) - int64(sf.Bfree)) * sf.Bsize
	s.TotalInodes = int64(sf.Files)
	s.FreeInodes = int64(sf.Ffree)
	s.UsedInodes = s.TotalInodes - s.FreeInodes
	return s, nil
}

// attach returns the volume's loop device, attaching one if needed.
func (e *Engine) attach(id string) (string, error) {
	data := e.volumeData(id)
	devs, err := loop.FindByBackingFile(data)
	if err != nil {
		return "", err
	}
	if len(devs) > 0 {
		return devs[0].Path, nil
	}
	d, err := loop.Attach(data, false, "cairn:"+id)
	if errors.Is(err, loop.ErrNoFreeDevice) {
		return "", model.Errorf(model.ErrResourceExhausted, "attach volume %s: the kernel has no free loop device (%v): unstage volumes on this node, or raise the kernel's loop device limit", id, err)
	}
	if err != nil {
		return "", fmt.Errorf("attach volume %s: %w", id, err)
	}
	return d.Path, nil
}

// detach releases every loop device of the volume.
func (e *Engine) detach(id string) error {
	devs, err := loop.FindByBackingFile(e.volumeData(id))
	if err != nil {
		return err
	}
	for _, d := range devs {
		if err := e.detachDevice(d); err != nil {
			return fmt.Errorf("detach volume %s: %w", id, err)
		}
	}
	return nil
}

// detachDevice detaches a loop device, first lifting any I/O limit on
// its number (the kernel gives the number to the next device attached).
func (e *Engine) detachDevice(d loop.Device) error {
	e.clearDeviceLimits(d)
	return loop.Detach(d.Path)
}

// isMounted reports whether something is mounted at path. When path
// cannot be stat'ed (a file system that shut down after an error answers
// EIO), the mount table decides, so such a mount is still unmounted.
func (e *Engine) isMounted(path string) bool {
	mounted, err := e.mounter.IsMountPoint(path)
	if err == nil || errors.Is(err, os.ErrNotExist) {
		return err == nil && mounted
	}
	mounts, merr := mountutils.ParseMountInfo("/proc/self/mountinfo")
	if merr != nil {
		return false
	}
	return slices.ContainsFunc(mounts, func(m mountutils.MountInfo) bool { return m.MountPoint == path })
}

func (e *Engine) unmountIfMounted(path string) error {
	for e.isMounted(path) {
		if err := e.mounter.Unmount(path); err != nil {
			return fmt.Errorf("unmount %s: %w", path, err)
		}
	}
	return nil
}

func accessName(block bool) string {
	if block {
		return "block"
	}
	return "filesystem"
}
