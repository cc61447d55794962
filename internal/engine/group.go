package engine

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"k8s.io/klog/v2"

	"github.com/cairn-csi/cairn/internal/faults"
	"github.com/cairn-csi/cairn/internal/fsops"
	"github.com/cairn-csi/cairn/internal/model"
)

// GroupMeta is the on-disk metadata of a group snapshot (group.json,
// docs/FORMAT.md).
type GroupMeta struct {
	FormatVersion int               `json:"formatVersion"`
	ID            string            `json:"id"`
	Name          string            `json:"name"`
	Members       []GroupMember     `json:"members"`
	Parameters    map[string]string `json:"parameters,omitempty"`
	CreatedAt     time.Time         `json:"createdAt"`
	FrozenMillis  int64             `json:"frozenMillis"`
}

// GroupMember is one member of a group snapshot.
type GroupMember struct {
	VolumeID   string `json:"volumeId"`
	SnapshotID string `json:"snapshotId"`
}

func (e *Engine) groupDir(id string) string { return filepath.Join(e.root, groupsDir, id) }

// loadGroup reads a committed group snapshot's metadata; ErrNotFound if
// absent.
func (e *Engine) loadGroup(id string) (*GroupMeta, error) {
	if !model.ValidGroupSnapshotID(id) {
		return nil, model.Errorf(model.ErrNotFound, "group snapshot %q not found", id)
	}
	var m GroupMeta
	err := readJSON(filepath.Join(e.groupDir(id), groupMeta), &m)
	if errors.Is(err, os.ErrNotExist) {
		return nil, model.Errorf(model.ErrNotFound, "group snapshot %q not found", id)
	}
	if err != nil {
		return nil, err
	}
	if m.FormatVersion > FormatVersion {
		return nil, fmt.Errorf("group snapshot %s has format version %d; this driver knows up to %d", id, m.FormatVersion, FormatVersion)
	}
	return &m, nil
}

