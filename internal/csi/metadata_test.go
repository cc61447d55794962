package csi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/cairn-csi/cairn/internal/model"
)

// metadataBackend serves fixed ranges through model.SendRanges, or the
// chunks in bad verbatim.
type metadataBackend struct {
	fakeBackend
	ranges []model.BlockRange
	bad    []model.MetadataChunk
	calls  int
	last   model.MetadataQuery
}

func (b *metadataBackend) SnapshotMetadata(_ context.Context, q model.MetadataQuery, emit func(model.MetadataChunk) error) error {
	b.calls++
	b.last = q
	if q.SnapshotID != "s-1" {
		return model.Errorf(model.ErrNotFound, "snapshot %q not found", q.SnapshotID)
	}
	if b.bad != nil {
		for _, c := range b.bad {
			if err := emit(c); err != nil {
				return err
			}
		}
		return nil
	}
	return model.SendRanges(b.ranges, 1000, q, emit)
}

func metadataClient(t *testing.T, b *metadataBackend) csipb.SnapshotMetadataClient {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "csi.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewGRPCServer()
	New(nil, b, Options{}).Register(srv, true, false)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return csipb.NewSnapshotMetadataClient(conn)
}

func readDelta(t *testing.T, c csipb.SnapshotMetadataClient, req *csipb.GetMetadataDeltaRequest) ([]*csipb.GetMetadataDeltaResponse, error) {
	t.Helper()
	st, err := c.GetMetadataDelta(context.Background(), req)
	if err != nil {
		return nil, err
	}
	var out []*csipb.GetMetadataDeltaResponse
	for {
		r, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, r)
	}
}

func rng(off, n int64) model.BlockRange { return model.BlockRange{Offset: off, Length: n} }

func chunk(capacity int64, rs ...model.BlockRange) model.MetadataChunk {
	return model.MetadataChunk{CapacityBytes: capacity, Ranges: rs}
}

func TestSnapshotMetadataService(t *testing.T) {
	b := &metadataBackend{fakeBackend: fakeBackend{t: t}, ranges: []model.BlockRange{rng(0, 100), rng(200, 100), rng(500, 500)}}
	c := metadataClient(t, b)
	ctx := context.Background()

	caps, _ := (&identityServer{s: New(nil, b, Options{}), controller: true}).GetPluginCapabilities(ctx, &csipb.GetPluginCapabilitiesRequest{})
	if !strings.Contains(caps.String(), "SNAPSHOT_METADATA_SERVICE") {
		t.Errorf("plugin capabilities %v lack SNAPSHOT_METADATA_SERVICE", caps)
	}
	if _, ok := New(nil, &fakeBackend{t: t}, Options{}).metadata(); ok {
		t.Error("a backend without metadata gets the service")
	}

	st, err := c.GetMetadataAllocated(ctx, &csipb.GetMetadataAllocatedRequest{SnapshotId: "s-1", StartingOffset: 250, MaxResults: 1})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		r, err := st.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if r.GetBlockMetadataType() != csipb.BlockMetadataType_VARIABLE_LENGTH || r.GetVolumeCapacityBytes() != 1000 || len(r.GetBlockMetadata()) != 1 {
			t.Fatalf("message %v", r)
		}
		m := r.GetBlockMetadata()[0]
		got = append(got, fmt.Sprintf("%d+%d", m.GetByteOffset(), m.GetSizeBytes()))
	}
	if want := "250+50|500+500"; strings.Join(got, "|") != want {
		t.Fatalf("allocated from 250 = %q, want %q", strings.Join(got, "|"), want)
	}
	resp, err := readDelta(t, c, &csipb.GetMetadataDeltaRequest{BaseSnapshotId: "s-0", TargetSnapshotId: "s-1"})
	if err != nil || len(resp) != 1 || len(resp[0].GetBlockMetadata()) != 3 || b.last.BaseSnapshotID != "s-0" {
		t.Fatalf("delta: %v %v (query %+v)", resp, err, b.last)
	}

	b.calls = 0
	for what, tc := range map[string]struct {
		req  *csipb.GetMetadataDeltaRequest
		code codes.Code
		text string
	}{
		"no base":       {&csipb.GetMetadataDeltaRequest{TargetSnapshotId: "s-1"}, codes.InvalidArgument, "base_snapshot_id"},
		"no target":     {&csipb.GetMetadataDeltaRequest{BaseSnapshotId: "s-0"}, codes.InvalidArgument, "target_snapshot_id"},
		"negative max":  {&csipb.GetMetadataDeltaRequest{BaseSnapshotId: "s-0", TargetSnapshotId: "s-1", MaxResults: -1}, codes.InvalidArgument, "max_results"},
		"backup target": {&csipb.GetMetadataDeltaRequest{BaseSnapshotId: "s-0", TargetSnapshotId: "bs://t/v/b-1"}, codes.InvalidArgument, "local snapshots only"},
		"backup base":   {&csipb.GetMetadataDeltaRequest{BaseSnapshotId: "bs://t/v/b-1", TargetSnapshotId: "s-1"}, codes.InvalidArgument, "base_snapshot_id"},
	} {
		if _, err := readDelta(t, c, tc.req); status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.text) {
			t.Errorf("%s: %v, want %v naming %s", what, err, tc.code, tc.text)
		}
	}
	if b.calls != 0 {
		t.Errorf("%d invalid requests reached the backend", b.calls)
	}
	for what, tc := range map[string]struct {
		req  *csipb.GetMetadataDeltaRequest
		code codes.Code
	}{
		"missing target": {&csipb.GetMetadataDeltaRequest{BaseSnapshotId: "s-0", TargetSnapshotId: "s-2"}, codes.NotFound},
		"negative start": {&csipb.GetMetadataDeltaRequest{BaseSnapshotId: "s-0", TargetSnapshotId: "s-1", StartingOffset: -1}, codes.OutOfRange},
		"start past end": {&csipb.GetMetadataDeltaRequest{BaseSnapshotId: "s-0", TargetSnapshotId: "s-1", StartingOffset: 1001}, codes.OutOfRange},
	} {
		if _, err := readDelta(t, c, tc.req); status.Code(err) != tc.code {
			t.Errorf("%s: %v, want %v", what, err, tc.code)
		}
	}

	// A backend that breaks the stream rules is stopped before a bad
	// message leaves.
	for what, bad := range map[string][]model.MetadataChunk{
		"capacity changes": {chunk(1000, rng(0, 10)), chunk(999, rng(20, 10))},
		"overlap":          {chunk(1000, rng(0, 10)), chunk(1000, rng(5, 10))},
		"past the end":     {chunk(1000, rng(990, 20))},
		"empty range":      {chunk(1000, rng(10, 0))},
	} {
		b.bad = bad
		resp, err := readDelta(t, c, &csipb.GetMetadataDeltaRequest{BaseSnapshotId: "s-0", TargetSnapshotId: "s-1"})
		if status.Code(err) != codes.Internal || len(resp) >= len(bad) {
			t.Errorf("%s: %d messages, %v; want Internal before the bad one", what, len(resp), err)
		}
	}
}
