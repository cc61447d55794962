package engine

import (
	"crypto/sha256"
	"encoding/hex"
	"regexp"
)

// IDs are derived from the caller's name with a hash, so a retried create
// after a crash lands on the same ID, and never contain anything but
// [0-9a-f] after a fixed prefix, so no caller input becomes a path.
const (
	volumePrefix   = "v-"
	snapshotPrefix = "s-"
)

var (
	volumeIDRe   = regexp.MustCompile(`^v-[0-9a-f]{32}$`)
	snapshotIDRe = regexp.MustCompile(`^s-[0-9a-f]{32}$`)
)

func deriveID(prefix, kind, name string) string {
	sum := sha256.Sum256([]byte("cairn/" + kind + "/" + name))
	return prefix + hex.EncodeToString(sum[:16])
}

// VolumeIDForName returns the ID a volume created with name gets.
func VolumeIDForName(name string) string { return deriveID(volumePrefix, "volume", name) }

// SnapshotIDForName returns the ID a snapshot created with name gets.
func SnapshotIDForName(name string) string { return deriveID(snapshotPrefix, "snapshot", name) }

// ValidVolumeID reports whether id is a well-formed volume ID. Malformed
// IDs can never exist, so callers answer NotFound for them.
func ValidVolumeID(id string) bool { return volumeIDRe.MatchString(id) }

// ValidSnapshotID reports whether id is a well-formed local snapshot ID.
func ValidSnapshotID(id string) bool { return snapshotIDRe.MatchString(id) }