// CreateGroupSnapshot snapshots every volume of volumeIDs at one point in
// time (docs/FORMAT.md, "group snapshot"): one freeze window for all
// mounted members, each member an ordinary snapshot that names the group.
// A group with the same name, volumes and parameters is returned as it
// is; the same name with other volumes or parameters is AlreadyExists.
func (e *Engine) CreateGroupSnapshot(ctx context.Context, name string, volumeIDs []string, params map[string]string) (*model.GroupSnapshot, error) {
	if name == "" {
		return nil, model.Errorf(model.ErrInvalidArgument, "name is required")
	}
	if err := model.CheckGroupMembers(volumeIDs); err != nil {
		return nil, err
	}
	vols := slices.Clone(volumeIDs)
	slices.Sort(vols)
	id := model.GroupSnapshotIDForName(name)
	members := make([]GroupMember, len(vols))
	keys := []string{id}
	for i, v := range vols {
		members[i] = GroupMember{VolumeID: v, SnapshotID: model.GroupMemberSnapshotID(name, v)}
		keys = append(keys, members[i].SnapshotID)
		if model.ValidVolumeID(v) {
			keys = append(keys, v)
		}
	}
	unlock, err := e.locks.lock(ctx, keys...)
	if err != nil {
		return nil, err
	}
	defer unlock()

	if existing, err := e.loadGroup(id); err == nil {
		if !slices.Equal(existing.Members, members) || !maps.Equal(existing.Parameters, params) {
			return nil, model.Errorf(model.ErrAlreadyExists, "group snapshot name %q is already used for other source_volume_ids or parameters", name)
		}
		return e.describeGroup(existing), nil
	} else if !isNotFound(err) {
		return nil, err
	}
	metas := make([]*VolumeMeta, len(vols))
	for i, v := range vols {
		if metas[i], err = e.loadVolume(v); err != nil {
			return nil, model.Errorf(model.ErrNotFound, "source_volume_ids: volume %q not found", v)
		}
	}
	// Members an earlier attempt committed without its group are not of
	// this point in time: take them again.
	for _, m := range members {
		if err := e.dropUncommittedMember(m.SnapshotID, id); err != nil {
			return nil, err
		}
	}

	g := &GroupMeta{FormatVersion: FormatVersion, ID: id, Name: name, Members: members, Parameters: maps.Clone(params)}
	tmps := make([]string, len(members))
	dsts := make([]string, len(members))
	for i, m := range members {
		tmps[i] = filepath.Join(e.root, tmpDir, snapshotsDir+"-"+m.SnapshotID)
		dsts[i] = filepath.Join(tmps[i], dataFile)
	}
	var committed []string
	fail := func(err error) (*model.GroupSnapshot, error) {
		for _, t := range tmps {
			os.RemoveAll(t)
		}
		for _, sid := range committed {
			if rerr := e.removeObject(snapshotsDir, sid); rerr != nil {
				klog.ErrorS(rerr, "Removing a member of a failed group snapshot", "groupSnapshotID", id, "snapshotID", sid)
			}
		}
		return nil, fmt.Errorf("group snapshot %s of %s: %w", id, strings.Join(vols, ", "), err)
	}
	for _, t := range tmps {
		if err := os.RemoveAll(t); err != nil {
			return fail(err)
		}
		if err := os.Mkdir(t, 0o700); err != nil {
			return fail(err)
		}
	}
	var frozen time.Duration
	copyFn := func() error {
		g.CreatedAt = time.Now().UTC()
		var err error
		frozen, err = e.copyConsistentSet(ctx, metas, dsts)
		return err
	}
	if e.reflink {
		err = copyFn()
	} else {
		var total int64
		for _, v := range metas {
			alloc, aerr := fsops.AllocatedBytes(e.volumeData(v.ID))
			if aerr != nil {
				return fail(aerr)
			}
			total += alloc
		}
		err = e.allocate(total, copyFn)
	}
	if err != nil {
		return fail(err)
	}
	g.FrozenMillis = frozen.Milliseconds()
	for i, m := range members {
		v := metas[i]
		sm := &SnapshotMeta{
			FormatVersion: FormatVersion, ID: m.SnapshotID, Name: name + "/" + v.ID, SourceVolumeID: v.ID,
			SizeBytes: v.SizeBytes, Block: v.Block, FsType: v.FsType, Parameters: maps.Clone(params),
			CreatedAt: g.CreatedAt, GroupSnapshotID: id,
		}
		if err := writeJSON(filepath.Join(tmps[i], snapshotMeta), sm); err != nil {
			return fail(err)
		}
		if err := fsops.SyncDir(tmps[i]); err != nil {
			return fail(err)
		}
	}
	for i, m := range members {
		if i > 0 {
			faults.Point("group:between-members")
		}
		if err := fsops.RenameDurable(tmps[i], e.snapshotDir(m.SnapshotID)); err != nil {
			return fail(err)
		}
		committed = append(committed, m.SnapshotID)
	}
	// The commit point: the group exists once group.json is in groups/.
	if err := e.commitNew(ctx, groupsDir, id, func(dir string) error {
		return writeJSON(filepath.Join(dir, groupMeta), g)
	}); err != nil {
		return fail(err)
	}
	klog.InfoS("Group snapshot created", "groupSnapshotID", id, "name", name, "volumes", vols, "mode", e.CloneMode(), "frozenFor", frozen)
	return e.describeGroup(g), nil
}

// dropUncommittedMember removes snapshot sid if it is a member of group
// whose group.json is not committed (a create that did not finish, or a
// delete that did not).
func (e *Engine) dropUncommittedMember(sid, group string) error {
	m, err := e.loadSnapshot(sid)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if m.GroupSnapshotID != group {
		return fmt.Errorf("snapshot %s belongs to group %q, not %s", sid, m.GroupSnapshotID, group)
	}
	klog.InfoS("Removing a member of an unfinished group snapshot", "groupSnapshotID", group, "snapshotID", sid)
	return e.removeObject(snapshotsDir, sid)
}

