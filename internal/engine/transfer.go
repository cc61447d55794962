package engine

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/zeebo/blake3"
	"k8s.io/klog/v2"

	"github.com/cairn-csi/cairn/internal/fsops"
	"github.com/cairn-csi/cairn/internal/model"
)

// The transfer stream carries a snapshot's or a volume's data to another
// node (docs/FORMAT.md#cross-node-copies): magic, a JSON header, records
// of (offset, length, data) for the allocated ranges, and an end record
// with the BLAKE3-256 of everything before it.
const (
	xferMagic     = "CAIRNXF1"
	xferMaxHeader = 64 << 10
	xferMaxRecord = 4 << 20
	xferEnd       = ^uint64(0)
	xferHashLen   = 32
)

// xferHeader describes the source: its size and access type.
type xferHeader struct {
	SizeBytes int64  `json:"sizeBytes"`
	Block     bool   `json:"block"`
	FsType    string `json:"fsType"`
}

// errStream marks a transfer stream that breaks the format's rules.
var errStream = errors.New("bad transfer stream")

func streamErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errStream, fmt.Sprintf(format, args...))
}

// Export is a local snapshot's or volume's data, open for sending to
// another node. Its file stays readable until Close even if the source
// is deleted meanwhile.
type Export struct {
	f   *os.File
	hdr xferHeader
}

// OpenSource opens a local snapshot (read from its immutable file) or
// volume (reflinked first, frozen like a clone when mounted, into a
// temporary file that is unlinked once open) for Export.WriteTo.
func (e *Engine) OpenSource(ctx context.Context, src model.Source) (*Export, error) {
	unlock, err := e.locks.lock(ctx, src.ID)
	if err != nil {
		return nil, err
	}
	defer unlock()
	switch src.Kind {
	case model.SourceSnapshot:
		snap, err := e.loadSnapshot(src.ID)
		if err != nil {
			return nil, err
		}
		f, err := os.Open(filepath.Join(e.snapshotDir(snap.ID), dataFile))
		if err != nil {
			return nil, fmt.Errorf("open snapshot %s: %w", snap.ID, err)
		}
		return &Export{f: f, hdr: xferHeader{SizeBytes: snap.SizeBytes, Block: snap.Block, FsType: snap.FsType}}, nil
	case model.SourceVolume:
		vol, err := e.loadVolume(src.ID)
		if err != nil {
			return nil, err
		}
		tmp := filepath.Join(e.root, tmpDir, "export-"+vol.ID+"-"+strconv.FormatInt(time.Now().UnixNano(), 36))
		if err := e.copyConsistent(ctx, vol, tmp); err != nil {
			os.Remove(tmp)
			return nil, err
		}
		f, err := os.Open(tmp)
		os.Remove(tmp) // the open file keeps the copy until Close
		if err != nil {
			return nil, err
		}
		return &Export{f: f, hdr: xferHeader{SizeBytes: vol.SizeBytes, Block: vol.Block, FsType: vol.FsType}}, nil
	}
	return nil, model.Errorf(model.ErrInvalidArgument, "source kind %q cannot be copied to another node", src.Kind)
}

// Close releases the source's data.
func (x *Export) Close() error { return x.f.Close() }

