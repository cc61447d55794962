// Package objstore is where backup bytes live: a small, context-aware
// object-store interface with two backends, chosen by URL.
//
//   - file:///abs/path — a directory, typically an NFS mount. Objects are
//     plain files at their key's relative path; a Put writes a temporary file
//     in the target directory, fsyncs it, renames it into place and fsyncs the
//     directory, so readers never see a partial object.
//   - s3://bucket/optional/prefix?endpoint=host:port&... — any S3-compatible
//     service (AWS S3, MinIO, ...), through minio-go. See Open for the query
//     parameters.
//
// Keys are slash-separated relative paths checked by ValidateKey. Every
// method returns errors that never carry credentials; String describes a
// store without them too. Missing objects are reported as (wrapped)
// ErrNotFound.
//
// The S3 backend retries transient failures (network errors, stalled
// connections, 5xx, 429, SlowDown...) with exponential backoff and jitter, in
// one place (RetryPolicy.do), never retrying NotFound, AccessDenied or bad
// credentials. The filesystem backend does not retry: an NFS hard mount
// blocks instead of failing.
//
// A Store is safe for concurrent use; open one per target and share it.
package objstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"time"
)

// Store holds objects named by keys. All methods are safe for concurrent use.
type Store interface {
	// Put stores exactly size bytes read from r under key, replacing any
	// object there. It is atomic: readers see the old object or the whole
	// new one, never a part. A reader that ends before size bytes fails the
	// Put with ErrShortRead and stores nothing; bytes past size are not read.
	//
	// If r is an io.ReaderAt (a *bytes.Reader, an *io.SectionReader, an
	// *os.File on a regular file, ...) the S3 backend reads the bytes with
	// ReadAt — from r's current offset if r is also an io.Seeker, else from
	// 0 — possibly several times and concurrently, so that it can retry a
	// failed request without buffering; r's offset is then left unchanged.
	// Any other reader is read once, in order, and buffered one part
	// (16 MiB) at a time, a few parts at once, for the same purpose.
	Put(ctx context.Context, key string, r io.Reader, size int64) error
	// Create is Put that stores nothing and fails with ErrExists when an
	// object is there already: of clients racing to create one key, one
	// wins and the others learn it (S3: a conditional PUT, If-None-Match;
	// a filesystem: a hard link of the written file). size must be at
	// most one part (16 MiB). After a retried request ErrExists may mean
	// the first try won: the caller reads the object back.
	Create(ctx context.Context, key string, r io.Reader, size int64) error
	// Get opens the whole object. On S3 the reader uses ctx for its whole
	// life, resumes transparently after a transient error, and fails if the
	// object was replaced meanwhile.
	Get(ctx context.Context, key string) (io.ReadCloser, error)
	// GetRange opens length bytes of the object from offset off. A range
	// that runs past the end is cut short at the end; an off beyond the end
	// fails with ErrInvalidRange.
	GetRange(ctx context.Context, key string, off, length int64) (io.ReadCloser, error)
	// Stat describes one object.
	Stat(ctx context.Context, key string) (Info, error)
	// List calls fn for every object whose key starts with prefix (a plain
	// string prefix: "a/b" matches "a/b/c" and "a/bc"; "" matches all), in
	// ascending byte order of keys on both backends (for S3 as the service
	// lists them, which AWS general-purpose buckets and MinIO do). An error
	// from fn stops the listing and is returned as it is. Objects put or
	// deleted during the listing may or may not be seen.
	List(ctx context.Context, prefix string, fn func(Info) error) error
	// Delete removes an object. Deleting a missing key is not an error.
	Delete(ctx context.Context, key string) error
	// String describes the store for people and logs, without secrets.
	String() string
}

// Info describes one object.
type Info struct {
	Key     string // relative to the store's root, as given to Put
	Size    int64
	ModTime time.Time
}

var (
	// ErrNotFound is returned (wrapped) by Get, GetRange and Stat for a
	// missing key.
	ErrNotFound = errors.New("object not found")
	// ErrExists is Create's answer when the key holds an object.
	ErrExists = errors.New("object exists")
	// ErrShortRead is returned (wrapped) by Put when its reader ends before
	// the promised size.
	ErrShortRead = errors.New("reader ended before the given size")
	// ErrInvalidRange is returned (wrapped) by GetRange for an offset past
	// the end of the object.
	ErrInvalidRange = errors.New("range starts past the end of the object")
)

// checkPut checks a Put's arguments (both backends).
func checkPut(key string, size int64) error {
	if err := ValidateKey(key); err != nil {
		return err
	}
	if size < 0 {
		return fmt.Errorf("objstore: put %q: negative size %d", key, size)
	}
	return nil
}

// checkRange checks a GetRange's arguments (both backends).
func checkRange(key string, off, length int64) error {
	if err := ValidateKey(key); err != nil {
		return err
	}
	if off < 0 || length < 0 {
		return fmt.Errorf("objstore: get %q: negative offset or length (%d, %d)", key, off, length)
	}
	return nil
}

func rangeError(key string, off, size int64) error {
	return fmt.Errorf("objstore: get %q at %d (size %d): %w", key, off, size, ErrInvalidRange)
}

