package backup

// Everything read from a backup store is untrusted: other clusters, other
// Cairn versions, bit rot, people and attackers write into a target. This
// file is the one place where store content is bounded and checked
// (docs/FORMAT.md, "Validation"); nothing else in the package reads a
// field of a store object before it passed through here.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"

	"encoding/hex"
	"github.com/zeebo/blake3"

	"github.com/cairn-csi/cairn/internal/model"
)

// Bounds on store content (docs/FORMAT.md, "Validation").
const (
	MinBlockSize   = 64 << 10
	MaxBlockSize   = 16 << 20
	MaxVolumeBytes = 64 << 40

	maxConfigBytes     = 64 << 10
	maxLockBytes       = 32 << 20
	maxManifestBytes   = 128 << 20
	maxPackIndexBytes  = 16 << 20
	maxQuarantineBytes = 64 << 10
	maxPackBlobs       = 8192 // a writer starts a new pack after this many blobs
	maxNameLen         = 1024 // volume and snapshot names in a manifest
	maxFsTypeLen       = 32
)

// ErrUnsupported marks store content of a newer format than this driver's.
var ErrUnsupported = errors.New("backup store content of an unsupported format")

var hashRe = regexp.MustCompile(`^[0-9a-f]{64}$`)

// ValidHash reports whether s is a block hash or pack ID: 64 lower-case
// hex digits.
func ValidHash(s string) bool { return hashRe.MatchString(s) }

func corruptf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrCorrupt}, args...)...)
}

// readJSON reads and parses one store object of at most limit bytes;
// size is the object's size if the caller listed it, or -1 to look it up.
// An object over the limit is damage, found before anything is read: no
// store object can make a reader allocate more than its kind's limit.
func (r *Repo) readJSON(ctx context.Context, key string, limit, size int64, v any) error {
	b, err := r.readObject(ctx, key, limit, size)
	if err != nil {
		return err
	}
	return parseJSON(key, b, v)
}

// readObject reads one store object of at most limit bytes, as readJSON.
func (r *Repo) readObject(ctx context.Context, key string, limit, size int64) ([]byte, error) {
	if size < 0 {
		info, err := r.store.Stat(ctx, key)
		if err != nil {
			return nil, err
		}
		size = info.Size
	}
	if size > limit {
		return nil, corruptf("%s is %d bytes, more than the %d such an object may have", key, size, limit)
	}
	rc, err := r.store.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	buf := bytes.NewBuffer(make([]byte, 0, size+1))
	if _, err := buf.ReadFrom(io.LimitReader(rc, limit+1)); err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	if int64(buf.Len()) > limit {
		return nil, corruptf("%s is larger than %d bytes", key, limit)
	}
	return buf.Bytes(), nil
}

func parseJSON(key string, b []byte, v any) error {
	if err := json.Unmarshal(b, v); err != nil {
		return corruptf("parse %s: %v", key, err)
	}
	return nil
}

// validate checks cairn-backup.json.
func (c *StoreConfig) validate() error {
	switch {
	case c.FormatVersion > FormatVersion:
		return fmt.Errorf("%w: the store has format %d; this driver knows up to %d", ErrUnsupported, c.FormatVersion, FormatVersion)
	case c.FormatVersion < 1:
		return corruptf("%s: formatVersion %d", configKey, c.FormatVersion)
	case c.BlockSize < MinBlockSize || c.BlockSize > MaxBlockSize || c.BlockSize&(c.BlockSize-1) != 0:
		return corruptf("%s: blockSize %d is not a power of two in [%d, %d]", configKey, c.BlockSize, MinBlockSize, MaxBlockSize)
	case c.Hash != hashName:
		return fmt.Errorf("%w: hash %q", ErrUnsupported, c.Hash)
	case c.Compression != compressionName:
		return fmt.Errorf("%w: compression %q", ErrUnsupported, c.Compression)
	case c.FormatVersion == formatPlain && c.Encryption != nil:
		return corruptf("%s: format %d has no encryption section", configKey, formatPlain)
	case c.FormatVersion == formatEncrypted && c.Encryption == nil:
		return corruptf("%s: format %d needs an encryption section", configKey, formatEncrypted)
	case c.Encryption != nil:
		return c.Encryption.validate()
	}
	return nil
}

// checkLoc checks a stored blob's location fields against the store's
// block size: a stored length never above a compressed block's cap, a raw
// length never above the block size, compression "none" stored as is.
//
// overhead is what the store's encryption adds to every blob (0 plain).
func checkLoc(l Loc, blockSize, overhead int64) error {
	switch {
	case !ValidHash(l.Pack):
		return fmt.Errorf("pack ID %q is not 64 hex digits", l.Pack)
	case l.Offset < 0 || l.Offset > maxPackOffset:
		return fmt.Errorf("pack offset %d out of range", l.Offset)
	case l.Length < 1+overhead || l.Length > int64(blobCap(blockSize)):
		return fmt.Errorf("stored length %d out of [%d, %d]", l.Length, 1+overhead, blobCap(blockSize))
	case l.RawLength < 1 || l.RawLength > blockSize:
		return fmt.Errorf("raw length %d out of [1, %d]", l.RawLength, blockSize)
	case l.Comp != compZstd && l.Comp != compNone:
		return fmt.Errorf("compression %q", l.Comp)
	case l.Comp == compNone && l.Length != l.RawLength+overhead:
		return fmt.Errorf("uncompressed blob of stored length %d and raw length %d", l.Length, l.RawLength)
	}
	return nil
}

// maxPackOffset bounds offsets inside a pack (packs are ~64 MiB; the
// index length field is 32 bits).
const maxPackOffset = 1 << 40

