package objstore

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
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
)

// Opening an S3 store: the URL and its parameters (see Open), the
// credentials, the transport, the client, and a first request.

var s3Params = []string{"endpoint", "region", "insecure", "pathStyle", "tlsSkipVerify", "caFile",
	"maxAttempts", "maxRetryTime", "stallTimeout"}

// s3Options is what an s3:// URL says.
type s3Options struct {
	bucket     string
	prefix     string // "" or ends with "/"
	endpoint   string
	region     string // as given in the URL, "" if not
	caFile     string
	secure     bool
	pathStyle  bool
	skipVerify bool
	retry      RetryPolicy
	stall      time.Duration
}

func openS3(ctx context.Context, u *url.URL, creds Credentials) (Store, error) {
	o, err := parseS3URL(u)
	if err != nil {
		return nil, err
	}
	tlsConfig, err := o.tlsConfig()
	if err != nil {
		return nil, err
	}
	s := &s3Store{
		bucket:    o.bucket,
		prefix:    o.prefix,
		endpoint:  o.endpoint,
		secure:    o.secure,
		retry:     o.retry,
		partSize:  defaultPartSize,
		transport: newTransport(tlsConfig, o.stall),
	}
	creds, err = s3Credentials(creds)
	if err != nil {
		return nil, err
	}
	if err := s.newClient(o, creds); err != nil {
		return nil, err
	}
	if err := s.probe(ctx); err != nil {
		s.transport.CloseIdleConnections()
		return nil, s.wrap("open", "", err)
	}
	return s, nil
}

// parseS3URL validates an s3:// URL and reads its parameters, with their
// defaults.
func parseS3URL(u *url.URL) (*s3Options, error) {
	o := &s3Options{
		bucket:   u.Host,
		endpoint: defaultEndpoint,
		secure:   true,
		retry:    DefaultRetryPolicy,
		stall:    defaultStallTimeout,
	}
	if o.bucket == "" {
		return nil, errors.New("objstore: s3 URL needs a bucket: s3://bucket/prefix")
	}
	if err := s3utils.CheckValidBucketNameStrict(o.bucket); err != nil {
		return nil, fmt.Errorf("objstore: s3 URL: %w", err)
	}
	if p := strings.Trim(u.Path, "/"); p != "" {
		if err := ValidateKey(p); err != nil {
			return nil, fmt.Errorf("objstore: s3 URL prefix: %w", err)
		}
		o.prefix = p + "/"
	}
	q := s3Query(u.Query())
	for k := range q {
		if !slices.Contains(s3Params, k) {
			return nil, fmt.Errorf("objstore: s3 URL: unknown parameter %q (known: %s)", k, strings.Join(s3Params, ", "))
		}
	}
	if err := o.parseQuery(q); err != nil {
		return nil, err
	}
	return o, nil
}

// parseQuery reads the known parameters, in the order they are checked.
func (o *s3Options) parseQuery(q s3Query) error {
	if e := q.Get("endpoint"); e != "" {
		if strings.Contains(e, "/") {
			return fmt.Errorf("objstore: s3 URL: endpoint=%q must be host[:port] (use insecure=true for plain HTTP)", e)
		}
		o.endpoint = e
	}
	insecure, err := q.bool("insecure")
	if err != nil {
		return err
	}
	o.secure = !insecure
	if o.pathStyle, err = q.bool("pathStyle"); err != nil {
		return err
	}
	if o.skipVerify, err = q.bool("tlsSkipVerify"); err != nil {
		return err
	}
	if err := q.positiveInt("maxAttempts", &o.retry.MaxAttempts); err != nil {
		return err
	}
	if err := q.duration("maxRetryTime", &o.retry.MaxElapsed); err != nil {
		return err
	}
	if err := q.duration("stallTimeout", &o.stall); err != nil {
		return err
	}
	o.region, o.caFile = q.Get("region"), q.Get("caFile")
	return nil
}

// s3Query is an s3:// URL's query, with its parsers.
type s3Query url.Values

func (q s3Query) Get(name string) string { return url.Values(q).Get(name) }

// bool reads a boolean parameter, false if unset.
func (q s3Query) bool(name string) (bool, error) {
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

// positiveInt sets *dst to an integer parameter if it is set.
func (q s3Query) positiveInt(name string, dst *int) error {
	v := q.Get(name)
	if v == "" {
		return nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return fmt.Errorf("objstore: s3 URL: %s=%q is not a positive integer", name, v)
	}
	*dst = n
	return nil
}

// duration sets *dst to a duration parameter if it is set.
func (q s3Query) duration(name string, dst *time.Duration) error {
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

// tlsConfig is the TLS configuration the options ask for: TLS 1.2 or
// later, the system's CAs plus caFile's.
func (o *s3Options) tlsConfig() (*tls.Config, error) {
	tlsConfig := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: o.skipVerify} //nolint:gosec // opt-in
	if o.caFile == "" {
		return tlsConfig, nil
	}
	pem, err := os.ReadFile(o.caFile)
	if err != nil {
		return nil, fmt.Errorf("objstore: s3 URL caFile: %w", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("objstore: s3 URL caFile %s holds no PEM certificate", o.caFile)
	}
	tlsConfig.RootCAs = pool
	return tlsConfig, nil
}

// s3Credentials returns creds, or if it has no access key those of the
// environment; either way both keys or neither.
func s3Credentials(creds Credentials) (Credentials, error) {
	if creds.AccessKey == "" {
		creds = credentialsFromEnv()
	}
	if creds.halfSet() {
		return Credentials{}, errors.New("objstore: S3 credentials need both an access key and a secret key")
	}
	return creds, nil
}

// s3Region is the region the URL gives, else the environment's, else ""
// (asked of the service).
func s3Region(fromURL string) string {
	if fromURL != "" {
		return fromURL
	}
	if r := os.Getenv("AWS_REGION"); r != "" {
		return r
	}
	return os.Getenv("AWS_DEFAULT_REGION")
}

// newClient makes the minio-go client, which never retries on its own.
func (s *s3Store) newClient(o *s3Options, creds Credentials) error {
	lookup := minio.BucketLookupAuto
	if o.pathStyle {
		lookup = minio.BucketLookupPath
	}
	client, err := minio.New(s.endpoint, &minio.Options{
		Creds:        credentials.NewStaticV4(creds.AccessKey, creds.SecretKey, creds.SessionToken),
		Secure:       s.secure,
		Transport:    s.transport,
		Region:       s3Region(o.region),
		BucketLookup: lookup,
		MaxRetries:   1, // retries happen in RetryPolicy.do only
	})
	if err != nil {
		return fmt.Errorf("objstore: %s: %w", s, err)
	}
	s.core = minio.Core{Client: client}
	return nil
}

// probe fails now, and clearly, on a wrong bucket or credentials.
func (s *s3Store) probe(ctx context.Context) error {
	return s.retry.do(ctx, "open", "", func(ctx context.Context) error {
		ok, err := s.core.BucketExists(ctx, s.bucket)
		if err == nil && !ok {
			return permanent(fmt.Errorf("bucket %q does not exist", s.bucket))
		}
		return err
	})
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
