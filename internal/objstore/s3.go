package objstore

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/s3utils"
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

var s3Params = []string{"endpoint", "region", "insecure", "pathStyle", "tlsSkipVerify", "caFile",
	"maxAttempts", "maxRetryTime", "stallTimeout"}

func openS3(ctx context.Context, u *url.URL, creds Credentials) (Store, error) {
	s := &s3Store{
		bucket:   u.Host,
		endpoint: defaultEndpoint,
		secure:   true,
		retry:    DefaultRetryPolicy,
		partSize: defaultPartSize,
	}
	if s.bucket == "" {
		return nil, errors.New("objstore: s3 URL needs a bucket: s3://bucket/prefix")
	}
	if err := s3utils.CheckValidBucketNameStrict(s.bucket); err != nil {
		return nil, fmt.Errorf("objstore: s3 URL: %w", err)
	}
	if p := strings.Trim(u.Path, "/"); p != "" {
		if err := ValidateKey(p); err != nil {
			return nil, fmt.Errorf("objstore: s3 URL prefix: %w", err)
		}
		s.prefix = p + "/"
	}

	q := u.Query()
	for k := range q {
		if !slices.Contains(s3Params, k) {
			return nil, fmt.Errorf("objstore: s3 URL: unknown parameter %q (known: %s)", k, strings.Join(s3Params, ", "))
		}
	}
	boolParam := func(name string) (bool, error) {
		v := q.Get(name)
		if v == "" {
			return false, nil
		}
		b, err := strconv.ParseBool(v)
		if err != nil {
			return false, fmt.Errorf("objstore: s3 URL: %s=%q is not a boolean", name, v)
		}
		return b, nil
	}
	durParam := func(name string, dst *time.Duration) error {
		v := q.Get(name)
		if v == "" {
			return nil
		}
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return fmt.Errorf("objstore: s3 URL: %s=%q is not a positive duration", name, v)
		}
		*dst = d
		return nil
	}
	if e := q.Get("endpoint"); e != "" {
		if strings.Contains(e, "/") {
			return nil, fmt.Errorf("objstore: s3 URL: endpoint=%q must be host[:port] (use insecure=true for plain HTTP)", e)
		}
		s.endpoint = e
	}
	insecure, err := boolParam("insecure")
	if err != nil {
		return nil, err
	}
	s.secure = !insecure
	pathStyle, err := boolParam("pathStyle")
	if err != nil {
		return nil, err
	}
	skipVerify, err := boolParam("tlsSkipVerify")
	if err != nil {
		return nil, err
	}
	if v := q.Get("maxAttempts"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("objstore: s3 URL: maxAttempts=%q is not a positive integer", v)
		}
		s.retry.MaxAttempts = n
	}
	if err := durParam("maxRetryTime", &s.retry.MaxElapsed); err != nil {
		return nil, err
	}
	stall := defaultStallTimeout
	if err := durParam("stallTimeout", &stall); err != nil {
		return nil, err
	}

	tlsConfig := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: skipVerify} //nolint:gosec // opt-in
	if caFile := q.Get("caFile"); caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("objstore: s3 URL caFile: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("objstore: s3 URL caFile %s holds no PEM certificate", caFile)
		}
		tlsConfig.RootCAs = pool
	}
	s.transport = newTransport(tlsConfig, stall)

	if creds.AccessKey == "" {
		creds = credentialsFromEnv()
	}
	if (creds.AccessKey == "") != (creds.SecretKey == "") {
		return nil, errors.New("objstore: S3 credentials need both an access key and a secret key")
	}
	region := q.Get("region")
	if region == "" {
		region = os.Getenv("AWS_REGION")
	}
	if region == "" {
		region = os.Getenv("AWS_DEFAULT_REGION")
	}
	lookup := minio.BucketLookupAuto
	if pathStyle {
		lookup = minio.BucketLookupPath
	}
	client, err := minio.New(s.endpoint, &minio.Options{
		Creds:        credentials.NewStaticV4(creds.AccessKey, creds.SecretKey, creds.SessionToken),
		Secure:       s.secure,
		Transport:    s.transport,
		Region:       region,
		BucketLookup: lookup,
		MaxRetries:   1, // retries happen in RetryPolicy.do only
	})
	if err != nil {
		return nil, fmt.Errorf("objstore: %s: %w", s, err)
	}
	s.core = minio.Core{Client: client}

	// Fail now, and clearly, on a wrong bucket or credentials.
	err = s.retry.do(ctx, "open", "", func(ctx context.Context) error {
		ok, err := s.core.BucketExists(ctx, s.bucket)
		if err == nil && !ok {
			return permanent(fmt.Errorf("bucket %q does not exist", s.bucket))
		}
		return err
	})
	if err != nil {
		s.transport.CloseIdleConnections()
		return nil, s.wrap("open", "", err)
	}
	return s, nil
}

func (s *s3Store) String() string {
	scheme := "https"
	if !s.secure {
		scheme = "http"
	}
	return fmt.Sprintf("s3://%s/%s (%s://%s)", s.bucket, s.prefix, scheme, s.endpoint)
}

