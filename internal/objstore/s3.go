package objstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"k8s.io/klog/v2"
)

const (
	defaultEndpoint     = "s3.amazonaws.com"
	defaultPartSize     = 16 << 20
	defaultStallTimeout = time.Minute
	// partConcurrency parts of one multipart Put are in flight at once.
	partConcurrency = 4
	maxParts        = 10000
)

// s3Store keeps objects in a bucket under an optional prefix.
type s3Store struct {
	core      minio.Core
	transport *http.Transport
	bucket    string
	prefix    string // "" or ends with "/"
	endpoint  string
	secure    bool
	retry     RetryPolicy
	// partSize is the largest object stored with one PUT, and the part
	// size of larger ones (raised for objects of more than maxParts parts).
	partSize int64
}

func (s *s3Store) String() string {
	scheme := "https"
	if !s.secure {
		scheme = "http"
	}
	return fmt.Sprintf("s3://%s/%s (%s://%s)", s.bucket, s.prefix, scheme, s.endpoint)
}

// wrap turns a minio-go error into one of ours: ErrNotFound for a missing
// key, a hint for credential trouble, and the store's description (never a
// secret) as context.
func (s *s3Store) wrap(op, key string, err error) error {
	what := op
	if key != "" {
		what = fmt.Sprintf("%s %q", op, key)
	}
	var er minio.ErrorResponse
	if errors.As(err, &er) {
		switch er.Code {
		case minio.NoSuchKey:
			return fmt.Errorf("objstore: %s: %s: %w", s, what, ErrNotFound)
		case minio.AccessDenied, "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
			"ExpiredToken", "InvalidSecurity", "AccountProblem":
			return fmt.Errorf("objstore: %s: %s: %w (check the access key, secret key and bucket policy)", s, what, err)
		case minio.NoSuchBucket:
			return fmt.Errorf("objstore: %s: %s: bucket %q does not exist: %w", s, what, s.bucket, err)
		}
	}
	return fmt.Errorf("objstore: %s: %s: %w", s, what, err)
}

func s3Code(err error) string {
	var er minio.ErrorResponse
	if errors.As(err, &er) {
		return er.Code
	}
	return ""
}

func (s *s3Store) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := ValidateKey(key); err != nil {
		return nil, err
	}
	return s.open(ctx, key, 0, -1)
}

func (s *s3Store) GetRange(ctx context.Context, key string, off, length int64) (io.ReadCloser, error) {
	if err := checkRange(key, off, length); err != nil {
		return nil, err
	}
	if length == 0 {
		info, err := s.Stat(ctx, key)
		if err != nil {
			return nil, err
		}
		if off > info.Size {
			return nil, rangeError(key, off, info.Size)
		}
		return io.NopCloser(bytes.NewReader(nil)), nil
	}
	return s.open(ctx, key, off, length)
}

// open GETs [off, off+length) of key, or all of it if length < 0, and
// returns a reader that resumes after transient errors.
func (s *s3Store) open(ctx context.Context, key string, off, length int64) (io.ReadCloser, error) {
	rd := &s3Reader{s: s, ctx: ctx, key: key, pos: off}
	var (
		body io.ReadCloser
		info minio.ObjectInfo
		hdr  http.Header
	)
	err := s.retry.do(ctx, "get", key, func(ctx context.Context) error {
		opts := minio.GetObjectOptions{}
		if length >= 0 {
			if err := opts.SetRange(off, off+length-1); err != nil {
				return permanent(err)
			}
		}
		var err error
		body, info, hdr, err = s.core.GetObject(ctx, s.bucket, s.prefix+key, opts)
		return err
	})
	if err != nil {
		if s3Code(err) == "InvalidRange" {
			// The range starts at or past the end: fine at the very end.
			st, serr := s.Stat(ctx, key)
			if serr != nil {
				return nil, serr
			}
			if off == st.Size {
				return io.NopCloser(bytes.NewReader(nil)), nil
			}
			return nil, rangeError(key, off, st.Size)
		}
		return nil, s.wrap("get", key, err)
	}
	rd.body, rd.etag = body, info.ETag
	switch {
	case length < 0:
		rd.end = info.Size
	case hdr.Get("Content-Range") != "":
		total, err := contentRangeTotal(hdr.Get("Content-Range"))
		if err != nil {
			body.Close()
			return nil, s.wrap("get", key, err)
		}
		rd.end = min(off+length, total)
	default:
		// The server ignored the range and sent everything.
		if _, err := io.CopyN(io.Discard, body, off); err != nil {
			body.Close()
			return nil, s.wrap("get", key, err)
		}
		rd.end = min(off+length, info.Size)
	}
	return rd, nil
}

// contentRangeTotal parses the total out of "bytes a-b/total".
func contentRangeTotal(cr string) (int64, error) {
	i := strings.LastIndexByte(cr, '/')
	if i < 0 {
		return 0, fmt.Errorf("bad Content-Range %q", cr)
	}
	n, err := strconv.ParseInt(cr[i+1:], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("bad Content-Range %q", cr)
	}
	return n, nil
}