// WriteTo writes the transfer stream to w.
func (x *Export) WriteTo(ctx context.Context, w io.Writer) error {
	h := blake3.New()
	bw := bufio.NewWriterSize(io.MultiWriter(w, h), 1<<20)
	hdr, err := json.Marshal(x.hdr)
	if err != nil {
		return err
	}
	bw.WriteString(xferMagic)
	binary.Write(bw, binary.BigEndian, uint32(len(hdr)))
	bw.Write(hdr)
	buf := make([]byte, xferMaxRecord)
	var rec [12]byte
	err = fsops.ForEachDataRange(x.f, x.hdr.SizeBytes, func(off, length int64) error {
		for length > 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
			n := min(length, xferMaxRecord)
			if _, err := x.f.ReadAt(buf[:n], off); err != nil {
				return fmt.Errorf("read at %d: %w", off, err)
			}
			binary.BigEndian.PutUint64(rec[:8], uint64(off))
			binary.BigEndian.PutUint32(rec[8:], uint32(n))
			bw.Write(rec[:])
			if _, err := bw.Write(buf[:n]); err != nil {
				return err
			}
			off, length = off+n, length-n
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	binary.BigEndian.PutUint64(rec[:8], xferEnd)
	binary.BigEndian.PutUint32(rec[8:], xferHashLen)
	_, err = w.Write(append(rec[:], h.Sum(nil)...))
	return err
}

// streamReader reads a transfer stream, hashing what it reads, and
// checks every bound before it acts on a field.
type streamReader struct {
	r *bufio.Reader
	h *blake3.Hasher
}

func newStreamReader(r io.Reader) *streamReader {
	return &streamReader{r: bufio.NewReaderSize(r, 1<<20), h: blake3.New()}
}

func (s *streamReader) full(p []byte, hash bool) error {
	if _, err := io.ReadFull(s.r, p); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return streamErr("ends early")
		}
		return err
	}
	if hash {
		s.h.Write(p)
	}
	return nil
}

// header reads the magic and the header.
func (s *streamReader) header() (xferHeader, error) {
	var pre [len(xferMagic) + 4]byte
	if err := s.full(pre[:], true); err != nil {
		return xferHeader{}, err
	}
	if string(pre[:len(xferMagic)]) != xferMagic {
		return xferHeader{}, streamErr("magic %q, want %q", pre[:len(xferMagic)], xferMagic)
	}
	n := binary.BigEndian.Uint32(pre[len(xferMagic):])
	if n == 0 || n > xferMaxHeader {
		return xferHeader{}, streamErr("header length %d, want 1 to %d", n, xferMaxHeader)
	}
	raw := make([]byte, n)
	if err := s.full(raw, true); err != nil {
		return xferHeader{}, err
	}
	var hdr xferHeader
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&hdr); err != nil {
		return xferHeader{}, streamErr("header: %v", err)
	}
	switch {
	case hdr.SizeBytes <= 0 || hdr.SizeBytes > model.MaxVolumeSize:
		return xferHeader{}, streamErr("header: sizeBytes %d out of range", hdr.SizeBytes)
	case hdr.FsType != "" && hdr.FsType != "ext4" && hdr.FsType != "xfs":
		return xferHeader{}, streamErr("header: fsType %q, want ext4, xfs or none", hdr.FsType)
	}
	return hdr, nil
}

// records writes the data records into f (whose size is at least
// hdr.SizeBytes) and checks the end record's hash and that nothing
// follows it. progress gets the data bytes written so far.
func (s *streamReader) records(ctx context.Context, hdr xferHeader, f *os.File, progress func(int64)) error {
	buf := make([]byte, xferMaxRecord)
	var rec [12]byte
	var next, done int64 // the lowest offset the next record may have
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := s.full(rec[:], false); err != nil {
			return err
		}
		off, n := binary.BigEndian.Uint64(rec[:8]), binary.BigEndian.Uint32(rec[8:])
		if off == xferEnd {
			if n != xferHashLen {
				return streamErr("end record length %d, want %d", n, xferHashLen)
			}
			want := s.h.Sum(nil)
			got := make([]byte, xferHashLen)
			if err := s.full(got, false); err != nil {
				return err
			}
			if !bytes.Equal(got, want) {
				return streamErr("BLAKE3 %x, the data read hashes to %x", got, want)
			}
			if _, err := s.r.ReadByte(); !errors.Is(err, io.EOF) {
				return streamErr("bytes after the end record")
			}
			return nil
		}
		switch {
		case n == 0 || n > xferMaxRecord:
			return streamErr("record at %d: length %d, want 1 to %d", off, n, xferMaxRecord)
		case off > uint64(hdr.SizeBytes) || int64(off) < next:
			return streamErr("record at %d: offsets must ascend from %d within %d bytes", off, next, hdr.SizeBytes)
		case int64(off)+int64(n) > hdr.SizeBytes:
			return streamErr("record at %d: %d bytes end past the size %d", off, n, hdr.SizeBytes)
		}
		s.h.Write(rec[:])
		if err := s.full(buf[:n], true); err != nil {
			return err
		}
		if _, err := f.WriteAt(buf[:n], int64(off)); err != nil {
			return err
		}
		next = int64(off) + int64(n)
		done += int64(n)
		progress(done)
	}
}

