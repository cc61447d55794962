package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/cairn-csi/cairn/internal/backup"
	"github.com/cairn-csi/cairn/internal/fsops"
	"github.com/cairn-csi/cairn/internal/model"
)

// Standby copies on the data root (docs/FORMAT.md, "Standby volumes";
// docs/STANDBY.md): standby/<id>/data.img follows a volume's backups in a
// target until it is activated into a volume.
const (
	standbyDir     = "standby"
	activatingFile = "activating.json"
)

// activating is standby/<id>/activating.json, written before activation
// links the image into a volume: from then on no step writes the image.
type activating struct {
	FormatVersion int    `json:"formatVersion"`
	VolumeID      string `json:"volumeId"`
}

func (e *Engine) standbyPath(id string) string { return filepath.Join(e.root, standbyDir, id) }

func standbyKey(id string) string { return standbyDir + "/" + id }

func (e *Engine) standby(id, volumeID string, repo *backup.Repo) *backup.Standby {
	return &backup.Standby{Repo: repo, VolumeID: volumeID, File: filepath.Join(e.standbyPath(id), dataFile)}
}

func checkStandbyID(id string) error {
	if !model.ValidStandbyID(id) {
		return model.Errorf(model.ErrInvalidArgument, "standby %q: not a standby ID (sb- and a UID)", id)
	}
	return nil
}

// StandbyStep brings standby copy id up to the newest committed backup of
// volumeID in target: the first step restores it in full, later ones
// download only the changed blocks. It refuses a copy whose activation
// has begun.
func (e *Engine) StandbyStep(ctx context.Context, id, target, volumeID string) (backup.StandbyReport, error) {
	var rep backup.StandbyReport
	if err := checkStandbyID(id); err != nil {
		return rep, err
	}
	if !model.ValidStoreVolumeID(volumeID) {
		return rep, model.Errorf(model.ErrInvalidArgument, "sourceVolumeID %q is not a volume ID", volumeID)
	}
	unlock, err := e.locks.lock(ctx, standbyKey(id))
	if err != nil {
		return rep, err
	}
	defer unlock()
	if a, err := e.activation(id); err != nil || a != nil {
		if err == nil {
			err = model.Errorf(model.ErrFailedPrecondition, "standby %s is being activated into volume %s: it is not written again", id, a.VolumeID)
		}
		return rep, err
	}
	repo, err := e.repo(ctx, target)
	if err != nil {
		return rep, err
	}
	dir := e.standbyPath(id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return rep, err
	}
	s := e.standby(id, volumeID, repo)
	s.Reserve = func(size int64) error {
		// What the copy already counts (its apparent size) is reserved.
		if need := size - apparentSize(s.File); need > 0 {
			return e.allocate(need, func() error { return nil })
		}
		return nil
	}
	if fi, err := os.Stat(s.File); err == nil {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 {
			return rep, model.Errorf(model.ErrFailedPrecondition, "standby %s: its image has %d links (a volume shares it): it is not written", id, st.Nlink)
		}
	}
	rep, err = s.Step(ctx)
	if errors.Is(err, backup.ErrCorrupt) {
		err = model.Errorf(model.ErrFailedPrecondition, "standby %s: %v", id, err)
	}
	return rep, err
}

// StandbyHeld is what copy id holds now (nil: nothing yet), from its
// state file: no store is read.
func (e *Engine) StandbyHeld(id, volumeID string) (*backup.StandbyState, error) {
	if err := checkStandbyID(id); err != nil {
		return nil, err
	}
	return e.standby(id, volumeID, nil).State()
}

func (e *Engine) activation(id string) (*activating, error) {
	var a activating
	err := readJSON(filepath.Join(e.standbyPath(id), activatingFile), &a)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &a, nil
}

