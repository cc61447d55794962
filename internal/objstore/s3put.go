package objstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
	"k8s.io/klog/v2"
)

// Putting an object into an S3 store: one PUT, or a multipart upload for
// objects over the part size, each request retried from bytes the source
// can hand out again.

// putSource hands out the bytes of a Put as many times as retries need.
type putSource struct {
	ra   io.ReaderAt // nil when streaming from r
	base int64
	r    io.Reader
}

func newPutSource(r io.Reader) putSource {
	if ra, ok := r.(io.ReaderAt); ok {
		var base int64
		if sk, ok := r.(io.Seeker); ok {
			off, err := sk.Seek(0, io.SeekCurrent)
			if err != nil {
				// E.g. an *os.File on a pipe: not really random access.
				return putSource{r: r}
			}
			base = off
		}
		return putSource{ra: ra, base: base}
	}
	return putSource{r: r}
}

// section returns the bytes [off, off+n) of a ReaderAt source; a source that
// ends early yields an error wrapping ErrShortRead.
func (p putSource) section(off, n int64) io.Reader {
	return &exactReader{r: io.NewSectionReader(p.ra, p.base+off, n), left: n}
}

// fill reads the next len(buf) bytes of a streaming source.
func (p putSource) fill(ctx context.Context, buf []byte) error {
	_, err := io.ReadFull(ctxReader{ctx, p.r}, buf)
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return ErrShortRead
	}
	return err
}

// exactReader turns an early EOF into ErrShortRead, so that a short source
// fails a Put at once instead of being retried as a network error.
type exactReader struct {
	r    io.Reader
	left int64
}

func (e *exactReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	e.left -= int64(n)
	if err == io.EOF && e.left > 0 {
		err = ErrShortRead
	}
	return n, err
}

// shortSafe makes the error of a request permanent if its data source
// itself was short.
func shortSafe(err error) error {
	if errors.Is(err, ErrShortRead) {
		return permanent(err)
	}
	return err
}

var partBufs = sync.Pool{New: func() any { b := make([]byte, defaultPartSize); return &b }}

func (s *s3Store) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	if err := checkPut(key, size); err != nil {
		return err
	}
	src := newPutSource(r)
	var err error
	if size <= s.partSize {
		err = s.putSingle(ctx, key, src, size)
	} else {
		err = s.putMultipart(ctx, key, src, size)
	}
	if err != nil {
		return s.wrap("put", key, err)
	}
	return nil
}

func (s *s3Store) Create(ctx context.Context, key string, r io.Reader, size int64) error {
	if err := checkPut(key, size); err != nil {
		return err
	}
	if size > s.partSize {
		return fmt.Errorf("objstore: create %q: %d bytes, more than one part (%d)", key, size, s.partSize)
	}
	opts := minio.PutObjectOptions{}
	opts.SetMatchETagExcept("*")
	err := s.putSingleWith(ctx, key, newPutSource(r), size, opts)
	if s3Code(err) == "PreconditionFailed" {
		return fmt.Errorf("objstore: %s: create %q: %w", s, key, ErrExists)
	}
	if err != nil {
		return s.wrap("create", key, err)
	}
	return nil
}

func (s *s3Store) putSingle(ctx context.Context, key string, src putSource, size int64) error {
	return s.putSingleWith(ctx, key, src, size, minio.PutObjectOptions{})
}

func (s *s3Store) putSingleWith(ctx context.Context, key string, src putSource, size int64, opts minio.PutObjectOptions) error {
	body := func() io.Reader { return src.section(0, size) }
	if src.ra == nil {
		buf := make([]byte, size)
		if err := src.fill(ctx, buf); err != nil {
			return err
		}
		body = func() io.Reader { return bytes.NewReader(buf) }
	}
	return s.retry.do(ctx, "put", key, func(ctx context.Context) error {
		_, err := s.core.PutObject(ctx, s.bucket, s.prefix+key, body(), size, "", "", opts)
		if s3Code(err) == "PreconditionFailed" {
			return permanent(err)
		}
		return shortSafe(err)
	})
}

// multipart is one multipart upload of a Put.
type multipart struct {
	s        *s3Store
	key      string // as given to Put
	full     string // the object's name in the bucket
	uploadID string
	src      putSource
	size     int64
	partSize int64
}