// Fetch opens the transfer stream of a source on another node.
type Fetch func(ctx context.Context) (io.ReadCloser, error)

// ImportVolume creates a volume as a copy of the snapshot or volume that
// req names, which lives on sourceNode and arrives through fetch. Like a
// restore from a backup, the copy runs in the background: a call that
// reaches its deadline gets Aborted with the progress, and a retry waits
// for the same copy. A bad or broken stream leaves nothing behind.
func (e *Engine) ImportVolume(ctx context.Context, req model.CreateVolumeRequest, sourceNode string, fetch Fetch) (*model.Volume, error) {
	if err := e.canLimit(req.IOLimits); err != nil {
		return nil, err
	}
	src := req.RequestedSource()
	if src == nil || src.Kind == model.SourceBackup {
		return nil, model.Errorf(model.ErrInvalidArgument, "volume_content_source: a copy from another node needs a snapshot or volume source")
	}
	what := fmt.Sprintf("copy of volume %q from %s %s on node %s", req.Name, src.Kind, src.ID, sourceNode)
	return e.inBackground(ctx, req, what, func(ctx context.Context, id string, run *restoreRun) (*model.Volume, error) {
		return e.runImport(ctx, req, *src, sourceNode, fetch, id, run)
	})
}

func (e *Engine) runImport(ctx context.Context, req model.CreateVolumeRequest, src model.Source, sourceNode string, fetch Fetch, id string, run *restoreRun) (*model.Volume, error) {
	unlock, err := e.locks.lock(ctx, id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if existing, err := e.loadVolume(id); err == nil {
		return e.describe(existing), nil // inBackground compares it with the request
	}
	body, err := fetch(ctx)
	if err != nil {
		return nil, err
	}
	defer body.Close()
	sr := newStreamReader(body)
	hdr, err := sr.header()
	if err != nil {
		return nil, copyError(src, sourceNode, err)
	}
	run.size.Store(hdr.SizeBytes)
	size, fsType, err := sourcedSize(req, hdr.SizeBytes, hdr.FsType)
	if err != nil {
		return nil, err
	}
	meta := &VolumeMeta{
		FormatVersion: FormatVersion, ID: id, Name: req.Name, SizeBytes: size, Block: req.Block, FsType: fsType,
		Source: &src, SourceNode: sourceNode, Parameters: req.Parameters, IOLimits: req.IOLimits, CreatedAt: time.Now().UTC(),
	}
	start := time.Now()
	err = e.commitNew(ctx, volumesDir, id, func(dir string) error {
		data := filepath.Join(dir, dataFile)
		if err := e.allocate(size, func() error { return createEmpty(data) }); err != nil {
			return err
		}
		f, err := os.OpenFile(data, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := f.Truncate(size); err != nil {
			return err
		}
		if err := sr.records(ctx, hdr, f, func(n int64) { run.prog.Store(n) }); err != nil {
			return copyError(src, sourceNode, err)
		}
		if err := f.Sync(); err != nil {
			return err
		}
		return writeJSON(filepath.Join(dir, volumeMeta), meta)
	})
	if err != nil {
		return nil, fmt.Errorf("copy volume %s from node %s: %w", id, sourceNode, err)
	}
	klog.InfoS("Volume copied from another node", "volumeID", id, "source", src, "sourceNode", sourceNode, "size", size, "bytes", run.prog.Load(), "duration", time.Since(start))
	return e.describe(meta), nil
}

// copyError: a broken stream or connection is worth retrying.
func copyError(src model.Source, node string, err error) error {
	if errors.Is(err, errStream) || model.KindOf(err) == 0 {
		return model.Errorf(model.ErrUnavailable, "copy of %s %s from node %s: %v", src.Kind, src.ID, node, err)
	}
	return err
}
