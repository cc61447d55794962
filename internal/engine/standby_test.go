package engine

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/cairn-csi/cairn/internal/fsops"
	"github.com/cairn-csi/cairn/internal/model"
)

// A standby copy follows a volume's backups by changed blocks, refuses to
// be written once its activation began, and activates into a volume that
// holds the newest backup byte for byte, without a copy (a hard link),
// idempotently; deleting the standby afterwards leaves the volume whole.
func TestStandbyFollowActivate(t *testing.T) {
	e, v := newBackupEngine(t)
	ctx := context.Background()
	const sid = "sb-0b5e9c1a-7d3f-4c8e-9a61-2f4b8d0e6c17"
	waitBackup(t, e, "b1", v.ID)
	before := must(e.Capacity())(t)
	rep := must(e.StandbyStep(ctx, sid, "t1", v.ID))(t)
	if !rep.Full || !rep.Applied || rep.Behind != 0 {
		t.Fatalf("first step: %+v, want a full restore, up to date", rep)
	}
	// The copy is reserved like a volume: what it may still allocate.
	img := filepath.Join(e.standbyPath(sid), dataFile)
	alloc := must(fsops.AllocatedBytes(img))(t)
	if after := must(e.Capacity())(t); after.ReservedBytes-before.ReservedBytes != 8*mib-alloc {
		t.Errorf("reserved grew by %d with the copy, want %d (8 MiB - %d allocated)", after.ReservedBytes-before.ReservedBytes, 8*mib-alloc, alloc)
	}
	if rep.SizeBytes != 8*mib || !rep.Block {
		t.Errorf("first step describes the backup as %d bytes, block %t", rep.SizeBytes, rep.Block)
	}
	// Change one block: the next step downloads that block only.
	writeAt(t, e.volumeData(v.ID), 5*mib, pattern(99, 4096))
	want := readFile(t, e.volumeData(v.ID))
	waitBackup(t, e, "b2", v.ID)
	rep = must(e.StandbyStep(ctx, sid, "t1", v.ID))(t)
	if rep.Full || !rep.Applied || rep.Delta.BlocksFetched != 1 {
		t.Fatalf("second step: %+v, want one block fetched", rep)
	}
	assertContent(t, img, want)
	if rep = must(e.StandbyStep(ctx, sid, "t1", v.ID))(t); rep.Applied {
		t.Errorf("an up-to-date standby was changed: %+v", rep)
	}

	// Activation that cannot fit is refused before it begins: the copy
	// keeps following.
	_, err := e.ActivateStandby(ctx, sid, "t1", v.ID, model.CreateVolumeRequest{Name: "dr", Block: true, RequiredBytes: 1 << 50})
	wantErr(t, err, model.ErrResourceExhausted, "activating into more than the data root holds")
	if _, err := os.Stat(filepath.Join(e.standbyPath(sid), activatingFile)); !os.IsNotExist(err) {
		t.Fatalf("a refused activation left %s (%v)", activatingFile, err)
	}
	must(e.StandbyStep(ctx, sid, "t1", v.ID))(t)
	// A raw block backup activates only as a block volume.
	_, err = e.ActivateStandby(ctx, sid, "t1", v.ID, model.CreateVolumeRequest{Name: "dr", FsType: "ext4"})
	wantErr(t, err, model.ErrFailedPrecondition, "activating a block backup as a file system")
	req := model.CreateVolumeRequest{Name: "dr", Block: true, RequiredBytes: 16 * mib}
	vol := must(e.ActivateStandby(ctx, sid, "t1", v.ID, req))(t)
	if vol.SizeBytes != 16*mib || vol.Source == nil || vol.Source.Kind != model.SourceBackup || !model.IsBackupHandle(vol.Source.ID) {
		t.Errorf("activated volume %+v, want 16 MiB from a bs:// handle", vol)
	}
	assertPrefix(t, e.volumeData(vol.ID), want)
	if _, err := os.Stat(e.standbyPath(sid)); !os.IsNotExist(err) {
		t.Errorf("standby directory still there after activation (%v)", err)
	}
	// The node never stages a raw block volume with a file system.
	err = e.StageVolume(ctx, model.StageRequest{VolumeID: vol.ID, StagingPath: filepath.Join(t.TempDir(), "staging"), FsType: "ext4"})
	wantErr(t, err, model.ErrFailedPrecondition, "staging a block volume with a file system")
	// Repeated: the same volume. A step now finds no copy to follow, and
	// never touches the volume.
	again := must(e.ActivateStandby(ctx, sid, "t1", v.ID, req))(t)
	if again.ID != vol.ID {
		t.Errorf("repeated activation gave %s, want %s", again.ID, vol.ID)
	}
	if kept, err := e.DeleteStandby(ctx, sid, "t1", v.ID, false); err != nil || kept != "" {
		t.Errorf("DeleteStandby after activation: kept %q, %v", kept, err)
	}
	assertPrefix(t, e.volumeData(vol.ID), want)
	assertNoLeftovers(t, e)
}

