package backup

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/zeebo/blake3"

	"github.com/cairn-csi/cairn/internal/fsops"
	"github.com/cairn-csi/cairn/internal/model"
)

// standbyFormat is the version of a standby's state file.
const standbyFormat = 1

// StandbyState is <file>.standby.json beside a standby volume's image
// (docs/FORMAT.md, "Standby volumes"): which backup the image holds, with
// the blocks of that backup (so the next one can be applied by its changed
// blocks even after retention deleted this one's manifest), and the backup
// being applied, if an apply was interrupted.
type StandbyState struct {
	FormatVersion int       `json:"formatVersion"`
	VolumeID      string    `json:"volumeId"`
	BackupID      string    `json:"backupId,omitempty"`
	CompletedAt   time.Time `json:"completedAt,omitzero"`
	SizeBytes     int64     `json:"sizeBytes,omitempty"`
	// FsType and Block are the held backup's (what an activation gives
	// the volume).
	FsType string `json:"fsType,omitempty"`
	Block  bool   `json:"block,omitempty"`
	// Blocks are the offset and hash of each stored block of BackupID.
	Blocks []StandbyBlock `json:"blocks,omitempty"`
	// BlocksDigest is the BLAKE3 of Blocks: a damaged or edited list would
	// make a step skip blocks that changed, so it is refused.
	BlocksDigest string `json:"blocksDigest,omitempty"`
	// Applying is the backup being applied; the image mixes both until
	// the apply is done again. With Blocks empty and Applying set the
	// first, full restore was interrupted.
	Applying string `json:"applying,omitempty"`
}

// StandbyBlock is one stored block of the backup a standby holds.
type StandbyBlock struct {
	Offset int64  `json:"o"`
	Hash   string `json:"h"`
}

// Standby keeps the image File a copy of the latest backup of volume
// VolumeID in the store.
type Standby struct {
	Repo     *Repo
	VolumeID string
	File     string
	// Reserve, if set, is asked before the first, full restore whether
	// the backup's size bytes may be written (capacity accounting).
	Reserve func(size int64) error
}

// StandbyReport is what one Step did and where the standby stands.
type StandbyReport struct {
	BackupID    string    // the backup the image holds now
	CompletedAt time.Time // when that backup was completed
	Latest      string    // the newest backup of the volume in the store
	Behind      int       // committed backups newer than BackupID (0: up to date)
	Applied     bool      // this step changed the image
	Full        bool      // by a full restore (the first one)
	// Delta is what the step downloaded (for a full restore: every
	// stored block of the backup).
	Delta DeltaStats
	// LatestCompletedAt is when Latest was completed.
	LatestCompletedAt time.Time
	// SizeBytes, FsType, Block and Claim describe the held backup (Claim:
	// nil when its manifest is gone or recorded none).
	SizeBytes int64
	FsType    string
	Block     bool
	Claim     *model.Claim
}

func (s *Standby) statePath() string { return s.File + ".standby.json" }

// State reads the standby's state; nil if it has none yet.
func (s *Standby) State() (*StandbyState, error) {
	b, err := os.ReadFile(s.statePath())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var st StandbyState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("standby state %s: %w", s.statePath(), err)
	}
	if st.FormatVersion != standbyFormat || st.VolumeID != s.VolumeID {
		return nil, fmt.Errorf("standby state %s: format %d of volume %q, want format %d of %q", s.statePath(), st.FormatVersion, st.VolumeID, standbyFormat, s.VolumeID)
	}
	if st.BlocksDigest != blocksDigest(st.Blocks) {
		return nil, fmt.Errorf("standby state %s is damaged (its block list does not match its digest): remove %s and the state file to restore in full", s.statePath(), s.File)
	}
	return &st, nil
}

func (s *Standby) save(st *StandbyState) error {
	st.BlocksDigest = blocksDigest(st.Blocks)
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	return fsops.WriteFileAtomic(s.statePath(), b, 0o600)
}

