package model

import (
	"errors"
	"reflect"
	"testing"
)

func TestSendRanges(t *testing.T) {
	rs := []BlockRange{{0, 10}, {20, 10}, {40, 10}, {60, 40}}
	collect := func(q MetadataQuery) ([]MetadataChunk, error) {
		var out []MetadataChunk
		err := SendRanges(rs, 100, q, func(c MetadataChunk) error { out = append(out, c); return nil })
		return out, err
	}
	got, err := collect(MetadataQuery{MaxResults: 3})
	want := []MetadataChunk{{100, []BlockRange{{0, 10}, {20, 10}, {40, 10}}}, {100, []BlockRange{{60, 40}}}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("max 3: %v %v, want %v", got, err, want)
	}
	got, _ = collect(MetadataQuery{StartingOffset: 25})
	want = []MetadataChunk{{100, []BlockRange{{25, 5}, {40, 10}, {60, 40}}}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("resume at 25: %v, want %v", got, want)
	}
	got, _ = collect(MetadataQuery{StartingOffset: 30, MaxResults: 1})
	want = []MetadataChunk{{100, []BlockRange{{40, 10}}}, {100, []BlockRange{{60, 40}}}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("resume at 30: %v, want %v", got, want)
	}
	got, _ = collect(MetadataQuery{StartingOffset: 100})
	if want := []MetadataChunk{{CapacityBytes: 100}}; !reflect.DeepEqual(got, want) {
		t.Fatalf("at the end: %v, want one empty chunk", got)
	}
	// Exactly max ranges: no trailing empty chunk.
	got, _ = collect(MetadataQuery{MaxResults: 4})
	if len(got) != 1 {
		t.Fatalf("max 4: %d chunks, want 1", len(got))
	}
	for _, off := range []int64{-1, 101} {
		if _, err := collect(MetadataQuery{StartingOffset: off}); !errors.Is(err, ErrOutOfRange) {
			t.Fatalf("starting offset %d: %v, want ErrOutOfRange", off, err)
		}
	}
	// max_results beyond the cap is cut to MaxMetadataChunk.
	many := make([]BlockRange, MaxMetadataChunk+1)
	for i := range many {
		many[i] = BlockRange{Offset: int64(2 * i), Length: 1}
	}
	var sizes []int
	if err := SendRanges(many, int64(2*len(many)), MetadataQuery{MaxResults: 1 << 30}, func(c MetadataChunk) error { sizes = append(sizes, len(c.Ranges)); return nil }); err != nil ||
		!reflect.DeepEqual(sizes, []int{MaxMetadataChunk, 1}) {
		t.Fatalf("huge max_results: chunks %v %v, want [%d 1]", sizes, err, MaxMetadataChunk)
	}
	stop := errors.New("stop")
	if err := SendRanges(rs, 100, MetadataQuery{MaxResults: 1}, func(MetadataChunk) error { return stop }); err != stop {
		t.Fatalf("emit error: %v", err)
	}
}
