package objstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"
	"k8s.io/klog/v2"
)

// RetryPolicy says how often and how long a remote operation is retried after
// a transient error. Backoff is exponential from BaseDelay, capped at
// MaxDelay, with jitter (each delay is drawn from [d/2, d)).
type RetryPolicy struct {
	// MaxAttempts is the most tries of one operation, the first included.
	// 1 disables retries.
	MaxAttempts int
	// MaxElapsed bounds the time from the first try to the start of the
	// last one: no retry starts later than that.
	MaxElapsed time.Duration
	BaseDelay  time.Duration
	MaxDelay   time.Duration
}

// DefaultRetryPolicy is used unless the URL overrides it: 10 attempts, or
// about 2 minutes of retrying, whichever ends first.
var DefaultRetryPolicy = RetryPolicy{
	MaxAttempts: 10,
	MaxElapsed:  2 * time.Minute,
	BaseDelay:   200 * time.Millisecond,
	MaxDelay:    15 * time.Second,
}

// retries and resumes count retried requests and resumed reads, for tests.
var retries, resumes atomic.Int64

// permanentError marks an error that must not be retried whatever it wraps
// (e.g. an error returned by a List callback).
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

func permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err}
}

// do runs fn until it succeeds, fails with an error that is not transient, ctx
// ends, or the policy is exhausted. It is the one place where retries happen;
// fn must be safe to call again (a Put must re-read its data from the start).
// The error returned is fn's last one, annotated with the attempt count when
// there was more than one.
func (p RetryPolicy) do(ctx context.Context, op, key string, fn func(ctx context.Context) error) error {
	start := time.Now()
	delay := p.BaseDelay
	for attempt := 1; ; attempt++ {
		err := fn(ctx)
		if err == nil {
			if attempt > 1 {
				klog.V(2).InfoS("Object store operation succeeded after retries", "op", op, "key", key, "attempts", attempt)
			}
			return nil
		}
		var pe *permanentError
		if errors.As(err, &pe) {
			return pe.err
		}
		if ctx.Err() != nil {
			return err
		}
		if !isTransient(err) {
			return err
		}
		if attempt >= p.MaxAttempts {
			return fmt.Errorf("giving up after %d attempts: %w", attempt, err)
		}
		d := delay/2 + rand.N(delay/2+1)
		if time.Since(start)+d > p.MaxElapsed {
			return fmt.Errorf("giving up after %d attempts in %v: %w", attempt, time.Since(start).Round(time.Millisecond), err)
		}
		retries.Add(1)
		klog.V(2).InfoS("Retrying object store operation", "op", op, "key", key, "attempt", attempt, "delay", d, "err", err)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (while retrying after: %v)", ctx.Err(), err)
		case <-t.C:
		}
		delay = min(2*delay, p.MaxDelay)
	}
}

// transientS3Codes are S3 error codes worth retrying whatever their status.
var transientS3Codes = map[string]bool{
	"SlowDown":                      true,
	"RequestTimeout":                true,
	"RequestTimeTooSkewed":          false,
	"InternalError":                 true,
	"ServiceUnavailable":            true,
	"OperationAborted":              true,
	"XMinioServerNotInitialized":    true,
	"XMinioStorageFull":             false,
	"XMinioReadQuorum":              true,
	"XMinioWriteQuorum":             true,
	"XMinioServerBusy":              true,
	"RequestTimeoutException":       true,
	"ThrottlingException":           true,
	"Throttling":                    true,
	"RequestLimitExceeded":          true,
	"BandwidthLimitExceeded":        true,
	"ProvisionedThroughputExceeded": true,
}

// isTransient classifies an error: true for network failures, timeouts and
// server-side trouble (5xx, 429, SlowDown and friends); false for everything
// else, notably NotFound, AccessDenied, bad credentials, and context
// cancellation.
func isTransient(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		// A request's own stall timeout is reported as a net.Error, not as
		// context.DeadlineExceeded, so it is still retried below.
		return false
	}
	var er minio.ErrorResponse
	if errors.As(err, &er) && (er.Code != "" || er.StatusCode != 0) {
		if t, ok := transientS3Codes[er.Code]; ok {
			return t
		}
		switch {
		case er.StatusCode >= 500, er.StatusCode == http.StatusTooManyRequests,
			er.StatusCode == http.StatusRequestTimeout:
			return true
		}
		return false
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, syscall.ETIMEDOUT) || errors.Is(err, syscall.EHOSTUNREACH) ||
		errors.Is(err, syscall.ENETUNREACH) {
		return true
	}
	return false
}
