package objstore

import (
	"github.com/cairn-csi/cairn/internal/testsupport/harness"

	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func openS3Test(t *testing.T, m *minioServer, prefix string, params ...string) Store {
	t.Helper()
	s, err := Open(context.Background(), m.url(prefix, params...), testCreds())
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.(*s3Store).transport.CloseIdleConnections() })
	return s
}

func TestS3Conformance(t *testing.T) {
	m := sharedMinio(t)
	runConformance(t, func(t *testing.T) Store {
		// Each subtest gets its own, empty, prefix.
		return openS3Test(t, m, "conformance/"+t.Name())
	})
}

func TestS3String(t *testing.T) {
	m := sharedMinio(t)
	s := openS3Test(t, m, "str/x")
	want := "s3://" + testBucket + "/str/x/ (http://" + m.addr + ")"
	if s.String() != want {
		t.Errorf("String() = %q, want %q", s.String(), want)
	}
	if strings.Contains(s.String(), testSecretKey) || strings.Contains(s.String(), testAccessKey) {
		t.Errorf("String() leaks credentials: %q", s.String())
	}
}

// TestS3PrefixIsolation checks that stores on different prefixes of one
// bucket do not see each other's objects.
func TestS3PrefixIsolation(t *testing.T) {
	m := sharedMinio(t)
	a := openS3Test(t, m, "iso/a")
	ab := openS3Test(t, m, "iso/ab")
	put(t, a, "k", []byte("a"))
	put(t, ab, "k", []byte("ab"))
	if got := get(t, a, "k"); string(got) != "a" {
		t.Errorf("a/k = %q", got)
	}
	if got := listKeys(t, a, ""); len(got) != 1 {
		t.Errorf("List on iso/a = %q", got)
	}
}

func TestS3EnvCredentials(t *testing.T) {
	m := sharedMinio(t)
	t.Setenv("AWS_ACCESS_KEY_ID", testAccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", testSecretKey)
	s, err := Open(context.Background(), m.url("env"), Credentials{})
	if err != nil {
		t.Fatalf("Open with credentials from the environment: %v", err)
	}
	put(t, s, "k", []byte("v"))
	// Explicit credentials win over the environment.
	t.Setenv("AWS_SECRET_ACCESS_KEY", "wrong")
	if _, err := Open(context.Background(), m.url("env"), testCreds()); err != nil {
		t.Fatalf("explicit credentials: %v", err)
	}
}

// TestS3PermanentErrorsFailFast checks that wrong credentials and a missing
// bucket fail at once, with a clear message that holds no secret.
func TestS3PermanentErrorsFailFast(t *testing.T) {
	m := sharedMinio(t)
	const wrongSecret = "Wr0ngSecretValue-do-not-print"
	for _, c := range []struct {
		name  string
		url   string
		creds Credentials
		want  string
	}{
		{"WrongSecret", m.url("x"), Credentials{AccessKey: testAccessKey, SecretKey: wrongSecret}, "check the access key"},
		{"UnknownAccessKey", m.url("x"), Credentials{AccessKey: "nosuchuser", SecretKey: wrongSecret}, "check the access key"},
		{"MissingBucket", strings.Replace(m.url("x"), testBucket, "no-such-bucket", 1), testCreds(), "does not exist"},
	} {
		t.Run(c.name, func(t *testing.T) {
			start := time.Now()
			_, err := Open(context.Background(), c.url, c.creds)
			d := time.Since(start)
			if err == nil {
				t.Fatal("Open succeeded")
			}
			t.Logf("error: %v", err)
			if d > 3*time.Second {
				t.Errorf("took %v: retried a permanent error?", d)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not say %q", err, c.want)
			}
			for _, secret := range []string{wrongSecret, testSecretKey} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("error leaks the secret key: %q", err)
				}
			}
			if errors.Is(err, ErrNotFound) {
				t.Errorf("error is ErrNotFound: %v", err)
			}
		})
	}
}

// TestS3Unreachable checks that a dead endpoint is retried per the policy,
// then reported.
func TestS3Unreachable(t *testing.T) {
	addr, err := harness.FreeAddr() // nothing listens there
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = Open(context.Background(), "s3://"+testBucket+"/x?endpoint="+addr+"&insecure=true&region=us-east-1&maxAttempts=3", testCreds())
	if err == nil || !strings.Contains(err.Error(), "3 attempts") || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("Open on a dead endpoint = %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v", d)
	}
	// maxRetryTime bounds the time as well.
	start = time.Now()
	_, err = Open(context.Background(), "s3://"+testBucket+"/x?endpoint="+addr+"&insecure=true&region=us-east-1&maxRetryTime=1s", testCreds())
	if err == nil {
		t.Fatal("Open on a dead endpoint succeeded")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("maxRetryTime=1s took %v", d)
	}
	// And so does the context.
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start = time.Now()
	if _, err = Open(ctx, "s3://"+testBucket+"/x?endpoint="+addr+"&insecure=true&region=us-east-1", testCreds()); err == nil {
		t.Fatal("Open on a dead endpoint succeeded")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("a 500ms context took %v", d)
	}
}

// slowReaderAt serves data at about rate bytes per second, so that a Put
// is still running when the server goes away. It hides io.Seeker.
type slowReaderAt struct {
	data []byte
	rate int
}

func (s *slowReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(s.data)) {
		return 0, io.EOF
	}
	n := copy(p, s.data[off:])
	time.Sleep(time.Duration(n) * time.Second / time.Duration(s.rate))
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (s *slowReaderAt) Read([]byte) (int, error) { panic("Put must use ReadAt") }

