package engine

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cairn-csi/cairn/internal/model"
)

// seqWidth is the fixed width of the sequence numbers the writer puts at
// offset 0 of its files: one pwrite each, never a truncate.
const seqWidth = 20

func writeSeq(f *os.File, n int64) error {
	if _, err := f.WriteAt([]byte(fmt.Sprintf("%0*d\n", seqWidth, n)), 0); err != nil {
		return err
	}
	return f.Sync()
}

// readSeqInImage reads the sequence file of an ext4 image without mounting
// it (debugfs).
func readSeqInImage(t *testing.T, img string) int64 {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", "cat /seq", img).Output()
	if err != nil {
		t.Fatalf("debugfs cat /seq in %s: %v", img, err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	if err != nil {
		t.Fatalf("sequence file in %s: %q", img, out)
	}
	return n
}

// A group snapshot is one point in time: while a writer puts a growing
// sequence number into two mounted volumes in lockstep (A, fsync, then B,
// fsync), every group snapshot's members hold numbers a and b with
// a == b or a == b+1, round after round, and the writer keeps going
// between rounds (the file systems are thawed).
func TestGroupSnapshotPointInTime(t *testing.T) {
	forEachRoot(t, func(t *testing.T, e *Engine) {
		ctx := context.Background()
		a, stagingA := stageFS(t, e, "group-a", "ext4")
		b, stagingB := stageFS(t, e, "group-b", "ext4")
		var files []*os.File
		for _, st := range []string{stagingA, stagingB} {
			f, err := os.OpenFile(filepath.Join(st, "seq"), os.O_RDWR|os.O_CREATE, 0o644)
			ok(t, err)
			ok(t, writeSeq(f, 0))
			files = append(files, f)
		}
		var (
			seq      atomic.Int64
			stop     atomic.Bool
			wg       sync.WaitGroup
			writeErr error
		)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := int64(1); !stop.Load(); n++ {
				for _, f := range files {
					if err := writeSeq(f, n); err != nil {
						writeErr = err
						return
					}
				}
				seq.Store(n)
			}
		}()
		const rounds = 12
		var maxFrozen time.Duration
		last := int64(-1)
		for r := 0; r < rounds; r++ {
			for seq.Load() < last+3 && writeErr == nil {
				time.Sleep(time.Millisecond) // the writer moves on between rounds
			}
			name := fmt.Sprintf("round-%d", r)
			g, err := e.CreateGroupSnapshot(ctx, name, []string{b.ID, a.ID}, nil)
			if err != nil {
				stop.Store(true)
				wg.Wait()
				t.Fatalf("round %d: %v", r, err)
			}
			if len(g.Members) != 2 || g.Members[0].SourceVolumeID > g.Members[1].SourceVolumeID {
				t.Fatalf("round %d: members %+v", r, g.Members)
			}
			maxFrozen = max(maxFrozen, g.Frozen)
			got := map[string]int64{}
			for _, m := range g.Members {
				if m.GroupSnapshotID != g.ID || m.ID != model.GroupMemberSnapshotID(name, m.SourceVolumeID) {
					t.Fatalf("round %d: member %+v of group %s", r, m, g.ID)
				}
				got[m.SourceVolumeID] = readSeqInImage(t, filepath.Join(e.snapshotDir(m.ID), dataFile))
			}
			if d := got[a.ID] - got[b.ID]; d != 0 && d != 1 {
				t.Errorf("round %d: member of A holds %d, member of B %d: not one point in time", r, got[a.ID], got[b.ID])
			}
			last = got[a.ID]
			ok(t, e.DeleteGroupSnapshot(ctx, g.ID, nil))
		}
		stop.Store(true)
		wg.Wait()
		ok(t, writeErr)
		t.Logf("%d rounds, writer at %d, longest freeze window %s", rounds, seq.Load(), maxFrozen)
		for _, f := range files {
			f.Close()
		}
		if list := must(e.ListSnapshots(ctx))(t); len(list) != 0 {
			t.Errorf("%d snapshots left after deleting every group", len(list))
		}
		ok(t, e.UnstageVolume(ctx, a.ID, stagingA))
		ok(t, e.UnstageVolume(ctx, b.ID, stagingB))
	})
}

// Group snapshot requests: idempotent by name, AlreadyExists for the same
// name with other volumes or parameters, clear errors for bad input; the
// members are ordinary snapshots that restore; Get and Delete check the
// snapshot IDs they are given.
func TestGroupSnapshotRequests(t *testing.T) {
	forEachRoot(t, func(t *testing.T, e *Engine) {
		ctx := context.Background()
		a := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "ga", RequiredBytes: 8 * mib, Block: true}))(t)
		b := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "gb", RequiredBytes: 8 * mib, Block: true}))(t)
		c := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "gc", RequiredBytes: 8 * mib, Block: true}))(t)
		wantA := fillVolume(t, e, a.ID, 1)
		wantB := fillVolume(t, e, b.ID, 2)
		params := map[string]string{"k": "v"}

		g := must(e.CreateGroupSnapshot(ctx, "g1", []string{a.ID, b.ID}, params))(t)
		if g.ID != model.GroupSnapshotIDForName("g1") || len(g.Members) != 2 {
			t.Fatalf("group %+v", g)
		}
		again := must(e.CreateGroupSnapshot(ctx, "g1", []string{b.ID, a.ID}, params))(t)
		if again.ID != g.ID || !again.CreatedAt.Equal(g.CreatedAt) {
			t.Fatalf("repeated create returned %+v, want the first group", again)
		}
		_, err := e.CreateGroupSnapshot(ctx, "g1", []string{a.ID, c.ID}, params)
		wantErr(t, err, model.ErrAlreadyExists, "same name, other volumes")
		_, err = e.CreateGroupSnapshot(ctx, "g1", []string{a.ID, b.ID}, map[string]string{"k": "w"})
		wantErr(t, err, model.ErrAlreadyExists, "same name, other parameters")
		_, err = e.CreateGroupSnapshot(ctx, "", []string{a.ID}, nil)
		wantErr(t, err, model.ErrInvalidArgument, "no name")
		_, err = e.CreateGroupSnapshot(ctx, "g2", nil, nil)
		wantErr(t, err, model.ErrInvalidArgument, "no volumes")
		_, err = e.CreateGroupSnapshot(ctx, "g2", []string{a.ID, a.ID}, nil)
		wantErr(t, err, model.ErrInvalidArgument, "a volume twice")
		_, err = e.CreateGroupSnapshot(ctx, "g2", []string{a.ID, model.VolumeIDForName("missing")}, nil)
		wantErr(t, err, model.ErrNotFound, "a missing volume")
		_, err = e.CreateGroupSnapshot(ctx, "g2", []string{a.ID, "../../etc"}, nil)
		wantErr(t, err, model.ErrNotFound, "a malformed volume ID")
		if list := must(e.ListSnapshots(ctx))(t); len(list) != 2 {
			t.Fatalf("%d snapshots after the failed creates, want the 2 members", len(list))
		}

		// Writes after the group do not reach its members; members restore.
		writeAt(t, e.volumeData(a.ID), 0, pattern(9, 4096))
		for _, m := range g.Members {
			want := map[string][]byte{a.ID: wantA, b.ID: wantB}[m.SourceVolumeID]
			if want == nil || m.GroupSnapshotID != g.ID {
				t.Fatalf("member %+v", m)
			}
			r := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "restore-" + m.ID, SourceSnapshotID: m.ID, Block: true}))(t)
			assertContent(t, e.volumeData(r.ID), want)
			ok(t, e.DeleteVolume(ctx, r.ID))
		}

		got := must(e.GetGroupSnapshot(ctx, g.ID, []string{g.Members[1].ID}))(t)
		if len(got.Members) != 2 {
			t.Fatalf("GetGroupSnapshot = %+v", got)
		}
		_, err = e.GetGroupSnapshot(ctx, g.ID, []string{model.SnapshotIDForName("other")})
		wantErr(t, err, model.ErrInvalidArgument, "Get with a snapshot of no member")
		_, err = e.GetGroupSnapshot(ctx, model.GroupSnapshotIDForName("nope"), nil)
		wantErr(t, err, model.ErrNotFound, "Get of a missing group")
		_, err = e.GetGroupSnapshot(ctx, "../x", nil)
		wantErr(t, err, model.ErrNotFound, "Get of a malformed ID")
		err = e.DeleteGroupSnapshot(ctx, g.ID, []string{model.SnapshotIDForName("other")})
		wantErr(t, err, model.ErrInvalidArgument, "Delete with a snapshot of no member")

		ok(t, e.DeleteGroupSnapshot(ctx, g.ID, []string{g.Members[0].ID, g.Members[1].ID}))
		ok(t, e.DeleteGroupSnapshot(ctx, g.ID, nil)) // idempotent
		ok(t, e.DeleteGroupSnapshot(ctx, "garbage", nil))
		if list := must(e.ListSnapshots(ctx))(t); len(list) != 0 {
			t.Fatalf("%d snapshots left after the delete", len(list))
		}
		for _, v := range []*model.Volume{a, b, c} {
			ok(t, e.DeleteVolume(ctx, v.ID))
		}
		assertNoLeftovers(t, e)
	})
}