// Step brings the image up to the newest committed backup of the volume:
// the first step restores it in full, later ones download only the
// blocks that changed. The state is written before the image changes
// (Applying) and after, so a step interrupted at any point is finished
// by the next one.
func (s *Standby) Step(ctx context.Context) (rep StandbyReport, err error) {
	// rep is named: the deferred count of newer backups below must reach
	// the caller.
	if !model.ValidStoreVolumeID(s.VolumeID) {
		return rep, fmt.Errorf("volume %q is not a volume ID", s.VolumeID)
	}
	st, err := s.State()
	if err != nil {
		return rep, err
	}
	if st == nil {
		if _, err := os.Stat(s.File); err == nil {
			return rep, fmt.Errorf("%s exists and is not a standby (no %s): choose a new file", s.File, s.statePath())
		}
		st = &StandbyState{FormatVersion: standbyFormat, VolumeID: s.VolumeID}
	}
	ms, _, err := s.Repo.Manifests(ctx, s.VolumeID)
	if err != nil {
		return rep, err
	}
	var latest *Manifest
	for _, m := range ms {
		if latest == nil || m.CompletedAt.After(latest.CompletedAt) {
			latest = m
		}
	}
	rep.BackupID, rep.CompletedAt = st.BackupID, st.CompletedAt
	if latest == nil {
		return rep, fmt.Errorf("volume %s has no backup in %s", s.VolumeID, s.Repo.Store())
	}
	rep.Latest, rep.LatestCompletedAt = latest.ID, latest.CompletedAt
	defer func() {
		rep.SizeBytes, rep.FsType, rep.Block = st.SizeBytes, st.FsType, st.Block
		for _, m := range ms {
			if m.CompletedAt.After(rep.CompletedAt) && m.ID != rep.BackupID {
				rep.Behind++
			}
			if m.ID == rep.BackupID {
				rep.Claim = m.Claim
			}
		}
	}()
	if st.BackupID == latest.ID && st.Applying == "" {
		return rep, nil
	}
	if st.Applying != "" && st.Applying != latest.ID && st.BackupID != "" {
		// An apply of an older backup was interrupted: the image mixes
		// it with BackupID, so finish it before going further (or
		// restore in full if its manifest is gone).
		if prev, err := s.Repo.Manifest(ctx, s.VolumeID, st.Applying); err == nil {
			if _, err := s.Repo.RestoreDelta(ctx, st.entries(), prev, s.File); err != nil {
				return rep, err
			}
			st.hold(prev)
		} else if errors.Is(err, ErrNotFound) {
			st.BackupID, st.Blocks = "", nil
		} else {
			return rep, err
		}
		if err := s.save(st); err != nil {
			return rep, err
		}
	}
	st.Applying = latest.ID
	if err := s.save(st); err != nil {
		return rep, err
	}
	if st.BackupID == "" { // the first restore (again, if interrupted)
		if s.Reserve != nil {
			if err := s.Reserve(latest.SizeBytes); err != nil {
				return rep, err
			}
		}
		if err := os.WriteFile(s.File, nil, 0o600); err != nil {
			return rep, err
		}
		if err := s.Repo.Restore(ctx, latest, s.File, nil); err != nil {
			return rep, err
		}
		rep.Full = true
		rep.Delta = DeltaStats{BlocksFetched: len(latest.Blocks), BytesDownloaded: latest.StoredBytes()}
	} else {
		if rep.Delta, err = s.Repo.RestoreDelta(ctx, st.entries(), latest, s.File); err != nil {
			return rep, err
		}
	}
	st.hold(latest)
	if err := s.save(st); err != nil {
		return rep, err
	}
	rep.BackupID, rep.CompletedAt, rep.Applied = latest.ID, latest.CompletedAt, true
	return rep, nil
}

func blocksDigest(bs []StandbyBlock) string {
	b, _ := json.Marshal(bs)
	sum := blake3.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// entries are the blocks of the backup the image holds.
func (st *StandbyState) entries() []Entry {
	have := make([]Entry, len(st.Blocks))
	for i, b := range st.Blocks {
		have[i] = Entry{Offset: b.Offset, Hash: b.Hash}
	}
	return have
}

// hold records that the image holds backup m (and nothing is applying).
func (st *StandbyState) hold(m *Manifest) {
	st.BackupID, st.CompletedAt, st.SizeBytes, st.Applying = m.ID, m.CompletedAt, m.SizeBytes, ""
	st.FsType, st.Block = m.FsType, m.Block
	st.Blocks = make([]StandbyBlock, len(m.Blocks))
	for i, e := range m.Blocks {
		st.Blocks[i] = StandbyBlock{Offset: e.Offset, Hash: e.Hash}
	}
}