// TestS3Outage kills MinIO in the middle of a large Put, a stream of small
// Puts and Gets, and a slow Get; restarts it on the same port and data two
// seconds later; and checks that all of them complete through retries.
func TestS3Outage(t *testing.T) {
	m := privateMinio(t)
	s := openS3Test(t, m, "outage")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	big := randBytes(20, 24<<20)
	bigSum := sha256.Sum256(big)
	put(t, s, "read-me", big) // for the slow reader

	var wg sync.WaitGroup
	errs := make(chan error, 10)
	progress := make(chan struct{}, 100)

	// A 24 MiB Put of two parts read at ~4 MiB/s each: the first part
	// takes about 4 s, so the outage hits it.
	wg.Go(func() {
		if err := s.Put(ctx, "big", &slowReaderAt{data: big, rate: 4 << 20}, int64(len(big))); err != nil {
			errs <- err
		}
	})
	// A slow reader of another large object.
	wg.Go(func() {
		rc, err := s.Get(ctx, "read-me")
		if err != nil {
			errs <- err
			return
		}
		defer rc.Close()
		h := sha256.New()
		buf := make([]byte, 1<<20)
		for {
			n, err := rc.Read(buf)
			h.Write(buf[:n])
			if err == io.EOF {
				break
			}
			if err != nil {
				errs <- err
				return
			}
			time.Sleep(150 * time.Millisecond) // about 4 s in all
		}
		if !bytes.Equal(h.Sum(nil), bigSum[:]) {
			errs <- errors.New("slow Get read different bytes")
		}
	})
	// A stream of small Puts, each read back.
	wg.Go(func() {
		for i := range 25 {
			data := randBytes(uint64(1000+i), 256<<10)
			key := "small/" + string(rune('a'+i%26)) + string(rune('a'+i/26))
			if err := s.Put(ctx, key, bytes.NewReader(data), int64(len(data))); err != nil {
				errs <- err
				return
			}
			rc, err := s.Get(ctx, key)
			if err != nil {
				errs <- err
				return
			}
			got, err := io.ReadAll(rc)
			rc.Close()
			if err != nil || !bytes.Equal(got, data) {
				errs <- errors.New("small object read back wrong")
				return
			}
			progress <- struct{}{}
			time.Sleep(100 * time.Millisecond)
		}
	})

	// Let some work happen, then take the server away for two seconds.
	select {
	case <-progress:
	case err := <-errs:
		t.Fatalf("before the outage: %v", err)
	case <-ctx.Done():
		t.Fatal("no progress before the outage")
	}
	time.Sleep(time.Second)
	retries0, resumes0 := retries.Load(), resumes.Load()
	t.Log("killing MinIO")
	m.kill()
	time.Sleep(2 * time.Second)
	t.Log("restarting MinIO")
	if err := m.start(); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()

	go func() {
		for range progress {
		}
	}()
	wg.Wait()
	close(errs)
	close(progress)
	for err := range errs {
		t.Errorf("operation failed across the outage: %v", err)
	}
	t.Logf("all operations done %v after the restart; %d retries, %d resumed reads",
		time.Since(restarted).Round(time.Millisecond), retries.Load()-retries0, resumes.Load()-resumes0)
	if retries.Load() == retries0 || resumes.Load() == resumes0 {
		t.Errorf("the outage caused no retry or no resumed read: the test did not test")
	}

	rc, err := s.Get(ctx, "big")
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	n, err := io.Copy(h, rc)
	rc.Close()
	if err != nil || n != int64(len(big)) || !bytes.Equal(h.Sum(nil), bigSum[:]) {
		t.Fatalf("big object after the outage: %d bytes, %v", n, err)
	}
	if got := listKeys(t, s, "small/"); len(got) != 25 {
		t.Errorf("%d small objects, want 25", len(got))
	}
}

// TestS3Stall freezes MinIO (SIGSTOP) under a running Put: connections stay
// open but nothing moves. The stall timeout must fail the request so that it
// is retried, and the Put must complete once the server thaws.
func TestS3Stall(t *testing.T) {
	m := privateMinio(t)
	s := openS3Test(t, m, "stall", "stallTimeout=1500ms")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	data := randBytes(30, 24<<20)
	done := make(chan error, 1)
	go func() {
		done <- s.Put(ctx, "p", &slowReaderAt{data: data, rate: 8 << 20}, int64(len(data)))
	}()
	statDone := make(chan error, 1)
	time.Sleep(700 * time.Millisecond)
	retries0 := retries.Load()
	if err := m.signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	go func() {
		_, err := s.Stat(ctx, "missing")
		if errors.Is(err, ErrNotFound) {
			err = nil
		}
		statDone <- err
	}()
	time.Sleep(4 * time.Second)
	if err := m.signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	thawed := time.Now()
	if err := <-done; err != nil {
		t.Fatalf("Put across the stall: %v", err)
	}
	if err := <-statDone; err != nil {
		t.Fatalf("Stat across the stall: %v", err)
	}
	t.Logf("done %v after the thaw; %d retries", time.Since(thawed).Round(time.Millisecond), retries.Load()-retries0)
	if retries.Load() == retries0 {
		t.Errorf("the stall caused no retry: the test did not test")
	}
	if got := get(t, s, "p"); !bytes.Equal(got, data) {
		t.Fatal("object differs after the stall")
	}
}
