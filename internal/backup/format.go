// Package backup implements Cairn's backup store (docs/FORMAT.md, "Backup
// store format"): volumes cut into fixed, offset-aligned blocks, hashed
// with BLAKE3, compressed with zstd, grouped into ~64 MiB packs, one
// manifest per backup written last. Dedup spans the whole target;
// incremental backups read only blocks whose extents changed; every block
// read back is verified; garbage collection is safe against running
// backups.
package backup

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/zeebo/blake3"

	"github.com/cairn-csi/cairn/internal/model"
)

// Format constants (docs/FORMAT.md).
const (
	// FormatVersion is the newest store format this package reads.
	FormatVersion = formatEncrypted
	// formatPlain stores are written by this and older versions alike;
	// formatEncrypted ones have an encryption section (crypt.go), which
	// older clients must refuse rather than misread.
	formatPlain      = 1
	formatEncrypted  = 2
	DefaultBlockSize = 4 << 20
	packTarget       = 64 << 20
	packMagic        = "CAIRNPK1"
	configKey        = "cairn-backup.json"
	hashName         = "blake3-256"
	compressionName  = "zstd"

	compZstd = "zstd"
	compNone = "none"
)

// StoreConfig is cairn-backup.json.
type StoreConfig struct {
	FormatVersion int       `json:"formatVersion"`
	BlockSize     int64     `json:"blockSize"`
	Hash          string    `json:"hash"`
	Compression   string    `json:"compression"`
	CreatedAt     time.Time `json:"createdAt"`
	// Encryption is set in an encrypted store (format 2).
	Encryption *EncryptionConfig `json:"encryption,omitempty"`
}

// blockLen is the length of the block at offset off of a volume of size
// bytes: the block size, or less for the last block.
func blockLen(blockSize, size, off int64) int64 { return min(blockSize, size-off) }

// blockCount is the number of blocks of a volume of size bytes.
func blockCount(blockSize, size int64) int64 { return (size + blockSize - 1) / blockSize }

// Loc says where a blob is stored.
type Loc struct {
	Pack      string
	Offset    int64
	Length    int64 // stored (possibly compressed) length
	RawLength int64
	Comp      string
}

// Entry is one stored block of a backup.
type Entry struct {
	Offset int64 // volume offset, a multiple of the block size
	Hash   string
	Loc
}

// MarshalJSON writes an entry as a compact array.
func (e Entry) MarshalJSON() ([]byte, error) {
	return json.Marshal([]any{e.Offset, e.Hash, e.Pack, e.Loc.Offset, e.Length, e.RawLength, e.Comp})
}

// UnmarshalJSON reads an entry written by MarshalJSON.
func (e *Entry) UnmarshalJSON(b []byte) error {
	var a []json.RawMessage
	if err := json.Unmarshal(b, &a); err != nil {
		return err
	}
	if len(a) != 7 {
		return fmt.Errorf("manifest entry has %d fields, want 7", len(a))
	}
	for i, dst := range []any{&e.Offset, &e.Hash, &e.Pack, &e.Loc.Offset, &e.Length, &e.RawLength, &e.Comp} {
		if err := json.Unmarshal(a[i], dst); err != nil {
			return fmt.Errorf("manifest entry field %d: %w", i, err)
		}
	}
	return nil
}

// Stats describe what a backup did.
type Stats struct {
	BytesRead      int64   `json:"bytesRead"`
	BytesUploaded  int64   `json:"bytesUploaded"`
	BlocksNew      int     `json:"blocksNew"`
	BlocksReused   int     `json:"blocksReused"`  // unchanged since the parent, not read
	BlocksDeduped  int     `json:"blocksDeduped"` // read, but already in the store
	BlocksSkipped  int     `json:"blocksSkipped"` // holes and zero blocks
	PacksUploaded  int     `json:"packsUploaded"`
	DurationSecond float64 `json:"durationSeconds"`
}

// Manifest is backups/<volume>/<id>.json: a committed backup.
type Manifest struct {
	FormatVersion int    `json:"formatVersion"`
	ID            string `json:"id"`
	VolumeID      string `json:"volumeId"`
	VolumeName    string `json:"volumeName,omitempty"`
	SnapshotName  string `json:"snapshotName,omitempty"`
	SizeBytes     int64  `json:"sizeBytes"`
	BlockSize     int64  `json:"blockSize"`
	Block         bool   `json:"block"`
	FsType        string `json:"fsType,omitempty"`
	// Claim is the source PVC (optional, docs/FORMAT.md).
	Claim       *model.Claim `json:"claim,omitempty"`
	Parent      string       `json:"parent,omitempty"`
	CreatedAt   time.Time    `json:"createdAt"`
	CompletedAt time.Time    `json:"completedAt"`
	Blocks      []Entry      `json:"blocks"`
	Stats       Stats        `json:"stats"`
}

// BlocksDigest is the BLAKE3 of the manifest's block list: a node keeps
// it with the local base of an incremental backup, so that a parent
// manifest changed in the store since it was committed is not trusted.
func (m *Manifest) BlocksDigest() string {
	b, _ := json.Marshal(m.Blocks)
	sum := blake3.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// StoredBytes is the sum of the stored lengths of the manifest's blocks.
func (m *Manifest) StoredBytes() int64 {
	var n int64
	for _, e := range m.Blocks {
		n += e.Length
	}
	return n
}

// lockInfo is locks/<id>.json.
type lockInfo struct {
	Kind string `json:"kind"` // lockBackup or lockGC
	ID   string `json:"id"`
	// Heartbeat is the writer's clock at the write, for people only:
	// liveness is judged by the object's modification time, the store's
	// clock (docs/FORMAT.md, "Locks and garbage collection").
	Heartbeat time.Time `json:"heartbeat"`
	// State is stateRunning (or empty, from older clients) while the
	// backup runs, stateInterrupted once it stopped without committing.
	State string   `json:"state,omitempty"`
	Packs []string `json:"packs,omitempty"`
	// Owner, in locks/gc.json, names the GC lock (gc-…) of the GC that
	// wrote it for clients older than those locks.
	Owner string `json:"owner,omitempty"`
}

// Lock kinds and states.
const (
	lockBackup       = "backup"
	lockGC           = "gc"
	stateRunning     = "running"
	stateInterrupted = "interrupted"
)

func manifestKey(volumeID, backupID string) string {
	return "backups/" + volumeID + "/" + backupID + ".json"
}

func packKey(id string) string { return "packs/" + id[:2] + "/" + id }

// packIDOf is the pack ID a pack key ends with (check it with packKey).
func packIDOf(key string) string { return key[strings.LastIndex(key, "/")+1:] }

func lockKey(id string) string { return "locks/" + id + ".json" }

// lockName is the ID in a lock key: lockKey's inverse.
func lockName(key string) string {
	return strings.TrimSuffix(strings.TrimPrefix(key, "locks/"), ".json")
}