// newTransport returns an HTTP/1.1 transport for many concurrent requests,
// whose connections fail once no byte has moved either way for stall.
func newTransport(tlsConfig *tls.Config, stall time.Duration) *http.Transport {
	dialer := &net.Dialer{Timeout: 15 * time.Second, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dialer.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			sc := &stallConn{Conn: c, timeout: stall}
			sc.extend(time.Now())
			return sc, nil
		},
		MaxIdleConns:        256,
		MaxIdleConnsPerHost: 64,
		// Close idle connections before their stall deadline trips.
		IdleConnTimeout:       min(90*time.Second, stall*2/3),
		TLSHandshakeTimeout:   15 * time.Second,
		ExpectContinueTimeout: time.Second,
		// minio-go needs the server's Content-Length and raw bytes.
		DisableCompression: true,
		TLSClientConfig:    tlsConfig,
	}
}

// stallConn fails a Read or Write once the connection has made no progress
// for timeout: a hung server (or a silently dropped path) then surfaces as a
// timeout error, which is retried, instead of blocking forever.
type stallConn struct {
	net.Conn
	timeout time.Duration
	mu      sync.Mutex
	last    time.Time // when the deadline was last pushed back
}

// extend pushes the deadline back to now+timeout, at most once a second.
func (c *stallConn) extend(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if now.Sub(c.last) < time.Second && !c.last.IsZero() {
		return
	}
	c.last = now
	_ = c.Conn.SetDeadline(now.Add(c.timeout))
}

func (c *stallConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.extend(time.Now())
	}
	return n, err
}

func (c *stallConn) Write(p []byte) (int, error) {
	// Write in chunks so that a big slow write keeps proving progress.
	const chunk = 64 << 10
	written := 0
	for len(p) > 0 {
		n, err := c.Conn.Write(p[:min(len(p), chunk)])
		written += n
		if n > 0 {
			c.extend(time.Now())
		}
		if err != nil {
			return written, err
		}
		p = p[n:]
	}
	return written, nil
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
	if err := ValidateKey(key); err != nil {
		return err
	}
	if size < 0 {
		return fmt.Errorf("objstore: put %q: negative size %d", key, size)
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

func (s *s3Store) putSingle(ctx context.Context, key string, src putSource, size int64) error {
	body := func() io.Reader { return src.section(0, size) }
	if src.ra == nil {
		buf := make([]byte, size)
		if err := src.fill(ctx, buf); err != nil {
			return err
		}
		body = func() io.Reader { return bytes.NewReader(buf) }
	}
	return s.retry.do(ctx, "put", key, func(ctx context.Context) error {
		_, err := s.core.PutObject(ctx, s.bucket, s.prefix+key, body(), size, "", "", minio.PutObjectOptions{})
		return shortSafe(err)
	})
}

func (s *s3Store) putMultipart(ctx context.Context, key string, src putSource, size int64) error {
	full := s.prefix + key
	partSize := s.partSize
	if size > partSize*maxParts {
		partSize = ((size+maxParts-1)/maxParts + 1<<20 - 1) &^ (1<<20 - 1)
	}
	nparts := int((size + partSize - 1) / partSize)

	var uploadID string
	err := s.retry.do(ctx, "put", key, func(ctx context.Context) error {
		var err error
		uploadID, err = s.core.NewMultipartUpload(ctx, s.bucket, full, minio.PutObjectOptions{})
		return err
	})
	if err != nil {
		return err
	}
	completed := false
	defer func() {
		if completed {
			return
		}
		// Best effort: free the parts now rather than when the bucket's
		// lifecycle (or MinIO's stale-upload cleanup) gets to them.
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if err := s.core.AbortMultipartUpload(actx, s.bucket, full, uploadID); err != nil {
			klog.V(2).InfoS("Could not abort multipart upload", "store", s.String(), "key", key, "err", err)
		}
	}()

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
		off := int64(i) * partSize
		n := min(partSize, size-off)
		body := func() io.Reader { return src.section(off, n) }
		var release func()
		if src.ra == nil {
			var buf []byte
			if partSize == defaultPartSize {
				bp := partBufs.Get().(*[]byte)
				buf, release = (*bp)[:n], func() { partBufs.Put(bp) }
			} else {
				buf, release = make([]byte, n), func() {}
			}
			if err := src.fill(pctx, buf); err != nil {
				release()
				<-sem
				cancel(err)
				break
			}
			body = func() io.Reader { return bytes.NewReader(buf) }
		}
		wg.Go(func() {
			defer func() { <-sem }()
			if release != nil {
				defer release()
			}
			err := s.retry.do(pctx, "put part", key, func(ctx context.Context) error {
				p, err := s.core.PutObjectPart(ctx, s.bucket, full, uploadID, i+1, body(), n, minio.PutObjectPartOptions{})
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
		return err
	}

	tries := 0
	err = s.retry.do(ctx, "put", key, func(ctx context.Context) error {
		tries++
		_, err := s.core.CompleteMultipartUpload(ctx, s.bucket, full, uploadID, parts, minio.PutObjectOptions{})
		if err != nil && tries > 1 && s3Code(err) == minio.NoSuchUpload {
			// An earlier try completed the upload but its answer was lost.
			if st, serr := s.core.StatObject(ctx, s.bucket, full, minio.StatObjectOptions{}); serr == nil && st.Size == size {
				return nil
			}
		}
		return err
	})
	if err != nil {
		return err
	}
	completed = true
	return nil
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
