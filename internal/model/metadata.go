package model

// MetadataQuery asks for a local snapshot's changed-block metadata: the
// ranges that hold data (BaseSnapshotID empty: CSI GetMetadataAllocated)
// or the ranges that changed since an older snapshot of the same volume
// (CSI GetMetadataDelta), from StartingOffset on, at most MaxResults
// ranges per chunk (0: DefaultMetadataChunk; never more than
// MaxMetadataChunk).
type MetadataQuery struct {
	SnapshotID     string
	BaseSnapshotID string
	StartingOffset int64
	MaxResults     int32
}

// BlockRange is a byte range of a volume.
type BlockRange struct {
	Offset int64
	Length int64
}

// MetadataChunk is one message of a metadata stream: every chunk of a
// stream carries the same capacity (the target snapshot's size).
type MetadataChunk struct {
	CapacityBytes int64
	Ranges        []BlockRange
}

// DefaultMetadataChunk is the number of ranges per chunk when the caller
// leaves max_results at 0: about 20 KiB per gRPC message.
const DefaultMetadataChunk = 1024

// MaxMetadataChunk bounds the ranges per chunk whatever max_results asks
// (about 80 KiB per message, inside gRPC's and the node stream's limits).
const MaxMetadataChunk = 4096

// SendRanges streams ordered, disjoint ranges of a volume of capacity
// bytes as chunks, resuming at q.StartingOffset: ranges that end at or
// before it are left out and one that straddles it is cut there. A
// starting offset below 0 or beyond the capacity is ErrOutOfRange. A
// stream without ranges is one empty chunk, so the caller still learns
// the capacity.
func SendRanges(ranges []BlockRange, capacity int64, q MetadataQuery, emit func(MetadataChunk) error) error {
	start := q.StartingOffset
	if start < 0 || start > capacity {
		return Errorf(ErrOutOfRange, "starting_offset %d: want 0 to the volume's size, %d bytes", start, capacity)
	}
	per := int(q.MaxResults)
	if per <= 0 {
		per = DefaultMetadataChunk
	}
	per = min(per, MaxMetadataChunk)
	chunk := MetadataChunk{CapacityBytes: capacity}
	sent := false
	for _, r := range ranges {
		if r.Offset+r.Length <= start {
			continue
		}
		if r.Offset < start {
			r = BlockRange{Offset: start, Length: r.Offset + r.Length - start}
		}
		chunk.Ranges = append(chunk.Ranges, r)
		if len(chunk.Ranges) == per {
			if err := emit(chunk); err != nil {
				return err
			}
			chunk.Ranges, sent = nil, true
		}
	}
	if len(chunk.Ranges) > 0 || !sent {
		return emit(chunk)
	}
	return nil
}
