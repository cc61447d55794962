package kube

import (
	"bytes"
	"errors"
	"net/url"
	"reflect"
	"strings"
	"testing"

	"github.com/cairn-csi/cairn/internal/model"
)

func TestMetadataStream(t *testing.T) {
	chunks := []model.MetadataChunk{
		{CapacityBytes: 1 << 30, Ranges: []model.BlockRange{{Offset: 0, Length: 4096}, {Offset: 1 << 20, Length: 8192}}},
		{CapacityBytes: 1 << 30, Ranges: []model.BlockRange{{Offset: 2 << 20, Length: 4096}}},
	}
	read := func(body string) ([]model.MetadataChunk, error) {
		var got []model.MetadataChunk
		err := ReadMetadata(strings.NewReader(body), func(c model.MetadataChunk) error { got = append(got, c); return nil })
		return got, err
	}
	var buf bytes.Buffer
	flushes := 0
	w := NewMetadataWriter(&buf, func() { flushes++ })
	for _, c := range chunks {
		if err := w.Chunk(c); err != nil {
			t.Fatal(err)
		}
	}
	full := buf.String()
	if err := w.End(nil); err != nil || flushes != 3 {
		t.Fatalf("end: %v, %d flushes", err, flushes)
	}
	got, err := read(buf.String())
	if err != nil || !reflect.DeepEqual(got, chunks) {
		t.Fatalf("round trip: %+v %v, want %+v", got, err, chunks)
	}

	// Without done, the stream is an error, not a short answer.
	if got, err := read(full); model.KindOf(err) != model.ErrUnavailable || len(got) != 2 {
		t.Fatalf("no done: %d chunks, %v; want 2 and ErrUnavailable", len(got), err)
	}
	// An error line keeps its kind.
	buf.Reset()
	w = NewMetadataWriter(&buf, nil)
	w.Chunk(chunks[0])
	w.End(model.Errorf(model.ErrFailedPrecondition, "base snapshot s-1 was deleted"))
	if _, err := read(buf.String()); model.KindOf(err) != model.ErrFailedPrecondition || !strings.Contains(err.Error(), "s-1 was deleted") {
		t.Fatalf("error line: %v", err)
	}
	// Malformed, empty and overlong lines.
	for name, body := range map[string]string{
		"not JSON":           "{\"capacityBytes\": 1, \n",
		"empty line":         "{}\n",
		"done first":         `{"done":true}` + "\n",
		"done with ranges":   `{"capacityBytes": 1, "ranges": [[0,1]]}` + "\n" + `{"done":true, "ranges": [[2,1]]}` + "\n",
		"empty chunk second": `{"capacityBytes": 8, "ranges": [[0,1]]}` + "\n" + `{"capacityBytes": 8}` + "\n" + `{"done":true}` + "\n",
		"too long":           `{"capacityBytes": 1, "ranges": [` + strings.Repeat("[0,1],", MaxMetadataLine/6) + "[0,1]]}\n" + `{"done":true}` + "\n",
	} {
		if _, err := read(body); model.KindOf(err) != model.ErrUnavailable {
			t.Errorf("%s: %v, want ErrUnavailable", name, err)
		}
	}
	// A snapshot without data: one empty chunk, then done.
	buf.Reset()
	w = NewMetadataWriter(&buf, nil)
	w.Chunk(model.MetadataChunk{CapacityBytes: 5})
	w.End(nil)
	if got, err := read(buf.String()); err != nil || len(got) != 1 || got[0].CapacityBytes != 5 || len(got[0].Ranges) != 0 {
		t.Fatalf("an empty stream: %+v %v", got, err)
	}
	stop := errors.New("stop")
	if err := ReadMetadata(strings.NewReader(full), func(model.MetadataChunk) error { return stop }); err != stop {
		t.Fatalf("emit's error: %v", err)
	}
}

func TestMetadataQuery(t *testing.T) {
	for _, q := range []model.MetadataQuery{
		{SnapshotID: "s-0123"},
		{SnapshotID: "s-0123", BaseSnapshotID: "s-4567", StartingOffset: 1 << 40, MaxResults: 7},
	} {
		u, err := url.Parse(MetadataPath(q))
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParseMetadataQuery(strings.TrimSuffix(strings.TrimPrefix(u.Path, "/v1/snapshots/"), "/metadata"), u.Query())
		if err != nil || got != q {
			t.Fatalf("%s: %+v %v, want %+v", u, got, err, q)
		}
	}
	for _, v := range []string{"start=x", "start=1.5", "max=-1", "max=99999999999"} {
		vals, _ := url.ParseQuery(v)
		if _, err := ParseMetadataQuery("s-1", vals); model.KindOf(err) != model.ErrInvalidArgument || !strings.Contains(err.Error(), strings.Split(v, "=")[0]) {
			t.Errorf("%s: %v, want ErrInvalidArgument naming the parameter", v, err)
		}
	}
}