// A crash after activating.json was written (before the volume's commit)
// leaves a copy no step writes; the repeated activation finishes. A crash
// after the commit, with the standby's link still there, is finished too,
// and no step writes through the shared link.
func TestStandbyActivationCrash(t *testing.T) {
	e, v := newBackupEngine(t)
	ctx := context.Background()
	const sid = "sb-1c0ffee0-0000-4000-8000-000000000001"
	want := readFile(t, e.volumeData(v.ID))
	waitBackup(t, e, "b1", v.ID)
	must(e.StandbyStep(ctx, sid, "t1", v.ID))(t)
	vid := model.VolumeIDForName("dr")
	ok(t, writeJSON(filepath.Join(e.standbyPath(sid), activatingFile), &activating{FormatVersion: 1, VolumeID: vid}))
	_, err := e.StandbyStep(ctx, sid, "t1", v.ID)
	wantErr(t, err, model.ErrFailedPrecondition, "a step after activation began")
	_, err = e.ActivateStandby(ctx, sid, "t1", v.ID, model.CreateVolumeRequest{Name: "other", Block: true})
	wantErr(t, err, model.ErrFailedPrecondition, "activating into another volume than begun")

	// Crash after the commit: the volume exists, so does the standby's
	// link to its data. A step must refuse (it would write the volume).
	vol := must(e.ActivateStandby(ctx, sid, "t1", v.ID, model.CreateVolumeRequest{Name: "dr", Block: true}))(t)
	ok(t, os.MkdirAll(e.standbyPath(sid), 0o700))
	ok(t, os.Link(e.volumeData(vol.ID), filepath.Join(e.standbyPath(sid), dataFile)))
	must(os.Create(filepath.Join(e.standbyPath(sid), dataFile+".standby.json")))(t).Close()
	_, err = e.StandbyStep(ctx, sid, "t1", v.ID)
	if err == nil {
		t.Fatal("a step wrote a standby image linked to a volume")
	}
	must(e.ActivateStandby(ctx, sid, "t1", v.ID, model.CreateVolumeRequest{Name: "dr", Block: true}))(t)
	if _, err := os.Stat(e.standbyPath(sid)); !os.IsNotExist(err) {
		t.Errorf("standby directory left after the repeated activation (%v)", err)
	}
	assertPrefix(t, e.volumeData(vol.ID), want)
	assertNoLeftovers(t, e)
}

// Deleting a standby removes its copy while the target holds the backup
// it holds; once the target has lost it, the copy may be the last one and
// is kept unless forced.
func TestDeleteStandbyKeepsLastCopy(t *testing.T) {
	e, v := newBackupEngine(t)
	ctx := context.Background()
	const a, b = "sb-aaaaaaaa-0000-4000-8000-000000000001", "sb-bbbbbbbb-0000-4000-8000-000000000002"
	info := waitBackup(t, e, "b1", v.ID)
	must(e.StandbyStep(ctx, a, "t1", v.ID))(t)
	must(e.StandbyStep(ctx, b, "t1", v.ID))(t)
	if kept := must(e.DeleteStandby(ctx, a, "t1", v.ID, false))(t); kept != "" {
		t.Fatalf("a copy of a backup the target holds was kept: %s", kept)
	}
	if _, err := os.Stat(e.standbyPath(a)); !os.IsNotExist(err) {
		t.Errorf("copy %s still on the data root (%v)", a, err)
	}
	ok(t, e.DeleteBackup(ctx, info.Handle.String()))
	kept := must(e.DeleteStandby(ctx, b, "t1", v.ID, false))(t)
	if kept == "" {
		t.Fatal("the last copy of a deleted backup was removed")
	}
	if _, err := os.Stat(filepath.Join(e.standbyPath(b), dataFile)); err != nil {
		t.Errorf("kept copy is gone: %v", err)
	}
	if kept := must(e.DeleteStandby(ctx, b, "t1", v.ID, true))(t); kept != "" {
		t.Errorf("forced delete kept the copy: %s", kept)
	}
	assertNoLeftovers(t, e)
}