// validate checks a manifest read from key volumeID/backupID of a store
// with the given block size: its identity equals its key, and every entry
// is in range, aligned, inside the volume and in strictly increasing
// order.
func (m *Manifest) validate(volumeID, backupID string, blockSize, overhead int64) error {
	key := manifestKey(volumeID, backupID)
	switch {
	case m.FormatVersion > FormatVersion:
		return fmt.Errorf("%w: manifest %s has format %d; this driver knows up to %d", ErrUnsupported, key, m.FormatVersion, FormatVersion)
	case m.FormatVersion < 1:
		return corruptf("manifest %s: formatVersion %d", key, m.FormatVersion)
	case m.ID != backupID || m.VolumeID != volumeID:
		return corruptf("manifest %s claims to be %s/%s", key, m.VolumeID, m.ID)
	case m.BlockSize != blockSize:
		return corruptf("manifest %s: blockSize %d, the store's is %d", key, m.BlockSize, blockSize)
	case m.SizeBytes < 0 || m.SizeBytes > MaxVolumeBytes:
		return corruptf("manifest %s: sizeBytes %d out of [0, %d]", key, m.SizeBytes, int64(MaxVolumeBytes))
	case m.Parent != "" && !model.ValidBackupID(m.Parent):
		return corruptf("manifest %s: parent %q is not a backup ID", key, m.Parent)
	case len(m.VolumeName) > maxNameLen || len(m.SnapshotName) > maxNameLen || len(m.FsType) > maxFsTypeLen:
		return corruptf("manifest %s: a name is too long", key)
	case int64(len(m.Blocks)) > blockCount(blockSize, m.SizeBytes):
		return corruptf("manifest %s: %d entries for a volume of %d bytes", key, len(m.Blocks), m.SizeBytes)
	}
	if m.Claim != nil {
		if err := m.Claim.Check(); err != nil {
			return corruptf("manifest %s: %v", key, err)
		}
	}
	prev := int64(-1)
	for i, e := range m.Blocks {
		err := checkLoc(e.Loc, blockSize, overhead)
		switch {
		case err != nil:
		case e.Offset < 0 || e.Offset%blockSize != 0 || e.Offset >= m.SizeBytes:
			err = fmt.Errorf("volume offset %d is not a block of the volume", e.Offset)
		case e.Offset <= prev:
			err = fmt.Errorf("volume offset %d is not after %d", e.Offset, prev)
		case e.RawLength != blockLen(blockSize, m.SizeBytes, e.Offset):
			err = fmt.Errorf("raw length %d, the block at %d is %d bytes", e.RawLength, e.Offset, blockLen(blockSize, m.SizeBytes, e.Offset))
		case !ValidHash(e.Hash):
			err = fmt.Errorf("hash %q is not 64 hex digits", e.Hash)
		}
		if err != nil {
			return corruptf("manifest %s: entry %d: %v", key, i, err)
		}
		prev = e.Offset
	}
	return nil
}

// parsePackIndex checks a pack's index bytes, read from a pack whose blob
// area is dataLen bytes long: the pack's ID must be the BLAKE3 of these
// bytes (so an index cannot be swapped under a pack's name), and every
// blob must lie inside the blob area without overlapping another.
func parsePackIndex(id string, raw []byte, dataLen, blockSize, overhead int64) ([]packIndexEntry, error) {
	sum := blake3.Sum256(raw)
	if hex.EncodeToString(sum[:]) != id {
		return nil, corruptf("pack %s: its index does not hash to its ID", id)
	}
	var idx []packIndexEntry
	if err := json.Unmarshal(raw, &idx); err != nil {
		return nil, corruptf("pack %s index: %v", id, err)
	}
	if len(idx) > maxPackBlobs*4 {
		return nil, corruptf("pack %s index lists %d blobs; writers start a new pack after %d", id, len(idx), maxPackBlobs)
	}
	end := int64(0)
	for i, e := range idx {
		err := checkLoc(Loc{Pack: id, Offset: e.Offset, Length: e.Length, RawLength: e.RawLength, Comp: e.Comp}, blockSize, overhead)
		switch {
		case err != nil:
		case !ValidHash(e.Hash):
			err = fmt.Errorf("hash %q is not 64 hex digits", e.Hash)
		case e.Offset < end:
			err = fmt.Errorf("blob at %d overlaps the one before", e.Offset)
		case e.Offset+e.Length > dataLen:
			err = fmt.Errorf("blob [%d,+%d) runs past the blob area (%d bytes)", e.Offset, e.Length, dataLen)
		}
		if err != nil {
			return nil, corruptf("pack %s index entry %d: %v", id, i, err)
		}
		end = e.Offset + e.Length
	}
	return idx, nil
}

// lockKind tells a lock's kind by its key: GC locks are locks/gc*.json
// (locks/gc.json from older clients), backup locks locks/b-….json.
func lockKind(key string) string {
	name := lockName(key)
	switch {
	case name == gcLockID || strings.HasPrefix(name, gcLockID+"-") && len(name) <= 64:
		return lockGC
	case model.ValidBackupID(name):
		return lockBackup
	}
	return ""
}

// validate checks a lock read from key.
func (l *lockInfo) validate(key string) error {
	name := lockName(key)
	switch {
	case l.Kind != lockKind(key):
		return corruptf("lock %s: kind %q", key, l.Kind)
	case l.ID != name:
		return corruptf("lock %s claims to be %q", key, l.ID)
	case l.State != "" && l.State != stateRunning && l.State != stateInterrupted:
		return corruptf("lock %s: state %q", key, l.State)
	case len(l.Owner) > 64:
		return corruptf("lock %s: owner too long", key)
	}
	for _, p := range l.Packs {
		if !ValidHash(p) {
			return corruptf("lock %s: pack ID %q is not 64 hex digits", key, p)
		}
	}
	return nil
}