func (s *s3Store) putMultipart(ctx context.Context, key string, src putSource, size int64) error {
	mp := &multipart{s: s, key: key, full: s.prefix + key, src: src, size: size, partSize: s.partSize}
	if size > mp.partSize*maxParts {
		mp.partSize = ((size+maxParts-1)/maxParts + 1<<20 - 1) &^ (1<<20 - 1)
	}
	err := s.retry.do(ctx, "put", key, func(ctx context.Context) error {
		var err error
		mp.uploadID, err = s.core.NewMultipartUpload(ctx, s.bucket, mp.full, minio.PutObjectOptions{})
		return err
	})
	if err != nil {
		return err
	}
	completed := false
	defer func() {
		if !completed {
			mp.abort(ctx)
		}
	}()
	parts, err := mp.putParts(ctx)
	if err != nil {
		return err
	}
	if err := mp.complete(ctx, parts); err != nil {
		return err
	}
	completed = true
	return nil
}

// abort frees the parts now rather than when the bucket's lifecycle (or
// MinIO's stale-upload cleanup) gets to them; best effort.
func (mp *multipart) abort(ctx context.Context) {
	s := mp.s
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := s.core.AbortMultipartUpload(actx, s.bucket, mp.full, mp.uploadID); err != nil {
		klog.V(2).InfoS("Could not abort multipart upload", "store", s.String(), "key", mp.key, "err", err)
	}
}

// putParts uploads the parts, partConcurrency at a time, and returns them
// for completion; the first part that fails stops the others.
func (mp *multipart) putParts(ctx context.Context) ([]minio.CompletePart, error) {
	s := mp.s
	nparts := int((mp.size + mp.partSize - 1) / mp.partSize)
	pctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	parts := make([]minio.CompletePart, nparts)
	sem := make(chan struct{}, partConcurrency)
	var wg sync.WaitGroup
	for i := range nparts {
		select {
		case sem <- struct{}{}:
		case <-pctx.Done():
		}
		if pctx.Err() != nil {
			break
		}
		off := int64(i) * mp.partSize
		n := min(mp.partSize, mp.size-off)
		body, release, err := mp.partBody(pctx, off, n)
		if err != nil {
			<-sem
			cancel(err)
			break
		}
		wg.Go(func() {
			defer func() { <-sem }()
			if release != nil {
				defer release()
			}
			err := s.retry.do(pctx, "put part", mp.key, func(ctx context.Context) error {
				p, err := s.core.PutObjectPart(ctx, s.bucket, mp.full, mp.uploadID, i+1, body(), n, minio.PutObjectPartOptions{})
				if err == nil {
					parts[i] = minio.CompletePart{PartNumber: i + 1, ETag: p.ETag}
				}
				return shortSafe(err)
			})
			if err != nil {
				cancel(fmt.Errorf("part %d: %w", i+1, err))
			}
		})
	}
	wg.Wait()
	if err := context.Cause(pctx); err != nil {
		return nil, err
	}
	return parts, nil
}

// partBody returns the bytes [off, off+n) of the source, as many times as
// retries need: sections of a ReaderAt source, or a buffer read from a
// streaming one (release returns that buffer; nil for a ReaderAt).
func (mp *multipart) partBody(ctx context.Context, off, n int64) (body func() io.Reader, release func(), err error) {
	if mp.src.ra != nil {
		return func() io.Reader { return mp.src.section(off, n) }, nil, nil
	}
	var buf []byte
	if mp.partSize == defaultPartSize {
		bp := partBufs.Get().(*[]byte)
		buf, release = (*bp)[:n], func() { partBufs.Put(bp) }
	} else {
		buf, release = make([]byte, n), func() {}
	}
	if err := mp.src.fill(ctx, buf); err != nil {
		release()
		return nil, nil, err
	}
	return func() io.Reader { return bytes.NewReader(buf) }, release, nil
}

// complete completes the upload. A retry that finds the upload gone
// checks whether an earlier try completed it and only its answer was
// lost.
func (mp *multipart) complete(ctx context.Context, parts []minio.CompletePart) error {
	s := mp.s
	tries := 0
	return s.retry.do(ctx, "put", mp.key, func(ctx context.Context) error {
		tries++
		_, err := s.core.CompleteMultipartUpload(ctx, s.bucket, mp.full, mp.uploadID, parts, minio.PutObjectOptions{})
		if err != nil && tries > 1 && s3Code(err) == minio.NoSuchUpload {
			// An earlier try completed the upload but its answer was lost.
			if st, serr := s.core.StatObject(ctx, s.bucket, mp.full, minio.StatObjectOptions{}); serr == nil && st.Size == mp.size {
				return nil
			}
		}
		return err
	})
}