// ActivateStandby turns standby copy id, which follows volumeID's backups
// in target, into the volume req names, without copying: the image
// becomes the volume's data file by a hard link (docs/FORMAT.md lists
// the commit order). The volume is grown to req.RequiredBytes if the
// backup is smaller. Repeating it after a crash, or after it succeeded,
// returns the volume.
func (e *Engine) ActivateStandby(ctx context.Context, id, target, volumeID string, req model.CreateVolumeRequest) (*model.Volume, error) {
	if err := checkStandbyID(id); err != nil {
		return nil, err
	}
	if req.Name == "" {
		return nil, model.Errorf(model.ErrInvalidArgument, "name is required")
	}
	vid := model.VolumeIDForName(req.Name)
	unlock, err := e.locks.lock(ctx, standbyKey(id), vid)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if existing, err := e.loadVolume(vid); err == nil {
		// Done before (step 2 committed): finish step 3.
		if err := e.removeStandby(id); err != nil {
			return nil, err
		}
		return e.describe(existing), nil
	} else if !isNotFound(err) {
		return nil, err
	}
	st, err := e.standby(id, volumeID, nil).State()
	if err != nil {
		return nil, err
	}
	if st == nil || st.BackupID == "" || st.Applying != "" {
		return nil, model.Errorf(model.ErrFailedPrecondition, "standby %s holds no complete backup yet: nothing to activate", id)
	}
	if st.Block && !req.Block {
		return nil, model.Errorf(model.ErrFailedPrecondition, "standby %s holds a raw block volume: it activates only as a block volume (a file system would be made over its data)", id)
	}
	if a, err := e.activation(id); err != nil {
		return nil, err
	} else if a != nil && a.VolumeID != vid {
		return nil, model.Errorf(model.ErrFailedPrecondition, "standby %s is being activated into volume %s, not %s", id, a.VolumeID, vid)
	}
	fsType := st.FsType
	if req.Block {
		fsType = ""
	}
	size, err := model.PickSize(max(req.RequiredBytes, st.SizeBytes), req.LimitBytes, fsType)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	img := filepath.Join(e.standbyPath(id), dataFile)
	// The space check comes before the marker: a standby that cannot
	// become this volume keeps following.
	need := size - apparentSize(img)
	err = e.allocate(max(0, need), func() error {
		return writeJSON(filepath.Join(e.standbyPath(id), activatingFile), &activating{FormatVersion: 1, VolumeID: vid})
	})
	if err != nil {
		return nil, err
	}
	h := model.BackupHandle{Target: target, VolumeID: volumeID, BackupID: st.BackupID}
	meta := &VolumeMeta{
		FormatVersion: FormatVersion, ID: vid, Name: req.Name, SizeBytes: size, Block: req.Block, FsType: fsType,
		Source: &model.Source{Kind: model.SourceBackup, ID: h.String()}, Parameters: req.Parameters, IOLimits: req.IOLimits,
		CreatedAt: time.Now().UTC(),
	}
	err = e.commitNew(ctx, volumesDir, vid, func(dir string) error {
		data := filepath.Join(dir, dataFile)
		if err := os.Link(img, data); err != nil {
			return err
		}
		if apparentSize(data) < size {
			if err := os.Truncate(data, size); err != nil {
				return err
			}
		}
		return writeJSON(filepath.Join(dir, volumeMeta), meta)
	})
	if err != nil {
		return nil, fmt.Errorf("activate standby %s into volume %s: %w", id, vid, err)
	}
	if err := e.removeStandby(id); err != nil {
		klog.ErrorS(err, "Standby activated; its directory is removed at the next activation call", "standby", id)
	}
	klog.InfoS("Standby activated", "standby", id, "volumeID", vid, "backup", h.String(), "size", size, "duration", time.Since(start))
	return e.describe(meta), nil
}

// DeleteStandby removes copy id when it is only a cache of its target:
// it holds no complete backup, or the target still holds the one it
// holds (its manifest reads and validates). Otherwise, unless force, it
// keeps the copy (it may be the last one left) and returns why. An
// activated copy's directory holds only extra links to the volume's data:
// removing them leaves the volume whole.
func (e *Engine) DeleteStandby(ctx context.Context, id, target, volumeID string, force bool) (kept string, err error) {
	if err := checkStandbyID(id); err != nil {
		return "", err
	}
	unlock, err := e.locks.lock(ctx, standbyKey(id))
	if err != nil {
		return "", err
	}
	defer unlock()
	if _, err := os.Stat(e.standbyPath(id)); os.IsNotExist(err) {
		return "", nil
	}
	if !force {
		if why := e.standbyOnlyCopy(ctx, id, target, volumeID); why != "" {
			return why, nil
		}
	}
	return "", e.removeStandby(id)
}

// standbyOnlyCopy says why copy id may hold data its target no longer
// has, or "".
func (e *Engine) standbyOnlyCopy(ctx context.Context, id, target, volumeID string) string {
	if a, err := e.activation(id); err != nil {
		return fmt.Sprintf("its activation record cannot be read (%v)", err)
	} else if a != nil {
		if _, err := e.loadVolume(a.VolumeID); err == nil {
			return "" // activated: the volume has the data
		}
		return "its activation into volume " + a.VolumeID + " began and is not finished"
	}
	st, err := e.standby(id, volumeID, nil).State()
	if err != nil {
		return fmt.Sprintf("its state cannot be read (%v)", err)
	}
	if st == nil || st.BackupID == "" {
		return ""
	}
	repo, err := e.repo(ctx, target)
	if err != nil {
		return fmt.Sprintf("backup target %s cannot be read (%v)", target, err)
	}
	if _, err := repo.Manifest(ctx, volumeID, st.BackupID); err != nil {
		return fmt.Sprintf("the backup it holds, %s, cannot be read from target %s (%v)", st.BackupID, target, err)
	}
	return ""
}

func (e *Engine) removeStandby(id string) error { return e.removeObject(standbyDir, id) }

// apparentSize is a file's size (0 if it cannot be read).
func apparentSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// standbyReserved is what standby copies may still allocate: each image's
// size minus what it occupies. An image linked to a volume (an activation
// not yet cleaned up) is counted with the volume.
func (e *Engine) standbyReserved() int64 {
	ents, err := os.ReadDir(filepath.Join(e.root, standbyDir))
	if err != nil {
		return 0
	}
	var n int64
	for _, ent := range ents {
		img := filepath.Join(e.root, standbyDir, ent.Name(), dataFile)
		fi, err := os.Stat(img)
		if err != nil || !model.ValidStandbyID(ent.Name()) {
			continue
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 {
			continue
		}
		if alloc, err := fsops.AllocatedBytes(img); err == nil && fi.Size() > alloc {
			n += fi.Size() - alloc
		}
	}
	return n
}