// s3Reader reads [pos, end) of an object, reopening the remainder (pinned to
// the object's ETag) after a transient error.
type s3Reader struct {
	s        *s3Store
	ctx      context.Context
	key      string
	etag     string
	pos, end int64
	body     io.ReadCloser // nil after a failure, until reopened
	failures int           // consecutive failures without progress
}

func (r *s3Reader) Read(p []byte) (int, error) {
	for {
		if r.pos >= r.end {
			return 0, io.EOF
		}
		if r.body == nil {
			if err := r.reopen(); err != nil {
				return 0, err
			}
		}
		if int64(len(p)) > r.end-r.pos {
			p = p[:r.end-r.pos]
		}
		n, err := r.body.Read(p)
		r.pos += int64(n)
		if n > 0 {
			r.failures = 0
		}
		if err == nil || (err == io.EOF && r.pos >= r.end) {
			if n == 0 && err == nil {
				continue
			}
			return n, err
		}
		if err == io.EOF {
			err = io.ErrUnexpectedEOF // the connection ended early
		}
		r.body.Close()
		r.body = nil
		r.failures++
		if r.ctx.Err() != nil || !isTransient(err) || r.failures >= r.s.retry.MaxAttempts {
			return n, r.s.wrap("get", r.key, err)
		}
		resumes.Add(1)
		klog.V(2).InfoS("Resuming object read after error", "store", r.s.String(), "key", r.key, "offset", r.pos, "err", err)
		if n > 0 {
			return n, nil
		}
	}
}

func (r *s3Reader) reopen() error {
	err := r.s.retry.do(r.ctx, "get", r.key, func(ctx context.Context) error {
		opts := minio.GetObjectOptions{}
		if err := opts.SetMatchETag(r.etag); err != nil {
			return permanent(err)
		}
		if err := opts.SetRange(r.pos, r.end-1); err != nil {
			return permanent(err)
		}
		body, _, _, err := r.s.core.GetObject(ctx, r.s.bucket, r.s.prefix+r.key, opts)
		if err != nil {
			return err
		}
		r.body = body
		return nil
	})
	if err != nil {
		if s3Code(err) == "PreconditionFailed" {
			return fmt.Errorf("objstore: %s: get %q: object was replaced while being read", r.s, r.key)
		}
		return r.s.wrap("get", r.key, err)
	}
	return nil
}

func (r *s3Reader) Close() error {
	r.pos = r.end // no reopening after Close
	if r.body == nil {
		return nil
	}
	err := r.body.Close()
	r.body = nil
	return err
}

func (s *s3Store) Stat(ctx context.Context, key string) (Info, error) {
	if err := ValidateKey(key); err != nil {
		return Info{}, err
	}
	var info minio.ObjectInfo
	err := s.retry.do(ctx, "stat", key, func(ctx context.Context) error {
		var err error
		info, err = s.core.StatObject(ctx, s.bucket, s.prefix+key, minio.StatObjectOptions{})
		return err
	})
	if err != nil {
		return Info{}, s.wrap("stat", key, err)
	}
	return Info{Key: key, Size: info.Size, ModTime: info.LastModified}, nil
}

func (s *s3Store) List(ctx context.Context, prefix string, fn func(Info) error) error {
	if err := validatePrefix(prefix); err != nil {
		return err
	}
	last := "" // full name of the last object seen: a retry resumes after it
	var fnErr error
	err := s.retry.do(ctx, "list", prefix, func(ctx context.Context) error {
		lctx, cancel := context.WithCancel(ctx)
		defer cancel()
		for obj := range s.core.Client.ListObjects(lctx, s.bucket, minio.ListObjectsOptions{
			Prefix: s.prefix + prefix, Recursive: true, StartAfter: last,
		}) {
			if obj.Err != nil {
				return obj.Err
			}
			last = obj.Key
			key := strings.TrimPrefix(obj.Key, s.prefix)
			if ValidateKey(key) != nil {
				klog.V(2).InfoS("Skipping object whose name is not a valid key", "store", s.String(), "object", obj.Key)
				continue
			}
			if err := fn(Info{Key: key, Size: obj.Size, ModTime: obj.LastModified}); err != nil {
				fnErr = err
				return permanent(err)
			}
		}
		// The channel also closes quietly when ctx ends.
		return ctx.Err()
	})
	if fnErr != nil {
		return fnErr
	}
	if err != nil {
		return s.wrap("list", prefix, err)
	}
	return nil
}

func (s *s3Store) Delete(ctx context.Context, key string) error {
	if err := ValidateKey(key); err != nil {
		return err
	}
	err := s.retry.do(ctx, "delete", key, func(ctx context.Context) error {
		return s.core.RemoveObject(ctx, s.bucket, s.prefix+key, minio.RemoveObjectOptions{})
	})
	if err != nil && s3Code(err) != minio.NoSuchKey {
		return s.wrap("delete", key, err)
	}
	return nil
}
