package engine

import (
	"context"
	"os"
	"path/filepath"

	"k8s.io/klog/v2"

	"github.com/cairn-csi/cairn/internal/fsops"
	"github.com/cairn-csi/cairn/internal/loop"
	"github.com/cairn-csi/cairn/internal/model"
)

// reconcile repairs what a crash may have left: half-built objects in tmp/
// and half-deleted ones in trash/ are removed, so are the members of group
// snapshots that were not committed, interrupted expansions are
// finished, interrupted stages are rolled back, frozen file systems are
// thawed, publish records without a mount are dropped, and loop devices
// backed by our files that no staged volume needs are detached.
func (e *Engine) reconcile(ctx context.Context) error {
	for _, d := range []string{tmpDir, trashDir} {
		entries, err := os.ReadDir(filepath.Join(e.root, d))
		if err != nil {
			return err
		}
		for _, ent := range entries {
			p := filepath.Join(e.root, d, ent.Name())
			klog.InfoS("Removing leftover of an interrupted operation", "path", p)
			if err := e.detachUnder(p); err != nil {
				return err
			}
			if err := os.RemoveAll(p); err != nil {
				return err
			}
		}
	}
	if err := e.reconcileGroups(); err != nil {
		return err
	}
	ids, err := e.listIDs(volumesDir, model.ValidVolumeID)
	if err != nil {
		return err
	}
	keep := map[string]bool{}
	for _, id := range ids {
		m, err := e.loadVolume(id)
		if err != nil {
			return err
		}
		if m.PendingSizeBytes > 0 {
			klog.InfoS("Finishing interrupted expansion", "volumeID", id, "size", m.PendingSizeBytes)
			if err := e.finishGrow(m); err != nil {
				return err
			}
		}
		if m.Stage != nil && m.Stage.State == stateStaging {
			klog.InfoS("Rolling back interrupted stage", "volumeID", id, "path", m.Stage.Path)
			if err := e.rollbackStage(m); err != nil {
				return err
			}
		}
		if st := m.Stage; st != nil {
			keep[e.volumeData(id)] = true
			if !st.Block && e.isMounted(st.Path) {
				if err := fsops.Thaw(st.Path); err != nil {
					klog.ErrorS(err, "Thawing staged file system", "volumeID", id)
				}
			}
		}
		n := len(m.Published)
		kept := m.Published[:0]
		for _, p := range m.Published {
			if e.isMounted(p.Target) {
				kept = append(kept, p)
			} else {
				klog.InfoS("Dropping publish record without a mount", "volumeID", id, "target", p.Target)
			}
		}
		m.Published = kept
		if len(kept) != n {
			if err := e.saveVolume(m); err != nil {
				return err
			}
		}
	}
	// The devices of the staged volumes, found as loop finds them (by
	// inode: after a restart in a new container the kernel's path of a
	// device attached by the old one is not under e.root any more).
	needed := map[string]bool{}
	for data := range keep {
		devs, err := loop.FindByBackingFile(data)
		if err != nil {
			return err
		}
		for _, d := range devs {
			needed[d.Path] = true
		}
	}
	devs, err := loop.FindUnder(e.root)
	if err != nil {
		return err
	}
	for _, d := range devs {
		if !needed[d.Path] {
			klog.InfoS("Detaching loop device no staged volume needs", "device", d.Path, "file", d.BackingFile)
			if err := e.detachDevice(d); err != nil {
				return err
			}
		}
	}
	return nil
}

// detachUnder detaches loop devices whose backing file is under dir.
func (e *Engine) detachUnder(dir string) error {
	devs, err := loop.FindUnder(dir)
	if err != nil {
		return err
	}
	for _, d := range devs {
		if err := e.detachDevice(d); err != nil {
			return err
		}
	}
	return nil
}