// A crash after the members were renamed into snapshots/ but before the
// group was committed leaves members of no group: start-up removes them,
// and a retried create takes the group again at a new point in time.
func TestGroupSnapshotCrashBeforeCommit(t *testing.T) {
	forEachRoot(t, func(t *testing.T, e *Engine) {
		ctx := context.Background()
		a := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "ca", RequiredBytes: 8 * mib, Block: true}))(t)
		b := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "cb", RequiredBytes: 8 * mib, Block: true}))(t)
		g := must(e.CreateGroupSnapshot(ctx, "crash", []string{a.ID, b.ID}, nil))(t)
		// What the crash leaves: members, no group.json.
		ok(t, os.RemoveAll(e.groupDir(g.ID)))
		plain := must(e.CreateSnapshot(ctx, "plain", a.ID, nil))(t)

		// A retry in the same process takes the members again.
		want := fillVolume(t, e, a.ID, 7)
		g2 := must(e.CreateGroupSnapshot(ctx, "crash", []string{a.ID, b.ID}, nil))(t)
		for _, m := range g2.Members {
			if m.SourceVolumeID == a.ID {
				assertContent(t, filepath.Join(e.snapshotDir(m.ID), dataFile), want)
			}
		}

		// After a restart: members of an uncommitted group go, the group's
		// and other snapshots stay.
		ok(t, os.RemoveAll(e.groupDir(g2.ID)))
		e2 := reopen(t, e)
		list := must(e2.ListSnapshots(ctx))(t)
		if len(list) != 1 || list[0].ID != plain.ID {
			t.Fatalf("after restart: %d snapshots (%v), want only %s", len(list), list, plain.ID)
		}
		g3 := must(e2.CreateGroupSnapshot(ctx, "kept", []string{a.ID, b.ID}, nil))(t)
		e3 := reopen(t, e2)
		if got := must(e3.GetGroupSnapshot(ctx, g3.ID, nil))(t); len(got.Members) != 2 {
			t.Fatalf("a committed group lost members at restart: %+v", got)
		}
		ok(t, e3.DeleteGroupSnapshot(ctx, g3.ID, nil))
		ok(t, e3.DeleteSnapshot(ctx, plain.ID))
		for _, v := range []*model.Volume{a, b} {
			ok(t, e3.DeleteVolume(ctx, v.ID))
		}
		assertNoLeftovers(t, e3)
	})
}
