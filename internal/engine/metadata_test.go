package engine

import (
	"context"
	"reflect"
	"testing"

	"github.com/cairn-csi/cairn/internal/model"
)

func collectMetadata(t *testing.T, e *Engine, q model.MetadataQuery) ([]model.BlockRange, int64, error) {
	t.Helper()
	var out []model.BlockRange
	var capacity int64 = -1
	err := e.SnapshotMetadata(context.Background(), q, func(c model.MetadataChunk) error {
		if capacity != -1 && c.CapacityBytes != capacity {
			t.Fatalf("capacity changed within a stream: %d then %d", capacity, c.CapacityBytes)
		}
		if q.MaxResults > 0 && len(c.Ranges) > int(q.MaxResults) {
			t.Fatalf("chunk of %d ranges, max_results %d", len(c.Ranges), q.MaxResults)
		}
		capacity = c.CapacityBytes
		out = append(out, c.Ranges...)
		return nil
	})
	return out, capacity, err
}

func br(off, n int64) model.BlockRange { return model.BlockRange{Offset: off, Length: n} }

func TestSnapshotMetadata(t *testing.T) {
	forEachRoot(t, func(t *testing.T, e *Engine) {
		ctx := context.Background()
		vol := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "cbt", RequiredBytes: 64 * mib, Block: true}))(t)
		data := e.volumeData(vol.ID)
		writeAt(t, data, 0, pattern(1, int(mib)))
		writeAt(t, data, 32*mib, pattern(2, int(4*mib)))
		s1 := must(e.CreateSnapshot(ctx, "cbt-1", vol.ID, nil))(t)

		alloc, capacity, err := collectMetadata(t, e, model.MetadataQuery{SnapshotID: s1.ID})
		ok(t, err)
		if want := []model.BlockRange{br(0, mib), br(32*mib, 4*mib)}; capacity != 64*mib || !reflect.DeepEqual(alloc, want) {
			t.Fatalf("allocated = %v (capacity %d), want %v", alloc, capacity, want)
		}

		// Writes between the snapshots: inside old data, into a hole, and
		// (after an expansion) past the old end.
		writeAt(t, data, 33*mib, pattern(3, 8192))
		writeAt(t, data, 10*mib+100, pattern(4, 10))
		must(e.ExpandVolume(ctx, vol.ID, 96*mib, 0))(t)
		writeAt(t, data, 80*mib, pattern(5, int(mib)))
		s2 := must(e.CreateSnapshot(ctx, "cbt-2", vol.ID, nil))(t)

		written := []model.BlockRange{br(10*mib, 4096), br(33*mib, 8192), br(80*mib, mib)}
		delta, capacity, err := collectMetadata(t, e, model.MetadataQuery{SnapshotID: s2.ID, BaseSnapshotID: s1.ID, MaxResults: 2})
		ok(t, err)
		if capacity != 96*mib {
			t.Fatalf("delta capacity %d, want the target's %d", capacity, 96*mib)
		}
		if e.reflink {
			// Shared extents: exactly the written blocks.
			if !reflect.DeepEqual(delta, written) {
				t.Fatalf("delta = %v, want %v", delta, written)
			}
		} else {
			// Copies share nothing: every data range of the target, a
			// superset of what was written.
			all, _, _ := collectMetadata(t, e, model.MetadataQuery{SnapshotID: s2.ID})
			if !reflect.DeepEqual(delta, all) {
				t.Fatalf("delta without reflinks = %v, want the allocated ranges %v", delta, all)
			}
		}
		// Resume in the middle of a range: it comes back cut there.
		i := 0
		for delta[i].Length <= 4096 {
			i++
		}
		from := delta[i].Offset + 4096
		rest, _, err := collectMetadata(t, e, model.MetadataQuery{SnapshotID: s2.ID, BaseSnapshotID: s1.ID, StartingOffset: from})
		ok(t, err)
		if want := append([]model.BlockRange{br(from, delta[i].Length-4096)}, delta[i+1:]...); !reflect.DeepEqual(rest, want) {
			t.Fatalf("resumed delta = %v, want %v", rest, want)
		}

		// Errors.
		_, _, err = collectMetadata(t, e, model.MetadataQuery{SnapshotID: s2.ID, StartingOffset: 96*mib + 1})
		wantErr(t, err, model.ErrOutOfRange, "starting offset past the end")
		_, _, err = collectMetadata(t, e, model.MetadataQuery{SnapshotID: model.SnapshotIDForName("nope")})
		wantErr(t, err, model.ErrNotFound, "missing target")
		_, _, err = collectMetadata(t, e, model.MetadataQuery{SnapshotID: s2.ID, BaseSnapshotID: "garbage"})
		wantErr(t, err, model.ErrNotFound, "malformed base")
		_, _, err = collectMetadata(t, e, model.MetadataQuery{SnapshotID: s2.ID, BaseSnapshotID: s2.ID})
		wantErr(t, err, model.ErrInvalidArgument, "base is the target")
		other := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "other", RequiredBytes: mib, Block: true}))(t)
		os := must(e.CreateSnapshot(ctx, "other-1", other.ID, nil))(t)
		_, _, err = collectMetadata(t, e, model.MetadataQuery{SnapshotID: s2.ID, BaseSnapshotID: os.ID})
		wantErr(t, err, model.ErrInvalidArgument, "base of another volume")
		ok(t, e.DeleteSnapshot(ctx, s1.ID))
		_, _, err = collectMetadata(t, e, model.MetadataQuery{SnapshotID: s2.ID, BaseSnapshotID: s1.ID})
		wantErr(t, err, model.ErrFailedPrecondition, "deleted base")

		for _, id := range []string{s2.ID, os.ID} {
			ok(t, e.DeleteSnapshot(ctx, id))
		}
		for _, id := range []string{vol.ID, other.ID} {
			ok(t, e.DeleteVolume(ctx, id))
		}
	})
}
