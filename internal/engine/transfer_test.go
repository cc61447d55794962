package engine

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zeebo/blake3"

	"github.com/cairn-csi/cairn/internal/fsops"
	"github.com/cairn-csi/cairn/internal/model"
)

// streamOf is the transfer stream of a local source, as its node sends it.
func streamOf(t *testing.T, e *Engine, src model.Source) []byte {
	t.Helper()
	x, err := e.OpenSource(context.Background(), src)
	if err != nil {
		t.Fatalf("open %v: %v", src, err)
	}
	defer x.Close()
	var buf bytes.Buffer
	ok(t, x.WriteTo(context.Background(), &buf))
	return buf.Bytes()
}

func fetchBytes(b []byte) Fetch {
	return func(context.Context) (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
}

func TestCopyFromAnotherNode(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	a, b := newTestEngine(t, "xfs"), newTestEngine(t, "xfs")
	vol := must(a.CreateVolume(ctx, model.CreateVolumeRequest{Name: "src", RequiredBytes: 256 * mib, Block: true}))(t)
	want := fillVolume(t, a, vol.ID, 7)
	snap := must(a.CreateSnapshot(ctx, "snap", vol.ID, nil))(t)
	// Written after the snapshot: the snapshot's copy must not have it,
	// the volume's must.
	later := pattern(99, 8192)
	writeAt(t, a.volumeData(vol.ID), 10*mib, later)

	stream := streamOf(t, a, model.Source{Kind: model.SourceSnapshot, ID: snap.ID})
	if int64(len(stream)) > 4*mib {
		t.Errorf("stream of a volume with ~1 MiB of data has %d bytes: holes are sent", len(stream))
	}
	req := model.CreateVolumeRequest{Name: "copy", RequiredBytes: 300 * mib, Block: true, SourceSnapshotID: snap.ID}
	got := must(b.ImportVolume(ctx, req, "node-a", fetchBytes(stream)))(t)
	if got.SizeBytes != 300*mib || got.Source == nil || *got.Source != (model.Source{Kind: model.SourceSnapshot, ID: snap.ID}) {
		t.Fatalf("copied volume %+v", got)
	}
	assertPrefix(t, b.volumeData(got.ID), want)
	assertZeros(t, b.volumeData(got.ID), int64(len(want)), 300*mib-int64(len(want)))
	if alloc, _ := fsops.AllocatedBytes(b.volumeData(got.ID)); alloc > 4*mib {
		t.Errorf("copied volume allocates %d bytes: holes were filled", alloc)
	}
	if m, err := b.loadVolume(got.ID); err != nil || m.SourceNode != "node-a" {
		t.Errorf("volume.json sourceNode: %+v %v", m, err)
	}
	// A repeated request answers from the volume without fetching again;
	// an incompatible one is AlreadyExists.
	noFetch := func(context.Context) (io.ReadCloser, error) { return nil, errors.New("fetched again") }
	must(b.ImportVolume(ctx, req, "node-a", noFetch))(t)
	_, err := b.ImportVolume(ctx, model.CreateVolumeRequest{Name: "copy", RequiredBytes: 300 * mib, Block: true, SourceVolumeID: vol.ID}, "node-a", noFetch)
	wantErr(t, err, model.ErrAlreadyExists, "same name, other source")

	// A volume's copy is its current data.
	want = readFile(t, a.volumeData(vol.ID))
	clone := must(b.ImportVolume(ctx, model.CreateVolumeRequest{Name: "clone", Block: true, SourceVolumeID: vol.ID}, "node-a",
		fetchBytes(streamOf(t, a, model.Source{Kind: model.SourceVolume, ID: vol.ID}))))(t)
	assertContent(t, b.volumeData(clone.ID), want)
	assertNoLeftovers(t, a)
	assertNoLeftovers(t, b)

	// Too small a limit, unknown sources.
	_, err = b.ImportVolume(ctx, model.CreateVolumeRequest{Name: "small", Block: true, LimitBytes: mib, SourceSnapshotID: snap.ID}, "node-a", fetchBytes(stream))
	wantErr(t, err, model.ErrOutOfRange, "limit below the source's size")
	_, err = a.OpenSource(ctx, model.Source{Kind: model.SourceSnapshot, ID: model.SnapshotIDForName("nope")})
	wantErr(t, err, model.ErrNotFound, "unknown snapshot")
	_, err = b.ImportVolume(ctx, model.CreateVolumeRequest{Name: "none", Block: true}, "node-a", fetchBytes(stream))
	wantErr(t, err, model.ErrInvalidArgument, "no source")
	assertNoLeftovers(t, b)
}

// record is one data record of a hand-made stream.
type record struct {
	off  uint64
	data []byte
}

// makeStream builds a stream from a raw header and records, with a
// correct end record unless end is given.
func makeStream(header string, recs []record, end []byte) []byte {
	var b bytes.Buffer
	b.WriteString(xferMagic)
	binary.Write(&b, binary.BigEndian, uint32(len(header)))
	b.WriteString(header)
	for _, r := range recs {
		binary.Write(&b, binary.BigEndian, r.off)
		binary.Write(&b, binary.BigEndian, uint32(len(r.data)))
		b.Write(r.data)
	}
	sum := blake3.Sum256(b.Bytes())
	binary.Write(&b, binary.BigEndian, xferEnd)
	binary.Write(&b, binary.BigEndian, uint32(xferHashLen))
	if end == nil {
		end = sum[:]
	}
	b.Write(end)
	return b.Bytes()
}

func TestCopyRefusesBadStreams(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	e := newTestEngine(t, "xfs")
	const hdr = `{"sizeBytes":16777216,"block":true,"fsType":""}`
	data := pattern(1, 4096)
	good := makeStream(hdr, []record{{0, data}, {1 << 20, data}}, nil)
	flipped := bytes.Clone(good)
	flipped[len(xferMagic)+4+len(hdr)+12+100] ^= 1
	cases := map[string][]byte{
		"data byte flipped":    flipped,
		"truncated in data":    good[:len(good)-len(data)-50],
		"truncated in end":     good[:len(good)-5],
		"no end record":        good[:len(good)-44],
		"empty":                nil,
		"trailing byte":        append(bytes.Clone(good), 0),
		"wrong magic":          append([]byte("CAIRNXF9"), good[8:]...),
		"wrong hash":           makeStream(hdr, []record{{0, data}}, make([]byte, 32)),
		"empty header":         makeStream("", nil, nil),
		"unknown header field": makeStream(`{"sizeBytes":16777216,"extra":1}`, nil, nil),
		"zero size":            makeStream(`{"sizeBytes":0}`, nil, nil),
		"negative size":        makeStream(`{"sizeBytes":-4096}`, nil, nil),
		"unknown fsType":       makeStream(`{"sizeBytes":16777216,"fsType":"btrfs"}`, nil, nil),
		"record past the end":  makeStream(hdr, []record{{16<<20 - 100, data}}, nil),
		"record far past":      makeStream(hdr, []record{{1 << 62, data}}, nil),
		"overlapping records":  makeStream(hdr, []record{{0, data}, {2048, data}}, nil),
		"descending records":   makeStream(hdr, []record{{1 << 20, data}, {0, data}}, nil),
		"empty record":         makeStream(hdr, []record{{0, nil}}, nil),
	}
	huge := []byte(xferMagic + "\xff\xff\xff\xff")
	cases["header length 4 GiB"] = huge
	bigRec := makeStream(hdr, nil, nil)
	bigRec = append(bigRec[:len(xferMagic)+4+len(hdr)], 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x40, 0x00, 0x01)
	cases["record longer than 4 MiB"] = bigRec
	for what, stream := range cases {
		t.Run(what, func(t *testing.T) {
			req := model.CreateVolumeRequest{Name: "bad", Block: true, SourceSnapshotID: model.SnapshotIDForName("x")}
			_, err := e.ImportVolume(ctx, req, "node-a", fetchBytes(stream))
			wantErr(t, err, model.ErrUnavailable, what)
			if !strings.Contains(err.Error(), "bad transfer stream") {
				t.Errorf("error does not say the stream is bad: %v", err)
			}
			if _, err := e.GetVolume(ctx, model.VolumeIDForName("bad")); !errors.Is(err, model.ErrNotFound) {
				t.Errorf("a volume was committed from a bad stream: %v", err)
			}
			assertNoLeftovers(t, e)
		})
	}
	// The good stream, for contrast, makes the volume.
	v := must(e.ImportVolume(ctx, model.CreateVolumeRequest{Name: "good", Block: true, SourceSnapshotID: model.SnapshotIDForName("x")}, "node-a", fetchBytes(good)))(t)
	if v.SizeBytes != 16*mib {
		t.Errorf("good stream: %+v", v)
	}
	assertPrefix(t, e.volumeData(v.ID), data)
}

func TestCopyInProgressAnswersAborted(t *testing.T) {
	requireRoot(t)
	e := newTestEngine(t, "xfs")
	good := makeStream(`{"sizeBytes":16777216,"block":true}`, []record{{0, pattern(2, 4096)}}, nil)
	release := make(chan struct{})
	var fetches atomic.Int32
	slow := func(ctx context.Context) (io.ReadCloser, error) {
		fetches.Add(1)
		return io.NopCloser(io.MultiReader(bytes.NewReader(good[:20]), readerFunc(func(p []byte) (int, error) {
			<-release
			return 0, io.EOF
		}), bytes.NewReader(good[20:]))), nil
	}
	req := model.CreateVolumeRequest{Name: "slow", Block: true, SourceSnapshotID: model.SnapshotIDForName("x")}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := e.ImportVolume(ctx, req, "node-a", slow)
	wantErr(t, err, model.ErrAborted, "copy in progress")
	if !strings.Contains(err.Error(), "copy of volume \"slow\" from snapshot") || !strings.Contains(err.Error(), "node-a") {
		t.Errorf("Aborted message: %v", err)
	}
	close(release)
	v := must(e.ImportVolume(context.Background(), req, "node-a", slow))(t)
	if v.SizeBytes != 16*mib || fetches.Load() != 1 {
		t.Errorf("after the copy: %+v, %d fetches", v, fetches.Load())
	}
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }
