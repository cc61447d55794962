package backup

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"
	"github.com/zeebo/blake3"
)

// packIndexEntry is one blob in a pack's trailing index.
type packIndexEntry struct {
	Hash      string `json:"h"`
	Offset    int64  `json:"o"`
	Length    int64  `json:"l"`
	RawLength int64  `json:"r"`
	Comp      string `json:"c"`
}

// packBuilder accumulates blobs into one pack object, in a buffer it is
// given (so that pack buffers are reused, not allocated per pack: fresh
// memory is expensive on some virtual machines).
type packBuilder struct {
	buf   *bytes.Buffer
	index []packIndexEntry
}

func newPackBuilder(buf *bytes.Buffer) *packBuilder {
	buf.Reset()
	return &packBuilder{buf: buf}
}

func (p *packBuilder) add(hash string, blob []byte, rawLen int64, comp string) {
	p.index = append(p.index, packIndexEntry{Hash: hash, Offset: int64(p.buf.Len()), Length: int64(len(blob)), RawLength: rawLen, Comp: comp})
	p.buf.Write(blob)
}

// full reports whether the pack should be finished: by size, or by blob
// count so that its index stays well under maxPackIndexBytes.
func (p *packBuilder) full() bool { return p.buf.Len() >= packTarget || len(p.index) >= maxPackBlobs }

// bufferPool is a fixed free list of byte buffers. Unlike sync.Pool it
// keeps its buffers across garbage collections.
type bufferPool chan []byte

func newBufferPool(n, capacity int) bufferPool {
	p := make(bufferPool, n)
	for i := 0; i < n; i++ {
		p <- make([]byte, 0, capacity)
	}
	return p
}

func (p bufferPool) get() []byte  { return (<-p)[:0] }
func (p bufferPool) put(b []byte) { p <- b }

// blobCap bounds a stored block: zstd's worst case for an incompressible
// block is a little over its size.
func blobCap(blockSize int64) int { return int(blockSize + blockSize/128 + 4096) }

// finish appends the index and trailer and returns the pack's ID (the
// BLAKE3 of its index, which lists every blob's hash, offset and length:
// hashing the blobs' bytes a second time would cost as much again) and
// bytes.
func (p *packBuilder) finish() (string, []byte, []packIndexEntry) {
	idx, _ := json.Marshal(p.index)
	p.buf.Write(idx)
	var n [4]byte
	binary.LittleEndian.PutUint32(n[:], uint32(len(idx)))
	p.buf.Write(n[:])
	p.buf.WriteString(packMagic)
	sum := blake3.Sum256(idx)
	return hex.EncodeToString(sum[:]), p.buf.Bytes(), p.index
}

func (r *Repo) readRange(ctx context.Context, key string, off, n int64) ([]byte, error) {
	return r.readRangeInto(ctx, key, off, n, nil)
}

// readRangeInto reads [off, off+n) of an object into buf (grown if small).
func (r *Repo) readRangeInto(ctx context.Context, key string, off, n int64, buf []byte) ([]byte, error) {
	rc, err := r.store.GetRange(ctx, key, off, n)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	if int64(cap(buf)) < n {
		buf = make([]byte, n)
	}
	b := buf[:n]
	if _, err := io.ReadFull(rc, b); err != nil {
		return nil, fmt.Errorf("read %s [%d,+%d): %w", key, off, n, err)
	}
	return b, nil
}

var (
	encoderPool = sync.Pool{New: func() any {
		e, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1), zstd.WithLowerEncoderMem(true))
		return e
	}}
	decoderPool = sync.Pool{New: func() any {
		d, _ := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(MaxBlockSize),
			zstd.WithDecoderMaxWindow(MaxBlockSize), zstd.WithDecodeAllCapLimit(true))
		return d
	}}
)

// encodeBlock compresses raw into dst (reused), or keeps it raw if that is
// not smaller.
func encodeBlock(raw, dst []byte) ([]byte, string) {
	enc := encoderPool.Get().(*zstd.Encoder)
	out := enc.EncodeAll(raw, dst[:0])
	encoderPool.Put(enc)
	if len(out) >= len(raw) {
		return append(out[:0], raw...), compNone
	}
	return out, compZstd
}

// decodeBlock opens a stored blob (in place, in an encrypted store),
// undoes encodeBlock into dst (reused if large enough) and checks the
// result against the block's hash. The output is bounded by rawLen before
// anything is decoded (the decoder never writes past dst's capacity), so
// a small hostile blob cannot make it allocate.
func (k *keyring) decodeBlock(stored []byte, comp string, rawLen int64, wantHash string, dst []byte) ([]byte, error) {
	if rawLen < 1 || rawLen > MaxBlockSize {
		return nil, fmt.Errorf("raw length %d out of range", rawLen)
	}
	stored, err := k.openBlob(wantHash, stored)
	if err != nil {
		return nil, err
	}
	if int64(cap(dst)) < rawLen {
		dst = make([]byte, 0, rawLen)
	}
	dst = dst[:0:rawLen]
	var raw []byte
	switch comp {
	case compNone:
		raw = stored
	case compZstd:
		dec := decoderPool.Get().(*zstd.Decoder)
		var err error
		raw, err = dec.DecodeAll(stored, dst)
		decoderPool.Put(dec)
		if err != nil {
			return nil, fmt.Errorf("decompress: %v", err)
		}
	default:
		return nil, fmt.Errorf("unknown compression %q", comp)
	}
	if int64(len(raw)) != rawLen {
		return nil, fmt.Errorf("block is %d bytes, want %d", len(raw), rawLen)
	}
	if got := k.hash(raw); got != wantHash {
		return nil, fmt.Errorf("hash %s…, want %s…", short(got), short(wantHash))
	}
	return raw, nil
}

// short abbreviates a hash for messages (safe on any string).
func short(h string) string { return h[:min(len(h), 16)] }

// PrepareBlock does to one raw block what a backup does before packing it:
// hash it and compress it. Benchmarks use it to measure the CPU cost.
func PrepareBlock(raw []byte) (hash string, stored []byte, comp string) {
	stored, comp = encodeBlock(raw, make([]byte, 0, blobCap(int64(len(raw)))))
	return hashBlock(raw), stored, comp
}

func hashBlock(b []byte) string {
	sum := blake3.Sum256(b)
	return hex.EncodeToString(sum[:])
}
