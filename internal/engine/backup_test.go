package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cairn-csi/cairn/internal/model"
	"github.com/cairn-csi/cairn/internal/objstore"
)

// newBackupEngine is an XFS test engine with a file backup target "t1" and
// a volume "src" of 8 MiB with some data on it.
func newBackupEngine(t *testing.T) (*Engine, *model.Volume) {
	t.Helper()
	requireRoot(t)
	e := newTestEngine(t, "xfs")
	t.Cleanup(e.Close)
	st, err := objstore.Open(context.Background(), "file://"+t.TempDir(), objstore.Credentials{})
	if err != nil {
		t.Fatal(err)
	}
	ok(t, e.SetBackupTarget("t1", st, nil))
	v := must(e.CreateVolume(context.Background(), model.CreateVolumeRequest{Name: "src", RequiredBytes: 8 * mib, Block: true}))(t)
	fillVolume(t, e, v.ID, 7)
	return e, v
}

// waitBackup repeats CreateBackup, as csi-snapshotter does, until the
// backup is committed in its target.
func waitBackup(t *testing.T, e *Engine, name, volumeID string) *model.BackupInfo {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		info, err := e.CreateBackup(context.Background(), name, volumeID, "t1", nil)
		if err != nil {
			t.Fatalf("CreateBackup %s: %v", name, err)
		}
		if info.Ready {
			return info
		}
		if time.Now().After(deadline) {
			t.Fatalf("backup %s not ready after a minute (last error %q)", name, info.LastError)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// lockRefs is how many callers hold or wait for key.
func lockRefs(k *keyLocks, key string) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	if l := k.locks[key]; l != nil {
		return l.refs
	}
	return 0
}

func baseExists(e *Engine, backupID string) bool {
	_, err := os.Stat(filepath.Join(e.jobDir(backupID), dataFile))
	return err == nil
}

// A CreateBackup retry racing a DeleteVolume of its volume: the retry
// holds the backup's lock and wants the volume's, the delete held the
// volume's lock and wanted the backup's to drop the base. Both then waited
// for their deadlines (the retry Aborted, the base could leak). The test
// arranges that interleaving with a hook and bounds every call with a
// timeout, so a deadlock fails it instead of hanging.
func TestCreateBackupRetryRacingDeleteVolume(t *testing.T) {
	e, v := newBackupEngine(t)
	info := waitBackup(t, e, "bk", v.ID)
	bid := info.Handle.BackupID
	if !baseExists(e, bid) {
		t.Fatal("no local base after the backup")
	}

	var (
		once    sync.Once
		delDone = make(chan error, 1)
	)
	e.locks.onLocked = func(key string) {
		if key != bid {
			return
		}
		// The retry holds the backup's lock: the delete runs now, and the
		// retry goes on once the delete waits for the backup's lock (or
		// has finished).
		once.Do(func() {
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				delDone <- e.DeleteVolume(ctx, v.ID)
			}()
			for end := time.Now().Add(5 * time.Second); time.Now().Before(end) && lockRefs(e.locks, bid) < 2 && len(delDone) == 0; {
				time.Sleep(time.Millisecond)
			}
		})
	}
	defer func() { e.locks.onLocked = nil }()

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	got, err := e.CreateBackup(ctx, "bk", v.ID, "t1", nil)
	if err != nil {
		t.Errorf("CreateBackup retry racing DeleteVolume: %v", err)
	} else if !got.Ready || got.Handle != info.Handle {
		t.Errorf("CreateBackup retry answered %+v, want the ready backup %s", got, info.Handle)
	}
	select {
	case err := <-delDone:
		if err != nil {
			t.Errorf("DeleteVolume racing a CreateBackup retry: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("DeleteVolume did not return")
	}
	if _, err := e.GetVolume(context.Background(), v.ID); !errors.Is(err, model.ErrNotFound) {
		t.Errorf("volume still there after DeleteVolume: %v", err)
	}
	if baseExists(e, bid) {
		t.Error("backup base of the deleted volume left on the data root")
	}
}

// A DeleteVolume that cannot take a backup base's lock before its deadline
// used to answer success and leave the base behind for good (its retry saw
// no volume and did nothing). It answers Aborted, and the retry removes the
// base.
func TestDeleteVolumeDeadlineKeepsBaseCleanup(t *testing.T) {
	e, v := newBackupEngine(t)
	bid := waitBackup(t, e, "bk", v.ID).Handle.BackupID

	release := lockOrFail(t, e.locks, bid) // a long operation on the backup
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	err := e.DeleteVolume(ctx, v.ID)
	cancel()
	release()
	if !errors.Is(err, model.ErrAborted) {
		t.Errorf("DeleteVolume while the base's lock is held past its deadline: %v, want ErrAborted", err)
	}
	if _, err := e.GetVolume(context.Background(), v.ID); !errors.Is(err, model.ErrNotFound) {
		t.Errorf("volume still there: %v", err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ok(t, e.DeleteVolume(ctx, v.ID))
	if baseExists(e, bid) {
		t.Error("backup base of the deleted volume left on the data root after DeleteVolume's retry")
	}
}

// A repeated identical CreateVolume from a bs:// handle answered
// AlreadyExists in standalone mode: the existing volume's source (a
// backup) was compared with a request that named none. It answers the same
// volume; a different request for the name is still AlreadyExists.
func TestRepeatedRestoreFromBackup(t *testing.T) {
	e, v := newBackupEngine(t)
	ctx := context.Background()
	handle := waitBackup(t, e, "bk", v.ID).Handle.String()
	req := model.CreateVolumeRequest{Name: "restored", RequiredBytes: 8 * mib, Block: true, SourceSnapshotID: handle, Parameters: map[string]string{"csi.storage.k8s.io/pvc/name": "r"}}
	first := must(e.CreateVolume(ctx, req))(t)
	again, err := e.CreateVolume(ctx, req)
	if err != nil {
		t.Fatalf("repeated identical restore from %s: %v", handle, err)
	}
	if again.ID != first.ID || again.SizeBytes != first.SizeBytes || *again.Source != *first.Source {
		t.Errorf("repeated restore answered %+v, want %+v", again, first)
	}
	for what, r := range map[string]model.CreateVolumeRequest{
		"larger":            {Name: req.Name, RequiredBytes: 16 * mib, Block: true, SourceSnapshotID: handle},
		"filesystem":        {Name: req.Name, RequiredBytes: 8 * mib, SourceSnapshotID: handle},
		"no source":         {Name: req.Name, RequiredBytes: 8 * mib, Block: true},
		"another backup":    {Name: req.Name, RequiredBytes: 8 * mib, Block: true, SourceSnapshotID: "bs://t1/" + v.ID + "/b-00000000000000000000000000000000"},
		"a local snapshot":  {Name: req.Name, RequiredBytes: 8 * mib, Block: true, SourceSnapshotID: model.SnapshotIDForName("x")},
		"a volume as clone": {Name: req.Name, RequiredBytes: 8 * mib, Block: true, SourceVolumeID: v.ID},
	} {
		if _, err := e.CreateVolume(ctx, r); !errors.Is(err, model.ErrAlreadyExists) {
			t.Errorf("restore named %q again, %s: %v, want ErrAlreadyExists", req.Name, what, err)
		}
	}
	ok(t, e.DeleteVolume(ctx, first.ID))
	ok(t, e.DeleteVolume(ctx, v.ID))
}

// An incremental backup takes unchanged blocks from its parent's manifest
// without reading them, and that manifest is re-read from the target: one
// rewritten there since it was committed (here: its entries dropped, still
// a valid manifest) must not make the next backup lose the data.
func TestIncrementalDistrustsRewrittenParent(t *testing.T) {
	e, v := newBackupEngine(t)
	ctx := context.Background()
	want := readFile(t, e.volumeData(v.ID))
	first := waitBackup(t, e, "parent", v.ID)
	repo := must(e.repo(ctx, "t1"))(t)
	m := must(repo.Manifest(ctx, v.ID, first.Handle.BackupID))(t)
	m.Blocks = nil
	b := must(json.Marshal(m))(t)
	ok(t, repo.Store().Put(ctx, "backups/"+v.ID+"/"+first.Handle.BackupID+".json", bytes.NewReader(b), int64(len(b))))
	second := waitBackup(t, e, "child", v.ID) // nothing changed on the volume
	r := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "restored", RequiredBytes: 8 * mib, Block: true, SourceSnapshotID: second.Handle.String()}))(t)
	assertContent(t, e.volumeData(r.ID), want)
}

// VerifyBackup reads one backup back: no problems for an intact one, its
// progress reported to the end; NotFound for a backup the target lacks and
// for a handle that is not one.
func TestVerifyBackup(t *testing.T) {
	e, v := newBackupEngine(t)
	info := waitBackup(t, e, "b1", v.ID)
	var (
		mu          sync.Mutex
		done, total int64
	)
	res := must(e.VerifyBackup(context.Background(), info.Handle.String(), func(d, t int64) {
		// Called from the parallel readers.
		mu.Lock()
		defer mu.Unlock()
		done, total = max(done, d), t
	}))(t)
	if len(res.Problems) != 0 || res.Blocks == 0 || res.Bytes == 0 {
		t.Fatalf("verify: %+v", res)
	}
	if done != res.Bytes || total != res.Bytes {
		t.Errorf("progress ended at %d of %d, want %d", done, total, res.Bytes)
	}
	gone := info.Handle
	gone.BackupID = strings.Repeat("0", 32)
	_, err := e.VerifyBackup(context.Background(), gone.String(), nil)
	wantErr(t, err, model.ErrNotFound, "not found")
	_, err = e.VerifyBackup(context.Background(), "bs://nothing", nil)
	wantErr(t, err, model.ErrNotFound, "well-formed")
}
