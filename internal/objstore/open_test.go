package objstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
)

func TestValidateKey(t *testing.T) {
	for _, k := range invalidKeys {
		if err := ValidateKey(k); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("ValidateKey(%q) = %v", k, err)
		}
	}
	for _, k := range []string{"a", "a/b/c", "...", ".a/b.", "a b", "ключ", strings.Repeat("k", MaxKeyLen)} {
		if err := ValidateKey(k); err != nil {
			t.Errorf("ValidateKey(%q) = %v", k, err)
		}
	}
	err := ValidateKey("a/../b")
	if err == nil || !strings.Contains(err.Error(), `".."`) || !strings.Contains(err.Error(), "a/../b") {
		t.Errorf("error does not say what is wrong: %v", err)
	}
	for _, p := range []string{"", "a", "a/", "a/b", "a/b/"} {
		if err := validatePrefix(p); err != nil {
			t.Errorf("validatePrefix(%q) = %v", p, err)
		}
	}
}

func TestOpenBadURLs(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct{ url, want string }{
		{"/abs/path", "no scheme"},
		{"ftp://host/x", "unsupported"},
		{"s3://", "needs a bucket"},
		{"s3://Bad_Bucket/x", "ucket name"},
		{"s3://bkt/x?endpoint=localhost:9000&bogus=1", `unknown parameter "bogus"`},
		{"s3://bkt/x?insecure=maybe", "not a boolean"},
		{"s3://bkt/x?maxAttempts=0", "maxAttempts"},
		{"s3://bkt/x?maxRetryTime=soon", "maxRetryTime"},
		{"s3://bkt/x?endpoint=http://localhost:9000", "host[:port]"},
		{"s3://bkt/a//b", "empty path segment"},
		{"s3://bkt/x?caFile=/nonexistent/ca.pem", "caFile"},
	} {
		_, err := Open(ctx, c.url, Credentials{})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Open(%q) = %v, want an error about %q", c.url, err, c.want)
		}
	}
	// Secrets in a URL are refused without being repeated.
	for _, u := range []string{"s3://AKIAXYZ:hunter2secret@bucket/x", "s3://AKIAXYZ:hunter2secret@bucket/%zz"} {
		_, err := Open(ctx, u, Credentials{})
		if err == nil || strings.Contains(err.Error(), "hunter2secret") {
			t.Errorf("Open(%q) = %v: want an error without the secret", u, err)
		}
	}
}

func TestCredentialsFromSecret(t *testing.T) {
	for _, c := range []struct {
		secret map[string]string
		want   Credentials
		err    string
	}{
		{map[string]string{"accessKeyID": "A", "secretAccessKey": "S"}, Credentials{"A", "S", ""}, ""},
		{map[string]string{"AWS_ACCESS_KEY_ID": "A", "AWS_SECRET_ACCESS_KEY": "S", "AWS_SESSION_TOKEN": "T"}, Credentials{"A", "S", "T"}, ""},
		{map[string]string{"accessKeyID": "A", "AWS_ACCESS_KEY_ID": "A", "secretAccessKey": "S", "sessionToken": "T"}, Credentials{"A", "S", "T"}, ""},
		{map[string]string{"other": "x"}, Credentials{}, ""},
		{nil, Credentials{}, ""},
		{map[string]string{"accessKeyID": "A"}, Credentials{}, "both"},
		{map[string]string{"secretAccessKey": "topsecret"}, Credentials{}, "both"},
		{map[string]string{"sessionToken": "T"}, Credentials{}, "no accessKeyID"},
		{map[string]string{"accessKeyID": "A", "AWS_ACCESS_KEY_ID": "B", "secretAccessKey": "S"}, Credentials{}, "different values"},
		{map[string]string{"accessKeyID": "A", "secretAccessKey": "topsecret", "AWS_SECRET_ACCESS_KEY": "othersecret"}, Credentials{}, "different values"},
	} {
		got, err := CredentialsFromSecret(c.secret)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("CredentialsFromSecret(%v) error = %v, want %q", c.secret, err, c.err)
			}
			if err != nil && (strings.Contains(err.Error(), "topsecret") || strings.Contains(err.Error(), "othersecret")) {
				t.Errorf("error leaks a value: %v", err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("CredentialsFromSecret(%v) = %v, %v", c.secret, got, err)
		}
	}
}