// Open returns the store a URL names:
//
//	file:///abs/path
//	s3://bucket[/prefix]?endpoint=host:port&region=...&insecure=true&pathStyle=true&tlsSkipVerify=true&caFile=/path
//
// For file://, the directory must exist (so that an NFS share that is not
// mounted is not silently replaced by a local directory).
//
// For s3://, the optional query parameters are:
//
//	endpoint       host[:port] of the service (default s3.amazonaws.com)
//	region         the bucket's region (default: AWS_REGION, then
//	               AWS_DEFAULT_REGION, then asked of the service)
//	insecure       true: plain HTTP instead of HTTPS
//	pathStyle      true: bucket in the path, not in the host name
//	tlsSkipVerify  true: do not verify the server's certificate
//	caFile         PEM file of CAs to trust in addition to the system's
//	maxAttempts    tries of one request before giving up (default 10)
//	maxRetryTime   how long to keep retrying, a Go duration (default 2m)
//	stallTimeout   a connection with no progress for this long is failed
//	               and the request retried (default 1m)
//
// Credentials come from creds, or if it has no access key from the
// environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN);
// with neither, requests are anonymous. Open checks that the bucket exists and
// is reachable with those credentials, so a wrong bucket or key fails here,
// at once and clearly.
func Open(ctx context.Context, rawURL string, creds Credentials) (Store, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		// url.Error repeats the URL, which might hold a secret: keep only
		// the reason.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("objstore: invalid store URL: %w", err)
	}
	if u.User != nil {
		return nil, errors.New("objstore: store URL must not hold credentials (user:password@); pass them as a secret")
	}
	switch u.Scheme {
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return nil, fmt.Errorf("objstore: file URL must not name a host (%q); use file:///abs/path", u.Host)
		}
		if u.RawQuery != "" {
			return nil, errors.New("objstore: file URL takes no query parameters")
		}
		if u.Path == "" || !filepath.IsAbs(u.Path) {
			return nil, errors.New("objstore: file URL needs an absolute path: file:///abs/path")
		}
		return newFSStore(filepath.Clean(u.Path))
	case "s3":
		return openS3(ctx, u, creds)
	case "":
		return nil, errors.New("objstore: store URL has no scheme; use file:///abs/path or s3://bucket/prefix")
	default:
		return nil, fmt.Errorf("objstore: unsupported store URL scheme %q (want file or s3)", u.Scheme)
	}
}

// Credentials for an S3 store. Its String method hides the values, so that
// printing one by mistake leaks nothing.
type Credentials struct {
	AccessKey    string
	SecretKey    string
	SessionToken string
}

func (c Credentials) String() string {
	set := func(s string) string {
		if s == "" {
			return "unset"
		}
		return "set"
	}
	return fmt.Sprintf("Credentials{AccessKey: %s, SecretKey: %s, SessionToken: %s}",
		set(c.AccessKey), set(c.SecretKey), set(c.SessionToken))
}

// GoString hides the values from %#v too.
func (c Credentials) GoString() string { return c.String() }

// halfSet reports whether only one of the access key and the secret key
// is set: an error wherever credentials come from.
func (c Credentials) halfSet() bool { return (c.AccessKey == "") != (c.SecretKey == "") }

// IsZero reports whether no credential is set.
func (c Credentials) IsZero() bool { return c == Credentials{} }

// credentialsFromEnv reads the standard AWS variables.
func credentialsFromEnv() Credentials {
	return Credentials{
		AccessKey:    os.Getenv("AWS_ACCESS_KEY_ID"),
		SecretKey:    os.Getenv("AWS_SECRET_ACCESS_KEY"),
		SessionToken: os.Getenv("AWS_SESSION_TOKEN"),
	}
}

// secretKeys lists, for each field, the names a Kubernetes/CSI secret may use.
var secretKeys = []struct {
	names []string
	field func(*Credentials) *string
}{
	{[]string{"accessKeyID", "AWS_ACCESS_KEY_ID"}, func(c *Credentials) *string { return &c.AccessKey }},
	{[]string{"secretAccessKey", "AWS_SECRET_ACCESS_KEY"}, func(c *Credentials) *string { return &c.SecretKey }},
	{[]string{"sessionToken", "AWS_SESSION_TOKEN"}, func(c *Credentials) *string { return &c.SessionToken }},
}

// CredentialsFromSecret reads credentials from a Kubernetes/CSI secret's data:
// accessKeyID, secretAccessKey and sessionToken (optional), or their
// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN forms. An
// access key without a secret key (or the reverse), or two different values
// for one field, is an error; errors name the keys, never the values. A
// secret with none of these keys gives zero Credentials (then Open uses the
// environment).
func CredentialsFromSecret(secret map[string]string) (Credentials, error) {
	var c Credentials
	for _, k := range secretKeys {
		dst := k.field(&c)
		from := ""
		for _, name := range k.names {
			v, ok := secret[name]
			if !ok || v == "" {
				continue
			}
			if *dst != "" && *dst != v {
				return Credentials{}, fmt.Errorf("objstore: secret has different values for %s and %s", from, name)
			}
			*dst, from = v, name
		}
	}
	if c.halfSet() {
		return Credentials{}, errors.New("objstore: secret must hold both accessKeyID and secretAccessKey, or neither")
	}
	if c.SessionToken != "" && c.AccessKey == "" {
		return Credentials{}, errors.New("objstore: secret has a sessionToken but no accessKeyID/secretAccessKey")
	}
	return c, nil
}