func (e *Engine) describeGroup(g *GroupMeta) *model.GroupSnapshot {
	out := &model.GroupSnapshot{ID: g.ID, Name: g.Name, CreatedAt: g.CreatedAt, Frozen: time.Duration(g.FrozenMillis) * time.Millisecond, Parameters: maps.Clone(g.Parameters)}
	for _, m := range g.Members {
		out.SourceVolumeIDs = append(out.SourceVolumeIDs, m.VolumeID)
		sm, err := e.loadSnapshot(m.SnapshotID)
		if err != nil {
			continue // deleted alone (or unreadable): no longer a member
		}
		out.Members = append(out.Members, e.describeSnapshot(sm))
	}
	return out
}

// ListGroupSnapshots returns all group snapshots sorted by ID.
func (e *Engine) ListGroupSnapshots(ctx context.Context) ([]*model.GroupSnapshot, error) {
	ids, err := e.listIDs(groupsDir, model.ValidGroupSnapshotID)
	if err != nil {
		return nil, err
	}
	var out []*model.GroupSnapshot
	for _, id := range ids {
		g, err := e.loadGroup(id)
		if isNotFound(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, e.describeGroup(g))
	}
	return out, nil
}

// GetGroupSnapshot returns a group snapshot. snapshotIDs, when given,
// must all be members of it (InvalidArgument otherwise).
func (e *Engine) GetGroupSnapshot(ctx context.Context, id string, snapshotIDs []string) (*model.GroupSnapshot, error) {
	g, err := e.loadGroup(id)
	if err != nil {
		return nil, err
	}
	if err := checkMembers(g, snapshotIDs); err != nil {
		return nil, err
	}
	return e.describeGroup(g), nil
}

func checkMembers(g *GroupMeta, snapshotIDs []string) error {
	for _, sid := range snapshotIDs {
		if !slices.ContainsFunc(g.Members, func(m GroupMember) bool { return m.SnapshotID == sid }) {
			return model.Errorf(model.ErrInvalidArgument, "snapshot_ids: %q is not a member of group snapshot %s", sid, g.ID)
		}
	}
	return nil
}

// DeleteGroupSnapshot deletes a group snapshot and its members; a missing
// group succeeds. snapshotIDs, when given, must all be members of it.
func (e *Engine) DeleteGroupSnapshot(ctx context.Context, id string, snapshotIDs []string) error {
	if !model.ValidGroupSnapshotID(id) {
		return nil
	}
	g, err := e.loadGroup(id)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := checkMembers(g, snapshotIDs); err != nil {
		return err
	}
	keys := []string{id}
	for _, m := range g.Members {
		keys = append(keys, m.SnapshotID)
	}
	unlock, err := e.locks.lock(ctx, keys...)
	if err != nil {
		return err
	}
	defer unlock()
	// The group goes first: members left by a crash after this are
	// removed at start-up (docs/FORMAT.md).
	if err := e.removeObject(groupsDir, id); err != nil {
		return fmt.Errorf("delete group snapshot %s: %w", id, err)
	}
	for _, m := range g.Members {
		faults.Point("group:deleting-members")
		if err := e.dropUncommittedMember(m.SnapshotID, id); err != nil {
			return fmt.Errorf("delete group snapshot %s: %w", id, err)
		}
	}
	klog.InfoS("Group snapshot deleted", "groupSnapshotID", id)
	return nil
}

// reconcileGroups removes the members whose group snapshot is not
// committed (docs/FORMAT.md, crash safety).
func (e *Engine) reconcileGroups() error {
	ids, err := e.listIDs(snapshotsDir, model.ValidSnapshotID)
	if err != nil {
		return err
	}
	for _, sid := range ids {
		m, err := e.loadSnapshot(sid)
		if err != nil || !model.ValidGroupSnapshotID(m.GroupSnapshotID) {
			continue
		}
		_, err = os.Stat(filepath.Join(e.groupDir(m.GroupSnapshotID), groupMeta))
		if !errors.Is(err, os.ErrNotExist) {
			continue // committed, or unreadable: never delete on doubt
		}
		if err := e.dropUncommittedMember(sid, m.GroupSnapshotID); err != nil {
			return err
		}
	}
	return nil
}