func TestCredentialsDoNotPrint(t *testing.T) {
	c := Credentials{AccessKey: "AKIAEXAMPLE", SecretKey: "wJalrXUtnFEMI", SessionToken: "tok3n"}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
		out := fmt.Sprintf(verb, c)
		for _, v := range []string{"AKIAEXAMPLE", "wJalrXUtnFEMI", "tok3n"} {
			if strings.Contains(out, v) {
				t.Errorf("%s of Credentials = %q", verb, out)
			}
		}
	}
	if got := fmt.Sprint(Credentials{AccessKey: "a"}); !strings.Contains(got, "AccessKey: set") || !strings.Contains(got, "SecretKey: unset") {
		t.Errorf("String() = %q", got)
	}
}

func TestIsTransient(t *testing.T) {
	opErr := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	for _, c := range []struct {
		err  error
		want bool
	}{
		{&url.Error{Op: "Put", URL: "http://x", Err: opErr}, true},
		{fmt.Errorf("wrapped: %w", syscall.ECONNRESET), true},
		{io.ErrUnexpectedEOF, true},
		{minio.ErrorResponse{Code: "SlowDown", StatusCode: 503}, true},
		{minio.ErrorResponse{Code: "SlowDown", StatusCode: 200}, true},
		{minio.ErrorResponse{Code: "InternalError", StatusCode: 500}, true},
		{minio.ErrorResponse{Code: "Whatever", StatusCode: 502}, true},
		{minio.ErrorResponse{Code: "TooMany", StatusCode: 429}, true},
		{fmt.Errorf("x: %w", minio.ErrorResponse{Code: "XMinioServerNotInitialized", StatusCode: 503}), true},
		{minio.ErrorResponse{Code: "NoSuchKey", StatusCode: 404}, false},
		{minio.ErrorResponse{Code: "AccessDenied", StatusCode: 403}, false},
		{minio.ErrorResponse{Code: "InvalidAccessKeyId", StatusCode: 403}, false},
		{minio.ErrorResponse{Code: "SignatureDoesNotMatch", StatusCode: 403}, false},
		{minio.ErrorResponse{Code: "NoSuchBucket", StatusCode: 404}, false},
		{context.Canceled, false},
		{fmt.Errorf("x: %w", context.DeadlineExceeded), false},
		{ErrShortRead, false},
		{errors.New("something else"), false},
	} {
		if got := isTransient(c.err); got != c.want {
			t.Errorf("isTransient(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

func TestRetryPolicy(t *testing.T) {
	p := RetryPolicy{MaxAttempts: 4, MaxElapsed: time.Minute, BaseDelay: time.Millisecond, MaxDelay: 4 * time.Millisecond}
	ctx := context.Background()
	transient := io.ErrUnexpectedEOF

	n := 0
	err := p.do(ctx, "op", "k", func(context.Context) error { n++; return transient })
	if n != 4 || !errors.Is(err, transient) || !strings.Contains(err.Error(), "4 attempts") {
		t.Errorf("exhausted: %d calls, %v", n, err)
	}

	n = 0
	err = p.do(ctx, "op", "k", func(context.Context) error {
		n++
		if n < 3 {
			return transient
		}
		return nil
	})
	if n != 3 || err != nil {
		t.Errorf("recovering: %d calls, %v", n, err)
	}

	n = 0
	denied := minio.ErrorResponse{Code: "AccessDenied", StatusCode: 403}
	err = p.do(ctx, "op", "k", func(context.Context) error { n++; return denied })
	if n != 1 || !errors.Is(err, denied) {
		t.Errorf("permanent: %d calls, %v", n, err)
	}

	n = 0
	stop := errors.New("stop")
	err = p.do(ctx, "op", "k", func(context.Context) error { n++; return permanent(fmt.Errorf("w: %w", stop)) })
	if n != 1 || !errors.Is(err, stop) {
		t.Errorf("marked permanent: %d calls, %v", n, err)
	}

	// MaxElapsed bounds the time spent.
	slow := RetryPolicy{MaxAttempts: 100, MaxElapsed: 300 * time.Millisecond, BaseDelay: 50 * time.Millisecond, MaxDelay: 100 * time.Millisecond}
	start := time.Now()
	err = slow.do(ctx, "op", "k", func(context.Context) error { return transient })
	if d := time.Since(start); err == nil || d > time.Second {
		t.Errorf("MaxElapsed: %v after %v", err, d)
	}

	// A context ending during the backoff stops at once.
	cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	long := RetryPolicy{MaxAttempts: 10, MaxElapsed: time.Hour, BaseDelay: time.Hour, MaxDelay: time.Hour}
	start = time.Now()
	err = long.do(cctx, "op", "k", func(context.Context) error { return transient })
	if d := time.Since(start); !errors.Is(err, context.DeadlineExceeded) || d > 2*time.Second {
		t.Errorf("ctx: %v after %v", err, d)
	}
}
