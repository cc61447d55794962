package engine

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cairn-csi/cairn/internal/fsops"
	"github.com/cairn-csi/cairn/internal/model"
)

// FormatVersion is the version of the on-disk layout and metadata written
// by this engine (docs/FORMAT.md). An engine refuses a data root whose
// version is newer than the one it knows.
const FormatVersion = 1

// Layout of a data root (docs/FORMAT.md).
const (
	rootMetaFile = "cairn.json"
	volumesDir   = "volumes"
	snapshotsDir = "snapshots"
	groupsDir    = "groups"
	tmpDir       = "tmp"
	trashDir     = "trash"
	dataFile     = "data.img"
	volumeMeta   = "volume.json"
	snapshotMeta = "snapshot.json"
	groupMeta    = "group.json"
)

// Stage states recorded before and after the work they describe.
const (
	stateStaging = "staging" // loop/mount may be half set up
	stateStaged  = "staged"
)

// rootMeta is <root>/cairn.json.
type rootMeta struct {
	FormatVersion int       `json:"formatVersion"`
	CreatedAt     time.Time `json:"createdAt"`
}

// StageInfo records where and how a volume is staged on this node.
type StageInfo struct {
	Path       string   `json:"path"`
	Block      bool     `json:"block"`
	FsType     string   `json:"fsType,omitempty"`
	MountFlags []string `json:"mountFlags,omitempty"`
	ReadOnly   bool     `json:"readOnly,omitempty"`
	State      string   `json:"state"`
}

// PublishInfo records one target path a volume is published to.
type PublishInfo struct {
	Target       string `json:"target"`
	ReadOnly     bool   `json:"readOnly,omitempty"`
	SingleWriter bool   `json:"singleWriter,omitempty"`
	// PodUID is the pod the target was published for (its cgroups get
	// the volume's I/O limits); empty outside Kubernetes.
	PodUID string `json:"podUID,omitempty"`
}

// VolumeMeta is <root>/volumes/<id>/volume.json.
type VolumeMeta struct {
	FormatVersion int    `json:"formatVersion"`
	ID            string `json:"id"`
	Name          string `json:"name"`
	SizeBytes     int64  `json:"sizeBytes"`
	// PendingSizeBytes is an expansion intent: written before the file
	// grows, cleared after. Start-up reconciliation finishes it.
	PendingSizeBytes int64         `json:"pendingSizeBytes,omitempty"`
	Block            bool          `json:"block"`
	FsType           string        `json:"fsType,omitempty"`
	Source           *model.Source `json:"source,omitempty"`
	// SourceNode is the node Source lived on, for a copy from another
	// node (transfer.go); empty when it is this one.
	SourceNode string            `json:"sourceNode,omitempty"`
	Parameters map[string]string `json:"parameters,omitempty"`
	// IOLimits are enforced on the volume's loop device while staged
	// (docs/IOLIMITS.md); zero: none.
	IOLimits  model.IOLimits `json:"ioLimits,omitzero"`
	CreatedAt time.Time      `json:"createdAt"`
	Stage     *StageInfo     `json:"stage,omitempty"`
	Published []PublishInfo  `json:"published,omitempty"`
}

// SnapshotMeta is <root>/snapshots/<id>/snapshot.json.
type SnapshotMeta struct {
	FormatVersion  int               `json:"formatVersion"`
	ID             string            `json:"id"`
	Name           string            `json:"name"`
	SourceVolumeID string            `json:"sourceVolumeId"`
	SizeBytes      int64             `json:"sizeBytes"`
	Block          bool              `json:"block"`
	FsType         string            `json:"fsType,omitempty"`
	Parameters     map[string]string `json:"parameters,omitempty"`
	CreatedAt      time.Time         `json:"createdAt"`
	// GroupSnapshotID names the group snapshot this is a member of.
	GroupSnapshotID string `json:"groupSnapshotId,omitempty"`
}

func (e *Engine) volumeDir(id string) string   { return filepath.Join(e.root, volumesDir, id) }
func (e *Engine) snapshotDir(id string) string { return filepath.Join(e.root, snapshotsDir, id) }
func (e *Engine) volumeData(id string) string  { return filepath.Join(e.volumeDir(id), dataFile) }

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("parse %s: %w", path, err)
	}
	return nil
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return fsops.WriteFileAtomic(path, append(b, '\n'), 0o600)
}

// loadVolume reads a committed volume's metadata; ErrNotFound if absent.
func (e *Engine) loadVolume(id string) (*VolumeMeta, error) {
	if !model.ValidVolumeID(id) {
		return nil, model.Errorf(model.ErrNotFound, "volume %q not found", id)
	}
	var m VolumeMeta
	err := readJSON(filepath.Join(e.volumeDir(id), volumeMeta), &m)
	if errors.Is(err, os.ErrNotExist) {
		return nil, model.Errorf(model.ErrNotFound, "volume %q not found", id)
	}
	if err != nil {
		return nil, err
	}
	if m.FormatVersion > FormatVersion {
		return nil, fmt.Errorf("volume %s has metadata format %d, newer than this driver's %d", id, m.FormatVersion, FormatVersion)
	}
	return &m, nil
}

func (e *Engine) saveVolume(m *VolumeMeta) error {
	return writeJSON(filepath.Join(e.volumeDir(m.ID), volumeMeta), m)
}

func (e *Engine) loadSnapshot(id string) (*SnapshotMeta, error) {
	if !model.ValidSnapshotID(id) {
		return nil, model.Errorf(model.ErrNotFound, "snapshot %q not found", id)
	}
	var m SnapshotMeta
	err := readJSON(filepath.Join(e.snapshotDir(id), snapshotMeta), &m)
	if errors.Is(err, os.ErrNotExist) {
		return nil, model.Errorf(model.ErrNotFound, "snapshot %q not found", id)
	}
	if err != nil {
		return nil, err
	}
	if m.FormatVersion > FormatVersion {
		return nil, fmt.Errorf("snapshot %s has metadata format %d, newer than this driver's %d", id, m.FormatVersion, FormatVersion)
	}
	return &m, nil
}

// listIDs returns the committed object IDs in dir, sorted.
func (e *Engine) listIDs(dir string, valid func(string) bool) ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(e.root, dir))
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, ent := range entries {
		if ent.IsDir() && valid(ent.Name()) {
			ids = append(ids, ent.Name())
		}
	}
	return ids, nil // os.ReadDir sorts by name
}
