package model

import (
	"crypto/sha256"
	"encoding/hex"
	"regexp"
	"strings"
)

// IDs are derived from the caller's name with a hash, so a retried create
// after a crash (or on another controller replica) lands on the same ID,
// and never contain anything but [0-9a-f] after a fixed prefix, so no
// caller input becomes a path or an object name.
var (
	volumeIDRe   = regexp.MustCompile(`^v-[0-9a-f]{32}$`)
	snapshotIDRe = regexp.MustCompile(`^s-[0-9a-f]{32}$`)
	backupIDRe   = regexp.MustCompile(`^b-[0-9a-f]{32}$`)
	groupIDRe    = regexp.MustCompile(`^g-[0-9a-f]{32}$`)
	// A backup store keys a volume's backups by the ID of the volume they
	// were made from; that may be another driver's or tool's ID (the
	// `cairn backup` CLI backs up files), so the store accepts any DNS-like
	// name, a superset of Cairn's own volume IDs.
	storeVolumeRe = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{0,252}$`)
	targetNameRe  = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)
	standbyIDRe   = regexp.MustCompile(`^sb-[a-z0-9][a-z0-9-]{0,63}$`)
)

func deriveID(prefix, kind, name string) string {
	sum := sha256.Sum256([]byte("cairn/" + kind + "/" + name))
	return prefix + hex.EncodeToString(sum[:16])
}

// VolumeIDForName returns the ID a volume created with name gets.
func VolumeIDForName(name string) string { return deriveID("v-", "volume", name) }

// SnapshotIDForName returns the ID a local snapshot created with name gets.
func SnapshotIDForName(name string) string { return deriveID("s-", "snapshot", name) }

// GroupSnapshotIDForName returns the ID a group snapshot created with name
// gets.
func GroupSnapshotIDForName(name string) string { return deriveID("g-", "group", name) }

// GroupMemberSnapshotID returns the ID of the member snapshot that the
// group snapshot named group takes of volumeID: derived apart from
// SnapshotIDForName, so no member collides with a CreateSnapshot name.
func GroupMemberSnapshotID(group, volumeID string) string {
	return deriveID("s-", "group-member", group+"/"+volumeID)
}

// MaxGroupMembers bounds the volumes of one group snapshot: every member
// is frozen in the same window, and its record is one small file (the
// GroupSnapshot CRD's sourceVolumeIDs carries the same maxItems).
const MaxGroupMembers = 256

// CheckGroupMembers validates a group snapshot's source volume IDs: at
// least one, at most MaxGroupMembers, none empty, none twice. The message
// names the field source_volume_ids.
func CheckGroupMembers(ids []string) error {
	if len(ids) == 0 {
		return Errorf(ErrInvalidArgument, "source_volume_ids: at least one volume is required")
	}
	if len(ids) > MaxGroupMembers {
		return Errorf(ErrInvalidArgument, "source_volume_ids: %d volumes, at most %d can be snapshotted together", len(ids), MaxGroupMembers)
	}
	seen := make(map[string]bool, len(ids))
	for i, id := range ids {
		if id == "" {
			return Errorf(ErrInvalidArgument, "source_volume_ids[%d] is empty", i)
		}
		if seen[id] {
			return Errorf(ErrInvalidArgument, "source_volume_ids: volume %q is listed twice", id)
		}
		seen[id] = true
	}
	return nil
}

// ValidGroupSnapshotID reports whether id is a well-formed group snapshot ID.
func ValidGroupSnapshotID(id string) bool { return groupIDRe.MatchString(id) }

// BackupIDForName returns the ID a backup made for the snapshot name gets.
func BackupIDForName(name string) string { return deriveID("b-", "backup", name) }

// ValidVolumeID reports whether id is a well-formed Cairn volume ID.
// Malformed IDs can never exist, so callers answer NotFound for them.
func ValidVolumeID(id string) bool { return volumeIDRe.MatchString(id) }

// ValidSnapshotID reports whether id is a well-formed local snapshot ID.
func ValidSnapshotID(id string) bool { return snapshotIDRe.MatchString(id) }

// ValidBackupID reports whether id is a well-formed backup ID.
func ValidBackupID(id string) bool { return backupIDRe.MatchString(id) }

// ValidStoreVolumeID reports whether id can name a volume in a backup
// store (see storeVolumeRe; no "..", so no part of a key or path looks
// like a parent directory).
func ValidStoreVolumeID(id string) bool {
	return storeVolumeRe.MatchString(id) && !strings.Contains(id, "..")
}

// ValidTargetName reports whether name can name a backup target.
func ValidTargetName(name string) bool { return targetNameRe.MatchString(name) }

// ValidStandbyID reports whether id can name a standby copy on a data
// root: "sb-" and a Kubernetes UID (lower-case letters, digits, dashes).
func ValidStandbyID(id string) bool { return standbyIDRe.MatchString(id) }
