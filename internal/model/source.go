package model

import (
	"strings"
)

// SourceKind is what a volume was created from.
type SourceKind string

// The source kinds. A CSI request names a backup as a snapshot whose ID is
// its bs:// handle; Cairn records it as SourceBackup.
const (
	SourceSnapshot SourceKind = "snapshot" // a local snapshot on the same node
	SourceVolume   SourceKind = "volume"   // a clone of a volume on the same node
	SourceBackup   SourceKind = "backup"   // a restore from a backup target, any node
)

// Source names what a volume was created from.
type Source struct {
	Kind SourceKind `json:"kind"`
	ID   string     `json:"id"` // for SourceBackup, the bs:// handle
}

// CSI is the source as a CSI request names it: a backup is a snapshot
// whose ID is its bs:// handle.
func (s Source) CSI() Source {
	if s.Kind == SourceBackup {
		s.Kind = SourceSnapshot
	}
	return s
}

// RequestedSource is the source a create request names, in Cairn's terms
// (a bs:// snapshot ID is a backup), nil for none.
func (r CreateVolumeRequest) RequestedSource() *Source {
	switch {
	case r.SourceSnapshotID != "" && IsBackupHandle(r.SourceSnapshotID):
		return &Source{Kind: SourceBackup, ID: r.SourceSnapshotID}
	case r.SourceSnapshotID != "":
		return &Source{Kind: SourceSnapshot, ID: r.SourceSnapshotID}
	case r.SourceVolumeID != "":
		return &Source{Kind: SourceVolume, ID: r.SourceVolumeID}
	}
	return nil
}

// BackupHandle is a parsed bs://<target>/<volume-id>/<backup-id> snapshot
// ID: a backup, found from any node through its target.
type BackupHandle struct {
	Target, VolumeID, BackupID string
}

const handlePrefix = "bs://"

func (h BackupHandle) String() string {
	return handlePrefix + h.Target + "/" + h.VolumeID + "/" + h.BackupID
}

// IsBackupHandle reports whether a snapshot ID names a backup (it may
// still be malformed: ParseBackupHandle tells).
func IsBackupHandle(id string) bool { return strings.HasPrefix(id, handlePrefix) }

// ParseBackupHandle parses bs://<target>/<volume-id>/<backup-id>. A
// malformed handle can never name a backup: NotFound.
func ParseBackupHandle(id string) (BackupHandle, error) {
	parts := strings.Split(strings.TrimPrefix(id, handlePrefix), "/")
	if !IsBackupHandle(id) || len(parts) != 3 || !ValidTargetName(parts[0]) || !ValidStoreVolumeID(parts[1]) || !ValidBackupID(parts[2]) {
		return BackupHandle{}, Errorf(ErrNotFound, "snapshot %q not found: not a well-formed bs://TARGET/VOLUME/BACKUP handle", id)
	}
	return BackupHandle{Target: parts[0], VolumeID: parts[1], BackupID: parts[2]}, nil
}

// ValidSnapshotHandle reports whether id is a snapshot ID this driver
// issues: a local snapshot ID or a well-formed bs:// handle.
func ValidSnapshotHandle(id string) bool {
	if ValidSnapshotID(id) {
		return true
	}
	_, err := ParseBackupHandle(id)
	return err == nil
}
