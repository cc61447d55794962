package objstore

import (
	"os"
	"sync"
	"syscall"
	"testing"

	"k8s.io/klog/v2"

	"github.com/cairn-csi/cairn/internal/testsupport/harness"
)

// The S3 tests run against real MinIO servers on 127.0.0.1 (internal/testsupport/harness),
// built from source by hack/minio.sh into <module root>/.tools/bin/minio.

const (
	testAccessKey = harness.MinIOAccessKey
	testSecretKey = harness.MinIOSecretKey
	testBucket    = harness.MinIOBucket
)

var (
	sharedOnce  sync.Once
	shared      *minioServer
	sharedErr   error
	sharedDirs  []string
	sharedMutex sync.Mutex
)

func TestMain(m *testing.M) {
	// Lets `go test ./internal/objstore -args -v=2` show retries.
	klog.InitFlags(nil)
	code := m.Run()
	if shared != nil {
		shared.stop()
	}
	sharedMutex.Lock()
	for _, d := range sharedDirs {
		os.RemoveAll(d)
	}
	sharedMutex.Unlock()
	os.Exit(code)
}

// minioServer adapts harness.MinIO to these tests.
type minioServer struct {
	*harness.MinIO
	addr string
}

func newMinio(t *testing.T, dir string) (*minioServer, error) {
	m, err := harness.StartMinIO(dir)
	if err != nil {
		return nil, err
	}
	return &minioServer{MinIO: m, addr: m.Addr}, nil
}

func (m *minioServer) kill()                                      { m.Kill() }
func (m *minioServer) start() error                               { return m.Start() }
func (m *minioServer) stop()                                      { m.Stop() }
func (m *minioServer) signal(sig syscall.Signal) error            { return m.Signal(sig) }
func (m *minioServer) url(prefix string, params ...string) string { return m.URL(prefix, params...) }

func testCreds() Credentials {
	return Credentials{AccessKey: testAccessKey, SecretKey: testSecretKey}
}

// sharedMinio returns the server shared by the tests that do not disturb it.
func sharedMinio(t *testing.T) *minioServer {
	sharedOnce.Do(func() {
		dir, err := os.MkdirTemp("", "objstore-minio-")
		if err != nil {
			sharedErr = err
			return
		}
		sharedMutex.Lock()
		sharedDirs = append(sharedDirs, dir)
		sharedMutex.Unlock()
		shared, sharedErr = newMinio(t, dir)
	})
	if sharedErr != nil {
		t.Fatalf("start MinIO: %v", sharedErr)
	}
	return shared
}

// privateMinio starts a server for one test (which may kill it), stopped at
// the test's end.
func privateMinio(t *testing.T) *minioServer {
	m, err := newMinio(t, t.TempDir())
	if err != nil {
		t.Fatalf("start MinIO: %v", err)
	}
	t.Cleanup(m.stop)
	return m
}
