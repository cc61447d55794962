package csi

import (
	"context"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cairn-csi/cairn/internal/model"
)

// MetadataBackend is what the SnapshotMetadata service (changed-block
// tracking, docs/CBT.md) drives. A controller backend that implements it
// gets the service and the plugin capability SNAPSHOT_METADATA_SERVICE.
// Queries reaching it are validated; it emits chunks that follow
// model.SendRanges, and this layer checks them again before they leave
// (the spec's stream rules are the driver's to keep).
type MetadataBackend interface {
	SnapshotMetadata(ctx context.Context, q model.MetadataQuery, emit func(model.MetadataChunk) error) error
}

// metadata returns the controller backend's snapshot metadata, if it has it.
func (s *Services) metadata() (MetadataBackend, bool) {
	m, ok := s.backend.(MetadataBackend)
	return m, ok
}

type snapshotMetadataServer struct {
	csipb.UnimplementedSnapshotMetadataServer
	m MetadataBackend
}

func (m *snapshotMetadataServer) GetMetadataAllocated(req *csipb.GetMetadataAllocatedRequest, stream csipb.SnapshotMetadata_GetMetadataAllocatedServer) error {
	q, err := metadataQuery(req.GetSnapshotId(), "snapshot_id", "", req.GetStartingOffset(), req.GetMaxResults())
	if err != nil {
		return err
	}
	return m.run(stream.Context(), q, func(typ csipb.BlockMetadataType, capacity int64, blocks []*csipb.BlockMetadata) error {
		return stream.Send(&csipb.GetMetadataAllocatedResponse{BlockMetadataType: typ, VolumeCapacityBytes: capacity, BlockMetadata: blocks})
	})
}

func (m *snapshotMetadataServer) GetMetadataDelta(req *csipb.GetMetadataDeltaRequest, stream csipb.SnapshotMetadata_GetMetadataDeltaServer) error {
	if err := required(req.GetBaseSnapshotId(), "base_snapshot_id"); err != nil {
		return err
	}
	q, err := metadataQuery(req.GetTargetSnapshotId(), "target_snapshot_id", req.GetBaseSnapshotId(), req.GetStartingOffset(), req.GetMaxResults())
	if err != nil {
		return err
	}
	return m.run(stream.Context(), q, func(typ csipb.BlockMetadataType, capacity int64, blocks []*csipb.BlockMetadata) error {
		return stream.Send(&csipb.GetMetadataDeltaResponse{BlockMetadataType: typ, VolumeCapacityBytes: capacity, BlockMetadata: blocks})
	})
}

// metadataQuery validates the fields both requests share.
func metadataQuery(id, field, base string, start int64, maxResults int32) (model.MetadataQuery, error) {
	q := model.MetadataQuery{SnapshotID: id, BaseSnapshotID: base, StartingOffset: start, MaxResults: maxResults}
	if err := required(id, field); err != nil {
		return q, err
	}
	for _, f := range []struct{ name, id string }{{field, id}, {"base_snapshot_id", base}} {
		if model.IsBackupHandle(f.id) {
			return q, invalid("%s %q is a backup in a backup target; changed-block metadata is served for local snapshots only", f.name, f.id)
		}
	}
	if maxResults < 0 {
		return q, invalid("max_results %d: want 0 (the driver chooses) or more", maxResults)
	}
	return q, nil
}

// run streams the backend's chunks as VARIABLE_LENGTH messages, checking
// that every message keeps the spec's rules: one capacity, at most
// max_results tuples, each non-empty, inside the volume, strictly
// increasing and disjoint across the whole stream, none ending at or
// before starting_offset.
func (m *snapshotMetadataServer) run(ctx context.Context, q model.MetadataQuery, send func(csipb.BlockMetadataType, int64, []*csipb.BlockMetadata) error) error {
	capacity := int64(-1)
	next := q.StartingOffset // no tuple may end at or before it
	prevEnd := int64(-1)
	err := m.m.SnapshotMetadata(ctx, q, func(c model.MetadataChunk) error {
		if capacity == -1 {
			capacity = c.CapacityBytes
		}
		switch {
		case c.CapacityBytes != capacity || capacity <= 0:
			return status.Errorf(codes.Internal, "metadata stream: capacity %d after %d", c.CapacityBytes, capacity)
		case q.MaxResults > 0 && len(c.Ranges) > int(q.MaxResults):
			return status.Errorf(codes.Internal, "metadata stream: %d ranges in a chunk, max_results %d", len(c.Ranges), q.MaxResults)
		}
		blocks := make([]*csipb.BlockMetadata, len(c.Ranges))
		for i, r := range c.Ranges {
			end := r.Offset + r.Length
			if r.Length <= 0 || r.Offset < 0 || end > capacity || end <= next || r.Offset < prevEnd {
				return status.Errorf(codes.Internal, "metadata stream: range (%d, %d) out of order or outside the volume of %d bytes", r.Offset, r.Length, capacity)
			}
			prevEnd = end
			blocks[i] = &csipb.BlockMetadata{ByteOffset: r.Offset, SizeBytes: r.Length}
		}
		return send(csipb.BlockMetadataType_VARIABLE_LENGTH, capacity, blocks)
	})
	return toStatus(err)
}
